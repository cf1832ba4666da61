//! `GET /openapi.json`: the API as an OpenAPI 3.1 document, built with `utoipa` from the
//! parameter table ([`crate::params`]) and this server's limits, so every range a request is
//! checked against is in the document.

use super::AppState;
use crate::generator::GeneratorSpec;
use crate::params::{self, Group, Kind, Limits, Param, DEFAULT_SHARD_SIZE};
use axum::extract::State;
use axum::Json;
use genrep_wire::MAX_INDEX;
use serde_json::json;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem,
    PathsBuilder, Ref, Required, ResponseBuilder, ResponsesBuilder,
};
use utoipa::{Number, PartialSchema};

fn uint(v: u64) -> Option<Number> {
    Some(Number::UInt(v as usize))
}

fn int_schema(default: Option<u64>, min: u64, max: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(uint(min))
        .maximum(uint(max))
        .default(default.map(|d| json!(d)))
}

/// A walk list: `name[:scale]` items, comma-separated.
const WALKS_PATTERN: &str = r"^[a-z0-9_]+(:[0-9.eE+-]+)?(,[a-z0-9_]+(:[0-9.eE+-]+)?)*$";

/// The schema of a table parameter under `limits`.
fn table_schema(p: &Param, limits: &Limits) -> ObjectBuilder {
    match p.kind {
        Kind::Int { default, min, .. } => int_schema(Some(default), min, p.int_max(limits)),
        Kind::Float {
            default,
            min,
            max,
            min_open,
        } => {
            let s = ObjectBuilder::new()
                .schema_type(Type::Number)
                .maximum(Some(Number::Float(max)))
                .default(Some(json!(default)));
            if min_open {
                s.exclusive_minimum(Some(Number::Float(min)))
            } else {
                s.minimum(Some(Number::Float(min)))
            }
        }
        Kind::Choice { default, values } => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values.iter().copied()))
            .default(Some(json!(default))),
        Kind::Classes => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$"))
            .examples(["0,3,7-9"]),
        Kind::Walks => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(WALKS_PATTERN))
            .examples(["zoom,shift_x:0.5"]),
    }
}

fn query(name: &str, schema: ObjectBuilder, doc: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .schema(Some(schema))
        .description(Some(doc))
        .build()
}

fn path_param(name: &str, pattern: &str, example: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
                .examples([example]),
        ))
        .build()
}

/// The parameters of `groups`, each under its name and then (deprecated) its old names.
fn table(spec: &GeneratorSpec, groups: &[Group], limits: &Limits) -> Vec<Parameter> {
    let mut out = Vec::new();
    for p in groups.iter().flat_map(|&g| params::group(spec, g)) {
        out.push(query(p.name, table_schema(p, limits), p.doc));
        for alias in p.aliases {
            let mut old = query(
                alias,
                table_schema(p, limits),
                &format!("Old name of `{}`.", p.name),
            );
            old.deprecated = Some(utoipa::openapi::Deprecated::True);
            out.push(old);
        }
    }
    out
}

/// `prefix`: the namespace of the samples, as a shard's file name gives it.
fn prefix_param() -> Parameter {
    query(
        "prefix",
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(r"^[A-Za-z0-9_-]{1,64}$"))
            .default(Some(json!(crate::params::DEFAULT_PREFIX))),
        "Namespace of the samples: the same as the shards `{prefix}-NNNNNN.tar`; \
         different prefixes give unrelated samples for the same seed and index.",
    )
}

fn start_param() -> Parameter {
    query(
        "start",
        int_schema(Some(0), 0, MAX_INDEX - 1),
        "First sample index.",
    )
}

/// An operation answering `ok_type` on success and JSON errors otherwise.
fn op(summary: &str, params: Vec<Parameter>, ok: &str, ok_types: &[&str]) -> OperationBuilder {
    let error = ResponseBuilder::new()
        .description("JSON error naming the problem")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build();
    let mut ok_resp = ResponseBuilder::new().description(ok);
    for t in ok_types {
        ok_resp = ok_resp.content(*t, ContentBuilder::new().build());
    }
    let mut responses = ResponsesBuilder::new().response("200", ok_resp.build());
    for code in ["401", "404", "422", "429", "503"] {
        responses = responses.response(code, error.clone());
    }
    OperationBuilder::new()
        .summary(Some(summary))
        .parameters(Some(params))
        .responses(responses.build())
}

