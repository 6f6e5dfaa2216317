//! Crash proof of the dispatcher: the real `onceflow deliver` binary, killed with SIGKILL at exact
//! points (after the "attempting" marks, after the HTTP calls and before the commit, after the
//! commit) and at arbitrary moments, restarted, while the provider sandbox injects 429s, 5xx and
//! answers lost after the effect. Then, per command, the sandbox's effects say what happened:
//! - a provider that honours idempotency keys (Stripe-style billing): exactly one effect each;
//! - e-mail without keys under `park`: never two effects; every command without a receipt is in
//!   the DLQ (in doubt or failed); the same with the effect ledger on disk (`store = "disk"`);
//! - e-mail without keys under `resend`: at least one effect each, and every extra effect is a
//!   resend the dispatcher logged as in doubt.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    await_caught_up, create_plan, decide, envelopes, invoice_event, receipts, write_outbox,
};
use onceflow::config::{AdapterSettings, Settings};
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::command::Command as OnceflowCommand;
use onceflow::model::headers::ErrorClass;
use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};

const CATCH_UP: Duration = Duration::from_secs(240);
const API_KEY: &str = "crash-key";

struct Harness {
    settings: Settings,
    adapter: &'static str,
    dir: PathBuf,
    config: PathBuf,
    sandbox: onceflow_sandbox::Running,
}

/// Faults of a provider having a bad day: throttling, errors, lost answers after the effect.
fn bad_day() -> Faults {
    Faults {
        p_429: 0.03,
        retry_after_s: 1,
        p_5xx: 0.03,
        p_timeout_after_effect: 0.02,
        hang_ms: 1_500,
        p_reset: 0.01,
        latency_ms: Some((1, 15)),
        ..Faults::default()
    }
}

impl Harness {
    async fn new(adapter: &'static str, provider: Provider, extra: &str) -> Harness {
        Harness::with(adapter, provider, extra, |_| String::new()).await
    }

    /// As [`Harness::new`], with more `[dispatcher]` settings (given the test's directory).
    async fn with(
        adapter: &'static str,
        provider: Provider,
        extra: &str,
        dispatcher: impl Fn(&std::path::Path) -> String,
    ) -> Harness {
        let sandbox = Sandbox::start(SandboxConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            api_key: API_KEY.into(),
            faults: [(provider, bad_day())].into_iter().collect(),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let mut s = common::settings();
        s.adapters.clear();
        s.adapters
            .insert(adapter.to_string(), AdapterSettings::default());
        // Five quick tiers: a command would need six failures in a row to reach the DLQ.
        s.retry.tiers = [200, 400, 800, 1_600, 3_200]
            .map(Duration::from_millis)
            .to_vec();
        create_plan(&s).await;
        let dir = std::env::temp_dir().join(format!("onceflow-dcrash-{}", s.namespace));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("onceflow.toml");
        std::fs::write(
            &config,
            format!(
                "{base}[retry]\ntiers_ms = [200, 400, 800, 1600, 3200]\n\
                 [adapters.{adapter}]\nbase_url = 'http://{addr}/{adapter}'\ncredentials_env = 'ONCEFLOW_TEST_API_KEY'\n\
                 rate_per_second = 2000\nburst = 200\n{extra}\n\
                 [dispatcher]\nbatch_max_records = 100\nbatch_max_ms = 50\nstatic_membership = true\n\
                 request_timeout_ms = 1000\nconnect_timeout_ms = 500\nmax_wait_ms = 3000\n{more}",
                base = common::config_toml(&s),
                addr = sandbox.addr,
                more = dispatcher(&dir),
            ),
        )
        .unwrap();
        Harness {
            settings: s,
            adapter,
            dir,
            config,
            sandbox,
        }
    }

    fn spawn(&self, fault: Option<&str>, run: usize) -> Child {
        self.spawn_with(fault, run, None)
    }

    fn spawn_with(&self, fault: Option<&str>, run: usize, metrics: Option<u16>) -> Child {
        let log = self.dir.join(format!("deliver-{run}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onceflow"));
        cmd.args([
            "--config",
            self.config.to_str().unwrap(),
            "--log-format",
            "json",
            "deliver",
            "--adapter",
            self.adapter,
            "--instance",
            "a",
        ])
        .env("RUST_LOG", "onceflow=info")
        .env("ONCEFLOW_TEST_API_KEY", API_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        if let Some(f) = fault {
            cmd.env("ONCEFLOW_TEST_FAULT", f);
        }
        if let Some(port) = metrics {
            cmd.env(
                "ONCEFLOW__DISPATCHER__METRICS_LISTEN",
                format!("127.0.0.1:{port}"),
            );
        }
        cmd.spawn().unwrap()
    }

    /// Runs the exact-point crashes, then `kills` arbitrary SIGKILLs, then a last run to the end;
    /// returns what the last run's `/metrics` said once everything was delivered.
    async fn torture(&self, exact: &[&str], kills: usize) -> String {
        for (run, fault) in exact.iter().enumerate() {
            let mut child = self.spawn(Some(fault), run);
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    panic!("{fault}: no crash within 120 s\n{}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                !status.success(),
                "{fault}: expected a crash, got {status}\n{}",
                self.logs()
            );
        }
        for run in exact.len()..exact.len() + kills {
            let mut child = self.spawn(None, run);
            std::thread::sleep(Duration::from_millis(fastrand::u64(500..2_500)));
            child.kill().unwrap(); // SIGKILL: calls in flight, marks and transactions left open
            child.wait().unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut last = self.spawn_with(None, exact.len() + kills, Some(port));
        let names = Names::new(&self.settings);
        let mut topics = vec![names.outbox(self.adapter)];
        topics.extend((1..=5).map(|n| names.retry(self.adapter, Stage::Deliver, n)));
        await_caught_up(
            &self.settings,
            &names.group(self.adapter, Stage::Deliver),
            &topics,
            CATCH_UP,
        )
        .await;
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        last.kill().unwrap();
        last.wait().unwrap();
        metrics
    }

    /// Command ids the dispatcher logged as in doubt, with how often.
    fn in_doubt_logged(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "log") {
                continue;
            }
            for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["fields"]["message"] == "command in doubt" {
                    let id = v["fields"]["command_id"].as_str().unwrap_or("").to_string();
                    *out.entry(id).or_insert(0) += 1;
                }
            }
        }
        out
    }

