//! Replaying dead letters against the real broker: while the processor runs, only the selected
//! ones, each into exactly one command; a dry run changes nothing; a replay SIGKILLed half-way and
//! run again doubles nothing; a deliver-stage replay after a provider outage reaches the provider
//! once per command; `dlq list|show` never prints an unmasked e-mail or phone number.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeMap;
use std::process::Command as Process;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{await_caught_up, create_plan, outbox_event_ids, publish};
use onceflow::adapters::{self, Adapter, AdapterError};
use onceflow::config::{AdapterSettings, SecretRef, Settings};
use onceflow::kafka::client::Isolation;
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::Event;
use onceflow::model::command::Command;
use onceflow::ops::audit;
use onceflow::ops::dlq::Filter;
use onceflow::ops::replay::{self, ReplaySpec};
use onceflow::processor::Processor;
use tokio::sync::watch;

const CATCH_UP: Duration = Duration::from_secs(90);

/// The CRM adapter, except that until it is fixed it refuses every lead whose form is `bad-…`,
/// permanently, naming the form.
struct Picky {
    crm: Arc<dyn Adapter>,
    fixed: Arc<AtomicBool>,
}

impl Adapter for Picky {
    fn name(&self) -> &str {
        "crm"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        let form = event.data["form_id"].as_str().unwrap_or("").to_string();
        if form.starts_with("bad") && !self.fixed.load(Ordering::SeqCst) {
            return Err(AdapterError::Permanent {
                reason: format!("form {form} is not mapped to a CRM pipeline"),
            });
        }
        self.crm.decide(event)
    }
}

fn lead(id: &str, email: &str, form: &str) -> Event {
    let mut e = common::lead(id, email);
    e.data.insert("form_id".into(), serde_json::json!(form));
    e.data
        .insert("phone".into(), serde_json::json!("+44 20 7946 0958"));
    e
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(s: &Settings, fixed: &Arc<AtomicBool>) -> Running {
    let picky = Picky {
        crm: adapters::build("crm", &AdapterSettings::default()).unwrap(),
        fixed: Arc::clone(fixed),
    };
    let p = Processor::new(s, Arc::new(picky)).unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        p.run(stopped).await.unwrap();
    });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

fn process_inputs(s: &Settings) -> Vec<String> {
    let n = Names::new(s);
    let mut t = s.topics.inputs.clone();
    t.extend((1..=s.retry.tiers.len()).map(|i| n.retry("crm", Stage::Process, i)));
    t
}