fn simple(summary: &str, ok: &str) -> Operation {
    OperationBuilder::new()
        .summary(Some(summary))
        .response("200", ResponseBuilder::new().description(ok).build())
        .build()
}

/// A probe: open even when the server requires API keys.
fn probe(summary: &str, ok: &str) -> Operation {
    let mut op = simple(summary, ok);
    op.security = Some(vec![SecurityRequirement::default()]);
    op
}

/// The document for this server's limits; `keyed`: the server requires API keys (`--api-keys`),
/// stated as a bearer security scheme on every operation but the probes.
pub fn document(spec: &GeneratorSpec, limits: &Limits, keyed: bool) -> OpenApi {
    let sampling = [Group::Sampling];
    let tar = [Group::Sampling, Group::Encoding];
    let tar_ok = "WebDataset tar, streamed; an error after the headers aborts the connection";
    let mut shard_params = vec![path_param(
        "name",
        r"^[A-Za-z0-9_-]{1,64}-[0-9]{6,12}\.tar$",
        "train-000000.tar",
    )];
    shard_params.extend(table(spec, &tar, limits));
    shard_params.push(query(
        "shard_size",
        int_schema(
            Some(DEFAULT_SHARD_SIZE.min(limits.max_shard_size)),
            1,
            limits.max_shard_size,
        ),
        "Samples per shard S; shard n holds samples [n*S, (n+1)*S).",
    ));
    let mut shards = PathItem::new(
        HttpMethod::Get,
        op(
            "Deterministic finite WebDataset shard",
            shard_params.clone(),
            tar_ok,
            &["application/x-tar"],
        ),
    );
    shards.head = Some(op("Shard headers only", shard_params, "headers", &[]).build());

    let mut stream_params = table(spec, &tar, limits);
    stream_params.push(start_param());
    stream_params.push(prefix_param());
    stream_params.push(query(
        "limit",
        int_schema(None, 1, MAX_INDEX),
        "Number of samples; endless when absent.",
    ));
    let mut sample_params = vec![path_param("file", r"^[0-9]{1,13}\.(png|json)$", "42.png")];
    sample_params.extend(table(spec, &sampling, limits));
    sample_params.push(prefix_param());
    let mut grid_params = table(spec, &sampling, limits);
    grid_params.push(query(
        "rows",
        int_schema(
            Some(8.min(limits.max_grid_rows as u64)),
            1,
            limits.max_grid_rows as u64,
        ),
        "Number of samples, one row each.",
    ));
    grid_params.push(start_param());
    grid_params.push(prefix_param());
    // One walk per picture (`walk`): the `walks` list is refused there.
    let mut walks_params: Vec<Parameter> = table(spec, &sampling, limits)
        .into_iter()
        .filter(|p| p.name != "walks")
        .collect();
    let names: Vec<String> = spec
        .walks
        .iter()
        .flat_map(|s| s.walks.iter().map(|w| w.name.clone()))
        .collect();
    let mut walk = ObjectBuilder::new().schema_type(Type::String);
    if !names.is_empty() {
        walk = walk
            .enum_values(Some(names.clone()))
            .default(Some(json!(names[0])));
    }
    walks_params.push(query(
        "walk",
        walk,
        "The walk each row moves along (a name from /v1/info; default the first).",
    ));
    let max_steps = (limits.max_views as u64 + 1).clamp(2, 33);
    walks_params.push(query(
        "steps",
        int_schema(Some(9.min(max_steps)), 2, max_steps),
        "Columns: coefficients evenly spaced from -alpha to +alpha (the walk's trained range times steer_scale).",
    ));
    walks_params.push(query(
        "rows",
        int_schema(
            Some(4.min(limits.max_grid_rows as u64)),
            1,
            limits.max_grid_rows as u64,
        ),
        "Number of anchors (samples start.., one row each).",
    ));
    walks_params.push(start_param());
    walks_params.push(prefix_param());

    let generate = op(
        "Explicit latents (+ classes, truncation) to images",
        vec![],
        "PNG grid, npy [B,C,H,W] float32, or tar of PNGs",
        &["image/png", "application/octet-stream", "application/x-tar"],
    )
    .request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::True))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("GenerateRequest")))
                    .build(),
            )
            .build(),
    ));

    let paths = PathsBuilder::new()
        .path("/v1/shards/{name}", shards)
        .path(
            "/v1/stream",
            PathItem::new(
                HttpMethod::Get,
                op(
                    "Endless (or limited) tar stream from `start`",
                    stream_params,
                    tar_ok,
                    &["application/x-tar"],
                ),
            ),
        )
        .path(
            "/v1/samples/{file}",
            PathItem::new(
                HttpMethod::Get,
                op(
                    "One sample: {index}.png (anchor and positives side by side) or {index}.json (metadata)",
                    sample_params,
                    "PNG or SampleMeta JSON",
                    &["image/png", "application/json"],
                ),
            ),
        )
        .path(
            "/v1/grid.png",
            PathItem::new(
                HttpMethod::Get,
                op(
                    "Grid: one row per sample (anchor then positives)",
                    grid_params,
                    "PNG",
                    &["image/png"],
                ),
            ),
        )
        .path(
            "/v1/walks.png",
            PathItem::new(
                HttpMethod::Get,
                op(
                    "Walks: anchors moved along one learned walk, one row each, from -alpha to +alpha (x-genrep-alphas lists the columns' coefficients); 422 without walks",
                    walks_params,
                    "PNG",
                    &["image/png"],
                ),
            ),
        )
        .path("/v1/generate", PathItem::new(HttpMethod::Post, generate))
        .path(
            "/v1/info",
            PathItem::new(
                HttpMethod::Get,
                simple("Generator, weights sha256, defaults and limits", "JSON"),
            ),
        )
        .path("/health", PathItem::new(HttpMethod::Get, probe("Liveness", "alive")))
        .path(
            "/ready",
            PathItem::new(
                HttpMethod::Get,
                probe("Readiness: 503 while warming up or shutting down", "ready"),
            ),
        )
        .path(
            "/metrics",
            PathItem::new(
                HttpMethod::Get,
                simple("Prometheus metrics", "text exposition format"),
            ),
        )
        .path(
            "/openapi.json",
            PathItem::new(HttpMethod::Get, simple("This document", "OpenAPI 3.1")),
        );

    let number_rows = || {
        ArrayBuilder::new()
            .items(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::Number)))
    };
    let mut generate_request = ObjectBuilder::new()
        .property(
            "z",
            number_rows()
                .min_items(Some(1))
                .max_items(Some(limits.max_generate_latents))
                .description(Some("Latents, one row of latent_dim values per image.")),
        )
        .required("z")
        .property(
            "classes",
            ArrayBuilder::new()
                .items(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(uint(0)),
                )
                .description(Some("Class id per latent (conditional generators).")),
        )
        .property(
            "class_vectors",
            number_rows().description(Some("Soft class vectors per latent, instead of classes.")),
        )
        .property(
            "format",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["png", "npy", "tar"]))
                .default(Some(json!("png"))),
        )
        .property(
            "noise_seed",
            int_schema(Some(0), 0, u64::MAX).description(Some(
                "Seed of the generator's internal noise (generators that draw noise).",
            )),
        )
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ));
    // The generator's own inputs, and the old name of BigGAN's truncation here.
    for k in spec.knobs {
        generate_request =
            generate_request.property(k.name, table_schema(k, limits).description(Some(k.doc)));
        if k.name == "gen_truncation" {
            generate_request = generate_request.property(
                "truncation",
                table_schema(k, limits)
                    .description(Some("Old name of `gen_truncation`."))
                    .deprecated(Some(utoipa::openapi::Deprecated::True)),
            );
        }
    }
    let error = ObjectBuilder::new()
        .property("error", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "error_type",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(super::error::ErrorType::ALL.map(|t| t.as_str()))),
        )
        .required("error")
        .required("error_type");

    let mut components = ComponentsBuilder::new()
        .schema("Error", error)
        .schema("GenerateRequest", generate_request)
        .schema("SampleMeta", genrep_wire::SampleMeta::schema())
        .schema("Method", genrep_wire::Method::schema());
    let mut security = None;
    if keyed {
        components = components.security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key of the server's --api-keys file (or `?token=KEY`)",
                    ))
                    .build(),
            ),
        );
        security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("genrep")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A pretrained generator served as a streaming GenRep multiview dataset.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(security)
        .build()
}

pub async fn spec(State(st): State<AppState>) -> Json<OpenApi> {
    Json(document(
        st.pipeline.spec(),
        &st.limits,
        st.consumers.requires_keys(),
    ))
}
