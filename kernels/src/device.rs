//! Choosing the candle device from a `--device` flag; one parser for the server and the client.

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

/// Parses `cpu`, `cuda` or `cuda:N` and opens the device.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_values() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0", ""] {
            let e = parse_device(bad).unwrap_err();
            assert!(matches!(e, DeviceError::Unknown(_)), "{bad}: {e}");
            assert!(e.to_string().contains("allowed: cpu, cuda, cuda:N"));
        }
        if !cfg!(feature = "cuda") {
            assert!(parse_device("cuda:0")
                .unwrap_err()
                .to_string()
                .contains("--features cuda"));
        }
    }
}
