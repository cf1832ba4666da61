//! Choosing the candle device from a `--device` flag (the parser is shared with the client).

pub use genrep_kernels::device::{parse_device, DeviceError};
