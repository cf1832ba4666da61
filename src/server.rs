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
use tokio_util::sync::CancellationToken;

/// Where and how long to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub limits: Limits,
    /// On SIGINT/SIGTERM, how long finite shards may take to finish.
    pub drain: Duration,
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
        let wait = token.clone();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { wait.cancelled().await });
        let deadline = async {
            token.cancelled().await;
            tokio::time::sleep(opts.drain).await;
        };
        tokio::select! {
            r = server => r.context("server error")?,
            _ = deadline => tracing::warn!("drain timeout: closing remaining connections"),
        }
        tracing::info!("bye");
        Ok(())
    })
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
