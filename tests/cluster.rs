//! The local stack's three-broker cluster (`deploy/local/stack up --brokers 3`), the one the fault
//! tests run on: onceflow's own `topics create`, configured only by the overrides that
//! `stack env --brokers 3` prints, makes topics with replication factor 3 on it; the cluster holds
//! `min.insync.replicas=2` and a transaction log with replication factor 3; and a transaction that
//! is open while the broker coordinating it (and leading one of its partitions) is SIGKILLed
//! still commits (or, if librdkafka fails it as abortable during the failover, is aborted and
//! redone once, as a stage redoes its batch), every record read back once with `read_committed`,
//! while an aborted one stays hidden. The killed broker then rejoins and catches up.
//!
//! The test starts and stops brokers, so it is the only test of this binary (cargo runs test
//! binaries one after another). It never touches the single broker on 127.0.0.1:9092 that the
//! other tests use, and checks so at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceflow::config::Settings;
use onceflow::kafka::admin::Admin;
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::kafka::names::{Names, Stage, topic_plan};
use onceflow::kafka::txn::{TxError, TxErrorKind, TxProducer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;
const PER_PARTITION: i32 = 10;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_stack(args: &[&str]) -> Output {
    Command::new(root().join("deploy/local/stack"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `deploy/local/stack ARGS`, which must succeed; its stdout.
fn stack(args: &[&str]) -> String {
    let out = run_stack(args);
    assert!(
        out.status.success(),
        "stack {}:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The single broker's line of `stack status` (its pid, or DOWN): the same before and after.
fn single_broker_status() -> String {
    let out = run_stack(&["status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("kafka:"))
        .unwrap_or("kafka: no status line")
        .to_string()
}

/// Stops the cluster however the test ends (a failed assertion leaves a broker killed or down).
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = run_stack(&["down", "--brokers", "3"]);
        if !out.status.success() {
            eprintln!(
                "stack down --brokers 3 failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A minimal onceflow settings file of this test (one adapter, one retry tier, few partitions):
/// nothing in it names the cluster or a replication factor, the overrides of
/// `stack env --brokers 3` do.
fn write_config(ns: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("onceflow-cluster-{ns}.toml"));
    std::fs::write(
        &path,
        format!(
            "namespace = '{ns}'\n\
             [topics]\ninputs = ['{ns}.events']\npartitions = {PARTITIONS}\n\
             [retry]\ntiers_ms = [1000]\n\
             [adapters.crm]\n"
        ),
    )
    .unwrap();
    path
}

/// `onceflow --config PATH ARGS` with exactly the given overrides (none inherited).
fn onceflow(config: &Path, env: &BTreeMap<String, String>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_onceflow"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ONCEFLOW_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .envs(env)
        .output()
        .unwrap()
}

/// `kafka-topics --describe` of the topics matching `regex`: per topic its header line.
fn describe_topics(bootstrap: &str, regex: &str) -> BTreeMap<String, String> {
    let out = stack(&[
        "tool",
        "kafka-topics",
        "--bootstrap-server",
        bootstrap,
        "--describe",
        "--topic",
        regex,
    ]);
    out.lines()
        .filter(|l| l.starts_with("Topic:") && l.contains("ReplicationFactor:"))
        .map(|l| {
            let name = l["Topic:".len()..].split_whitespace().next().unwrap();
            (name.to_string(), l.to_string())
        })
        .collect()
}

/// The broker coordinating `transactional_id`, from `kafka-transactions describe`.
fn coordinator(bootstrap: &str, transactional_id: &str) -> i32 {
    let out = stack(&[
        "tool",
        "kafka-transactions",
        "--bootstrap-server",
        bootstrap,
        "describe",
        "--transactional-id",
        transactional_id,
    ]);
    let row = out
        .lines()
        .find(|l| l.contains(transactional_id))
        .unwrap_or_else(|| panic!("no row for {transactional_id}:\n{out}"));
    assert!(row.contains("Ongoing"), "the transaction is open: {row}");
    row.split_whitespace().next().unwrap().parse().unwrap()
}

/// Per partition of `topic`: (leader, replicas, in-sync replicas).
fn layout(consumer: &BaseConsumer, topic: &str) -> BTreeMap<i32, (i32, Vec<i32>, Vec<i32>)> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let mut isr = p.isr().to_vec();
            isr.sort();
            (p.id(), (p.leader(), p.replicas().to_vec(), isr))
        })
        .collect()
}

/// Every value of `topic` a `read_committed` reader sees from the beginning: it waits for `want`
/// records, then one more second for any extra (a duplicate would show there).
fn read_committed(settings: &Settings, topic: &str, want: usize) -> Vec<String> {
    let consumer: BaseConsumer = client::consumer(
        &settings.kafka,
        "test.reader",
        "test.reader",
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_until: Option<Instant> = None;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                values.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            // librdkafka reports that a bootstrap address (the killed broker) does not answer;
            // it reads on from the others.
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure))) => {
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        if values.len() >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(1));
        }
        let now = Instant::now();
        if quiet_until.is_some_and(|q| now >= q) || now >= deadline {
            break;
        }
    }
    values.sort();
    values
}

/// Where the log goes: memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// librdkafka's log (warnings and errors, which say why a transaction failed), kept in memory
/// and printed only if the test panics: the kill makes librdkafka warn about the lost
/// connections on every run.
struct LibrdkafkaLog(LogBuffer);

impl LibrdkafkaLog {
    /// Installs the log (before any client exists: librdkafka's log level is fixed when a client
    /// is created).
    fn install() -> LibrdkafkaLog {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("warn,librdkafka=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        LibrdkafkaLog(buffer)
    }
}

impl Drop for LibrdkafkaLog {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = String::from_utf8_lossy(&self.0.0.lock().unwrap()).into_owned();
            eprintln!("---- librdkafka's log\n{text}---- end of librdkafka's log");
        }
    }
}

/// Sends `PER_PARTITION` records `{label}-{p}-{i}` to every partition inside the open transaction
/// and waits for every acknowledgement. A failure prints the first record that failed and why.
async fn send_batch(tx: &TxProducer, topic: &str, label: &str) -> Result<(), TxError> {
    for p in 0..PARTITIONS {
        for i in 0..PER_PARTITION {
            let value = format!("{label}-{p}-{i:02}");
            tx.send(
                FutureRecord::to(topic)
                    .partition(p)
                    .key(&value)
                    .payload(&value),
            )?;
        }
    }
    tx.delivered().await.map(drop).inspect_err(|e| {
        eprintln!("a record of '{label}': {e}");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_commits_through_the_kill_of_its_coordinator_on_a_replicated_cluster() {
    let _log = LibrdkafkaLog::install();
    let single_before = single_broker_status();
    let started = Instant::now();
    stack(&["up", "--brokers", "3"]);
    let cluster = Cluster;
    eprintln!("cluster up in {:?}", started.elapsed());

    // ---- the configuration `stack env --brokers 3` prints
    let env: BTreeMap<String, String> = stack(&["env", "--brokers", "3"])
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"].clone();
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let overrides: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("ONCEFLOW__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        overrides.get("ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS"),
        Some(&bootstrap)
    );

    // ---- onceflow creates its topics on the cluster, through its own binary and settings
    let ns = format!("c{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let config = write_config(&ns);
    let created = onceflow(&config, &overrides, &["topics", "create"]);
    assert!(
        created.status.success(),
        "topics create:\n{}\n{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );
    // The same settings in process (the test process's environment is not the cluster's).
    let replication: i32 = overrides["ONCEFLOW__TOPICS__REPLICATION_FACTOR"]
        .parse()
        .unwrap();
    let s = Settings::from_toml_str(&format!(
        "namespace = '{ns}'\n\
         [kafka]\nbootstrap_servers = '{bootstrap}'\n\
         [topics]\ninputs = ['{ns}.events']\npartitions = {PARTITIONS}\nreplication_factor = {replication}\n\
         [retry]\ntiers_ms = [1000]\n[adapters.crm]\n"
    ))
    .unwrap();
    let plan: Vec<String> = topic_plan(&s).into_iter().map(|t| t.name).collect();
    let outbox = Names::new(&s).outbox("crm");
    assert!(plan.contains(&outbox));

    // ---- what the cluster holds, seen by Kafka's own tool
    let described = describe_topics(
        &bootstrap,
        &format!("__transaction_state|{}", outbox.replace('.', "\\.")),
    );
    for topic in ["__transaction_state", outbox.as_str()] {
        let line = described
            .get(topic)
            .unwrap_or_else(|| panic!("{topic} not described: {described:?}"));
        assert!(
            line.contains("ReplicationFactor: 3"),
            "{topic} is not replicated three ways: {line}"
        );
        assert!(
            line.contains("min.insync.replicas=2"),
            "{topic} does not need two in-sync replicas: {line}"
        );
    }
    // … and by the metadata every client gets: each planned topic on three brokers, all in sync.
    let meta: BaseConsumer = client::consumer(
        &s.kafka,
        "test.meta",
        "test.meta",
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    for topic in &plan {
        for (p, (_, replicas, isr)) in layout(&meta, topic) {
            assert_eq!(replicas.len(), 3, "{topic}-{p} replicas {replicas:?}");
            assert_eq!(isr.len(), 3, "{topic}-{p} in sync {isr:?}");
        }
    }

    // ---- a transaction open across the SIGKILL of the broker that coordinates it
    let tx_id = Names::new(&s).transactional_id("crm", Stage::Process, "cluster-test");
    let tx = TxProducer::init(&s.kafka, "test", &tx_id).await.unwrap();
    tx.begin().await.unwrap();
    send_batch(&tx, &outbox, "before").await.unwrap();
    let victim = coordinator(&bootstrap, &tx_id);
    let before_kill = layout(&meta, &outbox);
    let led: Vec<i32> = before_kill
        .iter()
        .filter(|(_, (leader, _, _))| *leader == victim)
        .map(|(p, _)| *p)
        .collect();
    assert!(
        !led.is_empty(),
        "broker {victim} coordinates the transaction and should lead a partition too: {before_kill:?}"
    );
    eprintln!("killing broker {victim}: transaction coordinator, leader of {outbox} {led:?}");
    let killed_at = Instant::now();
    stack(&["kill-broker", &victim.to_string()]);

    // librdkafka carries the transaction over to the new coordinator and the partition over to its
    // new leader. It may still fail the transaction as abortable (one CI run saw a purged
    // delivery; an out-of-sequence answer during a failover, for one, makes librdkafka bump the
    // producer's epoch, KIP-360): then, as a stage does with its batch, the test aborts and
    // redoes the whole transaction, once. The log above says why when the redo fails too.
    let mut attempts = 1;
    let mut outcome = match send_batch(&tx, &outbox, "after").await {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        assert_eq!(e.kind, TxErrorKind::Abortable, "{e}");
        eprintln!("the transaction failed through the kill ({e}): aborting and redoing it");
        attempts += 1;
        tx.abort().await.unwrap();
        tx.begin().await.unwrap();
        send_batch(&tx, &outbox, "before").await.unwrap();
        send_batch(&tx, &outbox, "after").await.unwrap();
        outcome = tx.commit().await;
    }
    outcome.unwrap();
    eprintln!(
        "committed {:?} after the kill, in {attempts} transaction(s)",
        killed_at.elapsed()
    );

    // An aborted transaction on the two survivors stays hidden.
    tx.begin().await.unwrap();
    for p in 0..PARTITIONS {
        let v = format!("aborted-{p}");
        tx.send(FutureRecord::to(&outbox).partition(p).key(&v).payload(&v))
            .unwrap();
    }
    tx.producer().flush(Duration::from_secs(30)).unwrap();
    tx.abort().await.unwrap();

    let want: Vec<String> = ["after", "before"]
        .iter()
        .flat_map(|label| {
            (0..PARTITIONS)
                .flat_map(move |p| (0..PER_PARTITION).map(move |i| format!("{label}-{p}-{i:02}")))
        })
        .collect();
    let s2 = s.clone();
    let topic = outbox.clone();
    let n = want.len();
    let seen = tokio::task::spawn_blocking(move || read_committed(&s2, &topic, n))
        .await
        .unwrap();
    assert_eq!(
        seen, want,
        "read_committed sees every committed record once, no aborted one"
    );

    // The survivors carry every partition: the victim leads none and is out of every ISR, which
    // still has min.insync.replicas (2) members.
    for (p, (leader, _, isr)) in layout(&meta, &outbox) {
        assert_ne!(leader, victim, "{outbox}-{p}");
        assert!(!isr.contains(&victim), "{outbox}-{p} in sync {isr:?}");
        assert_eq!(isr.len(), 2, "{outbox}-{p} in sync {isr:?}");
    }

    // ---- the killed broker restarts on its data and catches up
    stack(&["start-broker", &victim.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = layout(&meta, &outbox);
        if now.values().all(|(_, _, isr)| isr.len() == 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker {victim} did not rejoin every ISR: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(tx);

    let refs: Vec<&str> = plan.iter().map(String::as_str).collect();
    Admin::new(&s.kafka).unwrap().delete(&refs).await.unwrap();
    let _ = std::fs::remove_file(&config);
    drop(cluster); // stack down --brokers 3
    eprintln!("whole test {:?}", started.elapsed());

    assert_eq!(
        single_broker_status(),
        single_before,
        "the single broker of the other tests is untouched"
    );
}
