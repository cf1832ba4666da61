//! HTTP API (axum): shards, streams, inspection, explicit generation, info, health and metrics.

pub mod auth;
pub mod error;
mod openapi;
pub mod params;

use crate::engine::{produce, Engine, StreamEnd};
use crate::format::image::{grid, grid_of, Image8};
use crate::format::npy;
use crate::generator::inputs::{check_latents, check_truncation, class_input, ClassArg};
use crate::generator::ClassInput;
pub use crate::params::Limits;
use crate::params::{Group, SampleRequest, DEFAULT_SHARD_SIZE};
use auth::{ConsumerPolicy, Consumers};
use axum::body::{Body, Bytes};
use axum::extract::{Extension, MatchedPath, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::{ApiError, ApiPath, ErrorType};
use genrep_wire::MAX_INDEX;
use params::{parse_shard_name, Query};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub limits: Limits,
    /// Live shard/stream responses hold a permit until their body ends.
    pub stream_permits: Arc<Semaphore>,
    /// Cancelled on SIGINT/SIGTERM: `/ready` turns 503, streams end at a sample boundary.
    pub shutdown: CancellationToken,
    /// Largest `POST /v1/generate` body: what `max_generate_latents` latents (and class
    /// vectors) can take as JSON, so a huge body is refused before it is read or parsed.
    pub generate_body_limit: usize,
    /// API keys (or per-peer consumers on an open server) and their limits.
    pub consumers: Arc<Consumers>,
    /// Shard/stream bodies not yet finished (the drain waits for them; what is left at its
    /// deadline was cut off).
    pub open_bodies: Arc<std::sync::atomic::AtomicUsize>,
}

impl AppState {
    /// An open server (no API keys): each peer address is a consumer.
    pub fn new(engine: Engine, limits: Limits, shutdown: CancellationToken) -> Self {
        Self::with_keys(engine, limits, None, shutdown)
    }

    /// `keys`: the consumers of `--api-keys`; `None` serves without keys.
    pub fn with_keys(
        engine: Engine,
        limits: Limits,
        keys: Option<Vec<auth::KeyEntry>>,
        shutdown: CancellationToken,
    ) -> Self {
        let spec = engine.spec();
        // 32 bytes per JSON number (`-0.12345678901234567, ` is 22) plus room for the rest.
        let per_row = (spec.latent_dim + spec.num_classes) * 32 + 64;
        Self {
            stream_permits: Arc::new(Semaphore::new(limits.max_concurrent_streams)),
            generate_body_limit: limits.max_generate_latents * per_row + (64 << 10),
            // A consumer reads ahead as much as one stream does (two batches), however many
            // streams it opens; a sample larger than that still fits.
            open_bodies: Arc::default(),
            consumers: Arc::new(Consumers::new(
                keys,
                limits.max_streams_per_consumer,
                (2 * engine.config().max_batch_size).max(limits.max_views + 1),
            )),
            engine,
            limits,
            shutdown,
        }
    }

    fn check_ready(&self) -> Result<(), ApiError> {
        use crate::engine::Health;
        if self.shutdown.is_cancelled() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        match self.engine.health() {
            Health::Ready => Ok(()),
            Health::WarmingUp => Err(ApiError::unavailable("the generator is still warming up")),
            Health::WarmUpFailed(_) => Err(ApiError::unavailable(
                "the generator failed its warm-up pass (see the server log)",
            )),
            Health::Panicked(_) => Err(ApiError::unavailable(
                "the generator panicked (see the server log): this server must be restarted",
            )),
        }
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/shards/{name}", get(shard))
        .route("/v1/stream", get(stream))
        .route("/v1/samples/{file}", get(sample_file))
        .route("/v1/grid.png", get(grid_png))
        .route("/v1/generate", post(generate))
        .route("/v1/info", get(info))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::spec))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(access_log())
        // Only `/v1/generate` reads a body, under its own limit (`generate_body_limit`).
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// One INFO line per request (method, path, status, latency): the access log.
fn access_log() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&Request) -> tracing::Span,
> {
    use tower_http::trace::{DefaultOnResponse, TraceLayer};
    fn span(req: &Request) -> tracing::Span {
        tracing::info_span!(
            "request",
            method = %req.method(),
            uri = %auth::redacted_uri(req.uri()),
            version = ?req.version(),
        )
    }
    TraceLayer::new_for_http()
        .make_span_with(span as fn(&Request) -> tracing::Span)
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
}

/// The consumer label of a response (set by [`authenticate`], read by [`track`]).
#[derive(Clone)]
struct ConsumerLabel(Arc<str>);

