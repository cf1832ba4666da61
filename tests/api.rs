//! The HTTP API in-process (the router driven with `tower::ServiceExt::oneshot`, no process, no
//! socket): the parameter-validation table, `POST /v1/generate` body checks, the OpenAPI
//! document, and a pinned shard hash (a sampler or encoder change must be deliberate).

mod common;

use common::in_process::{call, call_from, call_without_peer, ready, send_from};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use genrep::engine::EngineConfig;
use genrep::params::Limits;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use candle_core::Tensor;
use genrep::generator::{Batch, ClassInput, Generator, Knobs, ModelInfo, NoiseKey, Space};
use std::time::Instant;

async fn app() -> Router {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    app_with(g).await
}

async fn app_with(g: Box<dyn Generator>) -> Router {
    app_with_batch(g, 64).await
}

fn engine_config(max_batch_size: usize) -> EngineConfig {
    EngineConfig {
        max_batch_size,
        max_batch_wait: Duration::from_millis(2),
        max_queue: 1024,
        encode_threads: 2,
    }
}

async fn app_with_batch(g: Box<dyn Generator>, max_batch_size: usize) -> Router {
    let cfg = engine_config(max_batch_size);
    let limits = Limits {
        max_views: 8,
        max_shard_size: 500,
        max_concurrent_streams: 8,
        max_generate_latents: 4,
        max_grid_rows: 16,
        body_timeout_s: 2,
        max_streams_per_consumer: 8,
    };
    ready(genrep::server::app(
        g,
        cfg,
        limits,
        CancellationToken::new(),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_json_errors_naming_the_parameter() {
    let app = app().await;
    let cases: &[(&str, u16, &str)] = &[
        ("/v1/shards/train-000000.tar?method=stear", 422, "method"),
        ("/v1/shards/train-000000.tar?format=gif", 422, "format"),
        ("/v1/shards/train-000000.tar?sigma=-1", 422, "sigma"),
        ("/v1/shards/train-000000.tar?sigma=NaN", 422, "sigma"),
        ("/v1/shards/train-000000.tar?sigma=inf", 422, "sigma"),
        ("/v1/shards/train-000000.tar?views=0", 422, "views"),
        ("/v1/shards/train-000000.tar?views=9", 422, "views"),
        ("/v1/shards/train-000000.tar?classes=10", 422, "classes"),
        ("/v1/shards/train-000000.tar?classes=1,,2", 422, "classes"),
        ("/v1/shards/train-000000.tar?classes=x", 422, "classes"),
        (
            "/v1/shards/train-000000.tar?shard_size=0",
            422,
            "shard_size",
        ),
        (
            "/v1/shards/train-000000.tar?shard_size=501",
            422,
            "shard_size",
        ),
        ("/v1/shards/train-000000.tar?seed=-1", 422, "seed"),
        ("/v1/shards/train-000000.tar?quality=0", 422, "quality"),
        (
            "/v1/shards/train-000000.tar?truncation=0",
            422,
            "truncation",
        ),
        // Another family's input: named as such, not as an unknown word.
        (
            "/v1/shards/train-000000.tar?gen_truncation=2",
            422,
            "mnist-cdcgan (cdcgan) has no such input",
        ),
        ("/v1/shards/train-000000.tar?sigma=1&sigma=2", 422, "sigma"),
        (
            "/v1/shards/train-000000.tar?anchor_bound=0",
            422,
            "anchor_bound",
        ),
        (
            "/v1/shards/train-000000.tar?truncation=1&anchor_bound=1",
            422,
            "`anchor_bound` (old name `truncation`) given more than once",
        ),
        ("/v1/shards/train-000000.tar?bogus=1", 422, "bogus"),
        ("/v1/shards/train-0.tar", 404, "shard names"),
        ("/v1/shards/train-000000.zip", 404, "shard names"),
        (
            "/v1/shards/train-999999999999.tar?shard_size=10",
            404,
            "past the last sample",
        ),
        ("/v1/stream?start=1000000000000", 422, "start"),
        ("/v1/stream?limit=0", 422, "limit"),
        ("/v1/samples/1000000000000.png", 422, "index"),
        ("/v1/samples/abc.png", 404, "sample file"),
        ("/v1/grid.png?rows=0", 422, "rows"),
        ("/v1/nope", 404, "no route"),
        // axum's own rejections answer in the API's JSON format too.
        ("/v1/shards/%FF%FE-000000.tar", 422, "UTF-8"),
    ];
    for (path, code, needle) in cases {
        let (c, body) = call(&app, Method::GET, path, Body::empty()).await;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&body)));
        assert_eq!(c.as_u16(), *code, "{path}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(v["error_type"].is_string(), "{path}: {v}");
        assert!(
            msg.contains(needle),
            "{path}: `{msg}` does not mention `{needle}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_generate_bodies_are_422_naming_the_field() {
    let app = app().await;
    let bodies: &[(&str, &str)] = &[
        ("not json", "not a valid generate request"),
        (r#"{"z": [[0.0]], "classes": [0]}"#, "latent_dim"),
        (r#"{"z": [], "classes": []}"#, "max_generate_latents"),
        (
            r#"{"z": [[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]], "classes": [12]}"#,
            "classes",
        ),
        (
            r#"{"z": [[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}"#,
            "conditional",
        ),
        (
            r#"{"z": [[1],[1],[1],[1],[1]], "classes": [0,0,0,0,0]}"#,
            "max_generate_latents",
        ),
        (r#"{"z": [[0.0]], "extra": 1}"#, "unknown field"),
        // The embedded generator has no truncation input of its own.
        (
            r#"{"z": [[0.0]], "gen_truncation": 0.5}"#,
            "own inputs: none",
        ),
    ];
    for (body, needle) in bodies {
        let (c, resp) = call(
            &app,
            Method::POST,
            "/v1/generate",
            Body::from(body.to_string()),
        )
        .await;
        assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{body}: {v}");
    }
}

/// The bytes of one shard are pinned (`PINNED_SHARD_SHA256` says when it may move; `genrep check`
/// compares a device's bytes with it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_is_pinned_to_its_sha256() {
    let app = app().await;
    let uri = "/v1/shards/train-000002.tar?seed=1&sigma=0.2&views=2&shard_size=6";
    let (c, body) = call(&app, Method::GET, uri, Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    assert_eq!(
        hex::encode(Sha256::digest(&body)),
        genrep::check::determinism::PINNED_SHARD_SHA256
    );
}

/// `/openapi.json` is a valid OpenAPI 3.1 document (checked by `openapi-spec-validator`, which
/// `tests/run_all.sh` installs) and carries this server's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_states_the_limits() {
    let app = app().await;
    let (c, body) = call(&app, Method::GET, "/openapi.json", Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let shard = &doc["paths"]["/v1/shards/{name}"]["get"]["parameters"];
    let find = |name: &str| {
        shard
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no parameter {name}"))["schema"]
            .clone()
    };
    assert_eq!(find("views")["maximum"], 8);
    assert_eq!(find("shard_size")["maximum"], 500);
    assert_eq!(find("anchor_bound")["minimum"], 0.05);
    // The old name is documented, as deprecated; a family's input appears only where the
    // served generator has it (the embedded one has none).
    let old = shard
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "truncation")
        .unwrap();
    assert_eq!(old["deprecated"], true);
    assert!(!shard
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "gen_truncation"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &body).unwrap();
    let python = common::python();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects /openapi.json:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `webdataset` crate (an independent implementation of the format) reads a served shard:
/// every sample has the documented fields, keys are the sample indices, and the `json` member
/// names the same index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webdataset_crate_reads_a_served_shard() {
    let app = app().await;
    let uri = "/v1/shards/train-000003.tar?seed=4&views=2&shard_size=5&format=jpg";
    let (c, body) = call(&app, Method::GET, uri, Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-000003.tar");
    std::fs::write(&path, &body).unwrap();
    let ds = webdataset::WebDataset::builder(path.to_str().unwrap())
        .build()
        .unwrap();
    let samples: Vec<webdataset::Sample> = ds.iter().map(|s| s.unwrap()).collect();
    assert_eq!(samples.len(), 5);
    for (i, s) in samples.iter().enumerate() {
        let index = 15 + i as u64;
        assert_eq!(s.key(), Some(genrep_wire::sample_key(index).as_str()));
        for field in ["anchor.jpg", "pos0.jpg", "pos1.jpg", "cls", "json"] {
            assert!(s.get(field).is_some(), "sample {index} lacks {field}");
        }
        let json = match s.get("json").unwrap() {
            webdataset::Value::Bytes(b) => b.to_vec(),
            other => panic!("json member read as {other:?}"),
        };
        let meta: genrep_wire::SampleMeta = serde_json::from_slice(&json).unwrap();
        assert_eq!((meta.index, meta.seed, meta.views), (index, 4, 2));
    }
}

/// `genrep_images_generated_total` from `/metrics`.
async fn images_generated(app: &Router) -> u64 {
    let (_, body) = call(app, Method::GET, "/metrics", Body::empty()).await;
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .find(|l| l.starts_with("genrep_images_generated_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_requests_validate_but_generate_nothing() {
    let app = app().await;
    let before = images_generated(&app).await;
    for uri in [
        "/v1/grid.png?rows=16&views=8",
        "/v1/stream?views=8",
        "/v1/samples/5.png?views=8",
        "/v1/shards/train-000000.tar?views=8",
    ] {
        for _ in 0..12 {
            // More HEADs than stream slots (8): none may take one.
            let (c, body) = call(&app, Method::HEAD, uri, Body::empty()).await;
            assert_eq!(c, StatusCode::OK, "{uri}");
            assert!(body.is_empty(), "{uri}");
        }
    }
    let (c, _) = call(&app, Method::HEAD, "/v1/grid.png?rows=99", Body::empty()).await;
    assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        images_generated(&app).await,
        before,
        "a HEAD ran the generator"
    );
}

/// A body that never sends a byte.
fn silent_body() -> Body {
    Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>())
}

async fn post_generate(
    app: &Router,
    len: Option<u64>,
    body: Body,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(Method::POST).uri("/v1/generate");
    if let Some(n) = len {
        req = req.header("content-length", n);
    }
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_bodies_are_bounded_in_size_and_time() {
    let app = app().await;
    // A declared 1 GiB body is refused at once, before a byte is read.
    let t = Instant::now();
    let (c, v) = post_generate(&app, Some(1 << 30), silent_body()).await;
    assert_eq!(c, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error_type"], "payload_too_large");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("max_generate_latents"),
        "{v}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    // A body without a length that grows past the limit is cut off at it, not buffered whole:
    // 60 MB of latents for a server that takes 4.
    let row = format!("[{}]", vec!["0.5"; 64].join(","));
    let chunk = format!("{},", row).repeat(1000).into_bytes();
    let chunks = std::iter::once(Ok::<_, std::io::Error>(b"{\"z\": [".to_vec()))
        .chain(std::iter::repeat_n(chunk, 250).map(Ok));
    let (c, v) = post_generate(&app, None, Body::from_stream(futures::stream::iter(chunks))).await;
    assert_eq!(c, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // A declared small body that never arrives ends with 408 after body_timeout_s (2 s here).
    let t = Instant::now();
    let (c, v) = post_generate(&app, Some(100), silent_body()).await;
    assert_eq!(c, StatusCode::REQUEST_TIMEOUT, "{v}");
    assert_eq!(v["error_type"], "timeout");
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(5));
    // A body within the limit still works.
    let ok = format!(r#"{{"z": [{row}], "classes": [3], "format": "npy"}}"#);
    let (c, body) = call(&app, Method::POST, "/v1/generate", Body::from(ok)).await;
    assert_eq!(c, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

/// The embedded generator with `inspect` run on every forward pass's latents first.
struct Inspect<F>(Box<dyn Generator>, F);

impl<F: Fn(&Tensor) -> candle_core::Result<()> + Send + Sync> Generator for Inspect<F> {
    fn info(&self) -> &ModelInfo {
        self.0.info()
    }
    fn synthesize(
        &self,
        z: &Tensor,
        space: Space,
        classes: &ClassInput,
        knobs: &Knobs,
        noise: &[NoiseKey],
    ) -> genrep::generator::Result<Tensor> {
        (self.1)(z)?;
        self.0.synthesize(z, space, classes, knobs, noise)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_generator_answers_500_and_turns_not_ready() {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    // It panics on a latent whose first value is 3.25.
    let sentinel = |z: &Tensor| {
        let first: f32 = z.get(0)?.get(0)?.to_scalar()?;
        assert!(first != 3.25, "sentinel latent");
        Ok(())
    };
    let app = app_with(Box::new(Inspect(g, sentinel))).await;
    let mut z = vec!["0.1"; 64];
    z[0] = "3.25";
    let body = format!(r#"{{"z": [[{}]], "classes": [1]}}"#, z.join(","));
    let t = Instant::now();
    let (c, resp) = call(&app, Method::POST, "/v1/generate", Body::from(body)).await;
    assert_eq!(c, StatusCode::INTERNAL_SERVER_ERROR);
    let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(v["error_type"], "backend");
    // What went wrong inside is logged with an id; the client gets the id, not the text.
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("internal server error (id "), "{v}");
    assert!(
        !msg.contains("sentinel") && !msg.contains("panicked"),
        "{v}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // A load balancer now drains this replica; liveness stays up for the logs.
    let (c, _) = call(&app, Method::GET, "/ready", Body::empty()).await;
    assert_eq!(c, StatusCode::SERVICE_UNAVAILABLE);
    let (c, _) = call(&app, Method::GET, "/health", Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
}

/// A generator whose warm-up pass fails or panics marks the engine failed at once (one health
/// state, never ready): waiting for readiness ends with the warm-up error, and work queued
/// meanwhile is answered with it instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_warm_up_marks_the_engine_failed_and_answers_queued_work() {
    use genrep::engine::{Consumer, EngineError, Health};
    let load =
        || genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let failing = |_: &Tensor| Err(candle_core::Error::Msg("broken kernel".into()));
    let panicking = |_: &Tensor| -> candle_core::Result<()> { panic!("broken kernel") };
    // Slow to fail, so that work is queued while it warms up.
    let slow = |_: &Tensor| -> candle_core::Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        Err(candle_core::Error::Msg("broken kernel".into()))
    };
    let engines = [
        genrep::engine::Engine::start(
            Box::new(Inspect(load(), failing)),
            engine_config(8),
            Default::default(),
        ),
        genrep::engine::Engine::start(
            Box::new(Inspect(load(), panicking)),
            engine_config(8),
            Default::default(),
        ),
        genrep::engine::Engine::start(
            Box::new(Inspect(load(), slow)),
            engine_config(8),
            Default::default(),
        ),
    ];
    for e in engines {
        let d = e.spec().latent_dim;
        let c = Consumer::new("t", "t", 1);
        let job = || {
            Batch::from_z(
                vec![0.0; d],
                d,
                ClassInput::Ids(vec![1]),
                Knobs::default(),
                0,
            )
        };
        // Queued during the warm-up (or refused at once after it failed).
        let queued = e.try_submit(&c, job());
        let stream = e.submit(&c, job()).await;
        let t = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), e.wait_ready())
            .await
            .expect("never marked failed")
            .unwrap_err();
        assert!(
            matches!(err, EngineError::WarmUp(ref m) if m.contains("broken kernel")),
            "{err}"
        );
        assert!(matches!(e.health(), Health::WarmUpFailed(_)));
        assert!(!e.is_ready());
        let answered = tokio::time::timeout(Duration::from_secs(5), stream)
            .await
            .expect("a queued stream job was never answered")
            .unwrap();
        assert!(matches!(answered, Err(EngineError::WarmUp(_))));
        if let Ok(rx) = queued {
            let r = tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(r, Err(EngineError::WarmUp(_))));
        }
        // After the failure new single requests are refused at once.
        assert!(matches!(
            e.try_submit(&c, job()),
            Err(EngineError::WarmUp(_))
        ));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}

/// `genrep export` with a generator that fails its warm-up, or fails in the middle of the
/// shards: a non-zero outcome, and no file carries a shard's name (before, a half-written shard
/// was renamed to its final name while the export reported success).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_failures_leave_no_shard_with_a_final_name() {
    let load =
        || genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let passes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The warm-up and a few batches pass, then a batch fails (a producer panics in the
    // second generator): shards in progress at that moment must not get their names.
    let fail_later = {
        let passes = passes.clone();
        move |_: &Tensor| {
            if passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 6 {
                return Err(candle_core::Error::Msg("device lost".into()));
            }
            Ok(())
        }
    };
    let panics = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let panic_later = {
        let panics = panics.clone();
        move |_: &Tensor| -> candle_core::Result<()> {
            if panics.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 6 {
                panic!("kernel bug");
            }
            Ok(())
        }
    };
    let failing_warm_up = |_: &Tensor| Err(candle_core::Error::Msg("no memory".into()));
    let cases: Vec<(Box<dyn Generator>, &str)> = vec![
        (Box::new(Inspect(load(), failing_warm_up)), "warm-up"),
        (Box::new(Inspect(load(), fail_later)), "device lost"),
        (Box::new(Inspect(load(), panic_later)), "panicked"),
    ];
    for (g, why) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_path_buf();
        let r = tokio::task::spawn_blocking(move || {
            genrep::export::run(
                g,
                engine_config(4),
                genrep::export::ExportOptions {
                    out,
                    first: 0,
                    last: 5,
                    prefix: "train".into(),
                    shard_size: 20,
                    parallel: 3,
                    sampling: [("views".to_string(), "1".to_string())].into(),
                },
            )
        })
        .await
        .unwrap();
        let e = format!("{:#}", r.expect_err("the export must fail"));
        assert!(e.contains(why), "{why}: {e}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // Shards finished before the failure are whole; none of the others is left.
        for n in &names {
            assert!(!n.ends_with(".partial"), "{why}: {names:?}");
            let bytes = std::fs::read(dir.path().join(n)).unwrap();
            let samples = genrep_client::loader::parse_shard(n, &bytes, Some(20))
                .unwrap_or_else(|e| panic!("{why}: {n} is not a whole shard: {e}"));
            assert_eq!(samples.len(), 20);
        }
        assert!(names.len() < 6, "{why}: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_size_caps_every_forward_pass() {
    let load =
        || genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Records the largest forward pass it is given.
    let record = {
        let seen = seen.clone();
        move |z: &Tensor| {
            seen.fetch_max(z.dims()[0], std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    };
    let capped = app_with_batch(Box::new(Inspect(load(), record)), 2).await;
    let wide = app_with_batch(load(), 64).await;
    let row = vec!["0.3"; 64].join(",");
    let body = format!(
        r#"{{"z": [[{row}],[{row}],[{row}],[{row}]], "classes": [1,2,3,4], "format": "npy"}}"#
    );
    let (c, a) = call(
        &capped,
        Method::POST,
        "/v1/generate",
        Body::from(body.clone()),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let (_, b) = call(&wide, Method::POST, "/v1/generate", Body::from(body)).await;
    assert_eq!(a, b, "split passes give the same images as one pass");
    // A sample of 1 + 8 images is larger than the cap too.
    let uri = "/v1/samples/5.png?views=8";
    let (c, a) = call(&capped, Method::GET, uri, Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    let (_, b) = call(&wide, Method::GET, uri, Body::empty()).await;
    assert_eq!(a, b);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_are_namespaces_so_train_and_val_never_share_samples() {
    let app = app().await;
    let q = "seed=3&views=1&shard_size=4";
    let (_, train) = call(
        &app,
        Method::GET,
        &format!("/v1/shards/train-000000.tar?{q}"),
        Body::empty(),
    )
    .await;
    let (_, val) = call(
        &app,
        Method::GET,
        &format!("/v1/shards/val-000000.tar?{q}"),
        Body::empty(),
    )
    .await;
    assert_ne!(train, val);
    // The stream, the inspection endpoints and the metadata take the same namespace.
    let stream = |p: &str| format!("/v1/stream?seed=3&views=1&limit=4{p}");
    assert_eq!(
        call(&app, Method::GET, &stream("&prefix=val"), Body::empty())
            .await
            .1,
        val
    );
    assert_eq!(
        call(&app, Method::GET, &stream(""), Body::empty()).await.1,
        train
    );
    let (c, meta) = call(
        &app,
        Method::GET,
        "/v1/samples/2.json?seed=3&prefix=val",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
    let meta: genrep_wire::SampleMeta = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta.prefix, "val");
    let (_, train_meta) = call(
        &app,
        Method::GET,
        "/v1/samples/2.json?seed=3",
        Body::empty(),
    )
    .await;
    let train_meta: genrep_wire::SampleMeta = serde_json::from_slice(&train_meta).unwrap();
    assert_eq!(train_meta.prefix, "train");
    assert_ne!(meta.z_anchor, train_meta.z_anchor);
    for bad in [
        "/v1/stream?prefix=a.b",
        "/v1/grid.png?prefix=",
        "/v1/samples/1.png?prefix=%2F",
    ] {
        let (c, body) = call(&app, Method::GET, bad, Body::empty()).await;
        assert_eq!(c, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(String::from_utf8_lossy(&body).contains("prefix"), "{bad}");
    }
}

const ALICE: &str = "alice-0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef";

async fn keyed_app() -> Router {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let file = serde_json::json!({"consumer": [
        {"name": "alice", "key": ALICE, "max_streams": 1, "weight": 2},
        {"name": "bob", "key": BOB, "max_requests_per_s": 2.0},
    ]});
    std::fs::write(&path, file.to_string()).unwrap();
    let keys = genrep::api::auth::read_key_file(&path).unwrap();
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let cfg = engine_config(64);
    let access = genrep::server::Access {
        api_keys: Some(keys),
        cors_origins: vec!["https://viewer.example".into()],
    };
    let (app, _) =
        genrep::server::app_with(g, cfg, Limits::default(), &access, CancellationToken::new())
            .unwrap();
    ready(genrep::server::in_process(app)).await
}

/// A router served without peer addresses would make every client one consumer; it refuses
/// requests instead (500, logged), while probes still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_without_peer_addresses_refuses_requests() {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let (app, _) = genrep::server::app_with(
        g,
        engine_config(8),
        Limits::default(),
        &genrep::server::Access::default(),
        CancellationToken::new(),
    )
    .unwrap();
    let t = Instant::now();
    while call_without_peer(&app, Method::GET, "/ready", Body::empty())
        .await
        .0
        != StatusCode::OK
    {
        assert!(t.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (c, body) = call_without_peer(&app, Method::GET, "/v1/info", Body::empty()).await;
    assert_eq!(c, StatusCode::INTERNAL_SERVER_ERROR);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error_type"], "backend");
    let (c, _) = call(
        &genrep::server::in_process(app),
        Method::GET,
        "/v1/info",
        Body::empty(),
    )
    .await;
    assert_eq!(c, StatusCode::OK);
}

/// `uri` with an optional bearer key: status, headers, body.
async fn call_as(
    app: &Router,
    key: Option<&str>,
    uri: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().uri(uri);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    (parts.status, parts.headers, bytes.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_gate_every_route_but_probes_with_per_key_limits_and_metrics() {
    let app = keyed_app().await;
    // No key, an unknown key, another scheme: 401 JSON naming the problem.
    for (key, uri, says) in [
        (None, "/v1/info", "missing API key"),
        (Some("not-a-key-0123456789"), "/v1/info", "unknown API key"),
        (
            None,
            "/v1/shards/train-000000.tar?shard_size=2",
            "missing API key",
        ),
        (None, "/metrics", "missing API key"),
    ] {
        let (c, h, body) = call_as(&app, key, uri).await;
        assert_eq!(c, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error_type"], "unauthorized");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    let basic = Request::builder()
        .uri("/v1/info")
        .header("authorization", format!("Basic {ALICE}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(basic).await.unwrap().status(), 401);
    // Probes stay open.
    for p in ["/health", "/ready"] {
        assert_eq!(call_as(&app, None, p).await.0, StatusCode::OK);
    }
    // A bearer key and `?token=` give the same shard (the token is not a sampling parameter).
    let shard = "/v1/shards/train-000000.tar?shard_size=2";
    let (c, _, a) = call_as(&app, Some(ALICE), shard).await;
    assert_eq!(c, StatusCode::OK);
    let (c, _, b) = call_as(&app, None, &format!("{shard}&token={ALICE}")).await;
    assert_eq!(c, StatusCode::OK);
    assert_eq!(a, b);
    let (c, _, _) = call_as(&app, None, &format!("/v1/info?token={BOB}x")).await;
    assert_eq!(c, StatusCode::UNAUTHORIZED);

    // alice may hold one stream: the second gets 429 naming her limit.
    let first = app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/stream?views=1")
                .header("authorization", format!("Bearer {ALICE}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (c, _, body) = call_as(&app, Some(ALICE), "/v1/stream?views=1&limit=2").await;
    assert_eq!(c, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&body).contains("alice"));
    // bob's own limit is not alice's.
    let (c, _, _) = call_as(&app, Some(BOB), "/v1/stream?views=1&limit=2").await;
    assert_eq!(c, StatusCode::OK);
    drop(first);

    // bob: 2 requests/s (bursts of 2); his third at once is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(call_as(&app, Some(BOB), "/v1/info").await.0.as_u16());
    }
    assert_eq!(codes, [200, 200, 429]);

    // CORS for the configured origin.
    let pre = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/grid.png")
        .header("origin", "https://viewer.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(pre).await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://viewer.example"
    );

    // The document states the bearer scheme, and that the probes are open.
    let (c, _, doc) = call_as(&app, Some(ALICE), "/openapi.json").await;
    assert_eq!(c, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));
    assert_eq!(
        doc["paths"]["/health"]["get"]["security"],
        serde_json::json!([{}])
    );
    assert!(doc["paths"]["/v1/stream"]["get"]["responses"]["401"].is_object());

    // Per-consumer series carry the key's name, never the key.
    let (c, _, m) = call_as(&app, Some(ALICE), "/metrics").await;
    assert_eq!(c, StatusCode::OK);
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains(r#"genrep_consumer_requests_total{consumer="alice",status="200"}"#),
        "{m}"
    );
    assert!(m.contains(r#"genrep_consumer_requests_total{consumer="bob",status="429"} 1"#));
    assert!(m.contains(r#"genrep_consumer_samples_total{consumer="alice"}"#));
    assert!(!m.contains(ALICE) && !m.contains(BOB));
}

#[test]
fn bad_key_files_are_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("a.toml", "[[consumer]]\nname = \"a\"\nkey = \"short\"\n", "at least 16"),
        (
            "b.toml",
            "[[consumer]]\nname = \"a\"\nkey = \"0123456789abcdef\"\n[[consumer]]\nname = \"a\"\nkey = \"0123456789abcdefg\"\n",
            "appears twice",
        ),
        ("c.json", r#"{"consumer": [{"name": "a", "key": "0123456789abcdef", "wieght": 2}]}"#, "wieght"),
        ("d.json", r#"{"consumer": []}"#, "at least one"),
        ("e.toml", "[[consumer]]\nname = \"open\"\nkey = \"0123456789abcdef\"\n", "reserved"),
        ("f.json", "{", "f.json"),
    ];
    for (name, text, says) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = genrep::api::auth::read_key_file(&p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{name}: {e}");
    }
    let e = genrep::api::auth::read_key_file(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
}

/// In-process requests can come from different peers, and each peer of an open server is its
/// own consumer: one peer at its stream limit does not hold another back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_separate_consumers_in_process() {
    let g = genrep::embedded::load(&candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let limits = Limits {
        max_streams_per_consumer: 1,
        ..Limits::default()
    };
    let app = ready(genrep::server::app(
        g,
        engine_config(8),
        limits,
        CancellationToken::new(),
    ))
    .await;
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    // A holds its one stream open (the body is never read) ...
    let held = send_from(&app, a, Method::GET, "/v1/stream", Body::empty()).await;
    assert_eq!(held.status(), StatusCode::OK);
    let (c, body) = call_from(&app, a, Method::GET, "/v1/stream?limit=1", Body::empty()).await;
    assert_eq!(
        c,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // ... and B still gets its own.
    let (c, body) = call_from(&app, b, Method::GET, "/v1/stream?limit=1", Body::empty()).await;
    assert_eq!(c, StatusCode::OK);
    assert!(body.len() > 1024);
    drop(held);
}
