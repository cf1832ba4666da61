//! Choosing the candle device from a `--device` flag.

use candle_core::Device;

/// Errors choosing a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (allowed: cpu, cuda, cuda:N)")]
    Unknown(String),
    #[error("device `{0}` needs a build with `--features cuda`")]
    NoCuda(String),
    #[error("cannot open {0}: {1}")]
    Open(String, candle_core::Error),
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, DeviceError> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| DeviceError::Unknown(s.into()))?,
        None => return Err(DeviceError::Unknown(s.into())),
    };
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NoCuda(s.into()));
    }
    Device::new_cuda(ordinal).map_err(|e| DeviceError::Open(s.into(), e))
}
