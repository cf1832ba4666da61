//! HTTP API (axum): the router, the handlers' shared state and the middleware (consumer
//! identification, metrics, access log). The routes live by family: [`shards`] (shards and
//! streams), [`inspect`] (sample files, grids), [`generate`] (explicit latents), [`meta`]
//! (info, health, readiness, metrics) and `openapi`. Handlers parse and check parameters and
//! call the [`crate::pipeline`]; errors become statuses in [`error`].

pub mod auth;
pub mod error;
mod generate;
mod inspect;
pub mod keys;
mod meta;
mod openapi;
pub mod params;
mod shards;

use crate::engine::Engine;
pub use crate::params::Limits;
use crate::pipeline::Pipeline;
use auth::Consumers;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, ErrorType};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
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
    pub fn new(pipeline: Pipeline, limits: Limits, shutdown: CancellationToken) -> Self {
        Self::with_keys(pipeline, limits, None, shutdown)
    }

    /// `keys`: the consumers of `--api-keys`; `None` serves without keys.
    pub fn with_keys(
        pipeline: Pipeline,
        limits: Limits,
        keys: Option<Vec<auth::KeyEntry>>,
        shutdown: CancellationToken,
    ) -> Self {
        let engine = pipeline.engine();
        let spec = engine.spec();
        // 32 bytes per JSON number (`-0.12345678901234567, ` is 22) plus room for the rest.
        let widest = spec
            .spaces
            .iter()
            .map(|s| s.dim)
            .max()
            .unwrap_or(spec.latent_dim);
        let per_row = (widest + spec.num_classes) * 32 + 64;
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
            pipeline,
            limits,
            shutdown,
        }
    }

    pub fn engine(&self) -> &Engine {
        self.pipeline.engine()
    }

    fn check_ready(&self) -> Result<(), ApiError> {
        use crate::engine::Health;
        if self.shutdown.is_cancelled() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        match self.engine().health() {
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
        .route("/v1/shards/{name}", get(shards::shard))
        .route("/v1/stream", get(shards::stream))
        .route("/v1/samples/{file}", get(inspect::sample_file))
        .route("/v1/grid.png", get(inspect::grid_png))
        .route("/v1/walks.png", get(inspect::walks_png))
        .route("/v1/generate", post(generate::generate))
        .route("/v1/info", get(meta::info))
        .route("/health", get(meta::health))
        .route("/ready", get(meta::ready))
        .route("/metrics", get(meta::metrics))
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
    let m = st.pipeline.metrics();
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
