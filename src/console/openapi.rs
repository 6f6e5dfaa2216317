//! `/openapi.json`: the console's JSON API, for scripts.

use axum::Json;
use serde_json::{Value, json};

fn error() -> Value {
    json!({"description": "JSON {error, detail}", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}})
}

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    let path_params = json!([
        {"name": "adapter", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "stage", "in": "path", "required": true, "schema": {"type": "string", "enum": ["process", "deliver"]}}
    ]);
    let filters = json!([
        {"name": "class", "in": "query", "schema": {"type": "string", "enum": ["retryable", "permanent", "decode", "schema", "timeout", "in_doubt"]}},
        {"name": "error", "in": "query", "schema": {"type": "string"}, "description": "Text the error message contains."},
        {"name": "key", "in": "query", "schema": {"type": "string"}},
        {"name": "event_id", "in": "query", "schema": {"type": "string"}},
        {"name": "since", "in": "query", "schema": {"type": "string"}, "description": "RFC 3339, or an ISO 8601 duration back from now (PT1H)."},
        {"name": "until", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
    ]);
    let mut list_params = path_params.as_array().cloned().unwrap_or_default();
    list_params.extend(filters.as_array().cloned().unwrap_or_default());
    let mut one_params = path_params.as_array().cloned().unwrap_or_default();
    one_params.extend([
        json!({"name": "partition", "in": "path", "required": true, "schema": {"type": "integer"}}),
        json!({"name": "offset", "in": "path", "required": true, "schema": {"type": "integer"}}),
    ]);
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "onceflow console API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Every call needs the console token: `Authorization: Bearer <token>`. Dead letters are masked."},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "detail"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}}
        },
        "security": [{"token": []}],
        "paths": {
            "/api/overview": {"get": {"operationId": "overview", "responses": {"200": ok("Lag, retry depth, dead letters by reason, breaker and in-doubt counts per adapter and stage."), "401": error(), "503": error()}}},
            "/api/dlq/{adapter}/{stage}": {"get": {"operationId": "deadLetters", "parameters": list_params,
                "responses": {"200": ok("Dead letters with masked previews."), "400": error(), "401": error(), "404": error(), "503": error()}}},
            "/api/dlq/{adapter}/{stage}/{partition}/{offset}": {"get": {"operationId": "deadLetter", "parameters": one_params,
                "responses": {"200": ok("One dead letter: envelope, origin and its masked value."), "400": error(), "401": error(), "404": error()}}},
            "/api/replays": {"post": {"operationId": "replay",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["adapter", "stage"],
                    "properties": {"adapter": {"type": "string"}, "stage": {"type": "string", "enum": ["process", "deliver"]},
                        "records": {"type": "array", "items": {"type": "object", "required": ["partition", "offset"], "properties": {"partition": {"type": "integer"}, "offset": {"type": "integer"}}}},
                        "filter": {"type": "object"}, "execute": {"type": "boolean", "default": false},
                        "reason": {"type": "string"}, "operator": {"type": "string"}}}}}},
                "responses": {"200": ok("Dry run: what would be replayed, by reason."), "202": ok("Replay started: its id."), "400": error(), "401": error(), "403": error(), "404": error()}}},
            "/api/replays/{id}": {"get": {"operationId": "replayStatus",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": ok("A replay's progress."), "401": error(), "404": error()}}},
            "/api/audit": {"get": {"operationId": "audit", "responses": {"200": ok("Every recorded reset and replay."), "401": error()}}}
        }
    }))
}
