//! Reading a shard over HTTP (with retries and backoff) or from a local file.

use super::shard::{read_samples, RawSample};
use super::LoaderError;
use std::time::Duration;

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
}

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
        }
    }
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
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        let f = std::fs::File::open(url).map_err(|e| LoaderError::Io(url.into(), e.to_string()))?;
        read_samples(url, std::io::BufReader::new(f), None, on_sample)?;
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
                let expected = resp
                    .header(genrep_wire::SAMPLES_HEADER)
                    .and_then(|v| v.parse().ok());
                // A cut connection shows up as a truncated body: retry it.
                match read_samples(url, resp.into_reader(), expected, &mut on_sample) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
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
