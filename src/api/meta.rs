//! About the server: `GET /v1/info`, `/health`, `/ready` and `/metrics`.

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use genrep_wire::MAX_INDEX;

/// `GET /v1/info`: the generator, defaults and limits.
pub(super) async fn info(State(st): State<AppState>) -> Json<serde_json::Value> {
    let e = st.engine();
    let cfg = e.config();
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generator": e.spec(),
        "assets": st.pipeline.view_context().assets.names().collect::<Vec<_>>(),
        "ready": e.is_ready(),
        "sampler": {
            "algorithm": "chacha20 per (prefix, seed, part, index), key = seed_le || part_le || sha256(\"genrep/sampler/2\" || 0x00 || prefix)[..16]",
            "version": crate::sampler::rng::VERSION,
            "methods": genrep_wire::Method::ALL,
            "formats": genrep_wire::ImageFormat::ALL,
        },
        "defaults": crate::params::defaults_json(e.spec()),
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

pub(super) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub(super) async fn ready(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    st.check_ready()?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.pipeline.metrics().render(),
    )
        .into_response()
}
