//! The server end to end over loopback: the real `genrep` binary with the embedded generator.

mod common;

use common::{client_from, closed_within, host, metric, python, Server};
use std::process::Command;
use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    let s = r.status().as_u16();
    (s, r.bytes().await.unwrap().to_vec())
}

#[test]
fn python_webdataset_reads_shards_and_a_limited_stream() {
    let s = Server::start(&[]);
    let script = r#"
import sys, webdataset as wds
base = sys.argv[1]
url = base + "/v1/shards/train-{000000..000002}.tar?seed=1&sigma=0.2&views=2&shard_size=4"
ds = wds.WebDataset(url, shardshuffle=False).decode("pil")
n = 0
for i, s in enumerate(ds):
    assert s["__key__"] == "%012d" % i, s["__key__"]
    assert set(k for k in s if not k.startswith("__")) == {"anchor.png", "pos0.png", "pos1.png", "cls", "json"}, s.keys()
    assert s["anchor.png"].size == (28, 28) and s["pos1.png"].size == (28, 28)
    m = s["json"]
    assert m["index"] == i and m["seed"] == 1 and m["views"] == 2 and m["class"] == s["cls"]
    assert len(m["z_anchor"]) == 64 and len(m["z_pos"]) == 2
    assert 0 <= s["cls"] <= 9
    n += 1
assert n == 12, n
st = wds.WebDataset(base + "/v1/stream?seed=2&views=1&start=100&limit=7&format=jpg", shardshuffle=False).decode("pil")
keys = [s["__key__"] for s in st]
assert keys == ["%012d" % i for i in range(100, 107)], keys
print("ok", n, len(keys))
"#;
    let stdout = common::run_ok(
        Command::new(python()).arg("-c").arg(script).arg(&s.base),
        "python webdataset",
    );
    assert!(stdout.contains("ok 12 7"), "{stdout}");
}

