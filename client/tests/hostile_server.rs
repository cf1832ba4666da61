//! A hostile (or tampered) server against the client's loader, on loopback: each answer is
//! crafted to make a naive reader allocate gigabytes, inflate a bomb, decode a huge image or wait
//! forever. Every one must end in a clear error within seconds, with the test process's peak
//! memory small.

use genrep_client::loader::{fetch, sample_views, FetchLimits, FetchPolicy, LoaderError};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Serves `respond` to every connection on a loopback port; returns the base URL.
fn serve(respond: impl Fn(&mut std::net::TcpStream) + Send + Sync + 'static) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let respond = std::sync::Arc::new(respond);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let respond = respond.clone();
            std::thread::spawn(move || {
                // The request head.
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                respond(&mut s);
            });
        }
    });
    format!("http://{addr}")
}

/// A ustar header block for `name` claiming `size` bytes, of entry type `kind`.
fn header(name: &str, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000444\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 1 << 33 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        // GNU base-256, as tar writes sizes of 8 GiB and more.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn ok_head(s: &mut std::net::TcpStream, extra: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n{extra}Connection: close\r\n\r\n"
    );
}

/// Sends `header` and then zeros for up to 2 s (as if the claimed member were coming).
fn claim(s: &mut std::net::TcpStream, h: [u8; 512]) {
    ok_head(s, "");
    let _ = s.write_all(&h);
    let zeros = vec![0u8; 1 << 20];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if s.write_all(&zeros).is_err() {
            return;
        }
    }
}

fn policy() -> FetchPolicy {
    FetchPolicy {
        attempts: 2,
        backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        api_key: None,
        ..Default::default()
    }
}

/// Peak resident memory of this process (VmHWM), bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn printable(e: &str) -> bool {
    e.chars()
        .all(|c| c == '\n' || (' '..='~').contains(&c) || c as u32 > 0x7f && !c.is_control())
}

#[test]
fn bombs_from_a_hostile_server_are_bounded_errors() {
    // A member claiming 64 GiB.
    let big = serve(|s| claim(s, header("000000000000.anchor.png", 64 << 30, b'0')));
    // A GNU long name claiming 64 GiB (the tar crate reads those whole).
    let long = serve(|s| claim(s, header("././@LongLink", 64 << 30, b'L')));
    // A gzip body of zeros, compressed ~1000:1, sent although nothing asked for it.
    let gz = serve(|s| {
        ok_head(s, "Content-Encoding: gzip\r\n");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            e.write_all(&zeros).unwrap();
        }
        let _ = s.write_all(&e.finish().unwrap());
    });
    // Not tar at all: binary garbage.
    let junk = serve(|s| {
        ok_head(s, "");
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 37 % 251) as u8 | 0x80).collect();
        let _ = s.write_all(&garbage);
    });
    let t0 = Instant::now();
    for (url, kind, says) in [
        (&big, "member", "claims 68719476736 bytes"),
        (&long, "long name", "GNU long name"),
        (&gz, "gzip", "gzip"),
        (&junk, "not tar", "not a tar stream"),
    ] {
        let t = Instant::now();
        let e = fetch(&format!("{url}/s.tar"), &policy()).unwrap_err();
        let msg = e.to_string();
        println!("{kind}: {:.2} s: {msg}", t.elapsed().as_secs_f64());
        assert!(msg.contains(says), "{kind}: {msg}");
        assert!(printable(&msg), "{kind}: unprintable error {msg:?}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{kind}: {:?}",
            t.elapsed()
        );
        if kind == "member" || kind == "long name" {
            assert!(matches!(e, LoaderError::TooLarge(..)), "{kind}: {e:?}");
        }
    }
    // A 700-byte JPEG declaring 65000×65000: refused from its header.
    let mut jpg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpg, 90)
        .encode(&[128u8; 16 * 16 * 3], 16, 16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    let sample = genrep_client::loader::RawSample {
        key: "000000000000".into(),
        fields: [("anchor.jpg".to_string(), jpg.clone())].into(),
    };
    let t = Instant::now();
    let e = sample_views(&sample, 1).unwrap_err();
    println!("jpeg bomb ({} bytes): {e}", jpg.len());
    assert!(e.contains("65000x65000") && e.contains("limit"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    let peak = peak_rss();
    println!(
        "four bombs in {:.1} s, peak RSS {} MB",
        t0.elapsed().as_secs_f64(),
        peak >> 20
    );
    assert!(peak < 512 << 20, "peak RSS {} MB", peak >> 20);
}

/// A server that trickles one byte every 200 ms keeps every read under the read timeout; the
/// minimum transfer rate ends it, and the retries end in an error naming the rate.
#[test]
fn a_trickling_server_is_abandoned_at_the_minimum_rate() {
    let url = serve(|s| {
        ok_head(s, "");
        for _ in 0..200 {
            if s.write_all(&[0u8]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let p = FetchPolicy {
        rate_window: Duration::from_secs(2),
        limits: FetchLimits {
            min_bytes_per_s: 1024,
            ..Default::default()
        },
        ..policy()
    };
    let t = Instant::now();
    let e = fetch(&format!("{url}/s.tar"), &p).unwrap_err().to_string();
    println!("trickle: {:.1} s: {e}", t.elapsed().as_secs_f64());
    assert!(e.contains("below the minimum of 1024 bytes/s"), "{e}");
    assert!(e.contains("2 attempts"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}
