//! WebDataset shard loader: brace-pattern URLs or local files, per-rank sharding, per-epoch
//! deterministic shuffle, bounded parallel prefetch, retries with backoff, a resumable cursor, and
//! decoding to candle tensors.
//!
//! Shards are read as a stream: a sample is handed on as soon as the next one starts (so an endless
//! `/v1/stream` URL yields from its first samples), and the last one only once the tar
//! end-of-archive marker (two zero blocks) has arrived and, when the server announces
//! `x-genrep-samples`, the count matches: a truncated shard is an error, never a silently short
//! epoch. A failed download is retried from the start of the shard (shards are deterministic),
//! skipping the samples already delivered, so every sample is delivered exactly once.

mod batch;
mod decode;
mod fetch;
mod prefetch;
mod shard;
#[cfg(test)]
mod tests;
mod urls;

pub use batch::{next_batch, Batch};
pub use decode::{decode_image, sample_views, views_in, Image};
pub use fetch::{fetch, stream_shard, FetchLimits, FetchPolicy, RATE_WINDOW};
pub use prefetch::{Cursor, Loader, LoaderConfig};
pub use shard::{parse_shard, read_samples, RawSample, ReadLimits, DEFAULT_MAX_MEMBER_BYTES};
pub use urls::{expand, local_path, resolve};

/// Loader errors; each names the shard or pattern at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("bad shard pattern `{0}`: {1}")]
    Pattern(String, String),
    #[error("no shards match `{0}`")]
    NoShards(String),
    #[error("{0}: {1}")]
    Io(String, String),
    #[error("{url}: giving up after {attempts} attempts: {last}")]
    Network {
        url: String,
        attempts: usize,
        last: String,
    },
    #[error("{0}: truncated or malformed shard: {1}")]
    Truncated(String, String),
    #[error("{0}: sample `{1}`: {2}")]
    Sample(String, String, String),
    #[error("{0}: over the reader's limits: {1}")]
    TooLarge(String, String),
    #[error(
        "{0} shards cannot be split over world_size {1} (rank {2}): every rank needs at least one"
    )]
    TooFewShards(usize, usize, usize),
    #[error(
        "the checkpoint's loader position (shard {0}) is past this rank's {1} shards: the source or the world size changed"
    )]
    BadCursor(usize, usize),
}
