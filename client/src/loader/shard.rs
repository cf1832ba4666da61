//! Tar parsing: a shard stream to complete samples, checking the end marker and the count, with
//! every size the stream declares bounded before anything is allocated for it.
//!
//! The reader is ours rather than the `tar` crate's because a shard comes from the network: the
//! crate reads a GNU long name or a pax header whole, whatever size it claims, and a tampered
//! server could make that 64 GiB. Here each member's size is checked against
//! [`ReadLimits`] from its header, long names and pax headers have small fixed caps, trailing
//! padding is bounded, and a stream that is not tar gets a message that shows its first bytes
//! escaped (never raw binary on a terminal).

use super::LoaderError;
use std::collections::BTreeMap;
use std::io::Read;

/// One WebDataset sample: its key and raw fields.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    pub fields: BTreeMap<String, Vec<u8>>,
}

/// What one shard may make the reader hold.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest member (one field of a sample, e.g. one view's PNG).
    pub max_member_bytes: u64,
    /// Largest sample, all its fields together.
    pub max_sample_bytes: u64,
}

/// Default largest member: 64 MiB, five times a 1024×1024 RGB float32 view (12 MiB as npy).
pub const DEFAULT_MAX_MEMBER_BYTES: u64 = 64 << 20;

impl Default for ReadLimits {
    fn default() -> Self {
        Self::with_member(DEFAULT_MAX_MEMBER_BYTES)
    }
}

impl ReadLimits {
    /// Limits for a given largest member; a sample may hold 8 such members.
    pub fn with_member(max_member_bytes: u64) -> Self {
        Self {
            max_member_bytes,
            max_sample_bytes: max_member_bytes.saturating_mul(8),
        }
    }
}

/// Longest GNU long name (`L` entry) accepted: far above any WebDataset key.
const MAX_LONG_NAME: u64 = 4096;
/// Largest pax extended header (`x` entry) accepted.
const MAX_PAX: u64 = 64 << 10;
/// Most fields in one sample.
const MAX_FIELDS: usize = 4096;
/// Zero padding accepted after the end-of-archive marker (GNU tar pads to 10 KiB records).
const MAX_TRAILER: u64 = 1 << 20;

const BLOCK: usize = 512;

/// A tar stream read block by block, counting bytes.
struct Blocks<R> {
    inner: R,
    offset: u64,
    /// Scratch for skipped data, allocated once.
    scratch: Vec<u8>,
}

/// `size` rounded up to whole blocks; `None` past `u64` (a hostile base-256 size).
fn padded(size: u64) -> Option<u64> {
    size.checked_next_multiple_of(BLOCK as u64)
}

fn eof(offset: u64, inside: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the stream ended inside {inside} at byte {offset}"),
    )
}

impl<R: Read> Blocks<R> {
    /// Fills `buf` completely; `Ok(false)` on a clean end of stream before its first byte.
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(eof(self.offset, "a block")),
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads a member's `size` bytes and its padding into memory (`size` already bounded by the
    /// caller). The buffer grows as data arrives, in steps of at most 1 MiB: a header's size is
    /// only a claim until the bytes are here.
    fn data(&mut self, size: u64) -> std::io::Result<Vec<u8>> {
        let total = padded(size).expect("bounded sizes round up") as usize;
        let mut buf = Vec::new();
        while buf.len() < total {
            let start = buf.len();
            buf.resize(total.min(start + (1 << 20)), 0);
            if !self.fill(&mut buf[start..])? {
                return Err(eof(self.offset, "a member"));
            }
        }
        buf.truncate(size as usize);
        Ok(buf)
    }

    /// Skips a member's data (entries that are not sample fields).
    fn skip(&mut self, size: u64) -> std::io::Result<()> {
        let Some(mut left) = padded(size) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a member size of {size} bytes at byte {}", self.offset),
            ));
        };
        let mut chunk = std::mem::take(&mut self.scratch);
        chunk.resize(64 << 10, 0);
        let mut res = Ok(());
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            match self.fill(&mut chunk[..n]) {
                Ok(true) => left -= n as u64,
                Ok(false) => {
                    res = Err(eof(self.offset, "a member"));
                    break;
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        self.scratch = chunk;
        res
    }
}

/// The first bytes of a block, printable (`\x..` escapes), for messages.
fn shown(b: &[u8]) -> String {
    let s: String = b[..b.len().min(48)].escape_ascii().to_string();
    format!("\"{s}\"")
}

/// A numeric header field: octal ASCII (space/NUL terminated) or GNU base-256.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // Base-256: the rest of the field, big-endian; a negative or > 64-bit value is refused.
        if field[0] != 0x80 {
            return None;
        }
        let rest = &field[1..];
        let lead = rest.len().saturating_sub(8);
        if rest[..lead].iter().any(|&b| b != 0) {
            return None;
        }
        return Some(rest[lead..].iter().fold(0u64, |v, &b| (v << 8) | b as u64));
    }
    let s = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ');
    let mut v: u64 = 0;
    let mut any = false;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
        any = true;
    }
    any.then_some(v)
}

/// A NUL-terminated name field.
fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Some(stored) = number(&h[148..156]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    stored == unsigned || stored as i64 == signed
}

/// The `path` of a pax extended header's records (`LEN key=value\n`).
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut path = None;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp + 1 || len > rest.len() {
            return None;
        }
        let rec = &rest[sp + 1..len - 1];
        if let Some(v) = rec.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

