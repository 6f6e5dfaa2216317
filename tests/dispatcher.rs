//! The dispatcher in-process against the real broker and registry and the provider sandboxes:
//! receipts and effects, permanent refusals, the rate limit, Retry-After, the circuit breaker,
//! dry runs and ordering. (Crashes of the real binary: `dispatcher_crash.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    await_caught_up, create_plan, decide, envelopes, invoice_event, receipts, write_outbox,
};
use onceflow::config::{AdapterSettings, InDoubt, SecretRef, Settings};
use onceflow::dispatcher::Dispatcher;
use onceflow::kafka::client::Isolation;
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::headers::ErrorClass;
use onceflow::model::headers::name;
use onceflow::stage::Counts;
use onceflow::stage::fault::{FaultPlan, Point};
use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};
use tokio::sync::watch;

const CATCH_UP: Duration = Duration::from_secs(90);
const API_KEY: &str = "test-key";

/// A running dispatcher; `stop` ends it and returns its counts.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Counts>,
}

impl Running {
    fn start(s: &Settings, adapter: &str) -> Running {
        Running::with_fault(s, adapter, FaultPlan::default())
    }

    fn with_fault(s: &Settings, adapter: &str, fault: FaultPlan) -> Running {
        let config = s.adapters.get(adapter).cloned().unwrap_or_default();
        let a = onceflow::adapters::build(adapter, &config).unwrap();
        let d = Dispatcher::new(s, a).unwrap().with_fault(fault);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(async move { d.run(stopped).await.unwrap() });
        Running { stop, task }
    }

    async fn stop(self) -> Counts {
        self.stop.send(true).unwrap();
        self.task.await.unwrap()
    }
}

/// A sandbox on an ephemeral port with `faults`.
async fn sandbox(faults: &[(Provider, Faults)]) -> onceflow_sandbox::Running {
    let config = SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: API_KEY.into(),
        faults: faults.iter().cloned().collect::<BTreeMap<_, _>>(),
        ..SandboxConfig::default()
    };
    Sandbox::start(config).await.unwrap()
}

/// Test settings whose adapters talk to the sandbox at `addr`, with fast retry tiers.
async fn settings(addr: std::net::SocketAddr, adapters: &[&str]) -> Settings {
    let mut s = common::settings();
    s.adapters.clear();
    for name in adapters {
        s.adapters.insert(
            (*name).to_string(),
            AdapterSettings {
                base_url: Some(format!("http://{addr}/{name}")),
                credentials: Some(SecretRef::Value(API_KEY.into())),
                rate_per_second: 1_000,
                burst: 1_000,
                ..AdapterSettings::default()
            },
        );
    }
    s.retry.tiers = vec![Duration::from_millis(300), Duration::from_millis(600)];
    s.dispatcher.instance_id = "t".into();
    s.dispatcher.request_timeout = Duration::from_secs(2);
    create_plan(&s).await;
    s
}

fn group(s: &Settings, adapter: &str) -> String {
    Names::new(s).group(adapter, Stage::Deliver)
}

fn inputs(s: &Settings, adapter: &str) -> Vec<String> {
    let n = Names::new(s);
    let mut topics = vec![n.outbox(adapter)];
    topics.extend((1..=s.retry.tiers.len()).map(|i| n.retry(adapter, Stage::Deliver, i)));
    topics
}

