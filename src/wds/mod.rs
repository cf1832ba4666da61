//! WebDataset tar encoding: one sample = adjacent ustar members `{key}.{field}`, written as one
//! chunk so the stream can be flushed per sample.

use crate::format::image::Image8;
use crate::format::npy;
use crate::generator::GeneratorSpec;
use crate::params::SampleRequest;
use crate::views::SampleLatents;
use bytes::Bytes;
use genrep_wire::{anchor_field, pos_field, sample_key, ImageFormat};

/// The tar end-of-archive marker: two zero blocks.
pub const TAR_END: [u8; 1024] = [0u8; 1024];

/// Encodes one sample's members as tar bytes (plain ustar, mode 0444, mtime 0, uid/gid 0), so the
/// same sample always gives the same bytes.
pub fn sample_tar(key: &str, members: &[(String, Bytes)]) -> Bytes {
    let total: usize = members
        .iter()
        .map(|(_, d)| 512 + d.len().div_ceil(512) * 512)
        .sum();
    let mut out = Vec::with_capacity(total);
    for (field, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("{key}.{field}"))
            .expect("member names are short ASCII");
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    Bytes::from(out)
}

/// A labelled image sample: `{key}.png` and, when given, `{key}.cls` (the layout of
/// `genrep real-data` shards and of `POST /v1/generate` with `format=tar`).
pub fn image_sample(key: &str, png: Vec<u8>, cls: Option<u32>) -> Bytes {
    let mut members = vec![(genrep_wire::IMAGE_FIELD.to_string(), Bytes::from(png))];
    if let Some(c) = cls {
        members.push((
            genrep_wire::CLS_FIELD.to_string(),
            Bytes::from(c.to_string()),
        ));
    }
    sample_tar(key, &members)
}

/// Writes a tar made of `chunks` (one whole sample each, then [`TAR_END`]) to `path` through a
/// buffered temporary file that gets the final name only once the shard is complete: the last
/// chunk is the end marker and, when `samples` is given, that many samples came before it. On
/// any failure (a write error, an error from the source, a source that stops early) the
/// temporary file is removed, so a file with a shard's name is always a whole shard. Returns the
/// number of bytes written.
pub fn write_shard<E>(
    path: &std::path::Path,
    chunks: impl IntoIterator<Item = Result<Bytes, E>>,
    samples: Option<u64>,
) -> Result<u64, WriteShardError<E>> {
    let tmp = path.with_extension("tar.partial");
    let res = write_checked(&tmp, chunks, samples).and_then(|n| {
        std::fs::rename(&tmp, path).map_err(|e| WriteShardError::Io(path.to_path_buf(), e))?;
        Ok(n)
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn write_checked<E>(
    tmp: &std::path::Path,
    chunks: impl IntoIterator<Item = Result<Bytes, E>>,
    samples: Option<u64>,
) -> Result<u64, WriteShardError<E>> {
    use std::io::Write;
    let io = |e: std::io::Error| WriteShardError::Io(tmp.to_path_buf(), e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
    let (mut n, mut count, mut ended) = (0u64, 0u64, false);
    for c in chunks {
        let c = c.map_err(WriteShardError::Source)?;
        if ended {
            return Err(WriteShardError::Incomplete(
                "data after the end-of-archive marker".into(),
            ));
        }
        ended = c[..] == TAR_END[..];
        count += u64::from(!ended);
        w.write_all(&c).map_err(io)?;
        n += c.len() as u64;
    }
    if !ended {
        return Err(WriteShardError::Incomplete(format!(
            "the samples stopped after {count} without an end-of-archive marker"
        )));
    }
    if let Some(want) = samples.filter(|&s| s != count) {
        return Err(WriteShardError::Incomplete(format!(
            "{count} samples instead of {want}"
        )));
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(n)
}

/// Why [`write_shard`] failed: the file, or the source of the samples.
#[derive(Debug, thiserror::Error)]
pub enum WriteShardError<E> {
    #[error("cannot write {0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Source(E),
    #[error("incomplete shard: {0}")]
    Incomplete(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_complete_shard_gets_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-000000.tar");
        let sample = || {
            Ok::<_, String>(sample_tar(
                "000000000000",
                &[("json".into(), Bytes::from_static(b"{}"))],
            ))
        };
        let end = || Ok(Bytes::from_static(&TAR_END));
        let cases: Vec<(Vec<Result<Bytes, String>>, &str)> = vec![
            (vec![sample(), sample()], "without an end-of-archive marker"),
            (vec![sample(), Err("boom".into())], "boom"),
            (vec![sample(), end()], "1 samples instead of 2"),
            (
                vec![sample(), end(), sample()],
                "after the end-of-archive marker",
            ),
        ];
        for (chunks, why) in cases {
            let e = write_shard(&path, chunks, Some(2)).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert!(left.is_empty(), "{why}: {left:?}");
        }
        write_shard(&path, vec![sample(), sample(), end()], Some(2)).unwrap();
        assert!(path.exists());
    }

    #[test]
    fn readable_by_the_tar_crate() {
        let mut buf = sample_tar(
            "000000000001",
            &[
                ("anchor.png".into(), Bytes::from_static(b"abc")),
                ("json".into(), Bytes::from_static(b"{}")),
            ],
        )
        .to_vec();
        buf.extend_from_slice(&TAR_END);
        let mut ar = tar::Archive::new(buf.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["000000000001.anchor.png", "000000000001.json"]);
    }
}

/// Encodes one sample (its `1 + K` images, `[n, C, H, W]` flattened) as tar bytes.
pub fn encode_sample(
    spec: &GeneratorSpec,
    req: &SampleRequest,
    l: &SampleLatents,
    images: &[f32],
) -> Bytes {
    let (c, h, w) = (spec.channels, spec.height, spec.width);
    let per = spec.image_len();
    let enc = |x: &[f32]| -> Bytes {
        match req.format {
            ImageFormat::Png => Image8::from_chw(x, c, h, w).to_png().into(),
            ImageFormat::Jpg => Image8::from_chw(x, c, h, w).to_jpeg(req.quality).into(),
            ImageFormat::Npy => npy::write_f32(&[c, h, w], x).into(),
        }
    };
    let mut members = Vec::with_capacity(l.z_pos.len() + 3);
    members.push((anchor_field(req.format), enc(&images[..per])));
    for k in 0..l.z_pos.len() {
        members.push((
            pos_field(k, req.format),
            enc(&images[(k + 1) * per..(k + 2) * per]),
        ));
    }
    if let Some(cls) = l.class {
        members.push((
            genrep_wire::CLS_FIELD.to_string(),
            Bytes::from(cls.to_string()),
        ));
    }
    let meta = serde_json::to_vec(&req.meta(spec, l)).expect("metadata serialises");
    members.push((genrep_wire::JSON_FIELD.to_string(), meta.into()));
    sample_tar(&sample_key(l.index), &members)
}
