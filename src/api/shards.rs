//! Shards and streams: `GET|HEAD /v1/shards/{prefix}-{NNNNNN}.tar` and `GET|HEAD /v1/stream`.

use super::auth::ConsumerPolicy;
use super::error::{ApiError, ApiPath};
use super::params::{parse_shard_name, Query};
use super::AppState;
use crate::params::{Group, SampleRequest, DEFAULT_SHARD_SIZE};
use crate::pipeline::StreamEnd;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use genrep_wire::MAX_INDEX;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn tar_headers(first: u64, count: Option<u64>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    h.insert(genrep_wire::FIRST_INDEX_HEADER, first.into());
    if let Some(c) = count {
        h.insert(genrep_wire::SAMPLES_HEADER, c.into());
    }
    h
}

/// The answer to `HEAD`: the headers a `GET` would send, with nothing queued or generated.
/// The body is unsized: `Body::empty()` would announce `content-length: 0`, and size-probing
/// clients (fsspec) would take the resource for empty; its real length is not known up front.
pub(super) fn head_response(headers: HeaderMap) -> Response {
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
    let pipeline = st.pipeline.clone();
    let shutdown = st.shutdown.clone();
    let consumer = who.consumer.clone();
    tokio::spawn(async move {
        // The body ends when the last sender is gone: the slots are released first, so a
        // client that saw its response end can open the next one at once.
        let last_sender = tx.clone();
        pipeline
            .stream(consumer, Arc::new(req), start, end, tx, shutdown)
            .await;
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
pub(super) async fn shard(
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
    let (q, req) = Query::sampling(
        q.as_deref(),
        &st,
        &[Group::Sampling, Group::Encoding],
        &["shard_size"],
    )?;
    let req = req.with_prefix(prefix)?;
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
pub(super) async fn stream(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    method: Method,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let (q, req) = Query::sampling(
        q.as_deref(),
        &st,
        &[Group::Sampling, Group::Encoding],
        &["start", "limit", "prefix"],
    )?;
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
