//! Interoperability: a record produced by onceflow decodes with a Confluent client that is not
//! ours. Events published through [`onceflow::ingest::Producer`] are read back by the official
//! `confluent-kafka` Python client (librdkafka inside its wheel) with its `SchemaRegistryClient` and
//! `AvroDeserializer`, `read_committed`, with no reader schema: the writer's schema is fetched from
//! the registry by the id in the wire-format header, as any Confluent consumer does.
//!
//! The Python side is `tests/interop/confluent_decode.py`; `deploy/local/python-env` installs it
//! (versions pinned in `tests/interop/requirements.txt`, cached in `deploy/local/.cache/pyenv`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use onceflow::codec::catalog::Catalog;
use onceflow::config::Settings;
use onceflow::ingest::{Delivery, Producer};
use onceflow::model::event::{CampaignTriggered, ContentPublished, InvoiceRequested, LeadCaptured};
use onceflow::model::{Event, EventBody};
use serde_json::Value;

const SOURCE: &str = "interop-test";
/// 2026-11-23T10:15:42.123Z: a millisecond part, so a timestamp cut to seconds shows.
const OCCURRED_AT: i64 = 1_795_428_942_123;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// The events sent, each with its source event id.
fn bodies() -> Vec<(&'static str, EventBody)> {
    vec![
        (
            "lead-unicode",
            EventBody::LeadCaptured(LeadCaptured {
                email: "Zoë.Ångström@Example.com".into(),
                first_name: some("Zoë"),
                last_name: some("Ångström-李 😀"),
                company: some("Ünïcødé GmbH"),
                phone: None,
                form_id: "pricing-page".into(),
                consent_marketing: true,
                utm_campaign: some("winter-sale"),
            }),
        ),
        (
            "lead-bare",
            EventBody::LeadCaptured(LeadCaptured {
                email: "bare@example.org".into(),
                first_name: None,
                last_name: None,
                company: None,
                phone: None,
                form_id: "newsletter".into(),
                consent_marketing: false,
                utm_campaign: None,
            }),
        ),
        (
            "invoice-1",
            EventBody::InvoiceRequested(InvoiceRequested {
                customer_id: "cus_interop_1".into(),
                customer_email: "billing@acme.io".into(),
                currency: "EUR".into(),
                amount_minor: 123_456_789_012,
                description: "Pro plan, 12 months – net 30".into(),
                due_at: Some(OCCURRED_AT + 30 * 86_400_000 + 7),
            }),
        ),
        (
            "campaign-1",
            EventBody::CampaignTriggered(CampaignTriggered {
                campaign_id: "cmp-winter".into(),
                recipient_email: "zoe@example.com".into(),
                template_id: "tpl-offer".into(),
                scheduled_at: OCCURRED_AT + 3_600_001,
                variables: [("first_name", "Zoë"), ("discount", "15%"), ("empty", "")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
        ),
        (
            "content-1",
            EventBody::ContentPublished(ContentPublished {
                content_id: "post-42".into(),
                title: "Exactly-once, für alle".into(),
                url: "https://example.com/blog/exactly-once".into(),
                author_email: some("author@example.com"),
                tags: vec!["kafka".into(), "exactly-once".into(), "ünïcode".into()],
                locale: "de".into(),
            }),
        ),
    ]
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The interpreter of the pinned venv, installed on first use by `deploy/local/python-env`.
fn python() -> PathBuf {
    let out = Command::new(root().join("deploy/local/python-env"))
        .current_dir(root())
        .output()
        .expect("deploy/local/python-env runs");
    assert!(
        out.status.success(),
        "deploy/local/python-env failed: {}",
        show(&out)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "python-env's last line is not an interpreter: {}",
        show(&out)
    );
    path
}

/// Decodes `count` records of `topic` with the Confluent client: one JSON object per record,
/// by (partition, offset).
fn confluent_decode(s: &Settings, topic: &str, count: usize) -> BTreeMap<(i64, i64), Value> {
    let out = Command::new(python())
        .current_dir(root())
        .arg(root().join("tests/interop/confluent_decode.py"))
        .args(["--bootstrap", &s.kafka.bootstrap_servers])
        .args(["--registry", &s.registry.url])
        .args(["--topic", topic])
        .args(["--count", &count.to_string()])
        .args(["--timeout", "60"])
        .output()
        .expect("the decode script runs");
    assert!(
        out.status.success(),
        "the Confluent client did not decode onceflow's records: {}",
        show(&out)
    );
    let stdout = String::from_utf8(out.stdout.clone()).expect("the script prints UTF-8");
    let records: BTreeMap<(i64, i64), Value> = stdout
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", show(&out)));
            let at = (
                v["partition"].as_i64().unwrap(),
                v["offset"].as_i64().unwrap(),
            );
            (at, v)
        })
        .collect();
    assert_eq!(
        records.len(),
        count,
        "expected {count} records: {}",
        show(&out)
    );
    records
}

/// The id the registry gave the latest schema of `subject`.
async fn registry_id(s: &Settings, subject: &str) -> i64 {
    let url = format!(
        "{}/subjects/{subject}/versions/latest",
        s.registry.url.trim_end_matches('/')
    );
    let body: Value = reqwest::get(&url)
        .await
        .unwrap()
        .error_for_status()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap();
    body["id"].as_i64().unwrap()
}

#[tokio::test]
async fn onceflow_records_decode_with_confluents_python_client() {
    let mut s = common::settings();
    let topic = common::topic(&s, "interop", 3).await;
    s.ingest.topic = topic.clone();
    let catalog = Catalog::builtin().unwrap();
    let producer = Producer::new(&s).unwrap();

    let mut sent: Vec<(Event, Delivery)> = Vec::new();
    for (id, body) in bodies() {
        let event = Event::from_body(SOURCE, Some(id), OCCURRED_AT, &body);
        let delivery = producer
            .publish(&event)
            .await
            .unwrap_or_else(|e| panic!("publishing {id}: {e}"));
        sent.push((event, delivery));
    }

    let decoded = confluent_decode(&s, &topic, sent.len());

    for (event, delivery) in &sent {
        let at = (i64::from(delivery.partition), delivery.offset);
        let rec = decoded.get(&at).unwrap_or_else(|| {
            panic!(
                "{} ({}) at {at:?} was not read back: {decoded:#?}",
                event.meta.source_event_id, event.meta.event_type
            )
        });
        let what = format!(
            "{} as decoded by the Confluent client: {rec:#}",
            event.meta.source_event_id
        );
        let t = event.event_type().unwrap();
        let (version, schema) = catalog.latest(t.schema_name()).unwrap();
        let value = &rec["value"];

        assert_eq!(rec["key"], event.entity_key().unwrap(), "key of {what}");
        assert_eq!(
            rec["schema_id"],
            registry_id(&s, &schema.subject(&topic)).await,
            "schema id of {what} (subject {})",
            schema.subject(&topic)
        );

        let meta = &value["meta"];
        assert_eq!(meta["event_id"], delivery.event_id.as_str(), "{what}");
        assert_eq!(
            meta["correlation_id"],
            delivery.correlation_id.as_str(),
            "{what}"
        );
        assert_eq!(meta["schema_version"], version, "{what}");
        assert_eq!(meta["type"], t.name(), "{what}");
        assert_eq!(meta["source"], SOURCE, "{what}");
        assert_eq!(
            meta["source_event_id"],
            event.meta.source_event_id.as_str(),
            "{what}"
        );
        assert_eq!(meta["occurred_at"], OCCURRED_AT, "{what}");
        assert_eq!(meta["received_at"], event.meta.received_at, "{what}");

        for (field, sent_value) in &event.data {
            assert_eq!(&value[field], sent_value, "data.{field} of {what}");
        }
        let mut fields: Vec<&String> = value.as_object().unwrap().keys().collect();
        fields.sort();
        let mut expected: Vec<&String> = event.data.keys().collect();
        let meta_key = "meta".to_string();
        expected.push(&meta_key);
        expected.sort();
        assert_eq!(fields, expected, "fields of {what}");
    }

    common::cleanup(&s, &[&topic]).await;
}
