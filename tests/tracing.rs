//! One trace from webhook to provider, through the real binaries: `onceflow ingest`,
//! `onceflow process` and `onceflow deliver` (the webhook adapter) against the provider sandbox,
//! whose first answer is a 503 so the command goes through a retry tier. The sender's W3C
//! `traceparent` reaches the provider with the same trace id (a new span), and the webhook's
//! correlation id and trace id appear in every stage's log line for it: accepted (ingest),
//! decided (processor), sent to a retry tier and delivered (dispatcher). With OTLP export on, the
//! spans reach a collector as one tree: sender → ingest → process → one deliver span per attempt,
//! the last the parent the provider saw. The stages' operations endpoints answer `/healthz` and
//! `/readyz` as the Kubernetes probes expect.
//!
//! The collector is an OTLP/HTTP endpoint served by the test (JSON encoding, as the OTLP
//! specification defines it); no OpenTelemetry Collector runs on these machines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::create_plan;
use onceflow::config::AdapterSettings;
use onceflow::ingest::signature;
use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};
use serde_json::{Value, json};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";
const CORRELATION: &str = "order-7731.checkout";
const SOURCE_SECRET: &str = "trace-source-secret";
const WEBHOOK_SECRET: &str = "whsec_dHJhY2UtdGVzdC1zZWNyZXQ=";

