//! Who is asking: API keys (`--api-keys FILE`), the consumer of every request, and the limits
//! that belong to a consumer (open streams, request rate, scheduling weight).
//!
//! With a key file every route but `/health` and `/ready` needs `Authorization: Bearer KEY`
//! (or `?token=KEY` for tools that cannot set headers: weaker, since URLs end up in logs and
//! shell histories). Without one the server is open and each peer IP address is a consumer,
//! so fairness and the per-consumer stream cap still hold between machines.

use super::error::{ApiError, ErrorType};
pub use super::keys::{
    read_key_file, readable_by_others, KeyEntry, KeyFileError, MAX_STREAMS, MAX_WEIGHT, OPEN_LABEL,
};
use crate::engine::Consumer;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, Uri};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The consumer an address belongs to: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, so per-address consumers would let it be as many consumers as it likes).
fn peer_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

/// Token bucket: `rate` tokens per second, at most `cap`.
struct Bucket {
    rate: f64,
    cap: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `rate` per second with a burst of `cap` tokens, full.
    fn new(rate: f64, cap: f64) -> Self {
        Self {
            rate,
            cap,
            tokens: cap,
            at: Instant::now(),
        }
    }

    /// Tokens now (refilled since the last take, up to the cap).
    fn level(&self, now: Instant) -> f64 {
        (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.cap)
    }

    /// Whether it is full (then it need not be remembered).
    fn is_full(&self) -> bool {
        self.level(Instant::now()) >= self.cap
    }

    /// Seconds until a token is there (0 when one is).
    fn wait(&self) -> f64 {
        ((1.0 - self.level(Instant::now())) / self.rate).max(0.0)
    }

    /// Takes a token, or says how many seconds until one is there.
    fn take(&mut self) -> Result<(), f64> {
        let now = Instant::now();
        self.tokens = self.level(now);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.wait())
        }
    }
}

/// A consumer and its limits; one per key, or one per peer address on an open server.
pub struct ConsumerPolicy {
    pub consumer: Consumer,
    max_streams: usize,
    streams: Arc<Semaphore>,
    rate: Option<Mutex<Bucket>>,
}

impl ConsumerPolicy {
    fn new(consumer: Consumer, max_streams: usize, rate: Option<f64>) -> Self {
        Self {
            consumer,
            max_streams,
            streams: Arc::new(Semaphore::new(max_streams)),
            // One second's worth of burst, at least one request.
            rate: rate.map(|rate| Mutex::new(Bucket::new(rate, rate.max(1.0)))),
        }
    }

    /// A stream slot of this consumer, held until the response body ends.
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::overloaded(format!(
                "consumer `{}` has {} streams open (its max_streams); retry when one ends",
                self.consumer.label, self.max_streams
            ))
        })
    }
}