fn spec(filter: Filter, execute: bool) -> ReplaySpec {
    ReplaySpec {
        adapter: "crm".into(),
        stage: Stage::Process,
        filter,
        from: None,
        to: None,
        execute,
        reason: execute.then(|| "forms bad-A are mapped now".to_string()),
        operator: "test".into(),
        batch: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_while_the_processor_runs_yields_one_command_per_selected_dead_letter() {
    let s = common::settings();
    create_plan(&s).await;
    let names = Names::new(&s);
    let fixed = Arc::new(AtomicBool::new(false));
    let mut events: Vec<Event> = (0..10)
        .map(|i| lead(&format!("G-{i}"), &format!("g{i}@x.io"), "contact"))
        .collect();
    events.extend((0..4).map(|i| lead(&format!("A-{i}"), &format!("a{i}@x.io"), "bad-A")));
    events.extend((0..2).map(|i| lead(&format!("B-{i}"), &format!("b{i}@x.io"), "bad-B")));
    publish(&s, events).await;
    let running = start(&s, &fixed);
    await_caught_up(
        &s,
        &names.group("crm", Stage::Process),
        &process_inputs(&s),
        CATCH_UP,
    )
    .await;
    let dlq = names.dlq("crm", Stage::Process);
    assert_eq!(common::envelopes(&s, &dlq).len(), 6);

    // The operator maps the bad-A forms (a configuration change); the processor keeps running.
    fixed.store(true, Ordering::SeqCst);
    let only_a = Filter {
        reason: Some("bad-A".into()),
        ..Filter::default()
    };
    let mut ignore = |_: u64, _: u64| {};
    let dry = replay::run(&s, &spec(only_a.clone(), false), &mut ignore)
        .await
        .unwrap();
    assert_eq!(
        (dry.dry_run, dry.scanned, dry.selected),
        (true, 6, 4),
        "{dry:?}"
    );
    // A dry run changed nothing: no copies, no offsets, no audit record.
    let retry1 = names.retry("crm", Stage::Process, 1);
    assert!(common::read_all(&s, &retry1, Isolation::ReadUncommitted).is_empty());
    let replay_group = names.replay_group("crm", Stage::Process);
    let offsets =
        onceflow::ops::offsets::show(&s.kafka, &replay_group, std::slice::from_ref(&dlq)).unwrap();
    assert!(
        offsets.iter().all(|r| r.current.is_none()),
        "the replay group committed nothing: {offsets:?}"
    );
    assert!(audit::list(&s.kafka, &names.audit()).unwrap().is_empty());

    let done = replay::run(&s, &spec(only_a, true), &mut ignore)
        .await
        .unwrap();
    assert_eq!((done.selected, done.scanned), (4, 6), "{done:?}");
    await_caught_up(
        &s,
        &names.group("crm", Stage::Process),
        &process_inputs(&s),
        CATCH_UP,
    )
    .await;
    running.stop().await;

    let ids = outbox_event_ids(&s, &names.outbox("crm")).await;
    assert!(common::doubles(&ids).is_empty(), "{ids:?}");
    assert_eq!(
        ids.len(),
        14,
        "10 good + 4 replayed, none of the 2 not selected"
    );
    let b_ids: Vec<String> = (0..2)
        .map(|i| onceflow::model::identity::event_id("test", &format!("B-{i}")))
        .collect();
    assert!(ids.iter().all(|id| !b_ids.contains(id)));
    // The copies carry the replay headers and kept the attempt count.
    let copies = common::read_all_bytes(&s, &retry1, Isolation::ReadCommitted);
    assert_eq!(copies.len(), 4);
    for c in &copies {
        assert!(c.header("onceflow.replay.of").unwrap().starts_with(&dlq));
        assert_eq!(
            c.header("onceflow.replay.reason"),
            Some("forms bad-A are mapped now")
        );
        assert_eq!(c.header("onceflow.attempt"), Some("1"));
    }
    let records = audit::list(&s.kafka, &names.audit()).unwrap();
    let replayed: u64 = records
        .iter()
        .map(|r| r.detail["count"].as_u64().unwrap())
        .sum();
    assert_eq!(replayed, 4);
    assert!(
        records
            .iter()
            .all(|r| r.action == "replay" && r.operator == "test")
    );
    // A second run finds nothing new: the replay group's offsets moved past the DLQ.
    let again = replay::run(&s, &spec(Filter::default(), false), &mut ignore)
        .await
        .unwrap();
    assert_eq!(again.scanned, 0, "{again:?}");
    common::cleanup_plan(&s).await;
}

fn write_config(s: &Settings, dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("onceflow.toml");
    std::fs::write(
        &config,
        format!("{}[adapters.crm]\n", common::config_toml(s)),
    )
    .unwrap();
    config
}

fn onceflow(config: &std::path::Path, args: &[&str], fault: Option<&str>) -> std::process::Output {
    let mut cmd = Process::new(env!("CARGO_BIN_EXE_onceflow"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn");
    if let Some(f) = fault {
        cmd.env("ONCEFLOW_TEST_FAULT", f);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_half_way_and_run_again_copies_each_dead_letter_once_and_never_shows_pii() {
    let s = common::settings();
    create_plan(&s).await;
    let names = Names::new(&s);
    let fixed = Arc::new(AtomicBool::new(false));
    let events: Vec<Event> = (0..20)
        .map(|i| lead(&format!("K-{i}"), &format!("kim.{i}@x.io"), "bad-K"))
        .collect();
    publish(&s, events).await;
    let running = start(&s, &fixed);
    await_caught_up(
        &s,
        &names.group("crm", Stage::Process),
        &process_inputs(&s),
        CATCH_UP,
    )
    .await;
    running.stop().await;
    let dlq = names.dlq("crm", Stage::Process);
    assert_eq!(common::envelopes(&s, &dlq).len(), 20);

    let dir = std::env::temp_dir().join(format!("onceflow-replay-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(&s, &dir);

    // The operator's views never show an e-mail or a phone number in clear.
    for args in [
        vec!["dlq", "list", "--adapter", "crm"],
        vec!["dlq", "list", "--adapter", "crm", "--json"],
        vec!["dlq", "stats", "--adapter", "crm"],
    ] {
        let out = onceflow(&config, &args, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("kim.") && !text.contains("7946 0958") && !text.contains("+44"),
            "{args:?}:\n{text}"
        );
        if !args.contains(&"stats") {
            assert!(
                text.contains("k***@x.io"),
                "{args:?} shows the masked address:\n{text}"
            );
        }
    }
    let first = common::envelopes(&s, &dlq);
    let letters = onceflow::ops::dlq::read(&s.kafka, &dlq, &Filter::default()).unwrap();
    let (p, o) = (letters[0].partition, letters[0].offset.to_string());
    let shown = onceflow(
        &config,
        &[
            "dlq",
            "show",
            "--adapter",
            "crm",
            "--partition",
            &p.to_string(),
            "--offset",
            &o,
        ],
        None,
    );
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success()
            && text.contains("k***@x.io")
            && !text.contains("kim.")
            && !text.contains("7946 0958"),
        "{text}"
    );
    assert!(text.contains("not mapped to a CRM pipeline"), "{text}");
    assert_eq!(first.len(), 20);

    // Killed after its third transaction (batches of 3), then run again.
    let args = [
        "replay",
        "--adapter",
        "crm",
        "--execute",
        "--reason",
        "mapped",
        "--batch",
        "3",
        "--json",
    ];
    let crashed = onceflow(&config, &args, Some("crash_after_commit:3"));
    let crash_log = String::from_utf8_lossy(&crashed.stderr).into_owned();
    assert!(
        crashed.status.code().is_none(),
        "expected a crash (SIGABRT), got {:?}: {crash_log}",
        crashed.status
    );
    let partial = common::read_all_bytes(
        &s,
        &names.retry("crm", Stage::Process, 1),
        Isolation::ReadCommitted,
    );
    assert!(
        !partial.is_empty() && partial.len() < 20,
        "{} copied before the crash",
        partial.len()
    );
    let rerun = onceflow(&config, &args, None);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(
        summary["selected"].as_u64().unwrap() as usize + partial.len(),
        20,
        "{summary}"
    );

    let copies = common::read_all_bytes(
        &s,
        &names.retry("crm", Stage::Process, 1),
        Isolation::ReadCommitted,
    );
    let mut by_origin: BTreeMap<String, usize> = BTreeMap::new();
    for c in &copies {
        *by_origin
            .entry(c.header("onceflow.replay.of").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(by_origin.len(), 20, "every dead letter copied");
    assert!(
        by_origin.values().all(|n| *n == 1),
        "none twice: {by_origin:?}"
    );

    // Fixed, the processor turns each copy into exactly one command.
    fixed.store(true, Ordering::SeqCst);
    let running = start(&s, &fixed);
    await_caught_up(
        &s,
        &names.group("crm", Stage::Process),
        &process_inputs(&s),
        CATCH_UP,
    )
    .await;
    running.stop().await;
    let ids = outbox_event_ids(&s, &names.outbox("crm")).await;
    assert_eq!((ids.len(), common::doubles(&ids).len()), (20, 0));
    let listed = onceflow(&config, &["audit", "list", "--json"], None);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let total: u64 = records
        .iter()
        .map(|r| r["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total, 20,
        "one audit record per committed batch, counting every copy once"
    );
    std::fs::remove_dir_all(&dir).ok();
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliver_replay_after_a_provider_outage_reaches_the_provider_once_per_command() {
    use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};
    let sb = Sandbox::start(SandboxConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: "k".into(),
        faults: [(
            Provider::Billing,
            Faults {
                storm: true,
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
    s.adapters.insert(
        "billing".into(),
        AdapterSettings {
            base_url: Some(format!("http://{}/billing", sb.addr)),
            credentials: Some(SecretRef::Value("k".into())),
            in_doubt: Some(onceflow::config::InDoubt::Resend),
            ..AdapterSettings::default()
        },
    );
    // A breaker that never opens and short tiers: the outage dead-letters everything.
    s.adapters.get_mut("billing").unwrap().breaker.failures = 1_000;
    s.adapters.get_mut("billing").unwrap().breaker.failure_rate = 1.0;
    s.adapters.get_mut("billing").unwrap().breaker.window = 10_000;
    s.retry.tiers = vec![Duration::from_millis(100), Duration::from_millis(200)];
    s.dispatcher.instance_id = "r".into();
    create_plan(&s).await;
    let names = Names::new(&s);
    let events: Vec<Event> = (0..12).map(|i| common::invoice_event(i, "EUR")).collect();
    let commands = common::decide(&s, "billing", &events);
    common::write_outbox(&s, &commands, &[]).await;

    let d = onceflow::dispatcher::Dispatcher::new(
        &s,
        adapters::build("billing", &s.adapters["billing"]).unwrap(),
    )
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { d.run(stopped).await.unwrap() });
    let dlq = names.dlq("billing", Stage::Deliver);
    let deadline = std::time::Instant::now() + CATCH_UP;
    while common::envelopes(&s, &dlq).len() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outage did not dead-letter everything"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(sb.sandbox.effects(Provider::Billing).is_empty());

    sb.sandbox.set_faults(Provider::Billing, Faults::default());
    let mut ignore = |_: u64, _: u64| {};
    let mut replay_spec = spec(Filter::default(), true);
    replay_spec.adapter = "billing".into();
    replay_spec.stage = Stage::Deliver;
    let done = replay::run(&s, &replay_spec, &mut ignore).await.unwrap();
    assert_eq!(done.selected, 12);
    let mut inputs = vec![names.outbox("billing")];
    inputs.extend((1..=2).map(|i| names.retry("billing", Stage::Deliver, i)));
    await_caught_up(
        &s,
        &names.group("billing", Stage::Deliver),
        &inputs,
        CATCH_UP,
    )
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();

    let mut effects: BTreeMap<String, usize> = BTreeMap::new();
    for e in sb.sandbox.effects(Provider::Billing) {
        *effects.entry(e.command_id.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        effects.len(),
        12,
        "every dead-lettered command reached the provider"
    );
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    assert_eq!(
        common::envelopes(&s, &dlq).len(),
        12,
        "the DLQ keeps its records; none came back"
    );
    common::cleanup_plan(&s).await;
}
