//! Reading a shard over HTTP (with retries and backoff) or from a local file.

use super::shard::{read_samples, RawSample, ReadLimits, DEFAULT_MAX_MEMBER_BYTES};
use super::LoaderError;
use std::io::Read;
use std::time::{Duration, Instant};

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct FetchPolicy {
    /// Tries per shard (the first included).
    pub attempts: usize,
    /// Wait before the second try; doubled for each further one.
    pub backoff: Duration,
    /// Longest wait for the next bytes of a response (streams are endless, so not a total).
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer KEY` to servers started with `--api-keys`.
    pub api_key: Option<String>,
    /// What a response may make the reader hold, and how slow it may be.
    pub limits: FetchLimits,
    /// Window over which `limits.min_bytes_per_s` is measured.
    pub rate_window: Duration,
}

/// Bounds on what a server can make the client do (saved with a training run's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FetchLimits {
    /// Largest tar member (one field of a sample) accepted; a sample may hold 8 such. A larger
    /// one is an error, never an allocation of whatever a server claims.
    pub max_member_bytes: u64,
    /// Slowest transfer accepted: a response that delivers fewer than this many bytes per
    /// second over the policy's rate window is abandoned and retried (0: no minimum). Catches servers
    /// that trickle bytes just often enough to defeat `timeout`.
    pub min_bytes_per_s: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_member_bytes: DEFAULT_MAX_MEMBER_BYTES,
            // A 28×28 sample is about 1 KiB, a 256×256 view 100 KiB: a server delivering less
            // than 1 KiB/s for 30 s is stuck or hostile, not busy.
            min_bytes_per_s: 1024,
        }
    }
}

/// Default window over which [`FetchLimits::min_bytes_per_s`] is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(30);

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(600),
            // An environment variable rather than a flag: keys stay out of process listings
            // and shell history, and every command (train, eval) picks it up.
            api_key: std::env::var("GENREP_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            limits: FetchLimits::default(),
            rate_window: RATE_WINDOW,
        }
    }
}

/// A response body that fails once it falls below a minimum rate over a window. Only the time
/// spent waiting inside `read` counts: time the caller spends elsewhere (a prefetching reader
/// blocked until the trainer catches up) is not the server's.
struct MinRate<R> {
    inner: R,
    min_bytes_per_s: u64,
    window: Duration,
    /// Time spent in `read` and bytes received since the window began.
    window_busy: Duration,
    window_bytes: u64,
}

impl<R: Read> Read for MinRate<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let t = Instant::now();
        let n = self.inner.read(buf)?;
        self.window_busy += t.elapsed();
        self.window_bytes += n as u64;
        if self.min_bytes_per_s > 0 && self.window_busy >= self.window {
            let want = self.min_bytes_per_s as f64 * self.window_busy.as_secs_f64();
            if (self.window_bytes as f64) < want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the server sent {} bytes in {:.0} s of waiting, below the minimum of {} bytes/s",
                        self.window_bytes,
                        self.window_busy.as_secs_f64(),
                        self.min_bytes_per_s
                    ),
                ));
            }
            self.window_busy = Duration::ZERO;
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

/// [`read_samples`] of a response body under the policy's limits and minimum rate.
pub(crate) fn read_rate_limited<R: Read>(
    name: &str,
    body: R,
    expected: Option<usize>,
    policy: &FetchPolicy,
    on_sample: impl FnMut(usize, RawSample) -> bool,
) -> Result<usize, LoaderError> {
    let body = MinRate {
        inner: body,
        min_bytes_per_s: policy.limits.min_bytes_per_s,
        window: policy.rate_window,
        window_busy: Duration::ZERO,
        window_bytes: 0,
    };
    let limits = ReadLimits::with_member(policy.limits.max_member_bytes);
    read_samples(name, body, expected, limits, on_sample)
}

/// Streams shard `url` (HTTP, or a local file) into `on_sample(index, sample)`, retrying a
/// failed HTTP download with exponential backoff; each attempt re-reads the shard from its start,
/// so `on_sample` sees indices from 0 again and must skip what it already has. 4xx answers other
/// than 429 fail at once. `on_sample` returns `false` to stop.
pub fn stream_shard(
    url: &str,
    policy: &FetchPolicy,
    mut on_sample: impl FnMut(usize, RawSample) -> bool,
) -> Result<(), LoaderError> {
    let limits = ReadLimits::with_member(policy.limits.max_member_bytes);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        let f = std::fs::File::open(url).map_err(|e| LoaderError::Io(url.into(), e.to_string()))?;
        read_samples(url, std::io::BufReader::new(f), None, limits, on_sample)?;
        return Ok(());
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(policy.timeout)
        .build();
    let mut last = String::new();
    for attempt in 0..policy.attempts.max(1) {
        if attempt > 0 {
            std::thread::sleep(policy.backoff * (1 << (attempt - 1).min(6)) as u32);
        }
        let mut req = agent.get(url);
        if let Some(k) = &policy.api_key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        match req.call() {
            Ok(resp) => {
                // Nothing is asked to be compressed (ureq is built without it, so it sends no
                // Accept-Encoding); a compressed body anyway is refused rather than inflated.
                if let Some(enc) = resp
                    .header("content-encoding")
                    .filter(|e| !e.eq_ignore_ascii_case("identity"))
                {
                    return Err(LoaderError::Network {
                        url: url.into(),
                        attempts: attempt + 1,
                        last: format!(
                            "the server sent a `{}`-encoded body, which was not asked for",
                            enc.escape_debug()
                        ),
                    });
                }
                let expected = resp
                    .header(genrep_wire::SAMPLES_HEADER)
                    .and_then(|v| v.parse().ok());
                // A cut connection shows up as a truncated body: retry it. A member over the
                // limits would be sent again the same way: fail at once.
                match read_rate_limited(url, resp.into_reader(), expected, policy, &mut on_sample) {
                    Ok(_) => return Ok(()),
                    Err(e @ LoaderError::TooLarge(..)) => return Err(e),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                // Error bodies are short JSON; a hostile one is cut and shown escaped.
                let mut raw = Vec::new();
                let _ = resp.into_reader().take(4096).read_to_end(&mut raw);
                let body = String::from_utf8_lossy(&raw).escape_debug().to_string();
                // 4xx other than 429 will not get better by retrying.
                if (400..500).contains(&code) && code != 429 {
                    return Err(LoaderError::Network {
                        url: url.into(),
                        attempts: attempt + 1,
                        last: format!("HTTP {code}: {body}"),
                    });
                }
                last = format!("HTTP {code}: {body}");
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(LoaderError::Network {
        url: url.into(),
        attempts: policy.attempts.max(1),
        last,
    })
}

/// Reads one whole shard (HTTP with retries, or a local file).
pub fn fetch(url: &str, policy: &FetchPolicy) -> Result<Vec<RawSample>, LoaderError> {
    let mut out = Vec::new();
    stream_shard(url, policy, |i, s| {
        if i == out.len() {
            out.push(s);
        }
        true
    })?;
    Ok(out)
}