/// The consumers a server knows: the key file's, or those made per peer address.
pub struct Consumers {
    /// SHA-256 of the key → its consumer. Looking up the hash keeps the comparison's timing
    /// independent of how much of a guessed key is right.
    keyed: Option<HashMap<[u8; 32], Arc<ConsumerPolicy>>>,
    /// Open server: the consumers of peers with open streams (entries without streams are
    /// pruned, so the map stays small whatever the number of peers).
    by_peer: Mutex<HashMap<IpAddr, Arc<ConsumerPolicy>>>,
    max_streams: usize,
    /// Images each consumer's streams may read ahead together.
    readahead: usize,
    /// Failed authentications per peer (IPv6 /64): guessing keys is slowed to
    /// [`AUTH_FAILURES_PER_S`] per peer after a burst of [`AUTH_FAILURE_BURST`].
    auth_failures: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Failed authentications a peer may make in a burst, then per second.
pub const AUTH_FAILURE_BURST: f64 = 10.0;
pub const AUTH_FAILURES_PER_S: f64 = 1.0;

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Consumers {
    /// `keys`: the key file's entries, or `None` for an open server. `max_streams`: the
    /// default stream cap per consumer; `readahead`: images a consumer's streams may have in
    /// flight together.
    pub fn new(keys: Option<Vec<KeyEntry>>, max_streams: usize, readahead: usize) -> Self {
        let max_streams = max_streams.max(1);
        let keyed = keys.map(|entries| {
            entries
                .into_iter()
                .map(|e| {
                    let c = Consumer::new(e.name.as_str(), e.name.as_str(), e.weight.unwrap_or(1))
                        .with_readahead(readahead);
                    let p = ConsumerPolicy::new(
                        c,
                        e.max_streams.unwrap_or(max_streams),
                        e.max_requests_per_s,
                    );
                    (digest(&e.key), Arc::new(p))
                })
                .collect()
        });
        Self {
            keyed,
            by_peer: Mutex::new(HashMap::new()),
            max_streams,
            readahead,
            auth_failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn requires_keys(&self) -> bool {
        self.keyed.is_some()
    }

    fn of_peer(&self, ip: IpAddr) -> Arc<ConsumerPolicy> {
        let ip = peer_group(ip);
        let mut map = self.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= 4096 {
            // Only peers holding streams need their entry kept (it holds their stream count).
            map.retain(|_, p| {
                Arc::strong_count(p) > 1 || p.streams.available_permits() < p.max_streams
            });
        }
        map.entry(ip)
            .or_insert_with(|| {
                let name = ip.to_string();
                Arc::new(ConsumerPolicy::new(
                    Consumer::new(name.as_str(), OPEN_LABEL, 1).with_readahead(self.readahead),
                    self.max_streams,
                    None,
                ))
            })
            .clone()
    }

    /// Identifies the consumer of `req` (removing a `token` query parameter, so handlers and
    /// logs never see it).
    pub fn admit(&self, req: &mut Request) -> Result<Arc<ConsumerPolicy>, ApiError> {
        let from_query = take_token(req);
        // Every connection of `genrep serve` carries its peer address; without one every client
        // would be the same consumer, so a router served some other way is refused loudly.
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorType::Backend,
                    "the request has no peer address (ConnectInfo): serve the router through \
                     genrep::server, or insert ConnectInfo for in-process use",
                )
            })?;
        let Some(keys) = &self.keyed else {
            return Ok(self.of_peer(peer));
        };
        let from_header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| rest.trim().to_string())
            });
        let group = peer_group(peer);
        let mut failures = self.auth_failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = failures.get(&group) {
            let wait = b.wait();
            if wait > 0.0 {
                return Err(ApiError::new(
                    ErrorType::Overloaded,
                    format!(
                        "too many failed authentications from this address; retry in {wait:.2} s"
                    ),
                )
                .retry_after(wait));
            }
        }
        let found = match from_header.or(from_query) {
            None => Err(ApiError::new(
                ErrorType::Unauthorized,
                "missing API key: send `Authorization: Bearer KEY` (or `?token=KEY`)",
            )),
            Some(key) => keys
                .get(&digest(&key))
                .cloned()
                .ok_or_else(|| ApiError::new(ErrorType::Unauthorized, "unknown API key")),
        };
        if found.is_err() {
            if failures.len() >= 4096 {
                failures.retain(|_, b| !b.is_full());
                if failures.len() >= 4096 {
                    // A flood from more peers than that: forget the oldest half at random
                    // rather than grow without bound.
                    let drop: Vec<IpAddr> = failures.keys().step_by(2).copied().collect();
                    for k in drop {
                        failures.remove(&k);
                    }
                }
            }
            let _ = failures
                .entry(group)
                .or_insert_with(|| Bucket::new(AUTH_FAILURES_PER_S, AUTH_FAILURE_BURST))
                .take();
        }
        found
    }
}

impl ConsumerPolicy {
    /// Takes one request from the consumer's rate budget (`max_requests_per_s`).
    pub fn check_rate(&self) -> Result<(), ApiError> {
        let Some(bucket) = &self.rate else {
            return Ok(());
        };
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.take().map_err(|wait| {
            ApiError::new(
                ErrorType::Overloaded,
                format!(
                    "consumer `{}` is over its max_requests_per_s ({}); retry in {:.2} s",
                    self.consumer.label, b.rate, wait
                ),
            )
            .retry_after(wait)
        })
    }
}

/// The URI as logs show it: a token parameter's value replaced by `REDACTED` (the access log
/// records the request before the token is taken out of it).
pub fn redacted_uri(uri: &Uri) -> String {
    match uri.query() {
        Some(q) if q.split('&').any(is_token) => {
            let q: Vec<&str> = q
                .split('&')
                .map(|p| if is_token(p) { "token=REDACTED" } else { p })
                .collect();
            format!("{}?{}", uri.path(), q.join("&"))
        }
        _ => uri.to_string(),
    }
}

