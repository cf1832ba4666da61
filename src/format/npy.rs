//! `.npy` reading and writing: the one implementation lives in `genrep-wire` (the client decodes
//! `format=npy` views with it too).

pub use genrep_wire::npy::*;
