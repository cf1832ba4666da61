//! Hardening round 2, end to end against the real binary on loopback: connections that never
//! send a request, HTTP/2 prior knowledge, a grid hog against another consumer's shard, a client
//! still sending a refused body, the real `Retry-After`, failed-key limits, limits out of range,
//! and models that cannot serve refusing to start.

mod common;

use common::{closed_within, host, metric, Server};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    common::client_from(ip, None)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The HTTP/2 client preface and a SETTINGS frame announcing a zero initial window.
fn h2_preface_zero_window() -> Vec<u8> {
    let mut b = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: length 6, type 4, flags 0, stream 0; SETTINGS_INITIAL_WINDOW_SIZE (4) = 0.
    b.extend_from_slice(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
    b
}

/// 20 sockets that send nothing and 10 that send only the HTTP/2 preface, against a 1 s header
/// timeout and 40 connections: all are closed after the timeout (before, the protocol sniff read
/// without a deadline and held them forever), and a normal client is served meanwhile and after.
#[test]
fn silent_sockets_and_bare_h2_prefaces_are_closed_after_the_header_timeout() {
    let s = Server::start(&["--header-read-timeout-s", "1", "--max-connections", "40"]);
    let addr = host(&s);
    let t = Instant::now();
    let mut socks: Vec<(std::net::TcpStream, &str)> = (0..20)
        .map(|_| (std::net::TcpStream::connect(&addr).unwrap(), "silent"))
        .collect();
    for _ in 0..10 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        socks.push((c, "h2 preface"));
    }
    assert_eq!(
        common::raw::blocking_get(&s.url("/health")).unwrap(),
        200,
        "a normal client is served while 30 sockets idle"
    );
    for (sock, what) in &mut socks {
        assert!(
            closed_within(sock, Duration::from_secs(5)),
            "a {what} socket was held open"
        );
    }
    let closed = t.elapsed();
    println!(
        "20 silent + 10 h2-preface sockets, header timeout 1 s: all closed after {:.2} s",
        closed.as_secs_f64()
    );
    assert!(closed >= Duration::from_millis(900), "{closed:?}");
    assert!(closed < Duration::from_secs(4), "{closed:?}");
    // Every slot is free again: 40 connections can be opened and served.
    let again: Vec<u16> = (0..40)
        .map(|_| common::raw::blocking_get(&s.url("/health")).unwrap_or(0))
        .collect();
    assert!(again.iter().all(|&c| c == 200), "{again:?}");
}

/// h2c with prior knowledge, as the attack used it: 4 connections whose preface announces a
/// zero flow-control window. The server speaks HTTP/1.1 only, so none becomes a stream: each is
/// refused at once, `genrep_active_streams` stays 0 and other clients get their shards.
#[test]
fn h2c_prior_knowledge_with_a_zero_window_gets_no_stream() {
    let s = Server::start(&["--idle-timeout-s", "3", "--max-concurrent-streams", "4"]);
    let addr = host(&s);
    let mut socks = Vec::new();
    for _ in 0..4 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(&h2_preface_zero_window()).unwrap();
        socks.push(c);
    }
    for c in &mut socks {
        let t = Instant::now();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(!text.contains(" 200 "), "an h2 preface was served: {text}");
    }
    rt().block_on(async {
        let m = s.metrics().await;
        assert_eq!(metric(&m, "genrep_active_streams"), 0.0);
        for _ in 0..4 {
            let r = reqwest::get(s.url("/v1/shards/train-000000.tar?shard_size=5"))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    });
}

/// One consumer keeps 16 of the largest grids in flight (`rows=64&views=16`, 1024 jobs: the
/// whole queue). Another consumer's 20-sample shard must still finish in seconds (before it
/// never finished: the grids filled the queue and the stream waited). The grid hog gets 429
/// beyond its share of the queue, with grids still answered.
#[test]
fn a_grid_hog_does_not_hold_back_another_consumers_shard() {
    let s = Server::start(&[]);
    rt().block_on(async {
        let hog = client_from([127, 0, 0, 2]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let codes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (hog, stop, codes) = (hog.clone(), stop.clone(), codes.clone());
            let url = s.url(&format!("/v1/grid.png?rows=64&views=16&seed={i}"));
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = hog.get(&url).send().await.unwrap();
                    let c = r.status().as_u16();
                    r.bytes().await.unwrap();
                    codes.lock().unwrap().push(c);
                    if c == 429 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
        // Let the grids fill the queue.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let depth = metric(&s.metrics().await, "genrep_queue_depth");
        let other = client_from([127, 0, 0, 3]);
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            other
                .get(s.url("/v1/shards/v-000000.tar?shard_size=20&views=1"))
                .send(),
        )
        .await
        .expect("the shard never started")
        .unwrap();
        assert_eq!(r.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(20), r.bytes())
            .await
            .expect("the shard never finished")
            .unwrap();
        let shard_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let single = other.get(s.url("/v1/samples/3.png")).send().await.unwrap();
        assert_eq!(single.status(), 200);
        let single_s = t.elapsed().as_secs_f64();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let codes = codes.lock().unwrap().clone();
        let ok = codes.iter().filter(|&&c| c == 200).count();
        let refused = codes.iter().filter(|&&c| c == 429).count();
        println!(
            "grid hog (16 x rows=64&views=16, queue depth {depth}): another consumer's 20-sample \
             shard in {shard_s:.2} s, a single sample in {single_s:.2} s; hog grids {ok} x 200, {refused} x 429"
        );
        assert!(body.ends_with(&[0u8; 1024]), "incomplete shard");
        assert!(shard_s < 10.0, "shard took {shard_s:.1} s");
        assert!(ok > 0, "{codes:?}");
        assert!(codes.iter().all(|&c| c == 200 || c == 429), "{codes:?}");
    });
}