/// Counts every response by route template and status, and by consumer.
async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let m = st.engine.metrics();
    m.count_request(&route, status);
    if let Some(ConsumerLabel(c)) = resp.extensions().get::<ConsumerLabel>() {
        m.count_consumer_request(c, status);
    }
    resp
}

/// Identifies the consumer (API key, or peer address on an open server) and applies its rate
/// limit; `/health` and `/ready` stay open for probes.
async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/health" | "/ready") {
        return next.run(req).await;
    }
    match st.consumers.admit(&mut req) {
        Err(e) => e.into_response(),
        Ok(policy) => {
            let label = ConsumerLabel(policy.consumer.label.clone());
            let mut resp = match policy.check_rate() {
                Ok(()) => {
                    req.extensions_mut().insert(policy);
                    next.run(req).await
                }
                Err(e) => e.into_response(),
            };
            resp.extensions_mut().insert(label);
            resp
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorType::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn tar_headers(first: u64, count: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert("x-genrep-first-index", first.into());
    if let Some(c) = count {
        h.insert(genrep_wire::SAMPLES_HEADER, c.into());
    }
    h
}

/// The answer to `HEAD`: the headers a `GET` would send, with nothing queued or generated.
/// The body is unsized: `Body::empty()` would announce `content-length: 0`, and size-probing
/// clients (fsspec) would take the resource for empty; its real length is not known up front.
fn head_response(headers: HeaderMap) -> Response {
    let none = futures::stream::empty::<Result<Bytes, std::io::Error>>();
    (headers, Body::from_stream(none)).into_response()
}

/// Starts a producer feeding a streamed body; the server's and the consumer's stream permits
/// live until the body ends.
fn stream_body(
    st: &AppState,
    who: &ConsumerPolicy,
    req: SampleRequest,
    start: u64,
    end: StreamEnd,
) -> Result<Body, ApiError> {
    let mine = who.stream_slot()?;
    let permit = st.stream_permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!(
            "{} streams are open (max_concurrent_streams); retry shortly",
            st.limits.max_concurrent_streams
        ))
    })?;
    let (tx, rx) = mpsc::channel(4);
    let engine = st.engine.clone();
    let shutdown = st.shutdown.clone();
    let consumer = who.consumer.clone();
    tokio::spawn(async move {
        // The body ends when the last sender is gone: the slots are released first, so a
        // client that saw its response end can open the next one at once.
        let last_sender = tx.clone();
        produce(engine, consumer, Arc::new(req), start, end, tx, shutdown).await;
        drop((permit, mine));
        drop(last_sender);
    });
    // Counted until hyper drops the body: after its last chunk, or when the connection dies.
    struct Open(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
    st.open_bodies
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let open = Open(st.open_bodies.clone());
    Ok(Body::from_stream(futures::StreamExt::map(
        ReceiverStream::new(rx),
        move |chunk| {
            let _ = &open;
            chunk
        },
    )))
}

/// `GET|HEAD /v1/shards/{prefix}-{NNNNNN}.tar`: samples [n·S, (n+1)·S).
async fn shard(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    ApiPath(name): ApiPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (prefix, n) = parse_shard_name(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "no shard `{name}`: shard names are {{prefix}}-{{NNNNNN}}.tar (prefix of letters, digits, `_` or `-`; 6-12 digits)"
        ))
    })?;
    let q = Query::parse(
        q.as_deref(),
        &[Group::Sampling, Group::Encoding],
        &["shard_size"],
    )?;
    let req = q
        .sample_request(st.engine.spec(), &st.limits)?
        .with_prefix(prefix)?;
    let size = q.u64_in(
        "shard_size",
        // A server configured below the default serves its maximum instead of rejecting
        // requests that give no size.
        DEFAULT_SHARD_SIZE.min(st.limits.max_shard_size),
        1,
        st.limits.max_shard_size,
    )?;
    let start = n
        .checked_mul(size)
        .filter(|s| s.checked_add(size).is_some_and(|e| e <= MAX_INDEX))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "shard {n} with shard_size {size} is past the last sample index {}",
                MAX_INDEX - 1
            ))
        })?;
    st.check_ready()?;
    let headers = tar_headers(start, Some(size));
    if method == Method::HEAD {
        return Ok(head_response(headers));
    }
    let body = stream_body(&st, &who, req, start, StreamEnd::Shard(start + size))?;
    Ok((headers, body).into_response())
}

