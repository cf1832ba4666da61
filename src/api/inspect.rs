//! Inspection: `GET /v1/samples/{index}.png|.json`, `GET /v1/grid.png` and
//! `GET /v1/walks.png`.

use super::auth::ConsumerPolicy;
use super::error::{ApiError, ApiPath};
use super::params::Query;
use super::shards::head_response;
use super::AppState;
use crate::params::Group;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use genrep_wire::MAX_INDEX;
use std::sync::Arc;

pub(super) fn png_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png")], bytes).into_response()
}

/// `GET /v1/samples/{index}.png|.json`: one sample's views side by side, or its metadata.
pub(super) async fn sample_file(
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
    let q = Query::parse(
        q.as_deref(),
        st.pipeline.spec(),
        &[Group::Sampling],
        &["prefix"],
    )?;
    let req = q.sample_request(st.pipeline.spec(), &st.limits)?;
    if ext == "json" {
        return Ok(Json(st.pipeline.meta(&req, index)).into_response());
    }
    st.check_ready()?;
    if method == Method::HEAD {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        return Ok(head_response(h));
    }
    let png = st.pipeline.sample_png(&who.consumer, &req, index).await?;
    Ok(png_response(png))
}

/// A grid's `start` and `rows` (default `default`). Its rows are queued together, in the part
/// of the queue streams leave free: a larger grid could never be admitted.
fn grid_rows(q: &Query, st: &AppState, default: u64) -> Result<(u64, u64), ApiError> {
    let max_rows = (st.limits.max_grid_rows as u64).min(st.engine().max_interactive_jobs() as u64);
    if max_rows == 0 {
        return Err(ApiError::not_found(
            "grids are disabled on this server (max_grid_rows = 0)",
        ));
    }
    let rows = q.u64_in("rows", default.min(max_rows), 1, max_rows)?;
    let start = q.index("start", 0)?;
    if start + rows > MAX_INDEX {
        return Err(ApiError::invalid(format!(
            "parameter `start`: start + rows must be <= {MAX_INDEX}"
        )));
    }
    Ok((start, rows))
}

/// `GET /v1/grid.png?rows=R&start=I`: R samples, one row each (anchor then positives).
/// `HEAD` validates and answers the headers without running the generator.
pub(super) async fn grid_png(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (q, req) = Query::sampling(
        q.as_deref(),
        &st,
        &[Group::Sampling],
        &["rows", "start", "prefix"],
    )?;
    let (start, rows) = grid_rows(&q, &st, 8)?;
    st.check_ready()?;
    if method == Method::HEAD {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        return Ok(head_response(h));
    }
    let png = st
        .pipeline
        .grid_png(&who.consumer, &req, start, rows)
        .await?;
    Ok(png_response(png))
}

/// `GET /v1/walks.png?walk=zoom&steps=9&rows=4`: rows of anchors (samples `start..`, with the
/// request's seed, prefix, classes and anchor bound) moved along one walk from −α to +α.
/// `HEAD` validates and answers the headers without running the generator.
pub(super) async fn walks_png(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (q, req) = Query::sampling(
        q.as_deref(),
        &st,
        &[Group::Sampling],
        &["walk", "steps", "rows", "start", "prefix"],
    )?;
    let spec = st.pipeline.spec();
    let set = spec.walks.as_ref().ok_or_else(|| {
        ApiError::invalid(format!(
            "walks.png: {}",
            crate::walks::set::no_walks_message(&spec.name)
        ))
    })?;
    let walk = match q.get("walk") {
        Some(name) => set.index(name).ok_or_else(|| {
            let name: String = name.chars().take(32).collect();
            ApiError::invalid(format!(
                "parameter `walk`: no walk `{name}` (loaded walks: {})",
                set.names()
            ))
        })?,
        None => 0,
    };
    // Rows × columns images, within what a full grid may hold (the server checked that much
    // memory at start).
    let (start, rows) = grid_rows(&q, &st, 4)?;
    let max_steps = (st.limits.max_views as u64 + 1).clamp(2, 33);
    let steps = q.u64_in("steps", 9.min(max_steps), 2, max_steps)? as usize;
    let alphas =
        crate::walks::set::sweep(set.walks[walk].alpha_range, steps, req.settings.steer.scale);
    let shown: Vec<String> = alphas.iter().map(|a| format!("{a:.4}")).collect();
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(
        genrep_wire::ALPHAS_HEADER,
        HeaderValue::from_str(&shown.join(",")).expect("ASCII numbers"),
    );
    st.check_ready()?;
    if method == Method::HEAD {
        return Ok(head_response(h));
    }
    let png = st
        .pipeline
        .walks_png(&who.consumer, &req, walk, &alphas, start, rows)
        .await?;
    Ok((h, png).into_response())
}
