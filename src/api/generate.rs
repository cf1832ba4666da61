//! Explicit generation: `POST /v1/generate` (latents, classes and the generator's own inputs
//! in a JSON body → a PNG grid, an npy array or a tar of PNGs).

use super::auth::ConsumerPolicy;
use super::error::{ApiError, ErrorType};
use super::AppState;
use crate::generator::inputs::{check_latents, class_input, ClassArg};
use crate::generator::{ClassInput, GeneratorSpec, Knobs, Space};
use crate::params::decl::{Kind, Value};
use crate::pipeline::{ExplicitInput, GenerateFormat};
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

/// Body of `POST /v1/generate`. Besides these fields it takes the generator's own inputs by
/// name (`gen_truncation` for BigGAN; `truncation` is its old name here).
#[derive(Debug, Deserialize)]
struct GenerateBody {
    /// Latents, one row per image.
    #[serde(default)]
    z: Option<Vec<Vec<f32>>>,
    /// Or w rows (generators with a w space), one per image, used for every layer as given
    /// (ψ is not applied: it belongs to the mapping).
    #[serde(default)]
    w: Option<Vec<Vec<f32>>>,
    /// Class id per row (conditional generators).
    #[serde(default)]
    classes: Option<Vec<i64>>,
    /// Soft class vectors per row, instead of `classes`.
    #[serde(default)]
    class_vectors: Option<Vec<Vec<f32>>>,
    /// `png` (grid), `npy` ([B, C, H, W] float32) or `tar` (one PNG per image).
    #[serde(default)]
    format: Option<String>,
    /// Seed of the generator's internal noise (generators that draw noise).
    #[serde(default)]
    noise_seed: Option<u64>,
    /// Everything else: the generator's inputs, checked against its spec.
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

/// The fields every generate request may carry, for messages.
const FIELDS: &str = "z or w, classes, class_vectors, format, noise_seed";

/// The generator inputs of a body: each named by the spec (or by an old name), of its type and
/// in its range; anything else is an unknown field.
fn knobs_of(
    spec: &GeneratorSpec,
    rest: serde_json::Map<String, serde_json::Value>,
) -> Result<Knobs, ApiError> {
    let mut knobs = Knobs::default();
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in rest {
        // `truncation` meant BigGAN's input here before it had its own name.
        let name = if k == "truncation" {
            "gen_truncation"
        } else {
            k.as_str()
        };
        let Some(p) = spec.knob(name) else {
            let inputs = crate::generator::knob_names(spec);
            return Err(ApiError::invalid(format!(
                "unknown field `{k}` in the generate request (fields: {FIELDS}; {}'s own inputs: {inputs})",
                spec.name
            )));
        };
        if seen.contains(&p.name) {
            return Err(ApiError::invalid(format!(
                "`{}` given more than once (`truncation` is its old name)",
                p.name
            )));
        }
        seen.push(p.name);
        let raw = match &v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let value = match p.kind {
            Kind::Float { .. } => match v.as_f64() {
                Some(x) if p.float_ok(x) => Value::Float(x),
                _ => return Err(ApiError::invalid(format!("`{k}`: {}", p.float_error(&raw)))),
            },
            _ => p
                .value(Some(&raw), &crate::params::Limits::default())
                .map_err(|e| ApiError::invalid(format!("`{k}`: {e}")))?,
        };
        knobs = knobs.with(p.name, value);
    }
    knobs
        .resolved(spec)
        .map_err(|e| ApiError::invalid(e.to_string()))
}

/// The body of `POST /v1/generate`, read under the route's size limit and the body timeout:
/// a declared oversize `Content-Length` is refused before anything is read, a body that grows
/// past the limit is cut off at it, and JSON is parsed off the async threads.
async fn read_body(
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
    st.pipeline
        .blocking(move || serde_json::from_slice::<GenerateBody>(&bytes))
        .await?
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

/// `POST /v1/generate`: explicit latents (+ classes, generator inputs) → images.
pub(super) async fn generate(
    State(st): State<AppState>,
    Extension(who): Extension<Arc<ConsumerPolicy>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let b = match read_body(&st, &headers, body).await {
        Ok(b) => b,
        Err(e) if e.error_type == ErrorType::PayloadTooLarge => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let spec = st.pipeline.spec().clone();
    let knobs = knobs_of(&spec, b.rest)?;
    let (space, given) = match (b.z, b.w) {
        (Some(z), None) => (Space::Z, z),
        (None, Some(w)) => (Space::W, w),
        (Some(_), Some(_)) => return Err(ApiError::invalid("give `z` or `w`, not both")),
        (None, None) => return Err(ApiError::invalid("give latents: `z` (or `w`)")),
    };
    if space == Space::W && (b.classes.is_some() || b.class_vectors.is_some()) {
        return Err(ApiError::invalid(
            "classes go through the mapping network: give them with `z`; `w` rows already hold them",
        ));
    }
    let name = if space == Space::Z { "z" } else { "w" };
    let d = spec.dim(space).ok_or_else(|| {
        ApiError::invalid(format!(
            "`w`: {} has no w space (its spaces: z); give `z`",
            spec.name
        ))
    })?;
    let n = given.len();
    if n == 0 || n > st.limits.max_generate_latents {
        return Err(ApiError::invalid(format!(
            "`{name}` has {n} latents, allowed 1..={} (max_generate_latents)",
            st.limits.max_generate_latents
        )));
    }
    let mut rows = Vec::with_capacity(n * d);
    for (i, z) in given.iter().enumerate() {
        if z.len() != d {
            let dim = if space == Space::Z {
                "latent_dim"
            } else {
                "w_dim"
            };
            return Err(ApiError::invalid(format!(
                "`{name}[{i}]` has length {}, expected {dim} {d} ({})",
                z.len(),
                spec.name
            )));
        }
        rows.extend_from_slice(z);
    }
    if space == Space::Z {
        check_latents(&spec, n, d, &rows, "`z`").map_err(ApiError::invalid)?;
    } else if rows.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid("`w` contains a non-finite value"));
    }
    let arg = match (b.classes, b.class_vectors) {
        _ if space == Space::W => ClassArg::Absent,
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
    let classes = if space == Space::W {
        ClassInput::None
    } else {
        class_input(&spec, n, arg, "`classes`", "`class_vectors`").map_err(ApiError::invalid)?
    };
    let name = b.format.as_deref().unwrap_or("png");
    let format = GenerateFormat::parse(name).ok_or_else(|| {
        ApiError::invalid(format!(
            "`format` must be one of {}, got `{name}`",
            GenerateFormat::ALL.join(", ")
        ))
    })?;
    st.check_ready()?;
    let input = ExplicitInput {
        space,
        rows,
        classes,
        knobs,
        noise_seed: b.noise_seed.unwrap_or(0),
    };
    let bytes = st.pipeline.generate(&who.consumer, input, format).await?;
    let content_type = match format {
        GenerateFormat::Png => "image/png",
        GenerateFormat::Npy => "application/octet-stream",
        GenerateFormat::Tar => "application/x-tar",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