/// `GET /v1/stream?start=I&limit=N`: an endless (or limited) tar stream from sample `start`.
/// `HEAD` validates and answers the headers without taking a stream slot.
async fn stream(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = Query::parse(
        q.as_deref(),
        &[Group::Sampling, Group::Encoding],
        &["start", "limit", "prefix"],
    )?;
    let req = q.sample_request(st.engine.spec(), &st.limits)?;
    let start = q.index("start", 0)?;
    let limit = match q.u64_in("limit", 0, 1, MAX_INDEX - start) {
        Ok(v) if v > 0 => Some(v),
        Ok(_) => None,
        Err(e) => return Err(e),
    };
    st.check_ready()?;
    if method == Method::HEAD {
        return Ok(head_response(tar_headers(start, limit)));
    }
    let end = StreamEnd::Stream(limit.map(|l| start + l));
    let body = stream_body(&st, &who, req, start, end)?;
    Ok((tar_headers(start, limit), body).into_response())
}

/// Queues one sample's images (429 when the queue is full).
fn submit_sample(
    st: &AppState,
    who: &ConsumerPolicy,
    req: &SampleRequest,
    index: u64,
) -> Result<tokio::sync::oneshot::Receiver<crate::engine::JobOutput>, ApiError> {
    let l = req.latents(st.engine.spec(), index);
    let (rows, classes) = crate::engine::job_inputs(&l);
    Ok(st
        .engine
        .try_submit(&who.consumer, rows, classes, req.settings.gen_truncation)?)
}

/// Waits for a job's images.
async fn images_of(
    rx: tokio::sync::oneshot::Receiver<crate::engine::JobOutput>,
) -> Result<Arc<Vec<f32>>, ApiError> {
    Ok(rx
        .await
        .map_err(|_| ApiError::unavailable("the generator is shutting down"))??)
}

fn image_rows(spec: &crate::generator::GeneratorSpec, images: &[f32]) -> Vec<Image8> {
    let (c, r) = (spec.channels, spec.resolution);
    images
        .chunks_exact(c * r * r)
        .map(|x| Image8::from_chw(x, c, r, r))
        .collect()
}

fn png_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}

/// `GET /v1/samples/{index}.png|.json`: one sample's views side by side, or its metadata.
async fn sample_file(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    ApiPath(file): ApiPath<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (idx, ext) = file
        .rsplit_once('.')
        .filter(|(i, e)| {
            !i.is_empty() && i.chars().all(|c| c.is_ascii_digit()) && (*e == "png" || *e == "json")
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no sample file `{file}`: use {{index}}.png or {{index}}.json"
            ))
        })?;
    let index = idx
        .parse::<u64>()
        .ok()
        .filter(|&i| i < MAX_INDEX)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "sample index `{idx}` out of range [0, {}]",
                MAX_INDEX - 1
            ))
        })?;
    let q = Query::parse(q.as_deref(), &[Group::Sampling], &["prefix"])?;
    let req = q.sample_request(st.engine.spec(), &st.limits)?;
    let spec = st.engine.spec().clone();
    if ext == "json" {
        let l = req.latents(&spec, index);
        return Ok(Json(req.meta(&spec, &l)).into_response());
    }
    st.check_ready()?;
    if method == Method::HEAD {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        return Ok(head_response(h));
    }
    let images = images_of(submit_sample(&st, &who, &req, index)?).await?;
    let png = tokio::task::spawn_blocking(move || grid(&[image_rows(&spec, &images)], 2).to_png())
        .await
        .map_err(|e| ApiError::from(crate::engine::EngineError::Backend(e.to_string())))?;
    Ok(png_response(png))
}

