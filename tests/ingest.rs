//! The HTTP intake against the real broker and registry: every status it promises, and what lands
//! in Kafka behind a 202.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::time::Duration;

use onceflow::codec::{AvroCodec, Codec};
use onceflow::config::{SecretRef, Settings, SourceSettings};
use onceflow::ingest::{http, signature};
use onceflow::kafka::client::Isolation;
use onceflow::model::{Event, EventType, identity};
use serde_json::{Value, json};

const SECRET: &str = "test-secret";

fn source(rate: u32, burst: u32) -> SourceSettings {
    SourceSettings {
        secret: SecretRef::Value(SECRET.into()),
        allowed_types: vec![EventType::LeadCaptured, EventType::InvoiceRequested],
        rate_per_second: rate,
        burst,
        max_body_bytes: 2048,
    }
}

/// Settings with a `demo` source and the namespace's input topic created.
async fn settings() -> Settings {
    let mut s = common::settings();
    common::topic(&s, "events", 3).await;
    s.ingest.sources.insert("demo".into(), source(1000, 1000));
    s
}

/// Starts the intake on an ephemeral port; returns its base URL. It stops with the test runtime.
async fn start(s: &Settings) -> String {
    let router = http::build(s).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(listener, router, std::future::pending()));
    format!("http://{addr}")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn lead(id: &str, email: &str) -> String {
    json!({
        "type": "LeadCaptured",
        "id": id,
        "occurred_at": "2026-11-23T10:00:00Z",
        "data": {"email": email, "form_id": "contact", "first_name": "Ada", "phone": "+44 20 7946 0958"}
    })
    .to_string()
}