/// Effects per command id at `provider`.
fn effects_per_command(sandbox: &Sandbox, provider: Provider) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in sandbox.effects(provider) {
        *out.entry(e.command_id.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_reaches_its_provider_once_with_a_receipt_and_a_refusal_lands_in_the_dlq() {
    let sb = sandbox(&[]).await;
    let s = settings(sb.addr, &["billing"]).await;
    let mut commands = decide(
        &s,
        "billing",
        &(0..40).map(|i| invoice_event(i, "EUR")).collect::<Vec<_>>(),
    );
    // A currency the provider does not settle in: only the provider can refuse it here.
    commands[7]
        .data
        .insert("currency".into(), serde_json::json!("XTS"));
    let refused = commands[7].meta.command_id.clone();
    write_outbox(&s, &commands, &[]).await;
    // A duplicate record of a command (a redelivered outbox record) is not sent again.
    write_outbox(&s, &commands[..3], &[]).await;

    let running = Running::start(&s, "billing");
    await_caught_up(&s, &group(&s, "billing"), &inputs(&s, "billing"), CATCH_UP).await;
    let counts = running.stop().await;
    assert_eq!(
        (counts.tally.ok, counts.tally.dlq, counts.tally.duplicate),
        (39, 1, 3),
        "{counts:?}"
    );

    let effects = effects_per_command(&sb.sandbox, Provider::Billing);
    assert_eq!(effects.len(), 39);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    assert!(!effects.contains_key(&refused));
    let names = Names::new(&s);
    let results = receipts(&s, &names.results("billing")).await;
    assert_eq!(results.len(), 39);
    let invoice_ids: std::collections::HashSet<&str> = sb
        .sandbox
        .effects(Provider::Billing)
        .iter()
        .filter_map(|e| e.provider_id.clone())
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    for r in &results {
        assert_eq!(r["status"], "delivered");
        assert_eq!(r["http_status"], 200);
        assert!(
            invoice_ids.contains(r["provider_id"].as_str().unwrap()),
            "{r}"
        );
    }
    let dlq = envelopes(&s, &names.dlq("billing", Stage::Deliver));
    assert_eq!(dlq.len(), 1);
    let env = &dlq[0].1;
    assert_eq!(env.class, ErrorClass::Permanent);
    assert_eq!(env.http_status, Some(400));
    assert!(
        env.message.to_lowercase().contains("currency"),
        "{}",
        env.message
    );
    assert_eq!(env.stage, Stage::Deliver);
    common::cleanup_plan(&s).await;
}

/// An aborted transaction's outputs are sent again, in place, in a fresh one (the calls are not
/// made again), and with their headers: every attempt but the last gives the producer copies of
/// the header lists (the last one moves them in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_sent_again_after_an_aborted_transaction_keep_their_headers() {
    let sb = sandbox(&[]).await;
    let s = settings(sb.addr, &["billing"]).await;
    let mut commands = decide(
        &s,
        "billing",
        &(0..20).map(|i| invoice_event(i, "EUR")).collect::<Vec<_>>(),
    );
    commands[3]
        .data
        .insert("currency".into(), serde_json::json!("XTS"));
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    write_outbox(&s, &commands, &[("traceparent", trace)]).await;

    let running = Running::with_fault(&s, "billing", FaultPlan::at(Point::AbortFirstAttempt, 1));
    await_caught_up(&s, &group(&s, "billing"), &inputs(&s, "billing"), CATCH_UP).await;
    let counts = running.stop().await;
    assert_eq!(
        (counts.tally.ok, counts.tally.dlq, counts.aborts),
        (19, 1, 0),
        "sent again in place, not redone: {counts:?}"
    );
    let effects = effects_per_command(&sb.sandbox, Provider::Billing);
    assert_eq!(effects.len(), 19);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");

    let names = Names::new(&s);
    let (s2, topic) = (s.clone(), names.results("billing"));
    let results = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &topic, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    assert_eq!(results.len(), 19);
    for r in &results {
        assert_eq!(r.header(name::TRACEPARENT), Some(trace), "{:?}", r.headers);
    }
    let dlq = envelopes(&s, &names.dlq("billing", Stage::Deliver));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].1.class, ErrorClass::Permanent);
    assert_eq!(dlq[0].1.http_status, Some(400));
    common::cleanup_plan(&s).await;
}

/// What a billing dispatcher made of 20 commands whose first batch had every one of its
/// transactions aborted (all of its tries), under `in_doubt`.
struct Redone {
    counts: Counts,
    effects: BTreeMap<String, usize>,
    calls: Vec<onceflow_sandbox::Call>,
    receipts: Vec<serde_json::Value>,
    invoices: std::collections::HashSet<String>,
    dlq: Vec<ErrorClass>,
}

async fn every_try_of_batch_1_aborted(in_doubt: InDoubt) -> Redone {
    let sb = sandbox(&[]).await;
    let mut s = settings(sb.addr, &["billing"]).await;
    s.adapters.get_mut("billing").unwrap().in_doubt = Some(in_doubt);
    let commands = decide(
        &s,
        "billing",
        &(0..20).map(|i| invoice_event(i, "EUR")).collect::<Vec<_>>(),
    );
    write_outbox(&s, &commands, &[]).await;
    let running = Running::with_fault(&s, "billing", FaultPlan::at(Point::AbortBeforeCommit, 1));
    await_caught_up(&s, &group(&s, "billing"), &inputs(&s, "billing"), CATCH_UP).await;
    let counts = running.stop().await;
    let names = Names::new(&s);
    let redone = Redone {
        counts,
        effects: effects_per_command(&sb.sandbox, Provider::Billing),
        calls: sb.sandbox.calls(Provider::Billing),
        receipts: receipts(&s, &names.results("billing")).await,
        invoices: sb
            .sandbox
            .effects(Provider::Billing)
            .into_iter()
            .filter_map(|e| e.provider_id)
            .collect(),
        dlq: envelopes(&s, &names.dlq("billing", Stage::Deliver))
            .into_iter()
            .map(|(_, e)| e.class)
            .collect(),
    };
    common::cleanup_plan(&s).await;
    redone
}

