//! The schema folder and its evolution rules (schemas/README.md): every `.avsc` is compiled into
//! the catalog, every version N>1 is BACKWARD compatible with N-1 by apache-avro's checker and by
//! the real schema registry, and Avro resolution reads LeadCaptured v1 data with the v2 schema and
//! v2 data with the v1 schema, in pure apache-avro and through the registry's wire format.
//! Negative controls prove each check can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeSet;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use onceflow::codec::catalog::{Catalog, Entry};
use onceflow::codec::{AvroCodec, Codec, RecordSchema};

const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
const LEAD: &str = "io.onceflow.events.LeadCaptured";

fn catalog() -> Catalog {
    Catalog::builtin().unwrap()
}

// ---- values ----

/// `common::lead_v1_value()` with v2's field appended (`None` → null).
fn lead_v2(utm_campaign: Option<&str>) -> Value {
    let Value::Record(mut fields) = common::lead_v1_value() else {
        unreachable!()
    };
    fields.push((
        "utm_campaign".into(),
        utm_campaign.map_or_else(common::none, common::some),
    ));
    Value::Record(fields)
}

fn encode(schema: &RecordSchema, value: Value) -> Vec<u8> {
    GenericDatumWriter::builder(schema.schema())
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap()
}

fn read(writer: &RecordSchema, reader: &RecordSchema, bytes: &[u8]) -> Value {
    GenericDatumReader::builder(writer.schema())
        .reader_schema(reader.schema())
        .build()
        .unwrap()
        .read_value(&mut &bytes[..])
        .unwrap()
}

// ---- in-test variants (a would-be v3) ----

/// The resolved JSON of `entry` with its top-level fields changed by `edit`.
fn variant(entry: &Entry, edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> String {
    let mut json: serde_json::Value = serde_json::from_str(entry.json()).unwrap();
    edit(json["fields"].as_array_mut().unwrap());
    json.to_string()
}

fn parse(json: &str) -> RecordSchema {
    RecordSchema::parse("in-test v3", json).unwrap()
}

/// v3 candidates that break BACKWARD compatibility with v2, with what they do.
fn incompatible_v3(v2: &Entry) -> Vec<(&'static str, String)> {
    vec![
        (
            "email changes type string -> int",
            variant(v2, |fields| {
                let email = fields.iter_mut().find(|f| f["name"] == "email").unwrap();
                email["type"] = "int".into();
            }),
        ),
        (
            "a field without default is added",
            variant(v2, |fields| {
                fields.push(serde_json::json!({"name": "score", "type": "long"}));
            }),
        ),
    ]
}

/// A v3 candidate that is BACKWARD compatible with v2: an optional field with a default.
fn compatible_v3(v2: &Entry) -> String {
    variant(v2, |fields| {
        fields
            .push(serde_json::json!({"name": "score", "type": ["null", "long"], "default": null}));
    })
}

// ---- the folder ----

#[test]
fn every_file_of_the_folder_is_in_the_catalog_and_vice_versa() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(SCHEMAS)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".avsc"))
        .collect();
    let compiled: BTreeSet<String> = Catalog::FILES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(
        compiled.len(),
        Catalog::FILES.len(),
        "a file is listed twice"
    );
    let missing: Vec<_> = on_disk.difference(&compiled).collect();
    let stale: Vec<_> = compiled.difference(&on_disk).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "add to Catalog::FILES: {missing:?}; no longer in schemas/: {stale:?}"
    );
    for (name, text) in Catalog::FILES {
        let disk = std::fs::read_to_string(format!("{SCHEMAS}/{name}")).unwrap();
        assert_eq!(&disk, text, "{name}");
    }
    assert_eq!(catalog().iter().count(), on_disk.len());
}

