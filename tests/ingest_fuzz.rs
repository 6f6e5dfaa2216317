//! The real `onceflow ingest` fuzzed from its own `/openapi.json` by schemathesis (pinned in
//! tests/ingest_fuzz/requirements.txt, installed by deploy/local/schemathesis-env), every request
//! signed with the source's secret by tests/ingest_fuzz/hooks.py on its way out.
//!
//! What it proves, over at least 1 000 requests (positive and negative generation: wrong types,
//! missing and extra fields, odd headers, other methods, unknown sources): no answer is a 5xx but
//! 503, every refusal is a JSON `{error, detail}` body with content-type application/json (checked
//! by the hook on every response, framework rejections included), signed requests are accepted
//! (some 202s) and refused for the right reasons (several distinct `error`s), and the server is
//! still alive and healthy afterwards.
//!
//! Outside its reach, and so not asserted: requests that are not HTTP at all (schemathesis' probe
//! with a NUL byte in a header value, a non-numeric Content-Length, a URI over 64 KiB) are answered
//! by hyper's parser with a bare 400 or 414 before any handler runs; the hook lists them under
//! `unparsable`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const SECRET: &str = "fuzz-secret";
/// Requests schemathesis must at least send.
const MIN_REQUESTS: u64 = 1_000;

fn schemathesis() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("deploy/local/schemathesis-env"))
        .stderr(Stdio::inherit())
        .output()
        .expect("deploy/local/schemathesis-env runs");
    assert!(out.status.success(), "deploy/local/schemathesis-env failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("schemathesis-env prints the path of st")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_only_json_refusals() {
    let st = schemathesis();
    let s = common::settings();
    let topic = common::topic(&s, "events", 3).await;
    let dir = std::env::temp_dir().join(format!("onceflow-ingest-fuzz-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let config = dir.join("onceflow.toml");
    std::fs::write(
        &config,
        format!(
            "{}[adapters.crm]\n\
             [ingest]\nlisten = '127.0.0.1:{port}'\nmetrics_listen = '127.0.0.1:{metrics_port}'\n\
             [ingest.sources.fuzz]\nsecret_env = 'ONCEFLOW_TEST_FUZZ_SECRET'\n\
             rate_per_second = 100000\nburst = 100000\n",
            common::config_toml(&s)
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
        .env("ONCEFLOW_TEST_FUZZ_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    common::await_started(&http, &format!("{base}/healthz"), &log_path).await;

    let stats_path = dir.join("stats.json");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ingest_fuzz/hooks.py");
    let started = Instant::now();
    let run = tokio::task::spawn_blocking({
        let (st, base, dir, stats_path) =
            (st.clone(), base.clone(), dir.clone(), stats_path.clone());
        move || {
            Command::new(st)
                .args(["run", &format!("{base}/openapi.json")])
                .args(["--checks", "onceflow_refusals,not_a_server_error"])
                .args(["--max-examples", "900", "--seed", "4711", "--workers", "2"])
                .args(["--request-timeout", "20", "--no-color"])
                .env("SCHEMATHESIS_HOOKS", &hooks)
                .env("ONCEFLOW_FUZZ_SOURCE", "fuzz")
                .env("ONCEFLOW_FUZZ_SECRET", SECRET)
                .env("ONCEFLOW_FUZZ_STATS", &stats_path)
                .current_dir(&dir)
                .output()
                .expect("schemathesis runs")
        }
    })
    .await
    .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("schemathesis ran {:.0} s", started.elapsed().as_secs_f64());
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("no stats from the hook ({e}):\n{output}"));
    eprintln!("{stats:#}");

    assert!(
        child.try_wait().unwrap().is_none(),
        "ingest died under fuzzing:\n{}",
        common::log_tails(&dir, 40)
    );
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "ingest unhealthy after fuzzing");

    assert!(
        run.status.success(),
        "schemathesis found failures:\n{output}"
    );
    assert_eq!(
        stats["violations"],
        serde_json::json!([]),
        "contract broken:\n{output}"
    );
    let requests = stats["requests"].as_u64().unwrap();
    assert!(
        requests >= MIN_REQUESTS,
        "only {requests} requests:\n{output}"
    );
    let statuses = stats["statuses"].as_object().unwrap();
    assert!(
        statuses.get("202").and_then(|n| n.as_u64()).unwrap_or(0) > 0,
        "no signed event was accepted: {stats}"
    );
    assert_eq!(
        stats["signed_refused"],
        serde_json::json!([]),
        "requests the hook signed were refused as unsigned: the signing is broken"
    );
    let errors = stats["errors"].as_object().unwrap();
    for kind in ["schema_violation", "invalid_signature", "unknown_source"] {
        assert!(
            errors.contains_key(kind),
            "no `{kind}` refusal seen: {stats}"
        );
    }

    child.kill().ok();
    child.wait().ok();
    std::fs::remove_dir_all(&dir).ok();
    common::cleanup(&s, &[&topic]).await;
}
