//! Crash proof: the real `onceflow process` binary, killed with SIGKILL at arbitrary points and at
//! exact ones (before the commit, after it, while a rebalance is under way), restarted, and
//! alongside a second instance; once with the dedupe store on disk. Afterwards the outbox, read with `read_committed`, holds exactly
//! one command per event: nothing lost, nothing doubled.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{await_caught_up, create_plan, doubles, lead, outbox_event_ids, publish};
use onceflow::config::Settings;
use onceflow::kafka::names::{Names, Stage};

const CATCH_UP: Duration = Duration::from_secs(180);

struct Harness {
    settings: Settings,
    dir: PathBuf,
    config: PathBuf,
}

impl Harness {
    /// A fresh namespace; `static_membership` picks the group membership mode of the instances.
    async fn new(static_membership: bool) -> Harness {
        Harness::with(static_membership, |_| String::new()).await
    }

    /// As [`Harness::new`], with more `[processor]` settings (given the test's directory).
    async fn with(static_membership: bool, processor: impl Fn(&Path) -> String) -> Harness {
        let s = common::settings();
        create_plan(&s).await;
        let dir = std::env::temp_dir().join(format!("onceflow-crash-{}", s.namespace));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("onceflow.toml");
        std::fs::write(
            &config,
            format!(
                "{}[adapters.crm]\n\
                 [processor]\nbatch_max_records = 50\nbatch_max_ms = 50\nstatic_membership = {static_membership}\n{}",
                common::config_toml(&s),
                processor(&dir)
            ),
        )
        .unwrap();
        Harness {
            settings: s,
            dir,
            config,
        }
    }

    fn spawn(&self, instance: &str, fault: Option<&str>, run: usize) -> Child {
        self.spawn_with(instance, fault, run, None)
    }

    fn spawn_with(
        &self,
        instance: &str,
        fault: Option<&str>,
        run: usize,
        metrics: Option<u16>,
    ) -> Child {
        let log = self.dir.join(format!("{instance}-{run}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onceflow"));
        cmd.args([
            "--config",
            self.config.to_str().unwrap(),
            "process",
            "--adapter",
            "crm",
            "--instance",
            instance,
        ])
        .env("RUST_LOG", "onceflow=info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        if let Some(f) = fault {
            cmd.env("ONCEFLOW_TEST_FAULT", f);
        }
        if let Some(port) = metrics {
            cmd.env(
                "ONCEFLOW__PROCESSOR__METRICS_LISTEN",
                format!("127.0.0.1:{port}"),
            );
        }
        cmd.spawn().unwrap()
    }

    fn group(&self) -> String {
        Names::new(&self.settings).group("crm", Stage::Process)
    }

    /// Every log, for a failure message.
    fn logs(&self) -> String {
        common::log_tails(&self.dir, 15)
    }

    async fn check_exactly_once(&self, expected: &[String]) {
        let ids = outbox_event_ids(&self.settings, &Names::new(&self.settings).outbox("crm")).await;
        let doubled = doubles(&ids);
        assert!(
            doubled.is_empty(),
            "{} doubled, e.g. {:?}\n{}",
            doubled.len(),
            &doubled[..doubled.len().min(5)],
            self.logs()
        );
        let mut want = expected.to_vec();
        want.sort();
        want.dedup();
        let missing: Vec<&String> = want
            .iter()
            .filter(|id| ids.binary_search(id).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "{} lost, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            self.logs()
        );
        assert_eq!(ids.len(), want.len());
    }

