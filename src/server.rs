//! `genrep serve`: the engine and the router wired together, connection limits, graceful
//! shutdown and the drain deadline. [`app`] builds the same router in-process (tests drive it
//! with `oneshot`).
//!
//! Shutdown (SIGINT/SIGTERM): `/ready` answers 503 at once while the listener keeps accepting
//! (a load balancer sees the replica drain instead of connection errors), endless streams end at
//! the next sample boundary with a tar end, finite shards get `--drain-timeout-s` to finish.
//! Then the listener closes. If shards had to be cut at the deadline the process exits non-zero.

use crate::api::auth::KeyEntry;
use crate::api::{router, AppState};
use crate::engine::EngineConfig;
use crate::generator::Generator;
use crate::metrics::Metrics;
use crate::params::Limits;
use crate::pipeline::Pipeline;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Where and how long to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub limits: Limits,
    pub connections: ConnectionLimits,
    /// On SIGINT/SIGTERM, how long finite shards may take to finish.
    pub drain: Duration,
    pub access: Access,
}

/// Who may use the server, and from where.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The consumers of `--api-keys`; `None` serves without keys (each peer address is then a
    /// consumer for fairness).
    pub api_keys: Option<Vec<KeyEntry>>,
    /// Origins allowed to call the API from a browser (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

/// What one client's sockets may hold: the protections a public deployment needs against
/// clients that open connections and never finish a request or never read a response.
///
/// The server speaks HTTP/1.1 only. Every client genrep serves (WebDataset and its curl/fsspec
/// readers, PyTorch jobs, `genrep-train`, load balancers such as nginx, which proxy to upstreams
/// over HTTP/1.1) uses it, and a sample stream gains nothing from multiplexing. HTTP/2 would
/// need its own defences: its flow-control window lets a client hold a stream open without ever
/// making the server write (so no write timeout fires), and protocol detection reads the first
/// bytes without a deadline. An HTTP/2 preface is answered as a malformed HTTP/1 request.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most; beyond it new ones are closed at once (long before the
    /// process runs out of file descriptors).
    pub max_connections: usize,
    /// Time to receive a request's complete header block.
    pub header_read_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection, which
    /// ends its stream and frees the stream slot and the queued work.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The HTTP application over a started engine, open (no API keys), for in-process use (tests
/// drive it with `oneshot`; see [`in_process`]): call inside a tokio runtime.
/// `shutdown` turns `/ready` to 503 and ends streams at the next sample boundary when cancelled.
pub fn app(
    generator: Box<dyn Generator>,
    cfg: EngineConfig,
    limits: Limits,
    shutdown: CancellationToken,
) -> axum::Router {
    let app = app_with(generator, cfg, limits, &Access::default(), shutdown)
        .expect("no CORS origins to parse")
        .0;
    in_process(app)
}

/// `app` for in-process use: requests without a socket get the peer 127.0.0.1 (they are all one
/// consumer) unless the caller sets `ConnectInfo` itself. Served through [`run`], every
/// request carries its real peer, and a router without one refuses requests.
pub fn in_process(app: axum::Router) -> axum::Router {
    app.layer(axum::middleware::map_request(
        |mut req: axum::extract::Request| async move {
            if req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .is_none()
            {
                req.extensions_mut().insert(axum::extract::ConnectInfo(
                    std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                ));
            }
            req
        },
    ))
}

/// [`app`] with API keys and CORS; also hands back the state (the drain watches its streams).
pub fn app_with(
    generator: Box<dyn Generator>,
    cfg: EngineConfig,
    limits: Limits,
    access: &Access,
    shutdown: CancellationToken,
) -> anyhow::Result<(axum::Router, AppState)> {
    let pipeline = Pipeline::start(generator, cfg, Arc::new(Metrics::default()));
    let state = AppState::with_keys(pipeline, limits, access.api_keys.clone(), shutdown);
    let mut app = router(state.clone());
    if !access.cors_origins.is_empty() {
        app = app.layer(cors(&access.cors_origins)?);
    }
    Ok((app, state))
}

/// CORS for browser inspection (grids, sample PNGs, metadata): the listed origins may call
/// every route with the `Authorization` header and read the `x-genrep-*` headers.
fn cors(origins: &[String]) -> anyhow::Result<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o)
                    .with_context(|| format!("--cors-origin `{o}` is not a valid origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::HEAD, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([
            HeaderName::from_static(genrep_wire::FIRST_INDEX_HEADER),
            HeaderName::from_static(genrep_wire::SAMPLES_HEADER),
            HeaderName::from_static(genrep_wire::ALPHAS_HEADER),
        ]))
}

