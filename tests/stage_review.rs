//! An adversarial review of the transactional stages, against the real broker: the places where
//! a transactional loop usually goes wrong, each driven on purpose.
//!
//! - A commit whose call times out has an unknown outcome: it is asked again, never aborted and
//!   redone (`a_commit_that_times_out_is_asked_again_never_redone`).
//! - The processor group's offsets reset to earliest: what the dedupe store still remembers is
//!   dropped as a duplicate; what it has forgotten (older than `processor.dedupe_ttl_ms`) is decided
//!   again, with the same command ids
//!   (`a_reset_to_earliest_is_deduplicated_within_the_ttl_and_decided_again_beyond_it`).
//! - A transactional call that librdkafka never returns from (its `send_offsets_to_transaction`
//!   after a coordinator was killed, #5456/#5511) is abandoned past its time-out: the session
//!   rejoins and the batch is redone once
//!   (`a_send_offsets_call_that_never_returns_is_abandoned_and_the_stage_goes_on`).
//! - With a state directory, a restart restores the dedupe store from its local checkpoint and the
//!   changelog after it; a checkpoint older than the changelog (the process was killed before it
//!   wrote a newer one) still misses nothing
//!   (`a_restart_restores_from_an_old_checkpoint_and_the_changelog_after_it`); the same with the
//!   store on disk, whose files are its checkpoints.
//! - The loop polls while a batch commits: a rebalance then waits for that transaction before the
//!   partitions go, so the new owner restores a changelog that has the batch's entries and starts
//!   past its offsets; duplicates sent afterwards are dropped
//!   (`a_revoke_while_a_batch_commits_waits_for_it_and_nothing_doubles`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Running, await_caught_up, create_plan, doubles, lead, outbox_event_ids, publish};
use onceflow::adapters::{self};
use onceflow::config::{AdapterSettings, Settings};
use onceflow::dedupe::Backend;
use onceflow::kafka::client::Isolation;
use onceflow::kafka::names::{Names, Stage};
use onceflow::ops::offsets::{self, ResetTo, Scope};
use onceflow::processor::Processor;
use onceflow::stage::fault::{FaultPlan, Point};

const CATCH_UP: Duration = Duration::from_secs(90);

/// The metrics this test binary's stages record (one recorder for the whole binary).
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    })
}

/// With `DEBUG_LOG` set, the stages' logs on stderr (`-- --nocapture`).
fn logs() {
    if std::env::var("DEBUG_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("DEBUG_LOG").unwrap_or_default())
            .try_init();
    }
}