struct Reply {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn post(
    base: &str,
    source: &str,
    body: &str,
    sig: Option<String>,
    content_type: &str,
) -> Reply {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/sources/{source}/events"))
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(sig) = sig {
        req = req.header(signature::HEADER, sig);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = resp.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        retry_after,
        body,
    }
}

async fn signed_with(base: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/sources/demo/events"))
        .header("content-type", "application/json")
        .header(
            signature::HEADER,
            signature::sign(SECRET.as_bytes(), now(), body.as_bytes()),
        )
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    Reply {
        status: resp.status().as_u16(),
        retry_after: None,
        body: resp.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_external_automations_is_refused_and_hops_and_traces_travel_as_headers() {
    let s = settings().await;
    let max = s.ingest.max_hops.to_string();
    let over = (s.ingest.max_hops + 1).to_string();
    let base = start(&s).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let at_limit = signed_with(
        &base,
        &lead("H-1", "h1@x.io"),
        &[("x-onceflow-hop", &max), ("traceparent", trace)],
    )
    .await;
    assert_eq!(at_limit.status, 202, "{}", at_limit.body);
    let looped = signed_with(&base, &lead("H-2", "h2@x.io"), &[("x-onceflow-hop", &over)]).await;
    assert_eq!(looped.status, 422, "{}", looped.body);
    assert_eq!(looped.body["error"], "cycle_detected");
    assert_eq!(looped.body["field"], "X-Onceflow-Hop");
    let garbage = signed_with(&base, &lead("H-3", "h3@x.io"), &[("x-onceflow-hop", "-1")]).await;
    assert_eq!(garbage.status, 400, "{}", garbage.body);
    let plain = signed(&base, &lead("H-4", "h4@x.io")).await;
    assert_eq!(plain.status, 202);

    // Only the two accepted events are in the topic, with their hop count and trace context.
    let (s2, topic) = (s.clone(), s.ingest.topic.clone());
    let raw = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &topic, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    assert_eq!(raw.len(), 2);
    // Ingest continues the sender's trace with a span of its own, or starts one.
    let trace_of = |hop: &str| {
        let r = raw
            .iter()
            .find(|r| r.header("onceflow.hop") == Some(hop))
            .unwrap();
        let t = r.header("traceparent").unwrap().to_string();
        assert_eq!(t.len(), 55, "{t}");
        t
    };
    let continued = trace_of(&max);
    assert_eq!(
        continued[..36],
        trace[..36],
        "the sender's trace: {continued}"
    );
    assert_ne!(continued, trace, "a span of ingest's own");
    let started = trace_of("0");
    assert_ne!(started[3..35], trace[3..35], "a new trace: {started}");
    common::cleanup(&s, &[&s.ingest.topic]).await;
}

async fn signed(base: &str, body: &str) -> Reply {
    post(
        base,
        "demo",
        body,
        Some(signature::sign(SECRET.as_bytes(), now(), body.as_bytes())),
        "application/json",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_durable_and_duplicates_share_their_event_id() {
    let s = settings().await;
    let base = start(&s).await;

    let first = signed(&base, &lead("L-1", "Ada@Example.com")).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let again = signed(&base, &lead("L-1", "Ada@Example.com")).await;
    assert_eq!(again.status, 202, "{}", again.body);
    let other = signed(&base, &lead("L-2", "ada@example.com")).await;
    assert_eq!(other.status, 202, "{}", other.body);

    let id = first.body["event_id"].as_str().unwrap().to_string();
    assert_eq!(id, identity::event_id("demo", "L-1"));
    assert_eq!(
        again.body["event_id"], first.body["event_id"],
        "same source event, same id"
    );
    assert_ne!(other.body["event_id"], first.body["event_id"]);
    assert!(
        first.body["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );

    // 202 means the broker has the records: all three are there, decodable, keyed by the person.
    let (s2, topic) = (s.clone(), s.ingest.topic.clone());
    let raw = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &topic, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    assert_eq!(raw.len(), 3);
    let codec = AvroCodec::new(&s.registry).unwrap();
    let key = identity::email_key("ada@example.com");
    let mut ids = Vec::new();
    for r in &raw {
        assert_eq!(r.key, key, "partitioned by the normalised e-mail's hash");
        let event = Event::from_avro(&codec.decode(&r.value).await.unwrap().value).unwrap();
        assert_eq!(event.meta.source, "demo");
        assert_eq!(
            event.meta.schema_version, 2,
            "written with the newest LeadCaptured"
        );
        // The sender's spelling is kept; only the key is normalised.
        let email = event.data["email"].as_str().unwrap();
        assert_eq!(identity::normalize_email(email), "ada@example.com");
        ids.push(event.meta.event_id);
    }
    ids.sort();
    let mut want = vec![id.clone(), id, identity::event_id("demo", "L-2")];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        raw.iter()
            .map(|r| r.partition)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );
    common::cleanup(&s, &[&s.ingest.topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_webhook_is_accepted() {
    let mut s = settings().await;
    let mut demo = source(1000, 1000);
    demo.allowed_types = EventType::ALL.to_vec();
    demo.max_body_bytes = 65536;
    s.ingest.sources.insert("demo".into(), demo);
    let base = start(&s).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/samples");
    let mut types = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let body = std::fs::read_to_string(&path).unwrap();
        let r = signed(&base, &body).await;
        assert_eq!(r.status, 202, "{}: {}", path.display(), r.body);
        types.push(
            serde_json::from_str::<Value>(&body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    types.sort();
    types.dedup();
    let mut all: Vec<String> = EventType::ALL
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    all.sort();
    assert_eq!(types, all, "a sample for every event type");
    common::cleanup(&s, &[&s.ingest.topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_a_json_body() {
    let s = settings().await;
    let base = start(&s).await;
    let body = lead("L-9", "ada@example.com");
    let sig = || Some(signature::sign(SECRET.as_bytes(), now(), body.as_bytes()));
    let check = |r: &Reply, status: u16, error: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["error"], error, "{}", r.body);
        assert!(
            r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            r.body
        );
    };

    check(
        &post(&base, "nobody", &body, sig(), "application/json").await,
        404,
        "unknown_source",
    );
    // The framework's own refusals are JSON too: a source name that is not UTF-8, a wrong method.
    check(
        &post(&base, "%ff", &body, sig(), "application/json").await,
        400,
        "malformed_path",
    );
    let get = reqwest::get(format!("{base}/v1/sources/demo/events"))
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let get: Value = get.json().await.unwrap();
    assert_eq!(get["error"], "method_not_allowed", "{get}");
    check(
        &post(&base, "demo", &body, sig(), "text/plain").await,
        415,
        "unsupported_media_type",
    );
    check(
        &post(&base, "demo", &body, None, "application/json").await,
        401,
        "invalid_signature",
    );
    let wrong = Some(signature::sign(b"not-the-secret", now(), body.as_bytes()));
    check(
        &post(&base, "demo", &body, wrong, "application/json").await,
        401,
        "invalid_signature",
    );
    let stale = Some(signature::sign(
        SECRET.as_bytes(),
        now() - 301,
        body.as_bytes(),
    ));
    check(
        &post(&base, "demo", &body, stale, "application/json").await,
        401,
        "invalid_signature",
    );
    let tampered = body.replace("contact", "kontakt");
    check(
        &post(&base, "demo", &tampered, sig(), "application/json").await,
        401,
        "invalid_signature",
    );

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4096));
    check(&signed(&base, &big).await, 413, "payload_too_large");
    check(&signed(&base, "{\"type\": ").await, 400, "malformed_json");

    let violation = |r: &Reply, field: &str| {
        check(r, 422, "schema_violation");
        assert_eq!(r.body["field"], field, "{}", r.body);
    };
    let data = |d: Value| json!({"type": "LeadCaptured", "id": "x", "data": d}).to_string();
    violation(
        &signed(&base, &data(json!({"form_id": "f"}))).await,
        "data.email",
    );
    violation(
        &signed(&base, &data(json!({"email": 7, "form_id": "f"}))).await,
        "data.email",
    );
    violation(
        &signed(
            &base,
            &data(json!({"email": "not an address", "form_id": "f"})),
        )
        .await,
        "data.email",
    );
    violation(
        &signed(
            &base,
            &data(json!({"email": "a@b.io", "form_id": "f", "emial": "typo"})),
        )
        .await,
        "data.emial",
    );
    violation(
        &signed(&base, &json!({"type": "Nope", "data": {}}).to_string()).await,
        "type",
    );
    violation(
        &signed(
            &base,
            &json!({"type": "ContentPublished", "data": {}}).to_string(),
        )
        .await,
        "type",
    );
    violation(
        &signed(
            &base,
            &json!({"type": "LeadCaptured", "datum": {}}).to_string(),
        )
        .await,
        "datum",
    );
    let invoice = json!({"type": "InvoiceRequested", "id": "i", "data": {
        "customer_id": "c", "customer_email": "b@c.io", "currency": "euro", "amount_minor": 5, "description": "d"}});
    violation(&signed(&base, &invoice.to_string()).await, "data.currency");

    // Nothing refused reached the topic.
    let (s2, topic) = (s.clone(), s.ingest.topic.clone());
    let raw = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &topic, Isolation::ReadUncommitted)
    })
    .await
    .unwrap();
    assert!(
        raw.is_empty(),
        "{} records written by refused requests",
        raw.len()
    );
    common::cleanup(&s, &[&s.ingest.topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_bucket_gets_429_with_retry_after() {
    let mut s = settings().await;
    s.ingest.sources.insert("demo".into(), source(1, 3));
    let base = start(&s).await;
    // Authenticated but malformed: cheap for the server, yet each spends a token.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = signed(&base, "not json").await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.body["error"], "rate_limited");
            retry_after = r.retry_after;
        }
    }
    assert_eq!(
        &statuses[..3],
        &[400, 400, 400],
        "the burst passes: {statuses:?}"
    );
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    // Unauthenticated requests do not drain the bucket of a real sender.
    let r = post(&base, "demo", "x", None, "application/json").await;
    assert_eq!(r.status, 401);
    common::cleanup(&s, &[&s.ingest.topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_gets_503_with_retry_after() {
    let mut s = settings().await;
    s.kafka.bootstrap_servers = "127.0.0.1:1".into(); // nothing listens there
    s.ingest.publish_timeout = Duration::from_millis(1500);
    let base = start(&s).await;
    let r = signed(&base, &lead("L-503", "ada@example.com")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"], "unavailable");
    assert_eq!(r.retry_after, Some(5));
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_gets_503_and_writes_nothing() {
    let mut s = settings().await;
    s.registry.url = "http://127.0.0.1:1".into();
    let base = start(&s).await;
    let r = signed(&base, &lead("L-reg", "ada@example.com")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.retry_after, Some(5));
    let (s2, topic) = (s.clone(), s.ingest.topic.clone());
    let raw = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &topic, Isolation::ReadUncommitted)
    })
    .await
    .unwrap();
    assert!(raw.is_empty(), "nothing half-written");
    common::cleanup(&s, &[&s.ingest.topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_openapi_answer() {
    let s = settings().await;
    let base = start(&s).await;
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    let doc: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/sources/{source}/events"]["post"]["responses"]["422"].is_object());
    let missing = reqwest::get(format!("{base}/nope")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    common::cleanup(&s, &[&s.ingest.topic]).await;
}
