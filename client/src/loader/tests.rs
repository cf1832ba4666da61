//! Loader unit tests.

use super::*;
use std::collections::BTreeMap;

#[test]
fn brace_expansion() {
    assert_eq!(
        expand("http://h:1/v1/shards/train-{000008..000011}.tar?seed=1&sigma=0.2").unwrap(),
        vec![
            "http://h:1/v1/shards/train-000008.tar?seed=1&sigma=0.2",
            "http://h:1/v1/shards/train-000009.tar?seed=1&sigma=0.2",
            "http://h:1/v1/shards/train-000010.tar?seed=1&sigma=0.2",
            "http://h:1/v1/shards/train-000011.tar?seed=1&sigma=0.2",
        ]
    );
    assert_eq!(
        expand("a-{x,y}-{1..2}.tar").unwrap(),
        vec!["a-x-1.tar", "a-x-2.tar", "a-y-1.tar", "a-y-2.tar"]
    );
    assert_eq!(expand("plain.tar").unwrap(), vec!["plain.tar"]);
    assert!(expand("a-{1..").is_err());
    assert!(expand("a-{5..1}.tar").is_err());
    assert!(expand("a-{x..1}.tar").is_err());
    assert!(expand("a-1}.tar").is_err());
}

fn shard(n: usize, end: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        for (f, d) in [("png", b"x".as_slice()), ("cls", b"3".as_slice())] {
            let mut h = tar::Header::new_ustar();
            h.set_size(d.len() as u64);
            h.set_mode(0o444);
            h.set_cksum();
            b.append_data(&mut h, format!("{i:06}.{f}"), d).unwrap();
        }
    }
    if end {
        b.into_inner().unwrap()
    } else {
        let mut v = b.get_ref().clone();
        v.truncate(v.len());
        v
    }
}

fn png_1x1(v: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 1, 1);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(&[v]).unwrap();
    out
}

#[test]
fn npy_views_decode_to_unit_range() {
    let bytes = genrep_wire::npy::write_f32(&[1, 1, 2], &[-1.0, 1.0]);
    let (px, c, h, w) = decode_image("anchor.npy", &bytes).unwrap();
    assert_eq!((px, c, h, w), (vec![0.0, 1.0], 1, 1, 2));
    let flat = genrep_wire::npy::write_f32(&[2], &[0.0, 0.0]);
    assert!(decode_image("anchor.npy", &flat)
        .unwrap_err()
        .contains("[C, H, W]"));
}

#[test]
fn views_come_from_the_data_and_more_is_an_error() {
    let genrep = RawSample {
        key: "000000000007".into(),
        fields: BTreeMap::from([
            ("anchor.png".to_string(), png_1x1(10)),
            ("pos0.png".to_string(), png_1x1(20)),
            ("cls".to_string(), b"3".to_vec()),
        ]),
    };
    assert_eq!(views_in(&genrep), 2);
    let v = sample_views(&genrep, 2).unwrap();
    assert_eq!((v[0].0[0], v[1].0[0]), (10.0 / 255.0, 20.0 / 255.0));
    assert_eq!(sample_views(&genrep, 1).unwrap().len(), 1);
    let e = sample_views(&genrep, 3).unwrap_err();
    assert!(
        e.contains("request views=2") && e.contains("--views 2"),
        "{e}"
    );
    let real = RawSample {
        key: "x".into(),
        fields: BTreeMap::from([("png".to_string(), png_1x1(5))]),
    };
    assert_eq!(views_in(&real), 2);
    assert_eq!(sample_views(&real, 3).unwrap().len(), 3);
}

#[test]
fn truncated_shards_are_errors() {
    let good = shard(3, true);
    assert_eq!(parse_shard("s", &good, Some(3)).unwrap().len(), 3);
    assert!(parse_shard("s", &good, Some(4)).is_err());
    let no_end = shard(3, false);
    assert!(parse_shard("s", &no_end, None).is_err());
    assert!(parse_shard("s", &good[..good.len() - 1536], None).is_err());
}

#[test]
fn rank_split_is_disjoint_and_equal() {
    let all: Vec<String> = (0..7).map(|i| format!("s{i}.tar")).collect();
    let cfg = |rank| LoaderConfig {
        rank,
        world_size: 3,
        shuffle: false,
        ..Default::default()
    };
    let r: Vec<Vec<String>> = (0..3)
        .map(|k| {
            Loader::new(all.clone(), cfg(k), Cursor::default())
                .unwrap()
                .shards()
                .to_vec()
        })
        .collect();
    assert!(r.iter().all(|s| s.len() == 2));
    let mut flat: Vec<_> = r.concat();
    flat.sort();
    flat.dedup();
    assert_eq!(flat.len(), 6);
    assert!(Loader::new(all[..2].to_vec(), cfg(0), Cursor::default()).is_err());
}