/// The value of the sample `series` (`name{labels}` as rendered), 0 when absent.
fn sample(series: &str) -> f64 {
    recorder()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

use common::{crm, processor_settings as settings};

fn group(s: &Settings) -> String {
    Names::new(s).group("crm", Stage::Process)
}

fn leads(prefix: &str, n: usize) -> Vec<onceflow::model::Event> {
    (0..n)
        .map(|i| lead(&format!("{prefix}-{i}"), &format!("{prefix}{i}@x.io")))
        .collect()
}

/// Command id → how many times it is in the outbox (read_committed).
async fn command_ids(s: &Settings) -> BTreeMap<String, usize> {
    use onceflow::codec::Codec;
    let outbox = Names::new(s).outbox("crm");
    let (s2, t) = (s.clone(), outbox.clone());
    let records = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &t, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    let codec = onceflow::codec::AvroCodec::new(&s.registry).unwrap();
    let mut ids = BTreeMap::new();
    for r in records {
        let d = codec.decode(&r.value).await.unwrap();
        let json = onceflow::model::json_avro::to_json(&d.value);
        let id = json["meta"]["command_id"].as_str().unwrap().to_string();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_while_a_batch_commits_waits_for_it_and_nothing_doubles() {
    logs();
    let mut s = settings("revoke").await;
    // The input alone (no retry topics), so that the partitions that move are input partitions.
    s.retry.tiers.clear();
    publish(&s, leads("RV", 30)).await;
    // Batch 1's transaction begins 10 s late on the committer thread, while the loop polls on.
    let first = Running::start(crm(&s).with_fault(FaultPlan::at(Point::TransactionDelayed, 1)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A second instance joins while batch 1 is in flight: the first one's partitions are revoked.
    let mut s2 = s.clone();
    s2.processor.instance_id = "revoke-2".into();
    let second = Running::start(crm(&s2));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    // Duplicates of batch 1's events, and new ones, now spread over both instances.
    publish(&s, leads("RV", 30)).await;
    publish(&s, leads("RV2", 10)).await;
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    let (a, b) = (first.stop().await, second.stop().await);
    let ids = outbox_event_ids(&s, &Names::new(&s).outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![], "{a:?} {b:?}");
    assert_eq!(ids.len(), 40, "{a:?} {b:?}");
    assert_eq!(a.tally.duplicate + b.tally.duplicate, 30, "{a:?} {b:?}");
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_times_out_is_asked_again_never_redone() {
    logs();
    recorder();
    let s = settings("ctimeout").await;
    publish(&s, leads("CT", 60)).await;
    // Batch 1's first commit call does not wait: librdkafka answers "timed out" while the commit
    // goes on.
    let processor = crm(&s).with_fault(FaultPlan::at(Point::CommitTimesOut, 1));
    let running = Running::start(processor);
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    publish(&s, leads("CT2", 20)).await;
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    let unknown = sample(r#"onceflow_commit_outcome_unknown_total{adapter="crm",stage="process"}"#);
    assert!(unknown >= 1.0, "the commit call timed out: {unknown}");
    assert_eq!(
        (counts.aborts, counts.rejoins),
        (0, 0),
        "asked again, neither aborted nor redone: {counts:?}"
    );
    let ids = outbox_event_ids(&s, &Names::new(&s).outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![], "{counts:?}");
    assert_eq!(ids.len(), 80, "{counts:?}");
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_offsets_call_that_never_returns_is_abandoned_and_the_stage_goes_on() {
    logs();
    let mut s = settings("hang").await;
    // The call is abandoned 5 s + STUCK_GRACE (10 s) after it began; it hangs for 65 s.
    s.kafka.transaction_timeout = Duration::from_secs(5);
    s.kafka.message_timeout = Duration::from_secs(4);
    publish(&s, leads("HG", 30)).await;
    let started = std::time::Instant::now();
    let processor = crm(&s).with_fault(FaultPlan::at(Point::SendOffsetsHangs, 1));
    let running = Running::start(processor);
    // Abandoned at 15 s, the batch redone by the next session: well within 45 s. Had the stage
    // waited for the call, nothing would be committed before 65 s.
    await_caught_up(&s, &group(&s), &s.topics.inputs, Duration::from_secs(45)).await;
    let took = started.elapsed();
    let counts = running.stop().await;
    assert!(counts.rejoins >= 1, "{counts:?}");
    let ids = outbox_event_ids(&s, &Names::new(&s).outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![], "{counts:?}");
    assert_eq!(ids.len(), 30, "caught up after {took:?}: {counts:?}");
    common::cleanup_plan(&s).await;
}

/// The files of a state directory (`<changelog>/<partition>.checkpoint` or `.redb`), copied to
/// `to`.
fn copy_state(from: &std::path::Path, to: &std::path::Path) {
    for topic in std::fs::read_dir(from).unwrap() {
        let topic = topic.unwrap().path();
        let into = to.join(topic.file_name().unwrap());
        std::fs::create_dir_all(&into).unwrap();
        for f in std::fs::read_dir(&topic).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, into.join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_from_an_old_checkpoint_and_the_changelog_after_it() {
    // In memory with checkpoint files, then on disk, whose files are their own checkpoints; one
    // after the other, as both count restored keys in the same metric.
    for store in [Backend::Memory, Backend::Disk] {
        restart_from_old_state(store).await;
    }
}

async fn restart_from_old_state(store: Backend) {
    let mut s = settings("ckpt").await;
    let root = std::env::temp_dir().join(format!("onceflow-state-{}", s.namespace));
    let (dir, old) = (root.join("state"), root.join("run-1"));
    s.processor.state_dir = Some(dir.clone());
    s.processor.store = store;
    let loaded = || {
        sample(r#"onceflow_store_restored_total{adapter="crm",stage="process",from="checkpoint"}"#)
    };

    // Run 1 decides 20 events; its clean stop writes the checkpoints, kept aside.
    publish(&s, leads("K1", 20)).await;
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    running.stop().await;
    copy_state(&dir, &old);
    // Run 2 decides 20 more; then run 1's checkpoints are put back, as if run 2 had been killed
    // before it wrote its own.
    publish(&s, leads("K2", 20)).await;
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    running.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
    copy_state(&old, &dir);

    // Run 3 gets all 40 again (a sender's retries): every one is a duplicate.
    let before = loaded();
    publish(&s, leads("K1", 20)).await;
    publish(&s, leads("K2", 20)).await;
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    assert_eq!(
        loaded() - before,
        20.0,
        "{store:?}: run 1's keys came from the checkpoints"
    );
    assert_eq!(
        (counts.tally.duplicate, counts.tally.ok),
        (40, 0),
        "{store:?}: run 2's keys came from the changelog after the checkpoints: {counts:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_earliest_is_deduplicated_within_the_ttl_and_decided_again_beyond_it() {
    let mut s = settings("reset").await;
    // A short memory: what was decided more than 6 s ago is forgotten.
    s.processor.dedupe_ttl = Duration::from_secs(6);

    publish(&s, leads("OLD", 15)).await;
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    running.stop().await;
    let first = command_ids(&s).await;
    assert_eq!(first.len(), 15);

    tokio::time::sleep(Duration::from_secs(7)).await;
    publish(&s, leads("NEW", 10)).await;
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    running.stop().await;

    // The operator rewinds the processor group to the start of `events`.
    let (k, g, topics) = (s.kafka.clone(), group(&s), s.topics.inputs.clone());
    tokio::task::spawn_blocking(move || {
        let plan = offsets::plan(&k, &g, &Scope::Topics(topics), ResetTo::Earliest).unwrap();
        assert!(plan.iter().any(|r| r.current > Some(r.new)), "{plan:?}");
        offsets::execute(&k, &g, &plan).unwrap();
    })
    .await
    .unwrap();

    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    // The 10 recent events are duplicates; the 15 older ones were forgotten and decided again.
    assert_eq!(
        (counts.tally.duplicate, counts.tally.ok),
        (10, 15),
        "{counts:?}"
    );
    let after = command_ids(&s).await;
    assert_eq!(
        after.len(),
        25,
        "no new command id: the ids derive from the event"
    );
    for (id, n) in &after {
        let want = if first.contains_key(id) { 2 } else { 1 };
        assert_eq!(*n, want, "command {id}");
    }
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_twice_the_newer_fences_the_older_which_stops_and_nothing_doubles() {
    started_twice(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_static_membership_one_of_two_processes_of_one_instance_stops_and_nothing_doubles() {
    // Here each also takes the other's group.instance.id when it (re)joins.
    started_twice(true).await;
}

/// A static member whose consumer is fenced (a consumer joined with its group.instance.id, as
/// librdkafka's own rejoin does after a session timeout) gets a fatal error from librdkafka that
/// carries `FencedInstanceId` as its code: the session must end and rejoin, not spin on a consumer
/// that never delivers again (what wedged a dispatcher in the chaos run). Fenced so twice within
/// a minute, it still rejoins: only a producer fence says that another process runs the instance
/// (a lone dispatcher of the chaos run stopped after two librdkafka rejoins 29 s apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_whose_consumer_is_fenced_twice_by_its_group_instance_id_rejoins_and_goes_on()
 {
    logs();
    let mut s = settings("fenced").await;
    s.processor.static_membership = true;
    publish(&s, leads("FN", 20)).await;
    let stage = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;

    intrude(&s);
    publish(&s, leads("FNAFTER", 10)).await;
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    assert!(
        !stage.is_finished(),
        "fenced once, the stage rejoins and keeps running"
    );
    intrude(&s);
    publish(&s, leads("FNAGAIN", 10)).await;
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    assert!(
        !stage.is_finished(),
        "fenced twice within a minute, by consumers only, the stage still keeps running"
    );
    let counts = stage.stop().await;
    assert!(
        counts.rejoins >= 2,
        "both fenced sessions ended: {counts:?}"
    );
    let ids = outbox_event_ids(&s, &Names::new(&s).outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![], "{counts:?}");
    assert_eq!(ids.len(), 40, "{counts:?}");
    common::cleanup_plan(&s).await;
}

/// Another consumer takes the crm processor instance's group.instance.id, stays until the stage
/// has had a heartbeat to learn it was fenced, then goes away.
fn intrude(s: &Settings) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let member = Names::new(s).static_member("crm", Stage::Process, "fenced");
    let intruder: BaseConsumer = onceflow::kafka::client::with_static_membership(
        onceflow::kafka::client::consumer(
            &s.kafka,
            "test.intruder",
            &group(s),
            Isolation::ReadCommitted,
            onceflow::kafka::client::StartAt::Earliest,
        ),
        &member,
    )
    .create()
    .unwrap();
    let inputs: Vec<&str> = s.topics.inputs.iter().map(String::as_str).collect();
    intruder.subscribe(&inputs).unwrap();
    let joined = std::time::Instant::now() + Duration::from_secs(30);
    while intruder.assignment().unwrap().count() == 0 {
        assert!(
            std::time::Instant::now() < joined,
            "the intruder never joined"
        );
        let _ = intruder.poll(Duration::from_millis(100));
    }
    // The stage learns it was fenced at its next heartbeat, while idle (nothing to commit, so no
    // transaction error would end its session instead).
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let _ = intruder.poll(Duration::from_millis(100));
    }
}

async fn started_twice(static_membership: bool) {
    logs();
    let mut s = settings("twice").await;
    s.processor.static_membership = static_membership;
    publish(&s, leads("TW", 40)).await;
    let older = Running::start(crm(&s));
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;

    // The same --instance again, in another "process": its producer takes the transactional id.
    let newer = Running::start(crm(&s));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut n = 0;
    while !older.is_finished() && !newer.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "both processes of the instance are still running"
        );
        publish(&s, leads(&format!("TW{n}-"), 5)).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Dynamic membership: the older stops. Static: whichever was fenced by the other's
    // group.instance.id (the member list cannot tell them apart there).
    let (stopped, survivor) = if older.is_finished() {
        (older, newer)
    } else {
        assert!(
            static_membership,
            "the newer process stopped, not the older"
        );
        (newer, older)
    };
    match stopped.finish().await {
        Err(onceflow::processor::ProcessError::Stage(
            onceflow::stage::StageError::Superseded { instance, by },
        )) => {
            assert_eq!(instance, "twice");
            if !static_membership {
                assert!(by.contains(".crm.process.twice."), "{by}");
            }
        }
        other => panic!("one process should stop as superseded: {other:?}"),
    }
    publish(&s, leads("TWLAST", 10)).await;
    await_caught_up(&s, &group(&s), &s.topics.inputs, CATCH_UP).await;
    assert!(!survivor.is_finished(), "the other process keeps running");
    let counts = survivor.stop().await;
    let ids = outbox_event_ids(&s, &Names::new(&s).outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![], "{counts:?}");
    assert_eq!(ids.len(), 40 + 5 * n + 10, "{counts:?}");
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_transaction_holding_the_last_stable_offset_delays_restore_and_reads_by_at_most_its_timeout()
 {
    recorder();
    logs();
    let mut s = common::settings();
    s.processor.instance_id = "zombie".into();
    s.adapters
        .insert("analytics".into(), AdapterSettings::default());
    create_plan(&s).await;
    let names = Names::new(&s);
    // A zombie: a transaction left open on the dedupe changelog and on `events`, by a producer
    // that never commits nor aborts (it stays alive, silent). The broker aborts it once its
    // transaction timeout (6 s) has passed; until then it holds both partitions' last stable offset.
    let mut zk = s.kafka.clone();
    zk.transaction_timeout = Duration::from_secs(6);
    zk.message_timeout = Duration::from_secs(5);
    let zombie = onceflow::kafka::txn::TxProducer::init(
        &zk,
        "test.zombie",
        &format!("{}.zombie", s.namespace),
    )
    .await
    .unwrap();
    zombie.begin().await.unwrap();
    let changelog = names.dedupe("analytics");
    zombie
        .send(
            rdkafka::producer::FutureRecord::to(&changelog)
                .partition(0)
                .key("zombie-key")
                .payload("1"),
        )
        .unwrap();
    zombie
        .send(
            rdkafka::producer::FutureRecord::to(&s.topics.inputs[0])
                .partition(0)
                .key("zombie-key")
                .payload("not an event"),
        )
        .unwrap();
    zombie.delivered().await.unwrap();
    let opened = std::time::Instant::now();
    publish(&s, leads("Z", 30)).await;

    let processor = Processor::new(
        &s,
        adapters::build("analytics", &AdapterSettings::default()).unwrap(),
    )
    .unwrap();
    let running = Running::start(processor);
    let group = names.group("analytics", Stage::Process);
    await_caught_up(&s, &group, &s.topics.inputs, CATCH_UP).await;
    let waited = opened.elapsed();
    let counts = running.stop().await;
    let restore =
        sample(r#"onceflow_store_restore_seconds_sum{adapter="analytics",stage="process"}"#);
    // Restoring partition 0 waited for the broker to abort the zombie: seconds, not the 50 s the
    // restore would allow (processor's transaction timeout + 30 s), nor forever.
    assert!(
        (4.0..50.0).contains(&restore),
        "restore took {restore} s in all (the zombie's timeout is 6 s)"
    );
    assert!(waited < Duration::from_secs(60), "{waited:?}");
    // Every event was decided once; the zombie's record was aborted, never read.
    assert_eq!((counts.tally.ok, counts.tally.dlq), (30, 0), "{counts:?}");
    drop(zombie);
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_retry_partition_revoked_and_assigned_again_is_neither_stuck_nor_resumed_early() {
    use onceflow::codec::Codec;
    use onceflow::model::headers::{ErrorClass, ErrorEnvelope, Origin};
    let s = settings("pause-a").await;
    let names = Names::new(&s);
    let codec = onceflow::codec::AvroCodec::new(&s.registry).unwrap();
    let catalog = onceflow::codec::catalog::Catalog::builtin().unwrap();
    let (version, schema) = catalog.latest("lead_captured").unwrap();
    let producer: rdkafka::producer::FutureProducer =
        onceflow::kafka::client::producer(&s.kafka, "test.retries")
            .create()
            .unwrap();
    // A record waiting in every partition of every retry tier, due in 20 s: the processor pauses
    // all of them, so whichever partitions move in a rebalance, paused ones move.
    let not_before = onceflow::model::event::now_ms() + 20_000;
    let tiers = s.retry.tiers.len();
    let mut waiting = 0;
    for tier in 1..=tiers {
        for partition in 0..3 {
            let mut event = lead(
                &format!("P-{tier}-{partition}"),
                &format!("p{tier}{partition}@x.io"),
            );
            let key = event.entity_key().unwrap();
            let value = event.to_avro(schema, version).unwrap();
            let bytes = codec
                .encode(&s.topics.inputs[0], schema, value)
                .await
                .unwrap();
            let envelope = ErrorEnvelope::new(
                ErrorClass::Retryable,
                "503 from the CRM",
                tier as u32,
                not_before - 60_000,
                not_before,
                Origin {
                    topic: s.topics.inputs[0].clone(),
                    partition,
                    offset: 0,
                },
                "crm",
                Stage::Process,
                None,
            );
            let headers = envelope.headers_for(None::<&rdkafka::message::OwnedHeaders>);
            let topic = names.retry("crm", Stage::Process, tier);
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic)
                        .partition(partition)
                        .key(&key)
                        .payload(&bytes)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            waiting += 1;
        }
    }

    let a = Running::start(crm(&s));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // A second instance joins (the range assignor moves about half of the partitions to it,
    // paused ones among them), pauses what it got, and leaves: its partitions go back to `a`.
    let mut sb = s.clone();
    sb.processor.instance_id = "pause-b".into();
    let b = Running::start(crm(&sb));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counts_b = b.stop().await;
    assert_eq!(counts_b.tally.ok, 0, "nothing is due yet: {counts_b:?}");

    // Every waiting record is decided, none before its time, none stuck.
    let outbox = names.outbox("crm");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ids = outbox_event_ids(&s, &outbox).await;
        if ids.len() >= waiting {
            assert_eq!(doubles(&ids), vec![]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {waiting} waiting records decided 40 s after they were due",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counts_a = a.stop().await;
    let (s2, t) = (s.clone(), outbox.clone());
    let written = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &t, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    for r in &written {
        assert!(
            r.timestamp >= not_before,
            "a command written {} ms before its record was due",
            not_before - r.timestamp
        );
    }
    assert_eq!(written.len(), waiting, "{counts_a:?}");
    common::cleanup_plan(&s).await;
}
