//! Two `genrep serve` replicas behind nginx (Debian's package, installed by tests/run_all.sh),
//! configured by docker/nginx.conf itself: one dataset whichever replica answers, and an epoch
//! that survives a replica killed mid-way, read by genrep-client and by stock Python webdataset
//! (with examples/wds_retry.py's retrying stage), every sample exactly once.

mod common;

use common::{free_port, metric, python, Server};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nginx running docker/nginx.conf with its upstreams pointed at local replicas.
struct Nginx {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(replicas: &[u16]) -> Nginx {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is not installed: run the tests with `bash tests/run_all.sh`");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let snippet =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/nginx.conf"))
                .unwrap()
                .replace("genrep-a:8080", &format!("127.0.0.1:{}", replicas[0]))
                .replace("genrep-b:8080", &format!("127.0.0.1:{}", replicas[1]))
                .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        assert!(snippet.contains(&format!("127.0.0.1:{}", replicas[1])));
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             {snippet}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        while common::raw::blocking_get(&format!("{base}/health")).unwrap_or(0) != 200 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "nginx did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            base,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(url: &str) -> Vec<u8> {
    let r = ureq_get(url);
    assert_eq!(r.0, 200, "{url}");
    r.1
}

fn ureq_get(url: &str) -> (u16, Vec<u8>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    })
}

fn samples_served(base: &str) -> f64 {
    let m = String::from_utf8(get(&format!("{base}/metrics"))).unwrap();
    metric(&m, "genrep_samples_generated_total")
}

const SHARDS: usize = 8;
const PER: usize = 100;
/// Mid-shard, so that the kill cuts a download.
const KILL_AT: usize = 250;

fn epoch_urls(base: &str) -> Vec<String> {
    (0..SHARDS)
        .map(|n| format!("{base}/v1/shards/train-{n:06}.tar?seed=3&views=1&shard_size={PER}"))
        .collect()
}

fn expected() -> Vec<String> {
    (0..SHARDS * PER).map(|i| format!("{i:012}")).collect()
}

/// Kills the replica that is streaming now (so the kill cuts a download), or the first one.
fn kill_busy(replicas: &mut [Option<Server>; 2]) -> usize {
    let busy = (0..2)
        .find(|&i| {
            replicas[i].as_ref().is_some_and(|s| {
                let m = String::from_utf8(get(&format!("{}/metrics", s.base))).unwrap();
                metric(&m, "genrep_active_streams") > 0.0
            })
        })
        .unwrap_or(0);
    let mut s = replicas[busy].take().unwrap();
    let _ = s.child.kill();
    let _ = s.child.wait();
    busy
}

#[test]
fn two_replicas_behind_nginx_serve_one_dataset_and_survive_a_replica_kill() {
    let ports = [free_port(), free_port()];
    let mut replicas = [
        Some(Server::start_on(ports[0], &[])),
        Some(Server::start_on(ports[1], &[])),
    ];
    let lb = Nginx::start(&ports);
    let base = |i: usize| replicas[i].as_ref().unwrap().base.clone();

    // The same shard URL gives the same bytes from either replica and through the balancer.
    let shard = "/v1/shards/train-000003.tar?seed=5&views=2&shard_size=20";
    let direct = get(&format!("{}{shard}", base(0)));
    assert_eq!(get(&format!("{}{shard}", base(1))), direct);
    for _ in 0..4 {
        assert_eq!(get(&format!("{}{shard}", lb.base)), direct);
    }
    // Both replicas served part of that (scraped directly, not through the balancer).
    let (sa, sb) = (samples_served(&base(0)), samples_served(&base(1)));
    println!("replicas: samples served directly + balanced: a {sa}, b {sb}");
    assert!(
        sa > 20.0 && sb > 20.0,
        "round robin did not reach both: {sa} {sb}"
    );

    // genrep-client reads an epoch through the balancer; the replica streaming to it dies
    // mid-shard.
    let cfg = genrep_client::loader::LoaderConfig {
        shuffle: false,
        prefetch: 2,
        policy: genrep_client::loader::FetchPolicy {
            attempts: 6,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            api_key: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut loader = genrep_client::loader::Loader::new(
        epoch_urls(&lb.base),
        cfg,
        genrep_client::loader::Cursor::default(),
    )
    .unwrap();
    let mut keys = Vec::new();
    let mut killed = None;
    for i in 0..SHARDS * PER {
        if i == KILL_AT {
            killed = Some(kill_busy(&mut replicas));
        }
        keys.push(loader.next_sample().unwrap().key);
    }
    assert_eq!(
        keys,
        expected(),
        "genrep-client: every sample once, in order"
    );
    let k = killed.unwrap();
    println!(
        "replicas: genrep-client read {} samples, replica {k} killed at sample {KILL_AT}",
        keys.len()
    );

    // The killed replica comes back on its port; stock webdataset reads an epoch while the
    // replica streaming to it dies.
    replicas[k] = Some(Server::start_on(ports[k], &[]));
    std::thread::sleep(Duration::from_secs(6)); // nginx's fail_timeout for it
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/wds_retry.py");
    let mut py = Command::new(python())
        .arg(script)
        .args(epoch_urls(&lb.base))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = py.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut BufReader::new(err), &mut s).unwrap();
        s
    });
    let out = BufReader::new(py.stdout.take().unwrap());
    let mut keys = Vec::new();
    let mut killed = None;
    for line in out.lines() {
        keys.push(line.unwrap());
        if keys.len() == KILL_AT {
            killed = Some(kill_busy(&mut replicas));
        }
    }
    let status = py.wait().unwrap();
    let err = err.join().unwrap();
    assert!(status.success(), "the webdataset reader failed:\n{err}");
    let unique: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a sample came twice");
    assert_eq!(keys, expected(), "webdataset: every sample once, in order");
    println!(
        "replicas: webdataset read {} samples, replica {} killed at sample {KILL_AT}; its log:\n{err}",
        keys.len(),
        killed.unwrap()
    );
    assert!(err.contains("retrying"), "the kill cut no download: {err}");
}
