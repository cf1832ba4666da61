//! genrep: a pretrained image generator served as a streaming GenRep multiview dataset.
//!
//! Data flow: [`sampler`] (latents from seed and index) → engine (batching) → [`generator`]
//! (candle models) → [`format`] (PNG/npy, tar) → api (HTTP).

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
pub mod sampler;
pub mod server;
pub mod wds;
