//! WebDataset tar encoding: one sample = adjacent ustar members `{key}.{field}`, written as one
//! chunk so the stream can be flushed per sample.

use bytes::Bytes;

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

#[cfg(test)]
mod tests {
    use super::*;

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