/// A batch whose every transaction aborts is rewound and redone, and its commands, already
/// called: billing's default (`park`) keeps "attempting" marks, finds them in doubt and
/// dead-letters them for an operator without calling again; `resend` (no marks with keys) calls
/// again with the same idempotency keys, the provider replays its first answers, and each command
/// has one committed receipt naming the first call's invoice. Either way each command took
/// effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_every_try_aborts_is_redone_and_finds_its_calls_in_doubt() {
    // Batch 1 holds the commands fetched first (all of them, unless a partition's came late).
    let parked = every_try_of_batch_1_aborted(InDoubt::Park).await;
    let c = &parked.counts;
    assert_eq!(c.aborts, 1, "batch 1 redone once, after its tries: {c:?}");
    assert!(c.tally.in_doubt >= 1, "{c:?}");
    assert_eq!(c.tally.ok + c.tally.in_doubt, 20, "{c:?}");
    assert_eq!(c.tally.dlq, c.tally.in_doubt, "{c:?}");
    assert_eq!(parked.effects.len(), 20);
    assert!(parked.effects.values().all(|n| *n == 1));
    assert_eq!(
        parked.calls.len(),
        20,
        "none called again: {:?}",
        parked.calls
    );
    assert_eq!(parked.receipts.len() as u64, c.tally.ok);
    assert_eq!(
        parked.dlq,
        vec![ErrorClass::InDoubt; c.tally.in_doubt as usize]
    );

    let resent = every_try_of_batch_1_aborted(InDoubt::Resend).await;
    let c = &resent.counts;
    assert_eq!(
        (c.tally.ok, c.tally.in_doubt, c.tally.dlq, c.aborts),
        (20, 0, 0, 1),
        "without marks nothing is known in doubt: the calls are simply made again: {c:?}"
    );
    assert_eq!(resent.effects.len(), 20);
    assert!(resent.effects.values().all(|n| *n == 1));
    let outcome = |o: &str| resent.calls.iter().filter(|c| c.outcome == o).count();
    assert_eq!(outcome("ok"), 20);
    assert!(outcome("replayed") >= 1, "{:?}", resent.calls);
    assert_eq!(resent.calls.len(), 20 + outcome("replayed"));
    assert_eq!(resent.receipts.len(), 20, "one committed receipt a command");
    for r in &resent.receipts {
        assert!(
            resent.invoices.contains(r["provider_id"].as_str().unwrap()),
            "{r}"
        );
    }
    assert!(resent.dlq.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_never_exceeded_and_a_429_pauses_the_adapter_for_its_retry_after() {
    // The provider allows 40 calls/s (burst 10); onceflow is configured under it.
    let limit = Faults {
        rate_limit: Some(onceflow_sandbox::RateLimit {
            per_second: 40,
            burst: 10,
        }),
        ..Faults::default()
    };
    let sb = sandbox(&[(Provider::Analytics, limit)]).await;
    let mut s = settings(sb.addr, &["analytics"]).await;
    let a = s.adapters.get_mut("analytics").unwrap();
    a.rate_per_second = 30;
    a.burst = 5;
    let events: Vec<_> = (0..150)
        .map(|i| common::lead(&format!("R-{i}"), &format!("r{i}@x.io")))
        .collect();
    write_outbox(&s, &decide(&s, "analytics", &events), &[]).await;
    let running = Running::start(&s, "analytics");
    await_caught_up(
        &s,
        &group(&s, "analytics"),
        &inputs(&s, "analytics"),
        CATCH_UP,
    )
    .await;
    running.stop().await;

    let calls = sb.sandbox.calls(Provider::Analytics);
    assert_eq!(calls.len(), 150, "no call was refused or repeated");
    assert!(
        calls.iter().all(|c| c.outcome == "ok"),
        "the provider never had to refuse one"
    );
    // onceflow's own bucket: at most burst + rate × window in any window.
    let at: Vec<i64> = calls.iter().map(|c| c.at_ms).collect();
    for (i, t) in at.iter().enumerate() {
        let in_window = at[i..].iter().take_while(|u| **u < t + 1_000).count();
        assert!(
            in_window <= 5 + 30 + 1,
            "{in_window} calls in the second after {t}"
        );
    }

    // Now the provider answers one call in five with 429 and Retry-After: 2.
    sb.sandbox.set_faults(
        Provider::Analytics,
        Faults {
            p_429: 0.2,
            retry_after_s: 2,
            ..Faults::default()
        },
    );
    let events: Vec<_> = (0..40)
        .map(|i| common::lead(&format!("T-{i}"), &format!("t{i}@x.io")))
        .collect();
    write_outbox(&s, &decide(&s, "analytics", &events), &[]).await;
    let running = Running::start(&s, "analytics");
    await_caught_up(
        &s,
        &group(&s, "analytics"),
        &inputs(&s, "analytics"),
        CATCH_UP,
    )
    .await;
    let counts = running.stop().await;
    assert_eq!(
        counts.tally.retry + counts.tally.dlq,
        0,
        "429s burn no retry tier: {counts:?}"
    );
    let calls = sb.sandbox.calls(Provider::Analytics);
    let later: Vec<_> = calls[150..].to_vec();
    let throttled: Vec<i64> = later
        .iter()
        .filter(|c| c.outcome == "injected_429")
        .map(|c| c.at_ms)
        .collect();
    assert!(!throttled.is_empty());
    for t in &throttled {
        // Calls already in flight may arrive just after; none may start later within the wait.
        let too_soon = later
            .iter()
            .filter(|c| c.at_ms > t + 200 && c.at_ms < t + 2_000)
            .count();
        assert_eq!(
            too_soon, 0,
            "a call within the Retry-After of the 429 at {t}"
        );
    }
    let effects = effects_per_command(&sb.sandbox, Provider::Analytics);
    assert_eq!(effects.len(), 190);
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_opens_the_breaker_lets_only_probes_through_and_loses_nothing() {
    if std::env::var("DEBUG_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("onceflow=debug")
            .try_init();
    }
    let sb = sandbox(&[]).await;
    let mut s = settings(sb.addr, &["crm"]).await;
    let crm = s.adapters.get_mut("crm").unwrap();
    crm.breaker.failures = 3;
    crm.breaker.open = Duration::from_millis(500);
    crm.breaker.max_open = Duration::from_millis(1_000);
    crm.breaker.probes = 1;
    // With these tiers a command failing through the storm would be dead-lettered in under 2 s.
    s.retry.tiers = vec![Duration::from_millis(100), Duration::from_millis(200)];
    create_plan(&s).await;

    sb.sandbox.set_faults(
        Provider::Crm,
        Faults {
            storm: true,
            ..Faults::default()
        },
    );
    let events: Vec<_> = (0..60)
        .map(|i| common::lead(&format!("S-{i}"), &format!("s{i}@x.io")))
        .collect();
    write_outbox(&s, &decide(&s, "crm", &events), &[]).await;
    let running = Running::start(&s, "crm");
    let storm = Duration::from_secs(6);
    tokio::time::sleep(storm).await;
    let during = sb.sandbox.calls(Provider::Crm);
    sb.sandbox.set_faults(Provider::Crm, Faults::default());
    await_caught_up(&s, &group(&s, "crm"), &inputs(&s, "crm"), CATCH_UP).await;
    let counts = running.stop().await;

    // Before it opened: the calls in flight (at most the concurrency). After: one probe per
    // open interval (0.5 s, doubling to 1 s), so about 6 in 6 s.
    let opened_at = during[2].at_ms;
    let probes = during.iter().filter(|c| c.at_ms > opened_at + 400).count();
    assert!(
        during.iter().all(|c| c.outcome == "storm_5xx"),
        "nothing got through the storm"
    );
    assert!(
        probes <= 10,
        "{probes} calls reached the provider while the breaker was open"
    );
    assert!(probes >= 2, "probes kept testing the provider ({probes})");
    assert_eq!(
        counts.tally.dlq, 0,
        "nothing dead-lettered for the storm: {counts:?}"
    );
    let effects = effects_per_command(&sb.sandbox, Provider::Crm);
    assert_eq!(effects.len(), 60, "every contact upserted after the storm");
    let names = Names::new(&s);
    assert!(envelopes(&s, &names.dlq("crm", Stage::Deliver)).is_empty());
    assert_eq!(receipts(&s, &names.results("crm")).await.len(), 60);
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_records_receipts_without_calling_and_hop_count_and_trace_reach_the_webhook() {
    let sb = sandbox(&[]).await;
    let mut s = settings(sb.addr, &["billing", "webhook"]).await;
    s.adapters.get_mut("billing").unwrap().dry_run = true;
    let secret = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldA==";
    s.adapters.get_mut("webhook").unwrap().credentials = Some(SecretRef::Value(secret.into()));
    let invoices = decide(
        &s,
        "billing",
        &[invoice_event(1, "EUR"), invoice_event(2, "GBP")],
    );
    write_outbox(&s, &invoices, &[]).await;
    let hooks = decide(&s, "webhook", &[common::lead("W-1", "w1@x.io")]);
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    write_outbox(&s, &hooks, &[("onceflow.hop", "2"), ("traceparent", trace)]).await;

    let billing = Running::start(&s, "billing");
    let webhook = Running::start(&s, "webhook");
    await_caught_up(&s, &group(&s, "billing"), &inputs(&s, "billing"), CATCH_UP).await;
    await_caught_up(&s, &group(&s, "webhook"), &inputs(&s, "webhook"), CATCH_UP).await;
    billing.stop().await;
    webhook.stop().await;

    assert!(
        sb.sandbox.calls(Provider::Billing).is_empty(),
        "a dry run calls nothing"
    );
    let names = Names::new(&s);
    let dry = receipts(&s, &names.results("billing")).await;
    assert_eq!(dry.len(), 2);
    assert!(dry.iter().all(|r| r["status"] == "dry_run"), "{dry:?}");

    let delivered = sb.sandbox.effects(Provider::Webhook);
    assert_eq!(delivered.len(), 1, "the receiver verified the signature");
    let detail = &delivered[0].detail;
    assert_eq!(detail["headers"]["x-onceflow-hop"], "3", "{detail}");
    let sent_trace = detail["headers"]["traceparent"].as_str().unwrap();
    assert!(
        sent_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent_trace}"
    );
    assert_eq!(
        detail["headers"]["x-correlation-id"],
        hooks[0].meta.correlation_id.as_str()
    );
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_overlap_across_entities_but_never_within_one_and_keep_its_order() {
    let slow = Faults {
        latency_ms: Some((40, 60)),
        ..Faults::default()
    };
    let sb = sandbox(&[(Provider::Crm, slow)]).await;
    let s = settings(sb.addr, &["crm"]).await;
    // 8 people, 10 successive leads each (a later lead updates the contact): 80 commands.
    let mut events = Vec::new();
    for round in 0..10 {
        for person in 0..8 {
            let mut e = common::lead(&format!("O-{person}-{round}"), &format!("o{person}@x.io"));
            e.data
                .insert("first_name".into(), serde_json::json!(format!("v{round}")));
            events.push(e);
        }
    }
    let commands = decide(&s, "crm", &events);
    write_outbox(&s, &commands, &[]).await;
    let started = std::time::Instant::now();
    let running = Running::start(&s, "crm");
    await_caught_up(&s, &group(&s, "crm"), &inputs(&s, "crm"), CATCH_UP).await;
    let took = started.elapsed();
    running.stop().await;

    let calls = sb.sandbox.calls(Provider::Crm);
    assert_eq!(calls.len(), 80);
    // Within one person: the outbox order, one call after the other.
    let order: BTreeMap<String, usize> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| (c.meta.command_id.clone(), i))
        .collect();
    let mut by_person: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    for (c, cmd) in calls
        .iter()
        .map(|c| (c, &commands[order[c.command_id.as_deref().unwrap()]]))
    {
        by_person
            .entry(cmd.key.clone())
            .or_default()
            .push((c.at_ms, order[&cmd.meta.command_id]));
    }
    for (person, seq) in &by_person {
        let mut by_time = seq.clone();
        by_time.sort();
        let idx: Vec<usize> = by_time.iter().map(|(_, i)| *i).collect();
        let mut sorted = idx.clone();
        sorted.sort();
        assert_eq!(idx, sorted, "{person}: calls out of outbox order");
        for w in by_time.windows(2) {
            assert!(
                w[1].0 - w[0].0 >= 35,
                "{person}: two calls overlapped: {w:?}"
            );
        }
    }
    // Across people the calls overlap: a call takes at least 40 ms, so calls arriving within 30 ms
    // of each other (necessarily of different people) were in flight together.
    let mut at: Vec<i64> = calls.iter().map(|c| c.at_ms).collect();
    at.sort();
    let overlapping = (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + 30).count())
        .max()
        .unwrap();
    assert!(
        overlapping >= 4,
        "at most {overlapping} calls in flight at once (took {took:?})"
    );
    let contacts = sb.sandbox.effects(Provider::Crm);
    let last: BTreeMap<String, String> = contacts
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                e.detail["properties"]["firstname"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert!(
        last.values().all(|v| v == "v9"),
        "the last lead's name won: {last:?}"
    );
    common::cleanup_plan(&s).await;
}