/// Whether a raw `name=value` query pair is the API key: its name, percent-decoded, is `token`
/// in any case (`token`, `TOKEN`, `tok%65n` all are).
fn is_token(pair: &str) -> bool {
    let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
    if raw.len() > 3 * "token".len() {
        return false;
    }
    let name: String = form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(n, _)| n.into_owned())
        .unwrap_or_default();
    name.eq_ignore_ascii_case("token")
}

/// Removes token parameters from the query string and returns the (last) one's value.
fn take_token(req: &mut Request) -> Option<String> {
    let q = req.uri().query()?;
    if !q.split('&').any(is_token) {
        return None;
    }
    let mut token = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|p| {
            if is_token(p) {
                let v = p.split_once('=').map_or("", |(_, v)| v);
                token = form_urlencoded::parse(format!("t={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned());
                false
            } else {
                true
            }
        })
        .collect();
    let path = req.uri().path();
    let pq = if rest.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", rest.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_group(a), peer_group(b));
        assert_ne!(peer_group(a), peer_group(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(peer_group(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn tokens_are_taken_out_of_queries_and_logs() {
        let mut req = Request::new(axum::body::Body::empty());
        *req.uri_mut() = "/v1/info?a=1&token=k%2By&b=2".parse().unwrap();
        assert_eq!(redacted_uri(req.uri()), "/v1/info?a=1&token=REDACTED&b=2");
        assert_eq!(take_token(&mut req).as_deref(), Some("k+y"));
        assert_eq!(req.uri().to_string(), "/v1/info?a=1&b=2");
        *req.uri_mut() = "/x?token".parse().unwrap();
        assert_eq!(take_token(&mut req).as_deref(), Some(""));
        assert_eq!(req.uri().to_string(), "/x");
        for spelling in ["TOKEN", "Token", "tok%65n", "%74oken", "tok%45N"] {
            *req.uri_mut() = format!("/v1/info?{spelling}=sekrit&b=2").parse().unwrap();
            assert_eq!(
                redacted_uri(req.uri()),
                "/v1/info?token=REDACTED&b=2",
                "{spelling}"
            );
            assert_eq!(
                take_token(&mut req).as_deref(),
                Some("sekrit"),
                "{spelling}"
            );
            assert_eq!(req.uri().to_string(), "/v1/info?b=2");
        }
        *req.uri_mut() = "/x?tokens=1&atoken=2".parse().unwrap();
        assert_eq!(take_token(&mut req), None);
    }

    #[test]
    fn key_file_errors_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "s3cr3t-key-0123456789";
        let cases = [
            ("a.toml", format!("[[consumer]]\nname = \"a\"\nkey = \"{secret}\"\nmax_streams = \"{secret}\"\n")),
            ("b.toml", format!("[[consumer]]\nname = \"a\"\nkey = {secret}\n")),
            ("c.toml", format!("[[consumer]]\nname = \"a\"\nkey = \"{secret}\n")),
            ("d.toml", format!("[[consumer]]\nname = \"a\"\nkey = \"{secret}\"\n{secret} = 1\n")),
            ("e.json", format!("{{\"consumer\": [{{\"name\": \"a\", \"key\": \"{secret}\", \"weight\": \"{secret}\"}}]}}")),
            ("f.json", format!("{{\"consumer\": [{{\"name\": \"a\", \"{secret}\": 1}}]}}")),
            ("g.json", format!("{{\"consumer\": [{{\"name\": \"a\", \"key\": {secret}}}]}}")),
            ("h.json", format!("{{\"consumer\": [{{\"name\": \"a\", \"key\": \"k\", \"weight\": \"a\\\"{secret}\"}}]}}")),
        ];
        for (name, text) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let e = read_key_file(&p).unwrap_err().to_string();
            assert!(!e.contains("s3cr3t"), "{name}: {e}");
            assert!(e.contains("line"), "{name}: {e}");
        }
    }

    #[test]
    fn huge_key_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.json");
        for (field, v) in [
            ("max_streams", "18446744073709551615"),
            ("weight", "4294967295"),
        ] {
            std::fs::write(
                &p,
                format!("{{\"consumer\": [{{\"name\": \"a\", \"key\": \"0123456789abcdef\", \"{field}\": {v}}}]}}"),
            )
            .unwrap();
            let e = read_key_file(&p).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("1..="), "{e}");
        }
    }
}