/// `GET /v1/grid.png?rows=R&start=I`: R samples, one row each (anchor then positives).
/// `HEAD` validates and answers the headers without running the generator.
async fn grid_png(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = Query::parse(
        q.as_deref(),
        &[Group::Sampling],
        &["rows", "start", "prefix"],
    )?;
    let req = q.sample_request(st.engine.spec(), &st.limits)?;
    // A grid's rows are queued together, in the part of the queue streams leave free: a larger
    // grid could never be admitted.
    let max_rows = (st.limits.max_grid_rows as u64).min(st.engine.max_interactive_jobs() as u64);
    if max_rows == 0 {
        return Err(ApiError::not_found(
            "grids are disabled on this server (max_grid_rows = 0)",
        ));
    }
    let rows = q.u64_in("rows", 8.min(max_rows), 1, max_rows)?;
    let start = q.index("start", 0)?;
    if start + rows > MAX_INDEX {
        return Err(ApiError::invalid(format!(
            "parameter `start`: start + rows must be <= {MAX_INDEX}"
        )));
    }
    st.check_ready()?;
    if method == Method::HEAD {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        return Ok(head_response(h));
    }
    let spec = st.engine.spec().clone();
    // All rows are queued together (or none), before waiting, so they can share a forward pass.
    let jobs = (start..start + rows)
        .map(|i| crate::engine::job_inputs(&req.latents(&spec, i)))
        .collect();
    let pending = st
        .engine
        .try_submit_all(&who.consumer, jobs, req.settings.gen_truncation)?;
    let mut all = Vec::new();
    for rx in pending {
        all.push(images_of(rx).await?);
    }
    let png = tokio::task::spawn_blocking(move || {
        let rows: Vec<Vec<Image8>> = all.iter().map(|imgs| image_rows(&spec, imgs)).collect();
        grid(&rows, 2).to_png()
    })
    .await
    .map_err(|e| ApiError::from(crate::engine::EngineError::Backend(e.to_string())))?;
    Ok(png_response(png))
}

/// Body of `POST /v1/generate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    /// Latents, one row per image.
    z: Vec<Vec<f32>>,
    /// Class id per row (conditional generators).
    #[serde(default)]
    classes: Option<Vec<i64>>,
    /// Soft class vectors per row, instead of `classes`.
    #[serde(default)]
    class_vectors: Option<Vec<Vec<f32>>>,
    /// The generator's truncation input.
    #[serde(default)]
    truncation: Option<f64>,
    /// `png` (grid), `npy` ([B, C, H, W] float32) or `tar` (one PNG per image).
    #[serde(default)]
    format: Option<String>,
}

