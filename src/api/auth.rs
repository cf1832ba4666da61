//! Who is asking: API keys (`--api-keys FILE`), the consumer of every request, and the limits
//! that belong to a consumer (open streams, request rate, scheduling weight).
//!
//! With a key file every route but `/health` and `/ready` needs `Authorization: Bearer KEY`
//! (or `?token=KEY` for tools that cannot set headers: weaker, since URLs end up in logs and
//! shell histories). Without one the server is open and each peer IP address is a consumer,
//! so fairness and the per-consumer stream cap still hold between machines.

use super::error::{ApiError, ErrorType};
use crate::engine::Consumer;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, Uri};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Errors of the key file, reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// One entry of the key file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The consumer's name: logs and metrics labels use it, never the key.
    pub name: String,
    /// The secret the consumer sends.
    pub key: String,
    /// Open shard/stream responses at most (default: `--max-streams-per-consumer`).
    #[serde(default)]
    pub max_streams: Option<usize>,
    /// Requests per second at most, with bursts of up to one second's worth (default: none).
    #[serde(default)]
    pub max_requests_per_s: Option<f64>,
    /// Share of the generator when consumers compete (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    consumer: Vec<KeyEntry>,
}

/// Reads a key file: TOML (`[[consumer]]` tables) when its name ends in `.toml`, JSON
/// (`{"consumer": [...]}`) otherwise.
pub fn read_key_file(path: &Path) -> Result<Vec<KeyEntry>, KeyFileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::Read(p.clone(), e))?;
    let file: KeyFile = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| KeyFileError::Parse(p.clone(), e.to_string()))?
    } else {
        serde_json::from_str(&text).map_err(|e| KeyFileError::Parse(p.clone(), e.to_string()))?
    };
    let invalid = |m: String| KeyFileError::Invalid(p.clone(), m);
    if file.consumer.is_empty() {
        return Err(invalid(
            "no consumers: a key file must list at least one".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    for c in &file.consumer {
        let ok_name = !c.name.is_empty()
            && c.name.len() <= 64
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch));
        if !ok_name {
            return Err(invalid(format!(
                "consumer name `{}`: use 1-64 ASCII letters, digits, `_`, `-` or `.`",
                c.name
            )));
        }
        if c.name == OPEN_LABEL {
            return Err(invalid(format!("consumer name `{OPEN_LABEL}` is reserved")));
        }
        if c.key.len() < 16 || c.key.chars().any(|ch| !ch.is_ascii_graphic()) {
            return Err(invalid(format!(
                "consumer `{}`: keys must be at least 16 printable ASCII characters, no spaces",
                c.name
            )));
        }
        if !names.insert(c.name.clone()) {
            return Err(invalid(format!("consumer name `{}` appears twice", c.name)));
        }
        if !keys.insert(c.key.clone()) {
            return Err(invalid(format!(
                "consumer `{}` reuses another consumer's key",
                c.name
            )));
        }
        if c.max_streams == Some(0) || c.weight == Some(0) {
            return Err(invalid(format!(
                "consumer `{}`: max_streams and weight must be at least 1",
                c.name
            )));
        }
        if c.max_requests_per_s
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return Err(invalid(format!(
                "consumer `{}`: max_requests_per_s must be a positive number",
                c.name
            )));
        }
    }
    Ok(file.consumer)
}

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

/// Metrics label of every consumer of an open server.
pub const OPEN_LABEL: &str = "open";

/// Token bucket: `rate` tokens per second, at most `rate` (one second's burst, at least 1).
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how many seconds until one is there.
    fn take(&mut self) -> Result<(), f64> {
        let now = Instant::now();
        let cap = self.rate.max(1.0);
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / self.rate)
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
            rate: rate.map(|rate| {
                Mutex::new(Bucket {
                    rate,
                    tokens: rate.max(1.0),
                    at: Instant::now(),
                })
            }),
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
}

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
        }
    }

    pub fn requires_keys(&self) -> bool {
        self.keyed.is_some()
    }

    fn of_peer(&self, ip: Option<IpAddr>) -> Arc<ConsumerPolicy> {
        let ip = peer_group(ip.unwrap_or(IpAddr::from([127, 0, 0, 1])));
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
        let policy = match &self.keyed {
            None => {
                let peer = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip());
                self.of_peer(peer)
            }
            Some(keys) => {
                let key = from_header.or(from_query).ok_or_else(|| {
                    ApiError::new(
                        ErrorType::Unauthorized,
                        "missing API key: send `Authorization: Bearer KEY` (or `?token=KEY`)",
                    )
                })?;
                keys.get(&digest(&key))
                    .cloned()
                    .ok_or_else(|| ApiError::new(ErrorType::Unauthorized, "unknown API key"))?
            }
        };
        Ok(policy)
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
        })
    }
}

/// The URI as logs show it: a `token` parameter's value replaced by `REDACTED` (the access log
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

fn is_token(p: &str) -> bool {
    p == "token" || p.starts_with("token=")
}

/// Removes `token=…` from the query string and returns its value.
fn take_token(req: &mut Request) -> Option<String> {
    let q = req.uri().query()?;
    if !q
        .split('&')
        .any(|p| p == "token" || p.starts_with("token="))
    {
        return None;
    }
    let mut token = None;
    let rest: Vec<&str> = q
        .split('&')
        .filter(|p| {
            if is_token(p) {
                let v = p.strip_prefix("token=").unwrap_or("");
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

/// `WWW-Authenticate` for 401 answers (RFC 6750).
pub fn www_authenticate() -> HeaderValue {
    HeaderValue::from_static("Bearer realm=\"genrep\"")
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
    }
}
