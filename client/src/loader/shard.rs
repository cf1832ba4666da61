//! Tar parsing: a shard stream to complete samples, checking the end marker and the count.

use super::LoaderError;
use std::collections::BTreeMap;
use std::io::Read;

/// One WebDataset sample: its key and raw fields.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    pub fields: BTreeMap<String, Vec<u8>>,
}

/// Counts the bytes that pass through and keeps the last 1024 of them, to check the tar
/// end-of-archive marker (the `tar` crate treats a stream cut at a header boundary as a clean end).
struct TailReader<R> {
    inner: R,
    total: u64,
    tail: Vec<u8>,
}

impl<R: Read> Read for TailReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > 1024 {
            self.tail.drain(..self.tail.len() - 1024);
        }
        Ok(n)
    }
}

impl<R> TailReader<R> {
    fn ends_with_marker(&self) -> bool {
        self.total >= 1024
            && self.total % 512 == 0
            && self.tail.len() == 1024
            && self.tail.iter().all(|&b| b == 0)
    }
}

/// Reads a tar stream sample by sample and calls `emit(index, sample)` for each, in order. A
/// sample is emitted once the next one starts; the last one only after the end-of-archive marker
/// and the announced count (`expected`) are checked, so an emitted sample is always complete.
/// `emit` returns `false` to stop reading (the consumer went away). Returns the sample count.
pub fn read_samples<R: Read>(
    name: &str,
    reader: R,
    expected: Option<usize>,
    mut emit: impl FnMut(usize, RawSample) -> bool,
) -> Result<usize, LoaderError> {
    let trunc = |m: String| LoaderError::Truncated(name.into(), m);
    let mut src = TailReader {
        inner: reader,
        total: 0,
        tail: Vec::new(),
    };
    let mut count = 0;
    let mut cur: Option<RawSample> = None;
    {
        let mut ar = tar::Archive::new(&mut src);
        for e in ar.entries().map_err(|e| trunc(e.to_string()))? {
            let mut e = e.map_err(|e| trunc(e.to_string()))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = e
                .path()
                .map_err(|e| trunc(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let base = path.rsplit('/').next().unwrap_or(&path);
            let Some(dot) = base.find('.') else { continue };
            if dot == 0 {
                continue;
            }
            let key = format!("{}{}", &path[..path.len() - base.len()], &base[..dot]);
            let field = base[dot + 1..].to_lowercase();
            // The header's size is untrusted: reserve at most 16 MiB up front.
            let mut buf = Vec::with_capacity((e.size() as usize).min(16 << 20));
            e.read_to_end(&mut buf).map_err(|e| trunc(e.to_string()))?;
            match &mut cur {
                Some(s) if s.key == key => {
                    if s.fields.insert(field.clone(), buf).is_some() {
                        return Err(LoaderError::Sample(
                            name.into(),
                            key,
                            format!("duplicate field `{field}`"),
                        ));
                    }
                }
                _ => {
                    if let Some(done) = cur.take() {
                        if !emit(count, done) {
                            return Ok(count);
                        }
                        count += 1;
                    }
                    cur = Some(RawSample {
                        key,
                        fields: BTreeMap::from([(field, buf)]),
                    });
                }
            }
        }
    }
    // The archive stops after the first zero block; read the rest to see the whole end.
    std::io::copy(&mut src, &mut std::io::sink()).map_err(|e| trunc(e.to_string()))?;
    if !src.ends_with_marker() {
        return Err(trunc(format!(
            "{} bytes, no end-of-archive marker",
            src.total
        )));
    }
    let total = count + usize::from(cur.is_some());
    if let Some(n) = expected {
        if total != n {
            return Err(trunc(format!("{total} samples, the server announced {n}")));
        }
    }
    if let Some(done) = cur {
        if emit(count, done) {
            count += 1;
        }
    }
    Ok(count)
}

/// Parses a whole shard held in memory, checking that it is complete.
pub fn parse_shard(
    name: &str,
    data: &[u8],
    expected: Option<usize>,
) -> Result<Vec<RawSample>, LoaderError> {
    let mut out = Vec::new();
    read_samples(name, data, expected, |_, s| {
        out.push(s);
        true
    })?;
    Ok(out)
}