/// A client that keeps sending a large `POST /v1/generate` body reads the 413 (the server reads
/// and discards for a while before closing), instead of a broken pipe or a reset.
#[test]
fn a_client_still_sending_a_refused_body_reads_its_413() {
    let s = Server::start(&[]);
    let addr = host(&s);
    for (what, head) in [
        (
            "declared",
            format!(
                "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                20 << 20
            ),
        ),
        (
            "chunked",
            "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
        ),
    ] {
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        sock.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b'['; 1 << 20];
        let mut write_error = None;
        for _ in 0..20 {
            let r = if what == "chunked" {
                sock.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|_| sock.write_all(&chunk))
                    .and_then(|_| sock.write_all(b"\r\n"))
            } else {
                sock.write_all(&chunk)
            };
            if let Err(e) = r {
                write_error = Some(e);
                break;
            }
        }
        if what == "chunked" && write_error.is_none() {
            let _ = sock.write_all(b"0\r\n\r\n");
        }
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let read = sock.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        println!(
            "{what} 20 MiB body: write error {write_error:?}, read {:?}, answer {:?}",
            read.as_ref().map_err(|e| e.kind()),
            text.lines().next()
        );
        assert!(write_error.is_none(), "{what}: the body could not be sent: {write_error:?}");
        assert!(text.starts_with("HTTP/1.1 413"), "{what}: {text:?}");
        assert!(text.contains("payload_too_large"), "{what}: {text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{what}: {text}");
    }
}

const KEY_A: &str = "slow-consumer-0123456789";

/// `Retry-After` is the real wait, rounded up (a client obeying it retries once, not ten
/// times), and wrong keys are rate-limited per peer while other peers are unaffected.
#[test]
fn retry_after_is_the_real_wait_and_failed_keys_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        format!(
            r#"{{"consumer": [{{"name": "slow", "key": "{KEY_A}", "max_requests_per_s": 0.1}}]}}"#
        ),
    )
    .unwrap();
    // Written with the default umask: readable by every user, which the server warns about.
    let s = Server::start(&["--api-keys", keys.to_str().unwrap()]);
    assert!(
        s.log.lock().unwrap().contains("readable by every user"),
        "no warning about a world-readable key file"
    );
    rt().block_on(async {
        let c = reqwest::Client::new();
        let get = |key: &str| {
            c.get(s.url("/v1/info"))
                .header("authorization", format!("Bearer {key}"))
                .send()
        };
        assert_eq!(get(KEY_A).await.unwrap().status(), 200);
        let r = get(KEY_A).await.unwrap();
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = r.text().await.unwrap();
        println!("0.1 requests/s: Retry-After {retry}, body {body}");
        assert!((9..=10).contains(&retry), "Retry-After {retry}: {body}");

        // Wrong keys from one peer: 10 answered 401, then 429 with the wait; another peer and
        // the limited peer's own later attempts are answered as the limit says.
        let bad = client_from([127, 0, 0, 5]);
        let mut codes = Vec::new();
        let mut wait = None;
        for i in 0..14 {
            let r = bad
                .get(s.url("/v1/info"))
                .header("authorization", format!("Bearer guess-{i:016}"))
                .send()
                .await
                .unwrap();
            codes.push(r.status().as_u16());
            if r.status() == 429 {
                wait = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
            }
        }
        println!("14 wrong keys from one peer: {codes:?}, Retry-After {wait:?}");
        assert_eq!(&codes[..10], &[401; 10], "{codes:?}");
        assert!(codes[10..].iter().all(|&c| c == 429), "{codes:?}");
        assert_eq!(wait.as_deref(), Some("1"));
        let other = client_from([127, 0, 0, 6])
            .get(s.url("/v1/info"))
            .header("authorization", "Bearer guess-other-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 401, "another peer is not limited");
    });
}