/// The body of `POST /v1/generate`, read under the route's size limit and the body timeout:
/// a declared oversize `Content-Length` is refused before anything is read, a body that grows
/// past the limit is cut off at it, and JSON is parsed off the async threads.
async fn read_generate_body(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<GenerateBody, ApiError> {
    let limit = st.generate_body_limit;
    let too_large = || {
        ApiError::new(
            ErrorType::PayloadTooLarge,
            format!(
                "request body over {limit} bytes (what max_generate_latents = {} latents take as JSON)",
                st.limits.max_generate_latents
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut data = body.into_data_stream();
    if declared.is_some_and(|n| n > limit as u64) {
        // A client that asked `Expect: 100-continue` sends nothing until invited: reading
        // would invite the refused body. Anyone else is sending it already.
        let waits = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits {
            linger(data);
        }
        return Err(too_large());
    }
    let timeout = std::time::Duration::from_secs(st.limits.body_timeout_s);
    let read = async {
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = futures::StreamExt::next(&mut data).await {
            let chunk = chunk
                .map_err(|e| ApiError::invalid(format!("cannot read the request body: {e}")))?;
            if buf.len() + chunk.len() > limit {
                return Err(None);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let bytes = match tokio::time::timeout(timeout, read).await {
        Err(_) => {
            return Err(ApiError::new(
                ErrorType::Timeout,
                format!(
                    "request body not received within {} s (body_timeout_s)",
                    st.limits.body_timeout_s
                ),
            ))
        }
        Ok(Err(None)) => {
            linger(data);
            return Err(too_large());
        }
        Ok(Err(Some(e))) => return Err(e),
        Ok(Ok(b)) => b,
    };
    tokio::task::spawn_blocking(move || serde_json::from_slice::<GenerateBody>(&bytes))
        .await
        .map_err(|e| ApiError::from(crate::engine::EngineError::Backend(e.to_string())))?
        .map_err(|e| {
            ApiError::invalid(format!("request body is not a valid generate request: {e}"))
        })
}

/// After an early 413 the rest of the body is read and thrown away for a while (nginx's
/// lingering close): closing a socket with unread input makes the kernel reset the connection,
/// and a client still sending would see a broken pipe instead of the answer. Bounded in time
/// (5 s, or 1 s without data); the connection closes after it (the answer says
/// `Connection: close`).
fn linger(mut data: axum::body::BodyDataStream) {
    tokio::spawn(async move {
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let next = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                futures::StreamExt::next(&mut data),
            );
            match tokio::time::timeout_at(end, next).await {
                Ok(Ok(Some(Ok(_)))) => continue,
                _ => break,
            }
        }
    });
}

/// `POST /v1/generate`: explicit latents (+ classes, truncation) → images.
async fn generate(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = match read_generate_body(&st, &headers, body).await {
        Ok(b) => b,
        Err(e) if e.error_type == ErrorType::PayloadTooLarge => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let spec = st.engine.spec().clone();
    let (n, d) = (b.z.len(), spec.latent_dim);
    if n == 0 || n > st.limits.max_generate_latents {
        return Err(ApiError::invalid(format!(
            "`z` has {n} latents, allowed 1..={} (max_generate_latents)",
            st.limits.max_generate_latents
        )));
    }
    let mut rows = Vec::with_capacity(n * d);
    for (i, z) in b.z.iter().enumerate() {
        if z.len() != d {
            return Err(ApiError::invalid(format!(
                "`z[{i}]` has length {}, expected latent_dim {d}",
                z.len()
            )));
        }
        rows.extend_from_slice(z);
    }
    check_latents(&spec, n, d, &rows, "`z`").map_err(ApiError::invalid)?;
    let arg = match (b.classes, b.class_vectors) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give `classes` or `class_vectors`, not both",
            ))
        }
        (Some(ids), None) => ClassArg::Ids(ids),
        (None, Some(v)) => ClassArg::Vectors {
            rows: v.len(),
            cols: v.first().map_or(0, Vec::len),
            values: if v.iter().all(|r| r.len() == spec.num_classes) {
                v.into_iter().flatten().collect()
            } else {
                Vec::new()
            },
        },
        (None, None) => ClassArg::Absent,
    };
    let classes =
        class_input(&spec, n, arg, "`classes`", "`class_vectors`").map_err(ApiError::invalid)?;
    let t = b
        .truncation
        .unwrap_or(crate::params::DEFAULT_GEN_TRUNCATION);
    check_truncation(t, "`truncation`").map_err(ApiError::invalid)?;
    let format = b.format.as_deref().unwrap_or("png").to_string();
    if !["png", "npy", "tar"].contains(&format.as_str()) {
        return Err(ApiError::invalid(format!(
            "`format` must be one of png, npy, tar, got `{format}`"
        )));
    }
    st.check_ready()?;
    let ids = match &classes {
        ClassInput::Ids(v) => Some(v.clone()),
        _ => None,
    };
    let images = images_of(st.engine.try_submit(&who.consumer, rows, classes, t)?).await?;
    let resp = tokio::task::spawn_blocking(move || {
        let (c, r) = (spec.channels, spec.resolution);
        match format.as_str() {
            "npy" => (
                [(header::CONTENT_TYPE, "application/octet-stream")],
                npy::write_f32(&[n, c, r, r], &images),
            )
                .into_response(),
            "tar" => {
                let mut out = Vec::new();
                for (i, img) in image_rows(&spec, &images).into_iter().enumerate() {
                    let cls = ids.as_ref().map(|ids| ids[i]);
                    out.extend_from_slice(&crate::wds::image_sample(
                        &format!("{i:06}"),
                        img.to_png(),
                        cls,
                    ));
                }
                out.extend_from_slice(&crate::wds::TAR_END);
                ([(header::CONTENT_TYPE, "application/x-tar")], out).into_response()
            }
            _ => png_response(grid_of(&image_rows(&spec, &images), 8, 2).to_png()),
        }
    })
    .await
    .map_err(|e| ApiError::from(crate::engine::EngineError::Backend(e.to_string())))?;
    Ok(resp)
}

/// `GET /v1/info`: the generator, defaults and limits.
async fn info(State(st): State<AppState>) -> Json<serde_json::Value> {
    let e = &st.engine;
    let cfg = e.config();
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generator": e.spec(),
        "ready": e.is_ready(),
        "sampler": {
            "algorithm": "chacha20 per (prefix, seed, part, index), key = seed_le || part_le || sha256(\"genrep/sampler/2\" || 0x00 || prefix)[..16]",
            "version": crate::sampler::rng::VERSION,
            "methods": genrep_wire::Method::ALL,
            "formats": genrep_wire::ImageFormat::ALL,
        },
        "defaults": crate::params::defaults_json(),
        "limits": {
            "max_views": st.limits.max_views,
            "max_shard_size": st.limits.max_shard_size,
            "max_concurrent_streams": st.limits.max_concurrent_streams,
            "max_generate_latents": st.limits.max_generate_latents,
            "max_grid_rows": st.limits.max_grid_rows,
            "max_batch_size": cfg.max_batch_size,
            "max_batch_wait_ms": cfg.max_batch_wait.as_millis() as u64,
            "max_queue": cfg.max_queue,
            "max_index": MAX_INDEX - 1,
        },
    }))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    st.check_ready()?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.engine.metrics().render(),
    )
        .into_response()
}
