//! `onceflow offsets reset` against Kafka's own `kafka-consumer-groups --reset-offsets` (run from
//! the local stack's tools, on the same group and topic): the same plan in every mode, the same
//! offsets after `--execute`, and a refusal while the group has members.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use onceflow::config::Settings;
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::model::event::now_ms;
use onceflow::ops::offsets::{self, OffsetsError, ResetTo, Scope};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Runs Kafka's tool through the stack script; its stdout.
fn kafka_tool(args: &[&str]) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/deploy/local/stack"))
        .arg("tool")
        .arg("kafka-consumer-groups")
        .args(["--bootstrap-server", "127.0.0.1:9092"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (topic, partition, new offset) rows of the tool's `GROUP TOPIC PARTITION NEW-OFFSET` table.
fn kafka_plan(output: &str, group: &str) -> BTreeSet<(String, i32, i64)> {
    output
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == group).then(|| {
                (
                    f[1].to_string(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
        })
        .collect()
}

fn ours(s: &Settings, group: &str, scope: &Scope, to: ResetTo) -> BTreeSet<(String, i32, i64)> {
    offsets::plan(&s.kafka, group, scope, to)
        .unwrap()
        .into_iter()
        .map(|r| (r.topic, r.partition, r.new))
        .collect()
}

fn commit(s: &Settings, group: &str, topic: &str, at: &[(i32, i64)]) {
    let c: BaseConsumer = client::consumer(
        &s.kafka,
        "test.commit",
        group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in at {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// A consumer of `group` subscribed to `topic`; it joins as it is polled.
fn member(s: &Settings, group: &str, topic: &str) -> BaseConsumer {
    let c: BaseConsumer = client::consumer(
        &s.kafka,
        "test.member",
        group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

fn committed(s: &Settings, group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
    let c: BaseConsumer = client::consumer(
        &s.kafka,
        "test.read",
        group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reset_mode_plans_what_kafkas_tool_plans_and_execute_lands_where_it_would() {
    let s = common::settings();
    let topic = common::topic(&s, "reset", 3).await;
    // Ten records per partition, 30 s apart in time, the last 130 s ago: a time between two of
    // them is 15 s from either, more than Kafka's tool and ours take between them.
    let start = now_ms() - 400_000;
    let producer: FutureProducer = client::producer(&s.kafka, "test.fill").create().unwrap();
    for p in 0..3 {
        for i in 0..10_i64 {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(p)
                        .key("k")
                        .payload("v")
                        .timestamp(start + i * 30_000),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }
    let group = format!("{}.g", s.namespace);
    commit(&s, &group, &topic, &[(0, 4), (1, 7)]);

    // Between the 5th and the 6th record of each partition.
    let between = start + 135_000;
    let mid = jiff::Timestamp::from_millisecond(between)
        .unwrap()
        .to_string();
    let t = |parts: &str| Scope::Topics(vec![format!("{topic}{parts}")]);
    // A duration back from now lands between the same two records (now moves on while the cases
    // run: this one goes first).
    let back = (now_ms() - between) / 1_000;
    let cases: Vec<(Vec<String>, Scope, ResetTo)> = vec![
        (
            vec!["--by-duration".into(), format!("PT{back}S")],
            t(""),
            ResetTo::Duration(Duration::from_secs(back as u64)),
        ),
        (vec!["--to-earliest".into()], t(""), ResetTo::Earliest),
        (vec!["--to-latest".into()], t(""), ResetTo::Latest),
        (
            vec!["--to-datetime".into(), mid.clone()],
            t(""),
            ResetTo::Datetime(offsets::parse_datetime(&mid).unwrap()),
        ),
        (
            vec!["--to-offset".into(), "5".into()],
            t(""),
            ResetTo::Offset(5),
        ),
        (
            vec!["--to-offset".into(), "50".into()],
            t(":1,2"),
            ResetTo::Offset(50),
        ),
        (
            vec!["--shift-by".into(), "-2".into()],
            t(":0,1"),
            ResetTo::ShiftBy(-2),
        ),
        (
            vec!["--shift-by".into(), "100".into()],
            t(":0"),
            ResetTo::ShiftBy(100),
        ),
        (vec!["--to-current".into()], t(""), ResetTo::Current),
        (
            vec!["--to-earliest".into()],
            Scope::AllTopics,
            ResetTo::Earliest,
        ),
    ];
    for (flags, scope, to) in cases {
        let mut args = vec![
            "--group".to_string(),
            group.clone(),
            "--reset-offsets".into(),
            "--dry-run".into(),
        ];
        match &scope {
            Scope::Topics(ts) => args.extend(["--topic".to_string(), ts[0].clone()]),
            Scope::AllTopics => args.push("--all-topics".into()),
        }
        args.extend(flags.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let theirs = kafka_plan(&kafka_tool(&refs), &group);
        assert!(
            !theirs.is_empty(),
            "{flags:?}: Kafka's tool printed no plan"
        );
        assert_eq!(ours(&s, &group, &scope, to), theirs, "{flags:?} {scope:?}");
    }
    // A dry run changed nothing.
    assert_eq!(
        committed(&s, &group, &topic),
        vec![(0, Some(4)), (1, Some(7)), (2, None)]
    );

    // --execute: ours on one group, Kafka's on a twin; both end where the plan said.
    let twin = format!("{}.twin", s.namespace);
    commit(&s, &twin, &topic, &[(0, 4), (1, 7)]);
    let plan = offsets::plan(&s.kafka, &group, &t(""), ResetTo::ShiftBy(3)).unwrap_err();
    assert!(
        matches!(plan, OffsetsError::NothingToShift(_)),
        "partition 2 has no offset to shift"
    );
    let plan = offsets::plan(
        &s.kafka,
        &group,
        &t(""),
        ResetTo::Datetime(offsets::parse_datetime(&mid).unwrap()),
    )
    .unwrap();
    offsets::execute(&s.kafka, &group, &plan).unwrap();
    kafka_tool(&[
        "--group",
        &twin,
        "--reset-offsets",
        "--execute",
        "--topic",
        &topic,
        "--to-datetime",
        &mid,
    ]);
    assert_eq!(committed(&s, &group, &topic), committed(&s, &twin, &topic));
    assert_eq!(
        committed(&s, &group, &topic),
        vec![(0, Some(5)), (1, Some(5)), (2, Some(5))]
    );
    common::cleanup(&s, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_refused_while_the_group_has_members_naming_them() {
    let s = common::settings();
    let topic = common::topic(&s, "busy", 1).await;
    let group = format!("{}.busy", s.namespace);
    let member = member(&s, &group, &topic);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while offsets::members(&s.kafka, &group).unwrap().is_empty() {
        member.poll(Duration::from_millis(100));
        assert!(
            std::time::Instant::now() < deadline,
            "the member never joined"
        );
    }
    let plan = offsets::plan(
        &s.kafka,
        &group,
        &Scope::Topics(vec![topic.clone()]),
        ResetTo::Earliest,
    )
    .unwrap();
    match offsets::execute(&s.kafka, &group, &plan) {
        Err(OffsetsError::Active { members, .. }) => {
            assert_eq!(members.len(), 1);
            assert!(members[0].contains("test.member"), "{members:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(member);
    common::cleanup(&s, &[&topic]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executed_reset_is_audited_and_a_dry_run_is_not() {
    let s = common::settings();
    common::create_plan(&s).await;
    let topic = common::topic(&s, "audited", 2).await;
    let group = format!("{}.audited", s.namespace);
    commit(&s, &group, &topic, &[(0, 0), (1, 0)]);
    let dir = std::env::temp_dir().join(format!("onceflow-offsets-{}", s.namespace));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("onceflow.toml");
    std::fs::write(
        &config,
        format!("{}[adapters.crm]\n", common::config_toml(&s)),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_onceflow"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reset = [
        "offsets",
        "reset",
        "--group",
        &group,
        "--topic",
        &topic,
        "--to-latest",
    ];
    let plan = run(&reset);
    assert!(
        plan.contains("NEW-OFFSET") && plan.contains("dry run"),
        "{plan}"
    );
    let audited = |out: &str| -> Vec<serde_json::Value> { serde_json::from_str(out).unwrap() };
    assert!(audited(&run(&["audit", "list", "--json"])).is_empty());
    let mut executed = reset.to_vec();
    executed.extend([
        "--execute",
        "--operator",
        "alice",
        "--reason",
        "skip the backlog",
    ]);
    run(&executed);
    let records = audited(&run(&["audit", "list", "--json"]));
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (
            r["operator"].as_str(),
            r["action"].as_str(),
            r["target"].as_str(),
            r["reason"].as_str()
        ),
        (
            Some("alice"),
            Some("offsets.reset"),
            Some(group.as_str()),
            Some("skip the backlog")
        )
    );
    assert_eq!(r["detail"]["plan"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&dir).ok();
    common::cleanup_plan(&s).await;
    common::cleanup(&s, &[&topic]).await;
}

/// A transaction holding offsets for the group (a stage's batch between `send_offsets` and its
/// commit, or a killed stage's until its successor or the broker aborts it) does not stall the
/// lag look-up: lag counts what the group has committed. A `read_committed` client asks the broker
/// for stable offsets and librdkafka retries while any is pending, so in the 1 M chaos run, with
/// dispatchers committing several times a second, every deliver group's look-up failed after 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_read_while_a_transaction_holds_offsets_of_the_group() {
    use onceflow::kafka::admin::group_lag;
    use onceflow::kafka::txn::{TxProducer, group_metadata};

    let s = common::settings();
    let topic = common::topic(&s, "lag.pending", 1).await;
    let producer: FutureProducer = client::producer(&s.kafka, "test.fill").create().unwrap();
    for _ in 0..10 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload("v"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let group = format!("{}.lag", s.namespace);
    commit(&s, &group, &topic, &[(0, 4)]);
    let lag = |s: &Settings| {
        let (k, g, t) = (s.kafka.clone(), group.clone(), vec![topic.clone()]);
        tokio::task::spawn_blocking(move || group_lag(&k, &g, &t))
    };
    assert_eq!(lag(&s).await.unwrap().unwrap(), 6);

    let tx = TxProducer::init(&s.kafka, "test.lag", &format!("{}.lag.tx", s.namespace))
        .await
        .unwrap();
    // A member of the group, as a stage is (without one, a first version of this test had its
    // commit fenced at once).
    let member = member(&s, &group, &topic);
    let joined = std::time::Instant::now() + Duration::from_secs(30);
    while member.assignment().unwrap().count() == 0 {
        assert!(std::time::Instant::now() < joined, "never assigned");
        member.poll(Duration::from_millis(100));
    }
    tx.begin().await.unwrap();
    let mut pending = TopicPartitionList::new();
    pending
        .add_partition_offset(&topic, 0, Offset::Offset(8))
        .unwrap();
    tx.send_offsets(pending, group_metadata(&member).unwrap())
        .await
        .unwrap();
    assert_eq!(
        lag(&s)
            .await
            .unwrap()
            .expect("lag while offsets are pending"),
        6,
        "pending offsets are not committed yet"
    );
    // Before the fix the look-up returned only once the broker had aborted the transaction at its
    // time-out (20 s, under the look-up's 30 s), so this commit was fenced.
    tx.commit()
        .await
        .expect("the look-up did not wait for the transaction to end");
    assert_eq!(lag(&s).await.unwrap().unwrap(), 2, "committed now");
    common::cleanup(&s, &[&topic]).await;
}
