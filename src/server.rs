//! `genrep serve`: the engine and the router wired together, graceful shutdown and the drain
//! deadline. [`app`] builds the same router in-process (tests drive it with `oneshot`).

use crate::api::{router, AppState};
use crate::engine::{Engine, EngineConfig};
use crate::generator::Generator;
use crate::metrics::Metrics;
use crate::params::Limits;
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
}

/// What one client's sockets may hold: the protections a public deployment needs against
/// clients that open connections and never finish a request or never read a response.
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

/// The HTTP application over a started engine: call inside a tokio runtime. `shutdown` turns
/// `/ready` to 503 and ends streams at the next sample boundary when cancelled.
pub fn app(
    generator: Box<dyn Generator>,
    cfg: EngineConfig,
    limits: Limits,
    shutdown: CancellationToken,
) -> axum::Router {
    let engine = Engine::start(generator, cfg, Arc::new(Metrics::default()));
    router(AppState::new(engine, limits, shutdown))
}

/// Serves until SIGINT/SIGTERM, then drains: `/ready` answers 503, streams end at a sample
/// boundary, finite shards get `opts.drain` to finish.
pub fn run(
    generator: Box<dyn Generator>,
    cfg: EngineConfig,
    opts: ServeOptions,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let token = CancellationToken::new();
        let app = app(generator, cfg, opts.limits.clone(), token.clone());
        let addr = format!("{}:{}", opts.host, opts.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot bind {addr}"))?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        tokio::spawn(shutdown_signal(token.clone()));
        let connections = TaskTracker::new();
        accept_loop(listener, app, &opts.connections, &connections, &token).await;
        // Shutdown: no new connections; open ones finish their current response (streams end
        // at a sample boundary) within the drain deadline.
        connections.close();
        if tokio::time::timeout(opts.drain, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing remaining connections");
        }
        tracing::info!("bye");
        Ok(())
    })
}

/// Accepts connections until `token` is cancelled, each served by hyper with the header-read
/// timeout, under the connection cap, on a socket whose stalled writes time out.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: &ConnectionLimits,
    tracker: &TaskTracker,
    token: &CancellationToken,
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
            _ = token.cancelled() => return,
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
            |req: axum::http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
        ));
        let header_timeout = limits.header_read_timeout;
        let token = token.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let mut shutting_down = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                        break;
                    }
                    _ = token.cancelled(), if !shutting_down => {
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
