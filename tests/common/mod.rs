//! Test helpers: run the real `genrep` binary on a loopback port and talk to it, or drive the
//! router in-process ([`in_process`]) as any number of peers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `genrep serve` process on 127.0.0.1 with an OS-chosen port; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Everything the server logged so far (stderr).
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_on(0, extra)
    }

    /// A server on a given port (0: any free one).
    pub fn start_on(port: u16, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_genrep"))
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn genrep serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find("listening on http://") {
                        let _ = tx.send(line[i + "listening on ".len()..].trim().to_string());
                        sent = true;
                    }
                }
                eprintln!("[server] {line}");
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not report its address");
        let s = Server { child, base, log };
        s.wait_ready();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        loop {
            if let Ok(r) = raw::blocking_get(&self.url("/ready")) {
                if r == 200 {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "server never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking GET returning the status (std TCP; used before a runtime exists).
pub mod raw {
    use std::io::{Read, Write};
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = std::net::TcpStream::connect(host)?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

/// The Python interpreter with `webdataset` installed (set by tests/run_all.sh).
pub fn python() -> String {
    if let Ok(p) = std::env::var("GENREP_TEST_PYTHON") {
        return p;
    }
    // After one `bash tests/run_all.sh`, plain `cargo test` finds the venv it made.
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-test/bin/python");
    if std::path::Path::new(venv).exists() {
        return venv.to_string();
    }
    panic!(
        "this test needs the Python test tools (webdataset, openapi-spec-validator, schemathesis, \
         kubernetes-validate): run `bash tests/run_all.sh` once, which installs them into \
         .venv-test (plain `cargo test` then finds it), or set GENREP_TEST_PYTHON to a Python \
         that has them"
    )
}

/// `host:port` of a server.
pub fn host(s: &Server) -> String {
    s.base.strip_prefix("http://").unwrap().to_string()
}

/// Reads until the server closes the socket (true) or `within` passes (false).
pub fn closed_within(sock: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return t.elapsed() < within,
        }
    }
}

/// A client whose connections come from a given loopback address (a consumer of an open
/// server), sending `token` as its bearer key when given.
pub fn client_from(ip: [u8; 4], token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Reads a metric value from `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

/// A free loopback port (bound, then released for a child process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cmd` to completion and returns its stdout; panics with both outputs, naming `what`,
/// unless it exits 0.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The router in-process (no process, no socket): requests go through `oneshot`, each from the
/// peer the test names (the server sees it as `ConnectInfo`, as a real connection would give),
/// so one test can be several consumers of an open server.
pub mod in_process {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Method, Request, StatusCode};
    use axum::Router;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tower::ServiceExt;

    /// The peer of [`call`]: 127.0.0.1.
    pub const LOCAL: [u8; 4] = [127, 0, 0, 1];

    /// `app` once its engine is ready.
    pub async fn ready(app: Router) -> Router {
        for _ in 0..500 {
            if call(&app, Method::GET, "/ready", Body::empty()).await.0 == StatusCode::OK {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine did not become ready");
    }

    /// A request from 127.0.0.1, answered in full.
    pub async fn call(
        app: &Router,
        method: Method,
        uri: &str,
        body: Body,
    ) -> (StatusCode, Vec<u8>) {
        call_from(app, LOCAL, method, uri, body).await
    }

    /// A request carrying no peer address at all (what a router served without
    /// `ConnectInfo` would see), answered in full.
    pub async fn call_without_peer(
        app: &Router,
        method: Method,
        uri: &str,
        body: Body,
    ) -> (StatusCode, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    /// The response to a request from `peer`, its body not read.
    pub async fn send_from(
        app: &Router,
        peer: [u8; 4],
        method: Method,
        uri: &str,
        body: Body,
    ) -> axum::response::Response {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
        app.clone().oneshot(req).await.unwrap()
    }

    /// A request from `peer`, answered in full.
    pub async fn call_from(
        app: &Router,
        peer: [u8; 4],
        method: Method,
        uri: &str,
        body: Body,
    ) -> (StatusCode, Vec<u8>) {
        let resp = send_from(app, peer, method, uri, body).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }
}