struct Role {
    child: Child,
    log: PathBuf,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, dir: &Path, args: &[&str]) -> Role {
    let log = dir.join(format!("{}.log", args[0]));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onceflow"));
    cmd.args(["--config", config.to_str().unwrap(), "--log-format", "json"])
        .args(args)
        .env("RUST_LOG", "onceflow=debug")
        .env("ONCEFLOW_TEST_TRACE_SOURCE", SOURCE_SECRET)
        .env("ONCEFLOW_TEST_TRACE_WEBHOOK", WEBHOOK_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    Role {
        child: cmd.spawn().unwrap(),
        log,
    }
}

/// The JSON log lines of `role` whose message is `message`.
fn lines(role: &Role, message: &str) -> Vec<Value> {
    std::fs::read_to_string(&role.log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

async fn status(http: &reqwest::Client, url: &str) -> Option<u16> {
    Some(http.get(url).send().await.ok()?.status().as_u16())
}

async fn wait_for(
    what: &str,
    roles: &[&Role],
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done().await {
        if Instant::now() > deadline {
            let logs: Vec<String> = roles
                .iter()
                .map(|r| common::log_tails(r.log.parent().unwrap(), 20))
                .take(1)
                .collect();
            panic!("{what} within {limit:?}; logs:\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An OTLP/HTTP traces endpoint: keeps every span it is sent, with its role.
async fn collector() -> (u16, Arc<Mutex<Vec<(String, Value)>>>) {
    let spans: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let kept = Arc::clone(&spans);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = Arc::clone(&kept);
            async move {
                let export: Value = serde_json::from_slice(&body).unwrap();
                for rs in export["resourceSpans"].as_array().unwrap() {
                    let role = rs["resource"]["attributes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|a| a["key"] == "onceflow.role")
                        .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
                        .unwrap_or_default();
                    for ss in rs["scopeSpans"].as_array().unwrap() {
                        for span in ss["spans"].as_array().unwrap() {
                            kept.lock().unwrap().push((role.clone(), span.clone()));
                        }
                    }
                }
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(axum::serve(listener, app).into_future());
    (port, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhooks_trace_and_correlation_id_reach_the_provider_through_every_stage_and_a_retry() {
    // The provider: its first call answers 503 (nothing performed).
    let sandbox = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        webhook_secret: WEBHOOK_SECRET.into(),
        faults: [(
            Provider::Webhook,
            Faults {
                burst_5xx: 1,
                ..Faults::default()
            },
        )]
        .into_iter()
        .collect(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();

    let mut s = common::settings();
    s.adapters.clear();
    s.adapters
        .insert("webhook".into(), AdapterSettings::default());
    s.retry.tiers = vec![Duration::from_millis(300), Duration::from_millis(600)];
    create_plan(&s).await;
    let dir = std::env::temp_dir().join(format!("onceflow-trace-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let (otlp, spans) = collector().await;
    let (http_port, ingest_ops, process_ops, deliver_ops) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = dir.join("onceflow.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[retry]\ntiers_ms = [300, 600]\n\
             [adapters.webhook]\nbase_url = 'http://{addr}/webhook/trace-receiver'\n\
             credentials_env = 'ONCEFLOW_TEST_TRACE_WEBHOOK'\n\
             [ingest]\nlisten = '127.0.0.1:{http_port}'\nmetrics_listen = '127.0.0.1:{ingest_ops}'\n\
             topic = '{input}'\n\
             [ingest.sources.shop]\nsecret_env = 'ONCEFLOW_TEST_TRACE_SOURCE'\n\
             [processor]\nbatch_max_ms = 50\nmetrics_listen = '127.0.0.1:{process_ops}'\n\
             [dispatcher]\nbatch_max_ms = 50\nmetrics_listen = '127.0.0.1:{deliver_ops}'\n\
             [telemetry]\notlp_endpoint = 'http://127.0.0.1:{otlp}'\nexport_delay_ms = 100\n",
            base = common::config_toml(&s),
            addr = sandbox.addr,
            input = s.topics.inputs[0],
        ),
    )
    .unwrap();

    let ingest = spawn(&config, &dir, &["ingest"]);
    let process = spawn(
        &config,
        &dir,
        &["process", "--adapter", "webhook", "--instance", "t0"],
    );
    let deliver = spawn(
        &config,
        &dir,
        &["deliver", "--adapter", "webhook", "--instance", "t0"],
    );
    let roles = [&ingest, &process, &deliver];
    let http = reqwest::Client::new();

    // The stages' probes: alive at once, ready once their consumer session is live.
    for port in [process_ops, deliver_ops] {
        let (h, r) = (
            format!("http://127.0.0.1:{port}/healthz"),
            format!("http://127.0.0.1:{port}/readyz"),
        );
        wait_for(
            "/healthz answers 200",
            &roles,
            Duration::from_secs(30),
            async || status(&http, &h).await == Some(200),
        )
        .await;
        wait_for(
            "/readyz answers 200",
            &roles,
            Duration::from_secs(60),
            async || status(&http, &r).await == Some(200),
        )
        .await;
    }
    let url = format!("http://127.0.0.1:{http_port}/v1/sources/shop/events");
    wait_for(
        "ingest is ready",
        &roles,
        Duration::from_secs(30),
        async || status(&http, &format!("http://127.0.0.1:{http_port}/readyz")).await == Some(200),
    )
    .await;

    // One signed webhook, with the sender's trace and correlation id.
    let body = json!({"type": "LeadCaptured", "id": "trace-1",
                      "data": {"email": "ada@example.com", "form_id": "contact"}})
    .to_string();
    let sig = signature::sign(
        SOURCE_SECRET.as_bytes(),
        jiff::Timestamp::now().as_second(),
        body.as_bytes(),
    );
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .header(signature::HEADER, sig)
        .header("traceparent", format!("00-{TRACE}-{SENDER_SPAN}-01"))
        .header("x-correlation-id", CORRELATION)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());

    // The provider performs it once, after one refused attempt.
    wait_for(
        "the provider performed the webhook",
        &roles,
        Duration::from_secs(90),
        async || !sandbox.sandbox.effects(Provider::Webhook).is_empty(),
    )
    .await;
    let effects = sandbox.sandbox.effects(Provider::Webhook);
    assert_eq!(effects.len(), 1, "{effects:?}");
    let calls = sandbox.sandbox.calls(Provider::Webhook);
    assert_eq!(
        calls.iter().map(|c| c.status).collect::<Vec<_>>(),
        [503, 200],
        "one refused call, then the retry: {calls:?}"
    );
    let sent = &effects[0].detail["headers"];
    assert_eq!(sent["x-correlation-id"], CORRELATION, "{sent}");
    let traceparent = sent["traceparent"].as_str().unwrap().to_string();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        parts[1], TRACE,
        "the provider saw another trace: {traceparent}"
    );
    assert_ne!(parts[2], SENDER_SPAN, "each hop is a span of its own");

    // Every stage logged it with the correlation id and the trace id.
    let tagged = |v: &Value| {
        v["fields"]["correlation_id"] == CORRELATION && v["fields"]["trace_id"] == TRACE
    };
    wait_for(
        "the dispatcher logged the delivery",
        &roles,
        Duration::from_secs(10),
        async || lines(&deliver, "command delivered").iter().any(tagged),
    )
    .await;
    for (role, message) in [
        (&ingest, "event accepted"),
        (&process, "event decided"),
        (&deliver, "record sent to a retry tier"),
        (&deliver, "command delivered"),
    ] {
        let found = lines(role, message);
        assert!(
            found.iter().any(tagged),
            "no `{message}` line with correlation id {CORRELATION} and trace {TRACE}: {found:?}\n{}",
            std::fs::read_to_string(&role.log).unwrap()
        );
    }
    // The stages' metrics name what dashboards read.
    let scraped = http
        .get(format!("http://127.0.0.1:{deliver_ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        scraped.contains("onceflow_end_to_end_seconds_bucket{adapter=\"webhook\""),
        "{scraped}"
    );

    // The collector received one tree: sender → ingest → process → a span per attempt.
    let named = |name: &str| -> Vec<(String, Value)> {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s["name"] == name)
            .cloned()
            .collect()
    };
    wait_for(
        "the collector received every span",
        &roles,
        Duration::from_secs(20),
        async || {
            named("onceflow.deliver").len() >= 2
                && !named("onceflow.process").is_empty()
                && !named("onceflow.ingest").is_empty()
        },
    )
    .await;
    let (ingest_span, process_span, deliver_spans) = (
        named("onceflow.ingest"),
        named("onceflow.process"),
        named("onceflow.deliver"),
    );
    assert_eq!(
        (ingest_span.len(), process_span.len(), deliver_spans.len()),
        (1, 1, 2),
        "{:?}",
        spans.lock().unwrap()
    );
    let id = |s: &Value, k: &str| s[k].as_str().unwrap_or_default().to_ascii_lowercase();
    for (role, span) in spans.lock().unwrap().iter() {
        assert_eq!(id(span, "traceId"), TRACE, "{role}: {span}");
    }
    assert_eq!(ingest_span[0].0, "ingest");
    assert_eq!(id(&ingest_span[0].1, "parentSpanId"), SENDER_SPAN);
    assert_eq!(process_span[0].0, "process");
    assert_eq!(
        id(&process_span[0].1, "parentSpanId"),
        id(&ingest_span[0].1, "spanId")
    );
    for (role, span) in &deliver_spans {
        assert_eq!(role, "deliver");
        assert_eq!(
            id(span, "parentSpanId"),
            id(&process_span[0].1, "spanId"),
            "{span}"
        );
    }
    let attempts: Vec<String> = deliver_spans.iter().map(|(_, s)| id(s, "spanId")).collect();
    assert!(
        attempts.contains(&parts[2].to_string()),
        "the provider's parent {} is not an attempt's span: {attempts:?}",
        parts[2]
    );
    drop((ingest, process, deliver));
    sandbox.stop();
    common::cleanup_plan(&s).await;
}
