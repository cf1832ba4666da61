//! The loader against misbehaving HTTP servers: a shard cut mid-body (retried, every sample
//! delivered exactly once, the cursor exact, also when the retries run out), and an endless stream
//! (samples are delivered as they arrive).

use genrep_client::loader::{Cursor, FetchPolicy, Loader, LoaderConfig};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tar shard of `n` samples keyed `{shard}-{i}`, each with a `cls` member.
fn shard_bytes(shard: usize, n: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..n {
        // Members of a few KB, so that a cut lands inside the body, not in the headers.
        let data = vec![b'0' + (i % 10) as u8; 3000];
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, format!("{shard}-{i:03}.cls"), data.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// Serves `/s{n}.tar` (shard n, `per_shard` samples). Requests for shard `flaky` get only the
/// first 40 % of the body and a closed connection while `cuts` is positive (each cut decrements
/// it). `/stream` sends 3 samples and then keeps the connection open without an end.
fn serve(per_shard: usize, flaky: usize, cuts: Arc<AtomicUsize>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let cuts = cuts.clone();
            std::thread::spawn(move || handle(&mut c, per_shard, flaky, &cuts));
        }
    });
    format!("http://{addr}")
}

fn handle(c: &mut TcpStream, per_shard: usize, flaky: usize, cuts: &AtomicUsize) {
    let mut line = String::new();
    let mut r = BufReader::new(c.try_clone().unwrap());
    r.read_line(&mut line).unwrap();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    if path == "/stream" {
        let mut body = shard_bytes(9, 3);
        body.truncate(body.len() - 1024); // no end marker: the stream goes on
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\n\r\n"
        );
        let _ = c.write_all(&body);
        let _ = c.flush();
        std::thread::sleep(Duration::from_secs(20));
        return;
    }
    let n: usize = path
        .trim_start_matches("/s")
        .trim_end_matches(".tar")
        .parse()
        .unwrap();
    let body = shard_bytes(n, per_shard);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-genrep-samples: {per_shard}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(head.as_bytes());
    let cut = n == flaky
        && cuts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok();
    if cut {
        let _ = c.write_all(&body[..body.len() * 2 / 5]);
        let _ = c.flush();
        let _ = c.shutdown(std::net::Shutdown::Both);
    } else {
        let _ = c.write_all(&body);
    }
}

fn loader(base: &str, shards: usize, attempts: usize, cursor: Cursor) -> Loader {
    let urls = (0..shards).map(|n| format!("{base}/s{n}.tar")).collect();
    let cfg = LoaderConfig {
        shuffle: false,
        prefetch: 2,
        policy: FetchPolicy {
            attempts,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(10),
            api_key: None,
            ..Default::default()
        },
        ..Default::default()
    };
    Loader::new(urls, cfg, cursor).unwrap()
}

fn expected_keys(shards: usize, per: usize) -> Vec<String> {
    (0..shards)
        .flat_map(|s| (0..per).map(move |i| format!("{s}-{i:03}")))
        .collect()
}

#[test]
fn a_cut_shard_is_retried_and_delivered_exactly_once() {
    let base = serve(10, 1, Arc::new(AtomicUsize::new(1)));
    let mut l = loader(&base, 3, 5, Cursor::default());
    let got: Vec<String> = (0..30).map(|_| l.next_sample().unwrap().key).collect();
    assert_eq!(got, expected_keys(3, 10));
    // Every sample of the last shard is delivered; its end is read with the next call.
    let c = l.cursor();
    assert_eq!((c.epoch, c.shard, c.sample), (0, 2, 10));
}

#[test]
fn when_retries_run_out_the_next_call_resumes_at_the_failed_sample() {
    // Shard 1 is cut twice and the loader tries once per call: the first call that reaches the
    // cut fails, and so does the next; the third succeeds. No sample is lost or repeated.
    let base = serve(10, 1, Arc::new(AtomicUsize::new(2)));
    let mut l = loader(&base, 3, 1, Cursor::default());
    let mut got = Vec::new();
    let mut failures = 0;
    while got.len() < 30 {
        match l.next_sample() {
            Ok(s) => got.push(s.key),
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains("s1.tar"), "{e}");
                // The cursor points at shard 1 and counts exactly what was delivered of it.
                let c = l.cursor();
                assert_eq!(c.shard, 1);
                assert_eq!(c.sample, got.len() - 10);
                assert!(failures <= 2);
            }
        }
    }
    assert_eq!(failures, 2);
    assert_eq!(got, expected_keys(3, 10));
}

#[test]
fn an_endless_stream_yields_samples_as_they_arrive() {
    let base = serve(10, usize::MAX, Arc::new(AtomicUsize::new(0)));
    let cfg = LoaderConfig {
        shuffle: false,
        ..Default::default()
    };
    let mut l = Loader::new(vec![format!("{base}/stream")], cfg, Cursor::default()).unwrap();
    let t = Instant::now();
    // The third sample is held back until its end is known, the first two are not.
    assert_eq!(l.next_sample().unwrap().key, "9-000");
    assert_eq!(l.next_sample().unwrap().key, "9-001");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}
