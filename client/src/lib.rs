//! genrep-client: streams genrep (or any WebDataset) shards and trains SimCLR/SupCon encoders in
//! candle, with linear-probe and kNN evaluation.
//!
//! Data flow: [`loader`] (shards → samples → view tensors) → [`augment`] (per-view pixel
//! augmentations) → [`model`] (ResNet encoder + projection head) / [`loss`] (NT-Xent, SupCon) →
//! [`optim`] (SGD, LARS, warm-up + cosine) → [`eval`] (kNN, linear probe); [`train`] ties them up.

pub mod augment;
pub mod eval;
pub mod loader;
pub mod loss;
pub mod model;
pub mod optim;
pub mod train;

pub use genrep_wire as wire;