    async fn finish(self) {
        common::cleanup_plan(&self.settings).await;
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Client ids of the members of `group`, as the coordinator sees them.
fn group_members(s: &Settings, group: &str) -> Vec<String> {
    use onceflow::kafka::client::{self, Isolation, StartAt};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = client::consumer(
        &s.kafka,
        "test.groups",
        "test.groups",
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    let list = c
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap();
    list.groups()
        .iter()
        .flat_map(|g| g.members().iter().map(|m| m.client_id().to_string()))
        .collect()
}

fn kill(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL: no clean-up, no leave-group, an open transaction left open
    child.wait().unwrap();
}

fn terminate(child: &mut Child, dir: &Path) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "exit status {status} (logs in {})",
                dir.display()
            );
            return;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 3 000 distinct events plus 300 duplicates of them (new records, same event ids) in between.
async fn fill(s: &Settings, n: usize, duplicates: usize) -> Vec<String> {
    let mut events: Vec<_> = (0..n)
        .map(|i| lead(&format!("C-{i}"), &format!("c{i}@x.io")))
        .collect();
    for i in 0..duplicates {
        events.insert(
            i * 7 % events.len(),
            lead(&format!("C-{i}"), &format!("c{i}@x.io")),
        );
    }
    publish(s, events).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_arbitrary_points_neither_loses_nor_doubles_a_command() {
    // Static membership: each restart takes the partitions back without waiting for a rebalance.
    let h = Harness::new(true).await;
    let ids = fill(&h.settings, 3_000, 300).await;
    assert_eq!(ids.len(), 3_300);

    // Exact points first: the process aborts itself after sending a batch and its offsets but
    // before the commit, then right after a commit.
    for (run, fault) in [(0, "crash_before_commit:2"), (1, "crash_after_commit:3")] {
        let mut child = h.spawn("a", Some(fault), run);
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "{fault}: expected a crash, got {status}\n{}",
            h.logs()
        );
    }
    // Then SIGKILL at arbitrary moments, restarting each time.
    for run in 2..7 {
        let mut child = h.spawn("a", None, run);
        std::thread::sleep(Duration::from_millis(fastrand::u64(300..2_500)));
        kill(&mut child);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut last = h.spawn_with("a", None, 7, Some(port));
    // Work for the last run whatever the earlier ones finished: new events and duplicates.
    let mut late: Vec<_> = (0..50)
        .map(|i| lead(&format!("late-{i}"), &format!("late{i}@x.io")))
        .collect();
    late.extend((0..10).map(|i| lead(&format!("C-{i}"), &format!("c{i}@x.io"))));
    let mut ids = ids;
    ids.extend(publish(&h.settings, late).await);
    await_caught_up(&h.settings, &h.group(), &h.settings.topics.inputs, CATCH_UP).await;
    // Its metrics: outcomes, commit durations, lag, with bounded labels.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"onceflow_processor_records_total{adapter="crm",outcome="ok"}"#,
        r#"onceflow_processor_records_total{adapter="crm",outcome="duplicate"}"#,
        "onceflow_processor_commit_seconds",
        "onceflow_processor_rebalances_total",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    // The operations endpoint beside /metrics: alive, and ready while it processes.
    for path in ["healthz", "readyz"] {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/{path}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "/{path}");
    }
    terminate(&mut last, &h.dir);

    h.check_exactly_once(&ids).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_the_store_on_disk_neither_loses_nor_doubles_a_command() {
    // The dedupe store in files (`store = "disk"`): commits since the last durable one (every
    // 5 s) die with the process, so each restart finds an older file and must read the changelog
    // from its offset to know the events decided since.
    let h = Harness::with(true, |dir| {
        format!(
            "state_dir = {:?}\nstore = \"disk\"\n",
            dir.join("state").display().to_string()
        )
    })
    .await;
    let ids = fill(&h.settings, 1_500, 300).await;
    let mut child = h.spawn("a", Some("crash_after_commit:4"), 0);
    assert!(!child.wait().unwrap().success(), "{}", h.logs());
    for run in 1..4 {
        let mut child = h.spawn("a", None, run);
        std::thread::sleep(Duration::from_millis(fastrand::u64(500..2_500)));
        kill(&mut child);
    }
    let mut last = h.spawn("a", None, 4);
    // Duplicates of events decided by the killed runs, and some new ones.
    let mut late: Vec<_> = (0..30)
        .map(|i| lead(&format!("C-{i}"), &format!("c{i}@x.io")))
        .collect();
    late.extend((0..20).map(|i| lead(&format!("late-{i}"), &format!("late{i}@x.io"))));
    let mut ids = ids;
    ids.extend(publish(&h.settings, late).await);
    await_caught_up(&h.settings, &h.group(), &h.settings.topics.inputs, CATCH_UP).await;
    terminate(&mut last, &h.dir);
    let files = std::fs::read_dir(
        h.dir
            .join("state")
            .join(Names::new(&h.settings).dedupe("crm")),
    )
    .unwrap()
    .filter(|f| f.as_ref().unwrap().path().extension() == Some("redb".as_ref()))
    .count();
    assert_eq!(
        files, h.settings.topics.partitions as usize,
        "a file a partition"
    );

    h.check_exactly_once(&ids).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_killed_mid_run_and_another_killed_while_joining() {
    // Dynamic membership (the default): a killed member's partitions move once its session ends.
    let h = Harness::new(false).await;
    let ids = fill(&h.settings, 2_000, 100).await;

    let mut a = h.spawn("a", None, 0);
    let mut b = h.spawn("b", None, 0);
    std::thread::sleep(Duration::from_millis(2_500));
    kill(&mut a); // mid-run: its partitions move to b once its session expires
    let mut c = h.spawn("c", None, 0);
    std::thread::sleep(Duration::from_millis(400));
    kill(&mut c); // while the group rebalances to let it in

    await_caught_up(&h.settings, &h.group(), &h.settings.topics.inputs, CATCH_UP).await;
    // SIGTERM leaves the group at once: b's membership is gone well before its 6 s session could
    // have expired. (Killed members may linger until the coordinator drops them.)
    let is_b = |id: &String| id.contains(".process.b.");
    assert!(
        group_members(&h.settings, &h.group()).iter().any(is_b),
        "b is a member"
    );
    terminate(&mut b, &h.dir);
    let left = Instant::now();
    while group_members(&h.settings, &h.group()).iter().any(is_b) {
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "b is still a member 3 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    h.check_exactly_once(&ids).await;
    h.finish().await;
}