/// Shard `sh` of 4 samples keyed `s{sh}i{i}`.
fn keyed_shard(sh: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..4 {
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, format!("s{sh}i{i}.cls"), b"1".as_slice())
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// Three such shards on disk.
fn keyed_shards(dir: &std::path::Path) -> Vec<String> {
    (0..3)
        .map(|sh| {
            let p = dir.join(format!("d-{sh:06}.tar"));
            std::fs::write(&p, keyed_shard(sh)).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect()
}

fn window_cfg() -> LoaderConfig {
    LoaderConfig {
        shuffle: false,
        shuffle_buffer: 6,
        seed: 5,
        ..Default::default()
    }
}

fn keys(l: &mut Loader, n: usize) -> Vec<String> {
    (0..n).map(|_| l.next_sample().unwrap().key).collect()
}

#[test]
fn shuffle_buffer_resumes_at_a_window_boundary_and_after_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shards = keyed_shards(dir.path());
    let reference = keys(
        &mut Loader::new(shards.clone(), window_cfg(), Cursor::default()).unwrap(),
        24,
    );
    // A checkpoint taken right after a window's last sample.
    let mut a = Loader::new(shards.clone(), window_cfg(), Cursor::default()).unwrap();
    assert_eq!(keys(&mut a, 6), reference[..6]);
    let c = a.cursor();
    let mut b = Loader::new(shards.clone(), window_cfg(), c).unwrap();
    assert_eq!(keys(&mut b, 12), reference[6..18], "resumed from {c:?}");
    // A shard that fails while the next window is read, then is readable again: the partial
    // window is kept, nothing is lost or repeated, and the cursor stays a valid resume point.
    let good = std::fs::read(&shards[1]).unwrap();
    std::fs::write(&shards[1], &good[..good.len() - 1024]).unwrap();
    let mut l = Loader::new(shards.clone(), window_cfg(), Cursor::default()).unwrap();
    // The first window holds shard 0 and the start of shard 1, whose end is cut: the second
    // window's read fails.
    assert_eq!(keys(&mut l, 6), reference[..6]);
    assert!(l.next_sample().is_err());
    let mid = l.cursor();
    std::fs::write(&shards[1], &good).unwrap();
    assert_eq!(keys(&mut l, 18), reference[6..24]);
    let mut r = Loader::new(shards.clone(), window_cfg(), mid).unwrap();
    assert_eq!(keys(&mut r, 18), reference[6..24], "resumed from {mid:?}");
    // A cursor past this source's shards is refused, not a panic.
    let far = Cursor {
        shard: 7,
        ..Cursor::default()
    };
    assert!(matches!(
        Loader::new(shards, window_cfg(), far),
        Err(LoaderError::BadCursor(7, 3))
    ));
}

#[test]
fn shuffle_buffer_permutes_each_window_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let shards = keyed_shards(dir.path());
    let cfg = LoaderConfig {
        shuffle: false,
        shuffle_buffer: 6,
        seed: 5,
        ..Default::default()
    };
    let keys = |l: &mut Loader, n: usize| -> Vec<String> {
        (0..n).map(|_| l.next_sample().unwrap().key).collect()
    };
    let mut l = Loader::new(shards.clone(), cfg.clone(), Cursor::default()).unwrap();
    let first = keys(&mut l, 24);
    let in_order: Vec<String> = (0..3)
        .flat_map(|sh| (0..4).map(move |i| format!("s{sh}i{i}")))
        .collect();
    // Each epoch (two windows of 6) is a permutation of the 12 samples, not shard order.
    for epoch in first.chunks(12) {
        let mut sorted = epoch.to_vec();
        sorted.sort();
        assert_eq!(sorted, in_order);
        assert_ne!(epoch, in_order.as_slice());
    }
    // Resume from the cursor taken mid-window: the continuation is identical.
    let mut a = Loader::new(shards.clone(), cfg.clone(), Cursor::default()).unwrap();
    let head = keys(&mut a, 8);
    assert_eq!(head, first[..8]);
    let c = a.cursor();
    assert_eq!(c.in_window, 2, "{c:?}");
    let mut b = Loader::new(shards, cfg, c).unwrap();
    assert_eq!(keys(&mut b, 16), first[8..24]);
}

/// A ustar header block claiming `size` bytes (GNU base-256 for any size), of type `kind`.
fn raw_header(name: &str, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[124] = 0x80;
    h[128..136].copy_from_slice(&size.to_be_bytes());
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn hostile_headers_are_errors_not_panics() {
    // A skipped entry type (a directory) whose base-256 size rounds past u64.
    let mut t = raw_header("d/", u64::MAX - 3, b'5').to_vec();
    t.extend_from_slice(&[0u8; 1024]);
    let e = parse_shard("s", &t, None).unwrap_err().to_string();
    assert!(e.contains("member size"), "{e}");
    // A shard with more samples than announced fails at the first extra one.
    let good = shard(3, true);
    let e = parse_shard("s", &good, Some(2)).unwrap_err().to_string();
    assert!(e.contains("more samples than the 2"), "{e}");
    // A member without a `.field` is skipped whatever its size claims (nothing is read into
    // memory); the stream then ends inside it.
    let mut t = raw_header("README", 1 << 40, b'0').to_vec();
    t.extend_from_slice(&[7u8; 4096]);
    let e = parse_shard("s", &t, None).unwrap_err().to_string();
    assert!(e.contains("stream ended inside"), "{e}");
}

/// The minimum rate counts only time spent waiting for the server: a reader that pauses
/// between reads (a prefetching shard waiting for the trainer) is not the server being slow.
#[test]
fn pauses_of_the_reader_are_not_the_servers_slowness() {
    let data = shard(40, true);
    let reader = std::io::Cursor::new(data);
    let policy = FetchPolicy {
        rate_window: std::time::Duration::from_millis(50),
        limits: FetchLimits {
            min_bytes_per_s: 1 << 30,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut n = 0;
    super::fetch::read_rate_limited("s", reader, Some(40), &policy, |_, _| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, 40);
}
