//! The OpenAPI 3.1 document of the intake, served at `/openapi.json`.
//!
//! Invariant: each event type's `data` schema is derived from the newest Avro schema in the
//! catalog (the same one the intake validates against), so the document cannot drift from what the
//! server accepts; schema-based fuzzers can drive the API from it.

use apache_avro::Schema;
use serde_json::{Map, Value as Json, json};

use crate::codec::catalog::Catalog;
use crate::model::EventType;

/// JSON Schema of an Avro schema, as the JSON contract accepts it.
fn json_schema(schema: &Schema) -> Json {
    match schema {
        Schema::Null => json!({"type": "null"}),
        Schema::Boolean => json!({"type": "boolean"}),
        Schema::Int => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
        Schema::Long => json!({"type": "integer"}),
        Schema::Float | Schema::Double => json!({"type": "number"}),
        Schema::String => json!({"type": "string"}),
        Schema::TimestampMillis => json!({
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "description": "epoch milliseconds"}]
        }),
        Schema::Array(a) => json!({"type": "array", "items": json_schema(&a.items)}),
        Schema::Map(m) => json!({"type": "object", "additionalProperties": json_schema(&m.types)}),
        Schema::Enum(e) => json!({"type": "string", "enum": e.symbols}),
        Schema::Union(u) => {
            json!({"anyOf": u.variants().iter().map(json_schema).collect::<Vec<_>>()})
        }
        Schema::Record(r) => record_schema(r, &[]),
        _ => json!({}),
    }
}

fn record_schema(r: &apache_avro::schema::RecordSchema, skip: &[&str]) -> Json {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in r.fields.iter().filter(|f| !skip.contains(&f.name.as_str())) {
        let mut s = json_schema(&f.schema);
        if let (Some(doc), Json::Object(obj)) = (&f.doc, &mut s) {
            obj.insert("description".into(), Json::String(doc.clone()));
        }
        properties.insert(f.name.clone(), s);
        if f.default.is_none() {
            required.push(Json::String(f.name.clone()));
        }
    }
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// A request body the intake accepts, for each type (the schema and the type's rules): the
/// document's `examples`, which readers copy and schema-based fuzzers start from.
fn example(t: EventType) -> Json {
    let data = match t {
        EventType::LeadCaptured => json!({"email": "ada@example.com", "form_id": "contact-sales"}),
        EventType::ContentPublished => json!({"content_id": "post-1", "title": "Exactly once",
            "url": "https://blog.example.com/exactly-once"}),
        EventType::CampaignTriggered => {
            json!({"campaign_id": "nurture", "recipient_email": "ada@example.com",
            "template_id": "day-2", "scheduled_at": "2026-11-24T09:00:00Z"})
        }
        EventType::InvoiceRequested => {
            json!({"customer_id": "cus_1", "customer_email": "billing@example.com",
            "currency": "EUR", "amount_minor": 2500, "description": "Pro plan",
            "due_at": "2026-12-23T00:00:00Z"})
        }
    };
    json!({"type": t.name(), "id": format!("example-{}", t.schema_name()),
           "occurred_at": "2026-11-23T09:14:03Z", "data": data})
}

fn error_response(description: &str) -> Json {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn document(catalog: &Catalog) -> Json {
    let mut variants = Vec::new();
    for t in EventType::ALL {
        let Some((_, schema)) = catalog.latest(t.schema_name()) else {
            continue;
        };
        let Schema::Record(record) = schema.schema() else {
            continue;
        };
        variants.push(json!({
            "title": t.name(),
            "type": "object",
            "properties": {
                "type": {"const": t.name()},
                "id": {"type": "string", "minLength": 1, "maxLength": 256, "description": "The sender's id of the event; the idempotency key is derived from it."},
                "occurred_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}]},
                "data": record_schema(record, &["meta"]),
            },
            "required": ["type", "data"],
            "additionalProperties": false,
            "examples": [example(t)],
        }));
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "onceflow intake", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Signed webhook intake. 202 means the event is durable in Kafka."},
        "paths": {
            "/v1/sources/{source}/events": {"post": {
                "operationId": "postEvent",
                "parameters": [
                    {"name": "source", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "X-Onceflow-Signature", "in": "header", "required": true, "schema": {"type": "string"},
                     "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\"> under the source's secret"},
                    {"name": "X-Correlation-Id", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 128}},
                    {"name": "X-Onceflow-Hop", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0},
                     "description": "Hops the event has made; onceflow's outgoing webhooks set it. Past ingest.max_hops the event is refused (422 cycle_detected)."},
                    {"name": "traceparent", "in": "header", "required": false, "schema": {"type": "string"},
                     "description": "W3C trace context, carried to the providers."}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": variants}}}},
                "responses": {
                    "202": {"description": "Accepted: the broker acknowledged the event.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                    "400": error_response("Malformed JSON, a malformed X-Onceflow-Hop, or a source name that is not UTF-8."),
                    "401": error_response("Missing, invalid or stale signature."),
                    "404": error_response("Unknown source."),
                    "413": error_response("Body over the source's limit."),
                    "415": error_response("Content-Type is not application/json."),
                    "422": error_response("The event does not match its schema or rules (`schema_violation`; `field` names the culprit), or it has made more hops than ingest.max_hops (`cycle_detected`)."),
                    "429": error_response("Rate limited; see Retry-After."),
                    "503": error_response("Broker or registry unavailable; nothing was accepted; see Retry-After.")
                }
            }},
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "The process is alive."}}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "Broker and registry answer."},
                "503": error_response("A dependency does not answer.")}}}
        },
        "components": {"schemas": {
            "Accepted": {"type": "object", "required": ["event_id", "correlation_id"],
                          "properties": {"event_id": {"type": "string"}, "correlation_id": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error", "detail"],
                      "properties": {"error": {"type": "string"}, "detail": {"type": "string"}, "field": {"type": "string"}}}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_is_documented_from_its_schema() {
        let doc = document(&Catalog::builtin().unwrap());
        let variants = doc["paths"]["/v1/sources/{source}/events"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["oneOf"]
            .as_array()
            .unwrap();
        assert_eq!(variants.len(), EventType::ALL.len());
        let lead = variants
            .iter()
            .find(|v| v["title"] == "LeadCaptured")
            .unwrap();
        let data = &lead["properties"]["data"];
        assert!(
            data["properties"].get("meta").is_none(),
            "meta is set by the intake"
        );
        assert!(
            data["properties"].get("utm_campaign").is_some(),
            "documents the newest version"
        );
        let required: Vec<&str> = data["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Json::as_str)
            .collect();
        assert!(
            required.contains(&"email") && required.contains(&"form_id"),
            "{required:?}"
        );
        assert!(
            !required.contains(&"first_name"),
            "fields with defaults are optional"
        );
    }

    #[test]
    fn every_example_is_an_event_the_intake_accepts() {
        let catalog = Catalog::builtin().unwrap();
        for t in EventType::ALL {
            let example = example(t);
            let (version, schema) = catalog.latest(t.schema_name()).unwrap();
            let mut event = crate::model::Event::new(
                t,
                "demo",
                example["id"].as_str(),
                0,
                example["data"].as_object().unwrap().clone(),
                None,
            );
            if let Err(e) = event.to_avro(schema, version) {
                panic!("{t} example refused: {e}");
            }
        }
    }
}
