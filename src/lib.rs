//! genrep: a pretrained image generator served as a streaming GenRep multiview dataset.
//!
//! Data flow: api (HTTP routes) → [`pipeline`] (requests to jobs, encoding) → [`sampler`] and
//! [`views`] (latents from seed and index) → [`engine`] (queue, batcher, device thread) →
//! [`generator`] (candle models in stages) → [`wds`]/[`format`] (tar, PNG/npy).

pub mod api;
pub mod check;
pub mod data;
pub mod device;
pub mod embedded;
pub mod engine;
pub mod export;
pub mod format;
pub mod generator;
pub mod metrics;
pub mod offline;
pub mod params;
pub mod pipeline;
pub mod sampler;
pub mod server;
pub mod views;
pub mod walks;
pub mod wds;