    fn logs(&self) -> String {
        common::log_tails(&self.dir, 8)
    }

    /// Effects per command id at the provider.
    fn effects(&self, provider: Provider) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in self.sandbox.sandbox.effects(provider) {
            *out.entry(e.command_id.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        out
    }

    /// Command ids with a receipt, and the DLQ's (command key order is not needed: ids come from
    /// the receipts and from decoding the DLQ records' commands).
    async fn outcomes(
        &self,
        commands: &[OnceflowCommand],
    ) -> (BTreeSet<String>, BTreeMap<String, ErrorClass>) {
        let names = Names::new(&self.settings);
        let receipts: BTreeSet<String> = receipts(&self.settings, &names.results(self.adapter))
            .await
            .iter()
            .map(|r| r["command_id"].as_str().unwrap().to_string())
            .collect();
        // DLQ records carry the command's entity key; map keys back to command ids.
        let by_key: BTreeMap<&str, &str> = commands
            .iter()
            .map(|c| (c.key.as_str(), c.meta.command_id.as_str()))
            .collect();
        let dlq = envelopes(&self.settings, &names.dlq(self.adapter, Stage::Deliver))
            .into_iter()
            .map(|(key, env)| (by_key[key.as_str()].to_string(), env.class))
            .collect();
        (receipts, dlq)
    }

    async fn finish(self) {
        common::cleanup_plan(&self.settings).await;
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_idempotency_keys_every_command_has_exactly_one_effect_through_sigkills_and_faults() {
    let h = Harness::new("billing", Provider::Billing, "in_doubt = 'resend'").await;
    let events: Vec<_> = (0..1_500).map(|i| invoice_event(i, "EUR")).collect();
    let commands = decide(&h.settings, "billing", &events);
    write_outbox(&h.settings, &commands, &[]).await;
    h.torture(
        &[
            "crash_before_commit:2",
            "crash_after_commit:3",
            "crash_before_commit:4",
        ],
        5,
    )
    .await;

    let effects = h.effects(Provider::Billing);
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} commands with two invoices: {:?}\n{}",
        doubled.len(),
        &doubled[..doubled.len().min(5)],
        h.logs()
    );
    let (receipts, dlq) = h.outcomes(&commands).await;
    for c in &commands {
        let id = &c.meta.command_id;
        match (receipts.contains(id), dlq.get(id)) {
            (true, None) => assert_eq!(effects.get(id), Some(&1), "{id} has a receipt"),
            (false, Some(class)) => {
                assert!(effects.get(id).copied().unwrap_or(0) <= 1, "{id} {class}")
            }
            other => panic!("{id}: receipt and DLQ {other:?}\n{}", h.logs()),
        }
    }
    let replays = h
        .sandbox
        .sandbox
        .calls(Provider::Billing)
        .iter()
        .filter(|c| c.outcome == "replayed")
        .count();
    assert!(
        replays > 0,
        "answers were lost after the effect, and the resends were replays"
    );
    assert!(
        receipts.len() >= 1_490,
        "{} receipts, DLQ {dlq:?}",
        receipts.len()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_under_park_no_command_is_sent_twice_and_every_doubt_is_parked() {
    park(Harness::new("email", Provider::Email, "provider = 'sendgrid'").await).await;
}

/// The same with the ledger on disk (`store = "disk"`): commits since its last durable one die
/// with each SIGKILL, and the restart reads the changelog after its file's offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ledger_on_disk_under_park_no_command_is_sent_twice() {
    let h = Harness::with("email", Provider::Email, "provider = 'sendgrid'", |dir| {
        format!(
            "state_dir = {:?}\nstore = \"disk\"\n",
            dir.join("state").display().to_string()
        )
    })
    .await;
    park(h).await;
}

async fn park(h: Harness) {
    let events: Vec<_> = (0..1_000)
        .map(|i| common::lead(&format!("P-{i}"), &format!("p{i}@x.io")))
        .collect();
    let commands = decide(&h.settings, "email", &events);
    let received = onceflow::model::event::now_ms().to_string();
    write_outbox(
        &h.settings,
        &commands,
        &[("onceflow.event.received_at", &received)],
    )
    .await;
    let metrics = h
        .torture(
            &[
                "crash_after_marks:2",
                "crash_before_commit:2",
                "crash_after_commit:3",
            ],
            4,
        )
        .await;
    for needle in [
        r#"onceflow_delivery_calls_total{adapter="email",outcome="ok"}"#,
        "onceflow_delivery_call_seconds",
        "onceflow_end_to_end_seconds",
        r#"onceflow_breaker_state{adapter="email"}"#,
        r#"onceflow_dispatcher_records_total{adapter="email",outcome="ok"}"#,
        "onceflow_dispatcher_commit_seconds",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }

    let effects = h.effects(Provider::Email);
    let doubled: Vec<_> = effects.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "{} e-mails sent twice: {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
    let (receipts, dlq) = h.outcomes(&commands).await;
    let mut parked = 0;
    for c in &commands {
        let id = &c.meta.command_id;
        match (receipts.contains(id), dlq.get(id)) {
            (true, None) => assert_eq!(effects.get(id), Some(&1), "{id} has a receipt"),
            (false, Some(ErrorClass::InDoubt)) => parked += 1,
            (false, Some(_)) => {}
            other => panic!("{id}: receipt and DLQ {other:?}\n{}", h.logs()),
        }
    }
    // The crash after the calls and before the commit left a whole batch in doubt.
    assert!(parked >= 1, "no command was parked");
    let logged = h.in_doubt_logged();
    assert!(
        logged.len() >= parked,
        "{} logged, {parked} parked",
        logged.len()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_under_resend_every_command_arrives_and_every_duplicate_was_in_doubt() {
    let h = Harness::new(
        "email",
        Provider::Email,
        "provider = 'sendgrid'\nin_doubt = 'resend'",
    )
    .await;
    let events: Vec<_> = (0..1_000)
        .map(|i| common::lead(&format!("Q-{i}"), &format!("q{i}@x.io")))
        .collect();
    let commands = decide(&h.settings, "email", &events);
    write_outbox(&h.settings, &commands, &[]).await;
    h.torture(&["crash_before_commit:2", "crash_after_commit:3"], 4)
        .await;

    let effects = h.effects(Provider::Email);
    let logged = h.in_doubt_logged();
    let (receipts, dlq) = h.outcomes(&commands).await;
    let mut duplicates = 0;
    for c in &commands {
        let id = &c.meta.command_id;
        let n = effects.get(id).copied().unwrap_or(0);
        if !dlq.contains_key(id) {
            assert!(
                n >= 1 && receipts.contains(id),
                "{id}: {n} effects\n{}",
                h.logs()
            );
        }
        if n > 1 {
            duplicates += n - 1;
            let noted = logged.get(id).copied().unwrap_or(0);
            assert!(
                noted >= n - 1,
                "{id}: {n} e-mails, {noted} in-doubt resends logged"
            );
        }
    }
    let doubts: usize = logged.values().sum();
    assert!(
        duplicates >= 1,
        "the crash after the calls made some e-mails go twice"
    );
    assert!(
        duplicates <= doubts,
        "{duplicates} duplicates, {doubts} in-doubt resends"
    );
    h.finish().await;
}