/// Reads a tar stream sample by sample and calls `emit(index, sample)` for each, in order. A
/// sample is emitted once the next one starts; the last one only after the end-of-archive marker
/// and the announced count (`expected`) are checked, so an emitted sample is always complete.
/// `emit` returns `false` to stop reading (the consumer went away). Returns the sample count.
pub fn read_samples<R: Read>(
    name: &str,
    reader: R,
    expected: Option<usize>,
    limits: ReadLimits,
    mut emit: impl FnMut(usize, RawSample) -> bool,
) -> Result<usize, LoaderError> {
    let trunc = |m: String| LoaderError::Truncated(name.into(), m);
    let io = |e: std::io::Error| LoaderError::Truncated(name.into(), e.to_string());
    let mut src = Blocks {
        inner: reader,
        offset: 0,
        scratch: Vec::new(),
    };
    let mut count = 0;
    let mut cur: Option<(RawSample, u64)> = None;
    let mut long_name: Option<String> = None;
    let mut pax_name: Option<String> = None;
    let mut h = [0u8; BLOCK];
    loop {
        let at = src.offset;
        if !src.fill(&mut h).map_err(io)? {
            return Err(trunc(format!("{at} bytes, no end-of-archive marker")));
        }
        if h.iter().all(|&b| b == 0) {
            break;
        }
        if !checksum_ok(&h) {
            return Err(trunc(format!(
                "not a tar stream: the block at byte {at} is not a tar header (it starts {})",
                shown(&h)
            )));
        }
        let size = number(&h[124..136]).ok_or_else(|| {
            trunc(format!(
                "the header at byte {at} has an unreadable size {}",
                shown(&h[124..136])
            ))
        })?;
        let kind = h[156];
        let cap = |limit: u64, what: &str| {
            if size > limit {
                Err(LoaderError::TooLarge(
                    name.into(),
                    format!("{what} at byte {at} claims {size} bytes (limit {limit})"),
                ))
            } else {
                Ok(())
            }
        };
        match kind {
            b'L' => {
                cap(MAX_LONG_NAME, "a GNU long name")?;
                long_name = Some(text(&src.data(size).map_err(io)?));
                continue;
            }
            b'x' => {
                cap(MAX_PAX, "a pax header")?;
                pax_name = pax_path(&src.data(size).map_err(io)?);
                continue;
            }
            b'0' | 0 | b'7' => {}
            _ => {
                // Directories, links, global pax headers, GNU long link names: no sample data.
                src.skip(size).map_err(io)?;
                long_name = None;
                pax_name = None;
                continue;
            }
        }
        let path = match (pax_name.take(), long_name.take()) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                let base = text(&h[0..100]);
                let ustar = &h[257..263] == b"ustar\0";
                let prefix = if ustar {
                    text(&h[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    base
                } else {
                    format!("{prefix}/{base}")
                }
            }
        };
        let base = path.rsplit('/').next().unwrap_or(&path);
        let Some(dot) = base.find('.').filter(|&d| d > 0) else {
            // Not a `{key}.{field}` member: WebDataset ignores it, and so does this reader.
            src.skip(size).map_err(io)?;
            continue;
        };
        cap(
            limits.max_member_bytes,
            &format!("member `{}`", path.escape_debug()),
        )?;
        let key = format!("{}{}", &path[..path.len() - base.len()], &base[..dot]);
        let field = base[dot + 1..].to_lowercase();
        let same = cur.as_ref().is_some_and(|(s, _)| s.key == key);
        if same {
            let (s, bytes) = cur.as_mut().expect("checked");
            if *bytes + size > limits.max_sample_bytes || s.fields.len() >= MAX_FIELDS {
                return Err(LoaderError::TooLarge(
                    name.into(),
                    format!(
                        "sample `{}` grows past {} bytes or {MAX_FIELDS} fields",
                        key.escape_debug(),
                        limits.max_sample_bytes
                    ),
                ));
            }
            let buf = src.data(size).map_err(io)?;
            *bytes += size;
            if s.fields.insert(field.clone(), buf).is_some() {
                return Err(LoaderError::Sample(
                    name.into(),
                    key,
                    format!("duplicate field `{}`", field.escape_debug()),
                ));
            }
        } else {
            // A server that announced its count cannot send more samples than that.
            if let Some(n) = expected.filter(|&n| count + usize::from(cur.is_some()) >= n) {
                return Err(trunc(format!(
                    "more samples than the {n} the server announced (sample `{}` at byte {at})",
                    key.escape_debug()
                )));
            }
            let buf = src.data(size).map_err(io)?;
            if let Some((done, _)) = cur.take() {
                if !emit(count, done) {
                    return Ok(count);
                }
                count += 1;
            }
            cur = Some((
                RawSample {
                    key,
                    fields: BTreeMap::from([(field, buf)]),
                },
                size,
            ));
        }
    }
    // The end: a second zero block, then at most some zero padding.
    let at = src.offset;
    if !src.fill(&mut h).map_err(io)? || h.iter().any(|&b| b != 0) {
        return Err(trunc(format!(
            "{} bytes, no end-of-archive marker (one zero block at byte {at}, not two)",
            src.offset
        )));
    }
    let mut trailer = 0u64;
    while src.fill(&mut h).map_err(io)? {
        trailer += BLOCK as u64;
        if h.iter().any(|&b| b != 0) || trailer > MAX_TRAILER {
            return Err(trunc(format!(
                "data after the end-of-archive marker at byte {}",
                src.offset - BLOCK as u64
            )));
        }
    }
    let total = count + usize::from(cur.is_some());
    if let Some(n) = expected {
        if total != n {
            return Err(trunc(format!("{total} samples, the server announced {n}")));
        }
    }
    if let Some((done, _)) = cur {
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
    read_samples(name, data, expected, ReadLimits::default(), |_, s| {
        out.push(s);
        true
    })?;
    Ok(out)
}