#[test]
fn same_url_same_bytes_across_restart_and_export_matches() {
    let q = "/v1/shards/train-000003.tar?seed=7&sigma=0.3&views=3&shard_size=6&classes=2-5";
    let first = {
        let s = Server::start(&[]);
        rt().block_on(async {
            let (c1, a) = get_bytes(&s.url(q)).await;
            let (c2, b) = get_bytes(&s.url(q)).await;
            assert_eq!((c1, c2), (200, 200));
            assert_eq!(a, b, "same URL, different bytes");
            a
        })
    };
    let s = Server::start(&["--max-batch-size", "3"]);
    let second = rt().block_on(async { get_bytes(&s.url(q)).await.1 });
    assert_eq!(
        first, second,
        "bytes changed across a restart (and batch size)"
    );
    assert_eq!(first.len() % 512, 0);
    assert!(first.ends_with(&[0u8; 1024]));

    let dir = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_genrep"))
        .args([
            "export",
            "--shards",
            "3..4",
            "--shard-size",
            "6",
            "--seed",
            "7",
            "--sigma",
            "0.3",
        ])
        .args(["--views", "3", "--classes", "2-5", "--out"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let exported = std::fs::read(dir.path().join("train-000003.tar")).unwrap();
    assert_eq!(exported, first, "export differs from the served shard");
    assert!(dir.path().join("train-000004.tar").exists());
}

#[test]
fn metadata_latents_reproduce_the_images_through_generate() {
    let s = Server::start(&[]);
    rt().block_on(async {
        let (c, body) =
            get_bytes(&s.url("/v1/stream?seed=3&views=2&start=40&limit=2&format=npy")).await;
        assert_eq!(c, 200);
        let mut ar = tar::Archive::new(body.as_slice());
        let mut files = std::collections::BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            files.insert(name, v);
        }
        assert_eq!(files.len(), 2 * 5);
        for idx in [40u64, 41] {
            let key = format!("{idx:012}");
            let meta: serde_json::Value =
                serde_json::from_slice(&files[&format!("{key}.json")]).unwrap();
            let cls = meta["class"].as_i64().unwrap();
            let mut z = vec![meta["z_anchor"].clone()];
            z.extend(meta["z_pos"].as_array().unwrap().iter().cloned());
            let req = serde_json::json!({"z": z, "classes": [cls, cls, cls], "format": "npy"});
            let r = reqwest::Client::new()
                .post(s.url("/v1/generate"))
                .body(req.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let all = genrep::format::npy::NpyArray::parse(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(all.shape, vec![3, 1, 28, 28]);
            let all = all.to_f32().unwrap();
            for (k, field) in ["anchor.npy", "pos0.npy", "pos1.npy"].iter().enumerate() {
                let img = genrep::format::npy::NpyArray::parse(&files[&format!("{key}.{field}")])
                    .unwrap();
                assert_eq!(
                    img.to_f32().unwrap(),
                    all[k * 784..(k + 1) * 784].to_vec(),
                    "{key}.{field}"
                );
            }
        }
    });
}

#[test]
fn disconnect_frees_the_permit_and_queued_work_and_overload_is_429() {
    let s = Server::start(&[
        "--max-concurrent-streams",
        "1",
        "--max-batch-size",
        "4",
        "--max-queue",
        "8",
    ]);
    rt().block_on(async {
        let client = reqwest::Client::new();
        let mut resp = client
            .get(s.url("/v1/stream?views=4"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut got = 0;
        while got < 20_000 {
            got += resp.chunk().await.unwrap().unwrap().len();
        }
        // The one stream permit is taken: a second stream is refused with 429 + Retry-After.
        let r2 = client
            .get(s.url("/v1/shards/a-000000.tar?shard_size=2"))
            .send()
            .await
            .unwrap();
        assert_eq!(r2.status(), 429);
        assert_eq!(r2.headers()["retry-after"], "1");
        let m = s.metrics().await;
        assert_eq!(metric(&m, "genrep_active_streams"), 1.0);
        drop(resp);
        // The producer notices, its queued jobs are dropped, the permit returns.
        let t = Instant::now();
        loop {
            let m = s.metrics().await;
            if metric(&m, "genrep_active_streams") == 0.0 && metric(&m, "genrep_queue_depth") == 0.0
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "stream never released: {m}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r3 = client
            .get(s.url("/v1/shards/a-000000.tar?shard_size=2"))
            .send()
            .await
            .unwrap();
        assert_eq!(r3.status(), 200);
        r3.bytes().await.unwrap();

        // A full queue answers single-sample requests with 429 instead of waiting.
        let reqs = (0..40).map(|i| {
            let c = client.clone();
            let u = s.url(&format!("/v1/samples/{i}.png?views=16"));
            async move { c.get(u).send().await.unwrap().status().as_u16() }
        });
        let codes = futures::future::join_all(reqs).await;
        assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
        assert!(codes.contains(&429), "no 429 under overload: {codes:?}");
        assert!(codes.contains(&200), "{codes:?}");
    });
}

#[test]
fn sigterm_ends_streams_at_a_sample_boundary_with_a_valid_tar_end() {
    let s = Server::start(&[]);
    rt().block_on(async {
        let client = reqwest::Client::new();
        let mut resp = client
            .get(s.url("/v1/stream?views=2"))
            .send()
            .await
            .unwrap();
        let mut body = Vec::new();
        while body.len() < 30_000 {
            body.extend_from_slice(&resp.chunk().await.unwrap().unwrap());
        }
        let st = Command::new("kill")
            .args(["-TERM", &s.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        while let Some(c) = resp
            .chunk()
            .await
            .expect("stream must end cleanly, not abort")
        {
            body.extend_from_slice(&c);
        }
        assert!(body.ends_with(&[0u8; 1024]), "no tar end marker");
        let mut ar = tar::Archive::new(body.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len() % 5,
            0,
            "partial sample at the end: {:?}",
            &names[names.len() - 3..]
        );
        assert!(names.last().unwrap().ends_with(".json"));
    });
    let mut s = s;
    let t = Instant::now();
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn info_openapi_health_and_inspection() {
    let s = Server::start(&[]);
    rt().block_on(async {
        let (c, b) = get_bytes(&s.url("/v1/info")).await;
        assert_eq!(c, 200);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["generator"]["name"], "mnist-cdcgan");
        assert_eq!(v["generator"]["weights_sha256"].as_str().unwrap().len(), 64);
        let (c, b) = get_bytes(&s.url("/openapi.json")).await;
        assert_eq!(c, 200);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        for p in [
            "/v1/shards/{name}",
            "/v1/stream",
            "/v1/samples/{file}",
            "/v1/grid.png",
            "/v1/generate",
            "/v1/info",
            "/health",
            "/ready",
            "/metrics",
        ] {
            assert!(v["paths"][p].is_object(), "openapi lacks {p}");
        }
        assert_eq!(get_bytes(&s.url("/health")).await.0, 200);
        assert_eq!(get_bytes(&s.url("/ready")).await.0, 200);
        let (c, png) = get_bytes(&s.url("/v1/grid.png?rows=3&views=4&seed=9")).await;
        assert_eq!(c, 200);
        assert!(png.starts_with(b"\x89PNG"));
        let (c, png) = get_bytes(&s.url("/v1/samples/5.png?views=2")).await;
        assert_eq!(c, 200);
        assert!(png.starts_with(b"\x89PNG"));
        let (_, j) = get_bytes(&s.url("/v1/samples/5.json?views=2")).await;
        let m: genrep_wire::SampleMeta = serde_json::from_slice(&j).unwrap();
        assert_eq!((m.index, m.views, m.z_pos.len()), (5, 2, 2));
        let r = reqwest::Client::new()
            .head(s.url("/v1/shards/x-000001.tar?shard_size=9"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-genrep-samples"], "9");
        assert!(r.headers().get("content-length").is_none_or(|v| v != "0"));
        let m = s.metrics().await;
        for name in [
            "genrep_requests_total",
            "genrep_samples_generated_total",
            "genrep_queue_depth",
            "genrep_batch_size_bucket",
            "genrep_queue_duration_seconds_bucket",
            "genrep_inference_duration_seconds_bucket",
            "genrep_encode_duration_seconds_bucket",
            "genrep_bytes_streamed_total",
            "genrep_active_streams",
        ] {
            assert!(m.contains(name), "metrics lack {name}");
        }
    });
}

/// Host and port of a server, for raw sockets.

#[test]
fn half_sent_headers_time_out_and_excess_connections_are_refused() {
    use std::io::Write;
    let s = Server::start(&["--header-read-timeout-s", "1", "--max-connections", "8"]);
    let addr = host(&s);
    // Half a header block: closed after the header timeout, not held forever.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "half-sent headers held open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );

    // 8 connections that send nothing take every slot; the 9th is closed at once.
    let idle: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = Instant::now();
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "connection over the cap served"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // The idle ones hit the header timeout too; then the server serves again.
    drop(idle);
    let t = Instant::now();
    while common::raw::blocking_get(&s.url("/health")).unwrap_or(0) != 200 {
        assert!(t.elapsed() < Duration::from_secs(10), "slots never freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn never_reading_clients_lose_their_stream_slots_after_the_idle_timeout() {
    use std::io::Write;
    let s = Server::start(&["--idle-timeout-s", "2", "--max-concurrent-streams", "2"]);
    let addr = host(&s);
    // Two streams that are requested and never read.
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /v1/stream?views=8 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let shard = s.url("/v1/shards/train-000000.tar?shard_size=4");
    rt().block_on(async {
        assert_eq!(
            get_bytes(&shard).await.0,
            429,
            "the hogs should hold both slots"
        );
        // Their socket buffers fill, writes stall, the idle timeout closes them.
        let t = Instant::now();
        loop {
            let (code, body) = get_bytes(&shard).await;
            if code == 200 {
                assert_eq!(body.len() % 512, 0);
                break;
            }
            assert_eq!(code, 429);
            assert!(t.elapsed() < Duration::from_secs(60), "slots never freed");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    drop(hogs);
}

/// Bytes/s of one consumer downloading a shard while a hog reads 8 endless streams, and the
/// hog's bytes/s over the same window: the fairness run.
async fn fairness_run(s: &Server, hog: reqwest::Client, other: reqwest::Client) -> (f64, f64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let hog_bytes = std::sync::Arc::new(AtomicU64::new(0));
    let streams: Vec<_> = (0..8)
        .map(|i| {
            let (c, n) = (hog.clone(), hog_bytes.clone());
            let u = s.url(&format!("/v1/stream?views=1&seed={i}"));
            tokio::spawn(async move {
                let mut r = c.get(u).send().await.unwrap();
                assert_eq!(r.status(), 200);
                while let Ok(Some(b)) = r.chunk().await {
                    n.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The hog's backlog builds up first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (h0, t) = (hog_bytes.load(Ordering::Relaxed), Instant::now());
    let r = other
        .get(s.url("/v1/shards/train-000000.tar?views=1&seed=99&shard_size=600"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mine = r.bytes().await.unwrap().len() as f64;
    let dt = t.elapsed().as_secs_f64();
    let theirs = (hog_bytes.load(Ordering::Relaxed) - h0) as f64;
    for h in streams {
        h.abort();
    }
    (mine / dt, theirs / dt)
}

/// A client whose connections come from `ip` (a loopback address: 127.0.0.0/8 is local).

/// The fairness run: a hog with 8 endless streams against a second consumer's single shard, as
/// two peers of an open server and as two API keys. The second consumer must get at least 40 %
/// of the throughput (one stream per consumer is 50 %; before per-consumer scheduling it got
/// about 10 %).
#[test]
fn a_hog_with_8_streams_leaves_another_consumer_its_share() {
    let mut shares = Vec::new();
    {
        let s = Server::start(&[]);
        let (b, h) = rt().block_on(fairness_run(
            &s,
            client_from([127, 0, 0, 1], None),
            client_from([127, 0, 0, 2], None),
        ));
        shares.push(("open server, two peers", b, h));
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.toml");
        std::fs::write(
            &keys,
            "[[consumer]]\nname = \"hog\"\nkey = \"hog-0123456789abcdef\"\n\n\
             [[consumer]]\nname = \"team-b\"\nkey = \"teamb-0123456789abcdef\"\n",
        )
        .unwrap();
        let s = Server::start(&["--api-keys", keys.to_str().unwrap()]);
        let (b, h) = rt().block_on(fairness_run(
            &s,
            client_from([127, 0, 0, 1], Some("hog-0123456789abcdef")),
            client_from([127, 0, 0, 1], Some("teamb-0123456789abcdef")),
        ));
        shares.push(("two API keys, one address", b, h));
    }
    for (what, b, h) in &shares {
        let share = b / (b + h);
        println!(
            "fairness ({what}): second consumer {:.0} kB/s, hog (8 streams) {:.0} kB/s: share {:.1} %",
            b / 1e3,
            h / 1e3,
            100.0 * share
        );
        assert!(share >= 0.40, "{what}: share {share:.3}");
    }
}

/// Reads a tar body to its end: (bytes, when it ended, whether it ended cleanly).
async fn read_to_end(mut r: reqwest::Response) -> (Vec<u8>, Instant, bool) {
    let mut body = Vec::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => return (body, Instant::now(), true),
            Err(_) => return (body, Instant::now(), false),
        }
    }
}

/// Member names of a complete tar (panics on a truncated one).
fn tar_names(body: &[u8]) -> Vec<String> {
    assert!(body.ends_with(&[0u8; 1024]), "no tar end marker");
    tar::Archive::new(body)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn wait_exit(s: &mut Server, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            return st;
        }
        assert!(t.elapsed() < within, "server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM with 2 endless streams and 3 shards open at `--drain-timeout-s 3`: `/ready` answers
/// 503 on new connections during the drain, both streams end with a valid tar end within 2 s,
/// the shards run to their last sample, and the process exits 0.
#[test]
fn sigterm_drains_with_ready_503_streams_ending_in_2s_and_complete_shards() {
    let mut s = Server::start(&["--drain-timeout-s", "3"]);
    let ready = s.url("/ready");
    let (streams, shards, t0, probes) = rt().block_on(async {
        let c = reqwest::Client::new();
        let mut open = Vec::new();
        for i in 0..2 {
            open.push(c.get(s.url(&format!("/v1/stream?views=2&seed={i}"))).send());
        }
        for i in 0..3 {
            let u = format!("/v1/shards/train-{i:06}.tar?views=1&shard_size=60");
            open.push(c.get(s.url(&u)).send());
        }
        let mut resp: Vec<_> = futures::future::join_all(open)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let mut firsts = Vec::new();
        for r in &mut resp {
            assert_eq!(r.status(), 200);
            firsts.push(r.chunk().await.unwrap().unwrap().to_vec());
        }
        let readers: Vec<_> = resp
            .into_iter()
            .zip(firsts)
            .map(|(r, first)| {
                tokio::spawn(async move {
                    let (rest, at, clean) = read_to_end(r).await;
                    ([first, rest].concat(), at, clean)
                })
            })
            .collect();
        let t0 = Instant::now();
        assert!(Command::new("kill")
            .args(["-TERM", &s.pid().to_string()])
            .status()
            .unwrap()
            .success());
        // New connections during the drain: the listener is still there and says 503.
        let mut probes = Vec::new();
        for _ in 0..10 {
            let code = reqwest::Client::new()
                .get(&ready)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            probes.push(code);
            if code == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut done = Vec::new();
        for r in readers {
            done.push(r.await.unwrap());
        }
        let shards = done.split_off(2);
        (done, shards, t0, probes)
    });
    assert!(
        probes.contains(&503),
        "no 503 from /ready during the drain: {probes:?}"
    );
    for (body, at, clean) in &streams {
        assert!(clean, "stream aborted");
        let names = tar_names(body);
        // anchor, pos0, pos1, cls, json
        assert_eq!(names.len() % 5, 0, "partial sample at the end");
        let took = at.duration_since(t0);
        println!(
            "drain: a stream ended {took:?} after SIGTERM with {} samples",
            names.len() / 4
        );
        assert!(took < Duration::from_secs(2), "stream took {took:?} to end");
    }
    for (body, at, clean) in &shards {
        assert!(clean, "shard aborted");
        assert_eq!(tar_names(body).len(), 60 * 4, "shard cut short");
        println!(
            "drain: a shard completed {:?} after SIGTERM",
            at.duration_since(t0)
        );
    }
    let st = wait_exit(&mut s, Duration::from_secs(10));
    assert!(st.success(), "exit status {st}");
}

/// A shard that cannot finish within the drain deadline is cut (the client sees an aborted
/// body, never a clean end) and the process reports it with a non-zero exit status.
#[test]
fn a_drain_that_cuts_a_shard_exits_non_zero() {
    let mut s = Server::start(&["--drain-timeout-s", "1"]);
    let (clean, n) = rt().block_on(async {
        let mut r = reqwest::get(s.url("/v1/shards/big-000000.tar?views=8&shard_size=100000"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let first = r.chunk().await.unwrap().unwrap();
        assert!(Command::new("kill")
            .args(["-TERM", &s.pid().to_string()])
            .status()
            .unwrap()
            .success());
        let (rest, _, clean) = read_to_end(r).await;
        (clean, first.len() + rest.len())
    });
    assert!(
        !clean || n % 512 != 0 || n < 1024,
        "a cut shard looked complete"
    );
    let st = wait_exit(&mut s, Duration::from_secs(10));
    assert!(!st.success(), "exit status {st} after cutting a shard");
}

/// Resident memory of a process, in bytes (Linux `/proc`).
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// The status line of a raw HTTP exchange: `head` is sent, then `body_bytes` of `[` in 1 MiB
/// writes (stopping quietly when the server closes); returns the status and when it came.
fn raw_post(addr: &str, head: &str, body_bytes: usize) -> (u16, Duration) {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    sock.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'['; 1 << 20];
    let mut sent = 0;
    while sent < body_bytes {
        let n = chunk.len().min(body_bytes - sent);
        if sock.write_all(&chunk[..n]).is_err() {
            break;
        }
        sent += n;
    }
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).unwrap_or(0);
    let status = String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, t.elapsed())
}

/// The hostile-client figures: a 1 GB declared body is refused before it is sent; a 60 MB body
/// costs the server < 100 MB of memory; 64 never-reading streams from one address do not stop
/// another client's shard.
#[test]
fn hostile_bodies_and_never_reading_sockets_leave_the_server_serving() {
    use std::io::Write;
    let s = Server::start(&[]);
    let addr = host(&s);
    let (code, took) = raw_post(
        &addr,
        "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
        0,
    );
    println!("hostile: 1 GB declared body -> {code} in {took:?}");
    assert_eq!(code, 413);
    assert!(took < Duration::from_millis(100), "{took:?}");

    let before = rss(s.pid());
    let big = 60 << 20;
    let (code, took) = raw_post(
        &addr,
        &format!("POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n"),
        big,
    );
    let grew = rss(s.pid()).saturating_sub(before);
    println!(
        "hostile: 60 MB body -> {code} in {took:?}, RSS {} -> +{} MB",
        before >> 20,
        grew >> 20
    );
    assert_eq!(code, 413);
    assert!(grew < 100 << 20, "RSS grew {} MB", grew >> 20);
    // The same 60 MB without a declared length (chunked): cut off at the limit, memory bounded.
    let before = rss(s.pid());
    let code = {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        sock.write_all(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let mut chunk = b"100000\r\n".to_vec();
        chunk.extend(std::iter::repeat_n(b'[', 1 << 20));
        chunk.extend_from_slice(b"\r\n");
        for _ in 0..60 {
            if sock.write_all(&chunk).is_err() {
                break;
            }
        }
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = sock.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string()
    };
    let grew = rss(s.pid()).saturating_sub(before);
    println!(
        "hostile: 60 MB chunked body -> {code}, RSS +{} MB",
        grew >> 20
    );
    assert_eq!(code, "413");
    assert!(grew < 100 << 20, "RSS grew {} MB", grew >> 20);

    // 64 sockets ask for endless streams and never read.
    let hogs: Vec<_> = (0..64)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            let req = format!("GET /v1/stream?views=8&seed={i} HTTP/1.1\r\nHost: x\r\n\r\n");
            c.write_all(req.as_bytes()).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (code, n) = rt().block_on(async {
        let r = client_from([127, 0, 0, 2], None)
            .get(s.url("/v1/shards/train-000000.tar?views=1&shard_size=100"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    });
    println!(
        "hostile: 64 never-reading streams open; another client's 100-sample shard: {code} in {:?}",
        t.elapsed()
    );
    assert_eq!(code, 200);
    assert_eq!(tar_names(&n).len(), 100 * 4);
    drop(hogs);
}

/// Schemathesis (installed by tests/run_all.sh) generates requests from `/openapi.json` and
/// checks that none gets a 5xx. `/v1/stream` runs apart: without `limit` it is endless by
/// design, so its generated requests get a small limit (tests/schemathesis/genrep_hooks.py)
/// and it skips the coverage phase, which adds requests that omit `limit`.
#[test]
fn schemathesis_finds_no_server_errors() {
    let s = Server::start(&[
        "--max-shard-size",
        "16",
        "--max-views",
        "4",
        "--max-grid-rows",
        "4",
        "--max-generate-latents",
        "8",
    ]);
    let bin = std::path::Path::new(&python()).with_file_name("schemathesis");
    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");
    let work = tempfile::tempdir().unwrap();
    for only in [
        &["--exclude-path", "/v1/stream"][..],
        &[
            "--include-path",
            "/v1/stream",
            "--phases",
            "examples,fuzzing",
        ][..],
    ] {
        let text = common::run_ok(
            Command::new(&bin)
                .args(["--no-color", "run", &s.url("/openapi.json")])
                .args(["--checks", "not_a_server_error", "--max-examples", "25"])
                .args(["--workers", "1", "--request-timeout", "30", "--seed", "1"])
                .args(only)
                .env("PYTHONPATH", hooks)
                .env("SCHEMATHESIS_HOOKS", "genrep_hooks")
                .current_dir(work.path()),
            &format!("schemathesis {only:?} (installed by tests/run_all.sh)"),
        );
        let summary: Vec<&str> = text.lines().rev().take(25).collect();
        println!(
            "schemathesis {only:?}:\n{}",
            summary.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        assert!(text.contains("passed"), "{text}");
    }
}

/// genrep-client's loader sends its key (`GENREP_API_KEY`, here set on the policy) and gets
/// a clear 401 without one.
#[test]
fn the_client_authenticates_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    std::fs::write(
        &keys,
        r#"{"consumer": [{"name": "trainer", "key": "trainer-0123456789abcdef"}]}"#,
    )
    .unwrap();
    let s = Server::start(&["--api-keys", keys.to_str().unwrap()]);
    let url = s.url("/v1/shards/train-000000.tar?views=1&shard_size=5");
    let mut policy = genrep_client::loader::FetchPolicy {
        attempts: 1,
        api_key: Some("trainer-0123456789abcdef".into()),
        ..Default::default()
    };
    let samples = genrep_client::loader::fetch(&url, &policy).unwrap();
    assert_eq!(samples.len(), 5);
    policy.api_key = None;
    let e = genrep_client::loader::fetch(&url, &policy)
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("missing API key"), "{e}");
    // `?token=` works too, and the access log never shows the key.
    let with_token = format!("{url}&token=trainer-0123456789abcdef");
    assert_eq!(
        genrep_client::loader::fetch(&with_token, &policy)
            .unwrap()
            .len(),
        5
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("token=REDACTED"), "{log}");
    assert!(
        !log.contains("trainer-0123456789abcdef"),
        "the key is in the log"
    );
}

/// 20 consumers' endless streams fill their part of the queue, not all of it: single-sample
/// requests still get through (before the reserve every one of them got 429).
#[test]
fn twenty_streams_do_not_lock_out_single_requests() {
    let s = Server::start(&[
        "--max-queue",
        "64",
        "--max-batch-size",
        "8",
        "--max-streams-per-consumer",
        "32",
    ]);
    rt().block_on(async {
        let c = reqwest::Client::new();
        let mut streams = Vec::new();
        // 20 consumers (peer addresses 127.0.0.10-29), one stream each.
        for i in 0..20 {
            let r = client_from([127, 0, 0, 10 + i as u8], None)
                .get(s.url(&format!("/v1/stream?views=4&seed={i}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            streams.push(r);
        }
        // Let them fill the queue (nobody reads them).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let m = s.metrics().await;
        let depth = metric(&m, "genrep_queue_depth");
        let singles = (0..8).map(|i| {
            let c = c.clone();
            let u = s.url(&format!("/v1/samples/{i}.png?views=1"));
            async move { c.get(u).send().await.unwrap().status().as_u16() }
        });
        let codes = futures::future::join_all(singles).await;
        println!("20 streams: queue depth {depth}, single requests {codes:?}");
        assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
        assert!(
            depth >= 40.0,
            "the streams did not fill their part of the queue: {depth}"
        );
        let grid = c.get(s.url("/v1/grid.png?rows=4")).send().await.unwrap();
        assert_eq!(grid.status(), 200);
        drop(streams);
    });
}

/// `serve` refuses a bad key file at startup with a message naming it, before binding.
#[test]
fn serve_refuses_a_bad_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("keys.toml");
    std::fs::write(&bad, "[[consumer]]\nname = \"a\"\nkey = \"short\"\n").unwrap();
    for (path, says) in [
        (bad.to_str().unwrap().to_string(), "at least 16"),
        (
            dir.path().join("none.json").to_str().unwrap().to_string(),
            "cannot read",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_genrep"))
            .args(["serve", "--port", "0", "--api-keys", &path])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(says) && err.contains(&path), "{err}");
    }
}