/// Limits that are zero, or so large that the structures behind them cannot count them, are
/// refused at startup with a message naming the flag (before: a panic, exit 101, or a 500 on
/// the first grid).
#[test]
fn limits_out_of_range_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"consumer": [{"name": "a", "key": "0123456789abcdef", "max_streams": 18446744073709551615}]}"#,
    )
    .unwrap();
    let keys = keys.to_str().unwrap().to_string();
    for (args, says) in [
        (
            vec!["--max-concurrent-streams", "3000000000000000000"],
            "--max-concurrent-streams",
        ),
        (vec!["--max-grid-rows", "0"], "--max-grid-rows"),
        (
            vec!["--max-generate-latents", "0"],
            "--max-generate-latents",
        ),
        (vec!["--max-batch-size", "100000000"], "--max-batch-size"),
        (
            vec!["--idle-timeout-s", "18446744073709551615"],
            "--idle-timeout-s",
        ),
        (vec!["--max-queue", "0"], "--max-queue"),
        (
            vec!["--api-keys", keys.as_str()],
            "max_streams must be in 1..=",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_genrep"))
            .args(["serve", "--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // A flag out of its range is a usage error (clap's exit status 2, naming the flag
        // and the range); a bad key file is a failure to start (1).
        let want = if says.starts_with("--") { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(want), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        if want == 2 {
            assert!(err.contains("is not in"), "{args:?}: {err}");
        }
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Runs `genrep serve` under an address-space limit (`ulimit -v`, KiB) and returns its exit
/// status and log; it must exit by itself within 60 s.
fn serve_limited(kib: u64, args: &[&str]) -> (std::process::ExitStatus, String) {
    let bin = env!("CARGO_BIN_EXE_genrep");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {kib} && exec \"$0\" serve --host 127.0.0.1 --port 0 \"$@\"",
        ))
        .arg(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut log = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            return (st, log);
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("serve under ulimit -v {kib} {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server whose largest answers cannot be allocated refuses to start, naming the limit to
/// lower; one whose full batch cannot run fails its warm-up before it ever listens (before: it
/// logged "listening" and aborted on the first full grid or during a warm-up at batch 1).
#[test]
fn a_server_that_cannot_serve_its_limits_refuses_to_start() {
    // A full grid of 4096 rows x 1025 views needs ~22 GiB.
    let (st, log) = serve_limited(3 << 20, &["--max-grid-rows", "4096", "--max-views", "1024"]);
    println!(
        "grid under 3 GiB: {st}: {}",
        log.lines().last().unwrap_or("")
    );
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(
        log.contains("a full grid") && log.contains("--max-grid-rows"),
        "{log}"
    );
    assert!(!log.contains("listening"), "{log}");
    // A forward pass of 65536 images does not fit in 2 GiB: the warm-up fails before listening.
    let (st, log) = serve_limited(2 << 20, &["--max-batch-size", "65536"]);
    println!(
        "batch 65536 under 2 GiB: {st}: {}",
        log.lines().last().unwrap_or("")
    );
    assert!(!st.success(), "{log}");
    assert!(
        log.contains("warming up the generator") && log.contains("batch=65536"),
        "{log}"
    );
    assert!(!log.contains("listening"), "{log}");
    assert!(
        log.contains("memory allocation") || log.contains("out of memory"),
        "{log}"
    );
    // The defaults fit easily in the same limit.
    let port = common::free_port().to_string();
    let bin = env!("CARGO_BIN_EXE_genrep");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" serve --host 127.0.0.1 --port \"$1\"")
        .arg(bin)
        .arg(&port)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/ready");
    let t = Instant::now();
    while common::raw::blocking_get(&url).unwrap_or(0) != 200 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the default server died"
        );
        assert!(t.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A BigGAN with 50 BN-statistics rows: at truncation 1.0 the row index rounds to 49.000…01,
/// which read past the last row; such a model never became ready. Now it warms up and serves.
#[test]
fn a_biggan_with_50_stats_rows_serves_truncation_one() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/biggan-tiny/config.json"
    ))
    .unwrap();
    let mut cfg: genrep::generator::BigGanConfig = serde_json::from_str(&text).unwrap();
    cfg.n_stats = 50;
    let g = genrep::generator::random_biggan(
        cfg,
        7,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    rt().block_on(async {
        let e = genrep::engine::Engine::start(
            Box::new(g),
            genrep::engine::EngineConfig {
                max_batch_size: 4,
                max_batch_wait: Duration::from_millis(1),
                max_queue: 16,
                encode_threads: 1,
            },
            Default::default(),
        );
        tokio::time::timeout(Duration::from_secs(30), e.wait_ready())
            .await
            .unwrap()
            .expect("warm-up at truncation 1.0");
        let d = e.spec().latent_dim;
        let rx = e
            .try_submit(
                &genrep::engine::Consumer::new("t", "t", 1),
                genrep::generator::Batch::from_z(
                    vec![0.1; 2 * d],
                    d,
                    genrep::generator::ClassInput::Ids(vec![0, 4]),
                    genrep::generator::BigGanDeep::truncation(1.0),
                    0,
                ),
            )
            .unwrap();
        let images = rx.await.unwrap().unwrap();
        assert!(images.iter().all(|v| v.is_finite()));
    });
}
