//! Minimal `.npy` (NumPy format 1.0/2.0/3.0) reader and writer for little-endian numeric arrays.
//!
//! Enough for latents, class ids/vectors and image batches; object arrays and Fortran order are
//! rejected with an error that says so.

use std::io::Write;

/// Errors reading an `.npy` file; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("not an .npy file (bad magic)")]
    Magic,
    #[error("unsupported .npy version {0}.{1}")]
    Version(u8, u8),
    #[error("truncated .npy file: {0}")]
    Truncated(&'static str),
    #[error("malformed .npy header: {0}")]
    Header(String),
    #[error("unsupported dtype `{0}` (supported: <f4, <f8, <i4, <i8, <u4, <u8, |u1, |i1)")]
    DType(String),
    #[error("Fortran-ordered arrays are not supported")]
    FortranOrder,
    #[error("data has {got} bytes, shape {shape:?} of `{dtype}` needs {expected}")]
    Size {
        got: usize,
        expected: usize,
        shape: Vec<usize>,
        dtype: String,
    },
}

/// Element type of an array as read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyDType {
    F32,
    F64,
    I32,
    I64,
    U32,
    U64,
    U8,
    I8,
}

impl NpyDType {
    fn parse(descr: &str) -> Result<Self, NpyError> {
        Ok(match descr {
            "<f4" => Self::F32,
            "<f8" => Self::F64,
            "<i4" => Self::I32,
            "<i8" => Self::I64,
            "<u4" => Self::U32,
            "<u8" => Self::U64,
            "|u1" | "<u1" => Self::U8,
            "|i1" | "<i1" => Self::I8,
            other => return Err(NpyError::DType(other.to_string())),
        })
    }
    fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::F32 | Self::I32 | Self::U32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::I32 => "int32",
            Self::I64 => "int64",
            Self::U32 => "uint32",
            Self::U64 => "uint64",
            Self::U8 => "uint8",
            Self::I8 => "int8",
        }
    }
}

/// A parsed array: shape, element type and raw little-endian data.
#[derive(Debug, Clone)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub dtype: NpyDType,
    data: Vec<u8>,
}

impl NpyArray {
    pub fn parse(bytes: &[u8]) -> Result<Self, NpyError> {
        if bytes.len() < 10 {
            return Err(NpyError::Truncated("shorter than the preamble"));
        }
        if &bytes[..6] != b"\x93NUMPY" {
            return Err(NpyError::Magic);
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (hlen, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(NpyError::Truncated("shorter than the preamble"));
                }
                (
                    u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                    12,
                )
            }
            _ => return Err(NpyError::Version(major, minor)),
        };
        let header = bytes
            .get(start..start + hlen)
            .ok_or(NpyError::Truncated("header"))?;
        let header =
            std::str::from_utf8(header).map_err(|_| NpyError::Header("not UTF-8".into()))?;
        let descr = dict_value(header, "descr")?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let dtype = NpyDType::parse(descr)?;
        let fortran = dict_value(header, "fortran_order")?;
        if fortran.trim() == "True" {
            return Err(NpyError::FortranOrder);
        }
        let shape_s = dict_value(header, "shape")?;
        let shape_s = shape_s.trim().trim_start_matches('(').trim_end_matches(')');
        let mut shape = Vec::new();
        for part in shape_s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            shape.push(
                part.parse::<usize>()
                    .map_err(|_| NpyError::Header(format!("bad shape entry `{part}`")))?,
            );
        }
        let data = &bytes[start + hlen..];
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| NpyError::Header("shape overflows".into()))?;
        if data.len() != expected {
            return Err(NpyError::Size {
                got: data.len(),
                expected,
                shape,
                dtype: dtype.name().into(),
            });
        }
        Ok(Self {
            shape,
            dtype,
            data: data.to_vec(),
        })
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values converted to f32 (float arrays only).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            NpyDType::F32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            NpyDType::F64 => Some(
                self.data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Values as i64 (integer arrays only).
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let d = &self.data;
        Some(match self.dtype {
            NpyDType::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            NpyDType::U32 => d
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            NpyDType::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            NpyDType::U64 => d
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()).min(i64::MAX as u64) as i64)
                .collect(),
            NpyDType::U8 => d.iter().map(|&v| v as i64).collect(),
            NpyDType::I8 => d.iter().map(|&v| v as i8 as i64).collect(),
            NpyDType::F32 | NpyDType::F64 => return None,
        })
    }
}

fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let pat1 = format!("'{key}':");
    let pat2 = format!("\"{key}\":");
    let pos = header
        .find(&pat1)
        .map(|p| p + pat1.len())
        .or_else(|| header.find(&pat2).map(|p| p + pat2.len()))
        .ok_or_else(|| NpyError::Header(format!("missing key `{key}`")))?;
    let rest = &header[pos..];
    let end = if rest.trim_start().starts_with('(') {
        rest.find(')').map(|e| e + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(|| NpyError::Header(format!("unterminated value for `{key}`")))?;
    Ok(&rest[..end])
}

/// Serialises an f32 array as `.npy` version 1.0 (C order).
pub fn write_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad so that the data starts on a 64-byte boundary, newline-terminated (format spec).
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.write_all(&v.to_le_bytes()).unwrap();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_f32() {
        let bytes = write_f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        assert_eq!((bytes.len() - 6 * 4) % 64, 0);
        let a = NpyArray::parse(&bytes).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.to_f32().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        let one = NpyArray::parse(&write_f32(&[2], &[7., 8.])).unwrap();
        assert_eq!(one.shape, vec![2]);
    }

    #[test]
    fn rejects_truncated_and_bad_dtype() {
        let bytes = write_f32(&[4], &[1., 2., 3., 4.]);
        assert!(matches!(
            NpyArray::parse(&bytes[..bytes.len() - 1]),
            Err(NpyError::Size { .. })
        ));
        assert!(matches!(
            NpyArray::parse(b"hello world"),
            Err(NpyError::Magic)
        ));
        let mut bad = bytes.clone();
        let at = bad.windows(3).position(|w| w == b"<f4").unwrap();
        bad[at..at + 3].copy_from_slice(b"<c8");
        assert!(matches!(NpyArray::parse(&bad), Err(NpyError::DType(_))));
    }
}
