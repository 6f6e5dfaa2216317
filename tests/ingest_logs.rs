//! The real `onceflow ingest` binary, its logs captured: PII never reaches them (nor error bodies),
//! and SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onceflow::ingest::signature;
use serde_json::json;

const EMAIL: &str = "ada.lovelace@example.com";
const PHONE: &str = "+44 20 7946 0958";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_error_bodies_mask_pii_and_sigterm_exits_cleanly() {
    let s = common::settings();
    let topic = common::topic(&s, "events", 3).await;
    let dir = std::env::temp_dir().join(format!("onceflow-logs-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let config = dir.join("onceflow.toml");
    std::fs::write(
        &config,
        format!(
            "namespace = '{ns}'\n[kafka]\nbootstrap_servers = '{b}'\n[registry]\nurl = '{r}'\n\
             [topics]\ninputs = ['{topic}']\n[adapters.crm]\n\
             [ingest]\nlisten = '127.0.0.1:{port}'\nmetrics_listen = '127.0.0.1:{metrics_port}'\n\
             [ingest.sources.demo]\nsecret_env = 'ONCEFLOW_TEST_LOG_SECRET'\n",
            ns = s.namespace,
            b = s.kafka.bootstrap_servers,
            r = s.registry.url,
        ),
    )
    .unwrap();
    let log_path = dir.join("ingest.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_onceflow"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
            "ingest",
        ])
        .env("ONCEFLOW_TEST_LOG_SECRET", "log-secret")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("stdout.log")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    common::await_started(&http, &format!("{base}/healthz"), &log_path).await;

    let post = |body: String| {
        let http = http.clone();
        let url = format!("{base}/v1/sources/demo/events");
        async move {
            let now = jiff::Timestamp::now().as_second();
            let sig = signature::sign(b"log-secret", now, body.as_bytes());
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .header(signature::HEADER, sig)
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let data = json!({"email": EMAIL, "phone": PHONE, "first_name": "Ada", "form_id": "contact"});
    // Accepted.
    let (status, _) =
        post(json!({"type": "LeadCaptured", "id": "pii-1", "data": data}).to_string()).await;
    assert_eq!(status, 202);
    // Refused, with the PII where an error detail would echo it.
    let mut refused = Vec::new();
    for body in [
        json!({"type": EMAIL, "data": data}),
        json!({"type": "LeadCaptured", "occurred_at": EMAIL, "data": data}),
        json!({"type": "LeadCaptured", "data": {"email": PHONE, "form_id": "f"}}),
        json!({"type": "LeadCaptured", "data": {"email": EMAIL, "form_id": "f", EMAIL: PHONE}}),
    ] {
        let (status, text) = post(body.to_string()).await;
        assert_eq!(status, 422, "{text}");
        refused.push(text);
    }
    for text in &refused {
        assert!(
            !text.contains(EMAIL) && !text.contains("7946"),
            "error body leaks PII: {text}"
        );
    }
    assert!(
        refused[0].contains("a***@example.com"),
        "masked, not dropped: {}",
        refused[0]
    );

    // The Prometheus listener counts requests by source and status (bounded labels, no ids).
    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(r#"onceflow_ingest_requests_total{source="demo",status="202"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"onceflow_ingest_requests_total{source="demo",status="422"} 4"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(EMAIL) && !metrics.contains("pii-1"),
        "{metrics}"
    );

    // SIGTERM: graceful shutdown, exit 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ingest did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");

    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("event accepted"), "{logs}");
    assert_eq!(logs.matches("event refused").count(), 4, "{logs}");
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    for needle in [EMAIL, "lovelace", PHONE, "7946 0958", "79460958"] {
        assert!(!logs.contains(needle), "logs leak `{needle}`:\n{logs}");
    }
    std::fs::remove_dir_all(&dir).ok();
    common::cleanup(&s, &[&topic]).await;
}