#[test]
fn events_and_commands_start_with_their_meta() {
    let catalog = catalog();
    let mut seen = 0;
    for e in catalog.iter() {
        let full = e.schema().full_name();
        let meta = if full.starts_with("io.onceflow.events.") {
            "io.onceflow.EventMeta"
        } else if full.starts_with("io.onceflow.commands.") {
            "io.onceflow.CommandMeta"
        } else {
            continue;
        };
        seen += 1;
        let apache_avro::Schema::Record(r) = e.schema().schema() else {
            panic!("{} is not a record", e.file())
        };
        let first = &r.fields[0];
        assert_eq!(first.name, "meta", "{}", e.file());
        match &first.schema {
            apache_avro::Schema::Record(m) => assert_eq!(m.name.fullname(None), meta),
            other => panic!("{}: meta is {other:?}", e.file()),
        }
    }
    // Everything else: the two metas and the dispatcher's receipts, which carry no envelope.
    let receipts = catalog
        .iter()
        .filter(|e| e.schema().full_name().starts_with("io.onceflow.results."))
        .count();
    assert_eq!(receipts, 1);
    assert_eq!(seen, Catalog::FILES.len() - 2 - receipts);
}

// ---- compatibility by apache-avro ----

#[test]
fn every_new_version_is_backward_compatible_with_the_previous_one() {
    let catalog = catalog();
    let mut pairs = 0;
    for e in catalog.iter().filter(|e| e.version() > 1) {
        let old = catalog.get(e.name(), e.version() - 1).unwrap();
        assert_eq!(old.full_name(), e.schema().full_name());
        // BACKWARD: a reader on the new schema reads data written with the old one.
        let c = SchemaCompatibility::can_read(old.schema(), e.schema().schema());
        assert!(
            matches!(c, Ok(Compatibility::Full)),
            "{} cannot read v{}: {c:?}",
            e.file(),
            e.version() - 1
        );
        pairs += 1;
    }
    assert!(pairs >= 1, "LeadCaptured has a v2");
}

#[test]
fn the_checker_reports_incompatible_variants() {
    let catalog = catalog();
    let v2 = catalog.entry("lead_captured", 2).unwrap();
    for (what, v3) in incompatible_v3(v2) {
        let c = SchemaCompatibility::can_read(v2.schema().schema(), parse(&v3).schema());
        assert!(c.is_err(), "{what}: reported {c:?}");
    }
    let v3 = parse(&compatible_v3(v2));
    let ok = SchemaCompatibility::can_read(v2.schema().schema(), v3.schema());
    assert!(matches!(ok, Ok(Compatibility::Full)), "{ok:?}");
}

// ---- compatibility by the registry ----

struct Registry {
    url: String,
    http: reqwest::Client,
}

impl Registry {
    fn new() -> Registry {
        Registry {
            url: common::settings().registry.url,
            http: reqwest::Client::new(),
        }
    }

    /// A subject nobody else uses, under TopicRecordNameStrategy.
    fn fresh_subject(full_name: &str) -> String {
        format!("t{}-{full_name}", uuid::Uuid::new_v4().simple())
    }

    async fn post(&self, path: &str, schema_json: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "schema": schema_json }).to_string();
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Registers `schema_json` under `subject`; the registry's answer.
    async fn register(&self, subject: &str, schema_json: &str) -> (u16, serde_json::Value) {
        self.post(&format!("/subjects/{subject}/versions"), schema_json)
            .await
    }

    /// Whether `schema_json` may follow the latest version of `subject`.
    async fn compatible(&self, subject: &str, schema_json: &str) -> bool {
        let path = format!("/compatibility/subjects/{subject}/versions/latest");
        let (status, body) = self.post(&path, schema_json).await;
        assert_eq!(status, 200, "{body}");
        body["is_compatible"].as_bool().expect("is_compatible")
    }
}

#[tokio::test]
async fn the_registry_accepts_every_catalog_schema() {
    let registry = Registry::new();
    for e in catalog().iter() {
        let subject = Registry::fresh_subject(e.schema().full_name());
        let (status, body) = registry.register(&subject, e.json()).await;
        assert_eq!(status, 200, "{}: {body}", e.file());
        assert!(body["id"].as_u64().is_some(), "{}: {body}", e.file());
    }
}