/// Fails when the largest answer the limits allow (a grid of `max_grid_rows` samples with
/// `max_views` positives each, and a `max_generate_latents` generate) could not be allocated:
/// with too little memory the process would abort on the first such request instead.
pub fn check_memory(spec: &crate::generator::GeneratorSpec, limits: &Limits) -> anyhow::Result<()> {
    let per_image = spec.image_len();
    let padded = spec.channels * (spec.height + 2) * (spec.width + 2);
    let grid_images = limits.max_grid_rows.saturating_mul(limits.max_views + 1);
    // f32 images, their 8-bit copies, the canvas and its PNG (at most the canvas again).
    let grid = grid_images.saturating_mul(per_image * 5 + padded * 2);
    // f32 images and their npy/PNG encoding.
    let generate = limits.max_generate_latents.saturating_mul(per_image * 8);
    for (what, bytes, hint) in [
        (
            format!(
                "a full grid ({} rows of {} images at {}x{})",
                limits.max_grid_rows,
                limits.max_views + 1,
                spec.width,
                spec.height
            ),
            grid,
            "--max-grid-rows or --max-views",
        ),
        (
            format!("a full generate ({} latents)", limits.max_generate_latents),
            generate,
            "--max-generate-latents",
        ),
    ] {
        let mut probe: Vec<u8> = Vec::new();
        if probe.try_reserve_exact(bytes).is_err() {
            anyhow::bail!(
                "{what} needs {:.1} GiB of memory, which this process cannot allocate: lower {hint}",
                bytes as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// Serves until SIGINT/SIGTERM, then drains (see the module doc). Fails when the drain deadline
/// cut shards short.
pub fn run(
    generator: Box<dyn Generator>,
    cfg: EngineConfig,
    opts: ServeOptions,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let token = CancellationToken::new();
        let (app, state) = app_with(
            generator,
            cfg,
            opts.limits.clone(),
            &opts.access,
            token.clone(),
        )?;
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        // Nothing is accepted before the generator has run a full batch and the largest
        // answers are known to fit: a model that cannot serve fails here, with a message,
        // instead of after clients were told it is up. Connections wait in the backlog.
        check_memory(state.pipeline.spec(), &opts.limits)?;
        state
            .engine()
            .wait_ready()
            .await
            .context("the generator cannot serve; not starting")?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        tokio::spawn(shutdown_signal(token.clone()));
        let connections = TaskTracker::new();
        let closed = CancellationToken::new();
        let accepting = tokio::spawn(accept_loop(
            listener,
            app,
            opts.connections.clone(),
            connections.clone(),
            token.clone(),
            closed.clone(),
        ));
        token.cancelled().await;
        // Drain: streams end at their next sample boundary, shards run to their end.
        let deadline = tokio::time::Instant::now() + opts.drain;
        let open = || state.open_bodies.load(std::sync::atomic::Ordering::Acquire);
        while open() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut = open();
        closed.cancel();
        let _ = accepting.await;
        connections.close();
        // Finished bodies flush to their clients; cut ones are aborted now.
        let flush = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(1));
        if tokio::time::timeout(flush, connections.wait()).await.is_err() {
            tracing::warn!("closing connections that did not finish within the drain");
        }
        if cut > 0 {
            anyhow::bail!(
                "drain timeout ({} s): {cut} shard/stream response(s) were cut off before their end",
                opts.drain.as_secs()
            );
        }
        tracing::info!("drained; bye");
        Ok(())
    })
}

/// Serves `app` on `listener` with the connection handling of `genrep serve` (connection cap,
/// timeouts, per-peer consumers) until the runtime ends: for in-process measurements
/// (`genrep check`) that must see what a client of the real server sees.
pub fn spawn_serving(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
) {
    tokio::spawn(accept_loop(
        listener,
        app,
        limits,
        TaskTracker::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    ));
}

/// Accepts connections until `closed` is cancelled, each served by hyper with the header-read
/// timeout, under the connection cap, on a socket whose stalled writes time out. After
/// `shutdown`, open connections close once their current response ends and new ones serve a
/// single request (so probes still get their 503).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    closed: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; open connections go on.
                    tracing::warn!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closed.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: {} connections open (max_connections)", limits.max_connections);
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(sock);
        io.set_write_timeout(Some(limits.idle_timeout));
        let io = hyper_util::rt::TokioIo::new(Box::pin(io));
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            move |req: axum::http::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                // The peer address identifies the consumer on a server without API keys.
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let header_timeout = limits.header_read_timeout;
        let draining = shutdown.is_cancelled();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            // HTTP/1.1 only (see `ConnectionLimits`): hyper's header-read timeout then runs from
            // the first read after accept, and again between keep-alive requests.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(!draining);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let mut shutting_down = draining;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                        break;
                    }
                    _ = shutdown.cancelled(), if !shutting_down => {
                        shutting_down = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

async fn shutdown_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested: /ready is 503, streams end at the next sample boundary");
    token.cancel();
}
