//! Crash consistency of the intake: the real `onceflow ingest`, SIGKILLed while requests are in
//! flight. Every request that got a 202 is in the topic; a request that got no answer is sent
//! again after the restart, as a sender would, and gets the same event id (the event id derives
//! from the source and the sender's id), so the processor's dedupe removes any copy the first
//! attempt left behind. Nothing is lost, and every copy in the topic is one a retry explains.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceflow::ingest::signature;
use onceflow::kafka::client::Isolation;
use serde_json::{Value, json};

const SECRET: &str = "crash-secret";
const EVENTS: usize = 1_500;

fn spawn(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_onceflow"))
        .args(["--config", config.to_str().unwrap(), "ingest"])
        .env("ONCEFLOW_TEST_CRASH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

async fn ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "ingest did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts event `i`; its event id when the answer was a 202.
async fn post(http: &reqwest::Client, base: &str, i: usize) -> Option<String> {
    let body = json!({"type": "LeadCaptured", "id": format!("crash-{i}"),
                      "data": {"email": format!("c{i}@example.com"), "form_id": "crash"}})
    .to_string();
    let sig = signature::sign(
        SECRET.as_bytes(),
        jiff::Timestamp::now().as_second(),
        body.as_bytes(),
    );
    let r = http
        .post(format!("{base}/v1/sources/crash/events"))
        .header("content-type", "application/json")
        .header(signature::HEADER, sig)
        .body(body)
        .send()
        .await
        .ok()?;
    if r.status() != 202 {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    v["event_id"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_ingest_loses_no_accepted_event_and_retries_are_deduplicable() {
    let s = common::settings();
    let topic = common::topic(&s, "events", 3).await;
    let dir = std::env::temp_dir().join(format!("onceflow-icrash-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::free_port();
    let config = dir.join("onceflow.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[adapters.crm]\n[ingest]\nlisten = '127.0.0.1:{port}'\nmetrics_listen = '127.0.0.1:{ops}'\n\
             [ingest.sources.crash]\nsecret_env = 'ONCEFLOW_TEST_CRASH_SECRET'\n\
             rate_per_second = 100000\nburst = 100000\n",
            base = common::config_toml(&s),
            ops = common::free_port(),
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut ingest = spawn(&config, &dir.join("ingest-1.log"));
    ready(&http, &base).await;
    // Requests in flight, 32 at a time; SIGKILL once about a third were answered.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..EVENTS {
        let (http, base, gate, answered) = (
            http.clone(),
            base.clone(),
            Arc::clone(&gate),
            Arc::clone(&answered),
        );
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await.unwrap();
            let id = post(&http, &base, i).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (i, id)
        });
    }
    while answered.load(std::sync::atomic::Ordering::SeqCst) < EVENTS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ingest.kill().unwrap();
    ingest.wait().unwrap();
    let mut accepted: BTreeMap<usize, String> = BTreeMap::new();
    let mut unanswered = BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (i, Some(id)) => {
                accepted.insert(i, id);
            }
            (i, None) => {
                unanswered.insert(i);
            }
        }
    }
    assert!(
        !accepted.is_empty() && !unanswered.is_empty(),
        "the kill came too early or too late: {} accepted",
        accepted.len()
    );

    // The sender retries what got no answer; the same sender id gets the same event id.
    let ingest = spawn(&config, &dir.join("ingest-2.log"));
    let _guard = KillOnDrop(ingest);
    ready(&http, &base).await;
    let mut retried = BTreeMap::new();
    for &i in &unanswered {
        let id = post(&http, &base, i)
            .await
            .expect("a retry after the restart is accepted");
        retried.insert(i, id);
    }

    let (s2, t2) = (s.clone(), topic.clone());
    let records = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &t2, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    let codec = onceflow::codec::AvroCodec::new(&s.registry).unwrap();
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        let d = onceflow::codec::Codec::decode(&codec, &r.value)
            .await
            .unwrap();
        let e = onceflow::model::Event::from_avro(&d.value).unwrap();
        *copies.entry(e.meta.event_id).or_default() += 1;
    }
    for (i, id) in &accepted {
        assert_eq!(
            copies.get(id),
            Some(&1),
            "accepted event {i} ({id}) is not in the topic exactly once"
        );
    }
    for (i, id) in &retried {
        let n = copies.get(id).copied().unwrap_or(0);
        assert!(
            (1..=2).contains(&n),
            "retried event {i} ({id}) is in the topic {n} times"
        );
    }
    let doubled = retried.values().filter(|id| copies[*id] == 2).count();
    assert_eq!(copies.len(), EVENTS, "every event is in the topic");
    assert_eq!(records.len(), EVENTS + doubled);
    println!(
        "{} accepted before the kill, {} unanswered and retried ({} of those had been written before the kill: duplicates with the same event id, for the dedupe)",
        accepted.len(),
        retried.len(),
        doubled
    );
    common::cleanup(&s, &[&topic]).await;
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
