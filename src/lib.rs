//! genrep: a pretrained image generator served as a streaming GenRep multiview dataset.
//!
//! Data flow: [`sampler`] (latents from seed and index) → engine (batching) → [`generator`]
//! (candle models) → [`format`] (PNG/npy, tar) → api (HTTP).

pub mod device;
pub mod format;
pub mod generator;
