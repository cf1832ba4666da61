//! `GET /openapi.json`: the API description (OpenAPI 3.0), written by hand next to the routes.

use axum::Json;
use serde_json::{json, Value};

fn q(name: &str, schema: Value, desc: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": desc})
}

fn sampling() -> Vec<Value> {
    vec![
        q(
            "seed",
            json!({"type": "integer", "minimum": 0, "default": 0}),
            "Stream seed (u64).",
        ),
        q(
            "method",
            json!({"type": "string", "enum": ["gaussian", "independent", "none"], "default": "gaussian"}),
            "How positives are made.",
        ),
        q(
            "sigma",
            json!({"type": "number", "minimum": 0, "maximum": 10, "default": 0.2}),
            "Positive scale: w ~ N(0, sigma^2) truncated at +-2 sigma.",
        ),
        q(
            "views",
            json!({"type": "integer", "minimum": 1, "default": 1}),
            "Positives K per anchor (max: max_views).",
        ),
        q(
            "truncation",
            json!({"type": "number", "minimum": 0.05, "maximum": 100, "default": 2.0}),
            "Anchor bound t: z ~ N(0, I) truncated to [-t, t].",
        ),
        q(
            "gen_truncation",
            json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 1.0}),
            "The generator's own truncation input (BigGAN).",
        ),
        q(
            "classes",
            json!({"type": "string", "example": "0,3,7-9"}),
            "Allowed classes (ids and ranges); default all.",
        ),
    ]
}

fn encoding() -> Vec<Value> {
    vec![
        q(
            "format",
            json!({"type": "string", "enum": ["png", "jpg", "npy"], "default": "png"}),
            "Image encoding of the views.",
        ),
        q(
            "quality",
            json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 90}),
            "JPEG quality.",
        ),
    ]
}

fn cat(parts: &[Vec<Value>]) -> Vec<Value> {
    parts.concat()
}

fn errors() -> Value {
    let e = json!({"description": "JSON error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({"404": e, "422": e, "429": e, "503": e})
}

fn with_errors(ok: Value) -> Value {
    let mut r = errors();
    r["200"] = ok;
    r
}

fn tar_ok() -> Value {
    json!({"description": "WebDataset tar, streamed (chunked); an error after the headers aborts the connection", "content": {"application/x-tar": {}}})
}

pub async fn spec() -> Json<Value> {
    let shard_params = cat(&[
        vec![
            json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "example": "train-000000.tar"}}),
        ],
        sampling(),
        encoding(),
        vec![q(
            "shard_size",
            json!({"type": "integer", "minimum": 1, "default": 1000}),
            "Samples per shard S; shard n holds [n*S, (n+1)*S).",
        )],
    ]);
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "genrep", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A pretrained generator served as a streaming GenRep multiview dataset."},
        "paths": {
            "/v1/shards/{name}": {
                "get": {"summary": "Deterministic finite WebDataset shard", "parameters": shard_params, "responses": with_errors(tar_ok())},
                "head": {"summary": "Shard headers only", "parameters": shard_params, "responses": with_errors(json!({"description": "headers"}))}
            },
            "/v1/stream": {"get": {"summary": "Endless (or limited) tar stream from `start`",
                "parameters": cat(&[sampling(), encoding(), vec![
                    q("start", json!({"type": "integer", "minimum": 0, "default": 0}), "First sample index."),
                    q("limit", json!({"type": "integer", "minimum": 1}), "Number of samples; endless when absent.")]]),
                "responses": with_errors(tar_ok())}},
            "/v1/samples/{file}": {"get": {"summary": "One sample: `{index}.png` (anchor and positives side by side) or `{index}.json` (metadata)",
                "parameters": cat(&[vec![json!({"name": "file", "in": "path", "required": true, "schema": {"type": "string", "example": "42.png"}})], sampling()]),
                "responses": with_errors(json!({"description": "PNG or JSON", "content": {"image/png": {}, "application/json": {"schema": {"$ref": "#/components/schemas/SampleMeta"}}}}))}},
            "/v1/grid.png": {"get": {"summary": "Grid: one row per sample (anchor then positives)",
                "parameters": cat(&[sampling(), vec![
                    q("rows", json!({"type": "integer", "minimum": 1, "default": 8}), "Number of samples (max: max_grid_rows)."),
                    q("start", json!({"type": "integer", "minimum": 0, "default": 0}), "First sample index.")]]),
                "responses": with_errors(json!({"description": "PNG", "content": {"image/png": {}}}))}},
            "/v1/generate": {"post": {"summary": "Explicit latents (+ classes, truncation) to images",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}}},
                "responses": with_errors(json!({"description": "PNG grid, npy [B,C,H,W] float32, or tar", "content": {"image/png": {}, "application/octet-stream": {}, "application/x-tar": {}}}))}},
            "/v1/info": {"get": {"summary": "Generator, weights sha256, defaults and limits", "responses": {"200": {"description": "JSON"}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/ready": {"get": {"summary": "Readiness: 503 while warming up or shutting down", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "error_type"], "properties": {
                "error": {"type": "string"}, "error_type": {"type": "string", "enum": ["invalid_parameter", "not_found", "overloaded", "unavailable", "backend", "method_not_allowed"]}}},
            "GenerateRequest": {"type": "object", "required": ["z"], "properties": {
                "z": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "classes": {"type": "array", "items": {"type": "integer"}},
                "class_vectors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "truncation": {"type": "number", "default": 1.0},
                "format": {"type": "string", "enum": ["png", "npy", "tar"], "default": "png"}}},
            "SampleMeta": {"type": "object", "properties": {
                "index": {"type": "integer"}, "seed": {"type": "integer"}, "class": {"type": "integer", "nullable": true},
                "method": {"type": "string"}, "sigma": {"type": "number"}, "views": {"type": "integer"},
                "truncation": {"type": "number"}, "gen_truncation": {"type": "number"},
                "generator": {"type": "string"}, "weights_sha256": {"type": "string"},
                "z_anchor": {"type": "array", "items": {"type": "number"}},
                "z_pos": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}
        }}
    }))
}