#[tokio::test]
async fn the_registry_agrees_every_new_version_is_backward_compatible() {
    let registry = Registry::new();
    let catalog = catalog();
    for e in catalog.iter().filter(|e| e.version() > 1) {
        let old = catalog.entry(e.name(), e.version() - 1).unwrap();
        let subject = Registry::fresh_subject(e.schema().full_name());
        let (status, body) = registry.register(&subject, old.json()).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            registry.compatible(&subject, e.json()).await,
            "{} after {}",
            e.file(),
            old.file()
        );
        let (status, body) = registry.register(&subject, e.json()).await;
        assert_eq!(status, 200, "{}: {body}", e.file());
    }
}

#[tokio::test]
async fn the_registry_refuses_incompatible_variants() {
    let registry = Registry::new();
    let catalog = catalog();
    let v2 = catalog.entry("lead_captured", 2).unwrap();
    let subject = Registry::fresh_subject(LEAD);
    let (status, body) = registry.register(&subject, v2.json()).await;
    assert_eq!(status, 200, "{body}");

    assert!(registry.compatible(&subject, &compatible_v3(v2)).await);
    for (what, v3) in incompatible_v3(v2) {
        assert!(!registry.compatible(&subject, &v3).await, "{what}");
        let (status, body) = registry.register(&subject, &v3).await;
        assert_eq!(status, 409, "{what}: {body}");
    }
}

// ---- resolution ----

#[test]
fn lead_v1_data_reads_as_v2_and_v2_data_as_v1() {
    let catalog = catalog();
    let v1 = catalog.get("lead_captured", 1).unwrap();
    let v2 = catalog.get("lead_captured", 2).unwrap();

    let old = encode(v1, common::lead_v1_value());
    assert_eq!(
        read(v1, v2, &old),
        lead_v2(None),
        "utm_campaign defaults to null"
    );

    let new = encode(v2, lead_v2(Some("spring-launch")));
    assert_eq!(
        read(v2, v1, &new),
        common::lead_v1_value(),
        "utm_campaign is dropped"
    );
    assert_eq!(read(v2, v2, &new), lead_v2(Some("spring-launch")));
}

#[tokio::test]
async fn lead_v1_and_v2_resolve_both_ways_through_the_registry() {
    let s = common::settings();
    let topic = &s.topics.inputs[0];
    let catalog = catalog();
    let v1 = catalog.get("lead_captured", 1).unwrap();
    let v2 = catalog.get("lead_captured", 2).unwrap();

    // v1 first, so registering v2 under the same subject passes the registry's BACKWARD check.
    // One codec for both: the versions share the TopicRecordNameStrategy subject, and a codec that
    // cached one schema per subject would encode the v2 value with the v1 schema (and fail).
    let codec = AvroCodec::new(&s.registry).unwrap();
    let old = codec
        .encode(topic, v1, common::lead_v1_value())
        .await
        .unwrap();
    let new = codec
        .encode(topic, v2, lead_v2(Some("spring-launch")))
        .await
        .unwrap();
    assert_ne!(old[1..5], new[1..5], "v1 and v2 have their own schema ids");

    // A fresh decoder fetches each writer schema by id.
    let decoder = AvroCodec::new(&s.registry).unwrap();
    let written_old = decoder.decode(&old).await.unwrap();
    assert_eq!(written_old.record_name.as_deref(), Some(LEAD));
    assert_eq!(written_old.value, common::lead_v1_value());
    assert_eq!(
        written_old.value.resolve(v2.schema()).unwrap(),
        lead_v2(None)
    );

    let written_new = decoder.decode(&new).await.unwrap();
    assert_eq!(written_new.record_name.as_deref(), Some(LEAD));
    assert_eq!(written_new.value, lead_v2(Some("spring-launch")));
    assert_eq!(
        written_new.value.resolve(v1.schema()).unwrap(),
        common::lead_v1_value()
    );
}
