//! Encodings of generated images and latents: `.npy` arrays, PNG images and grids.

pub mod image;
pub mod npy;
