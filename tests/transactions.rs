//! Kafka transaction semantics onceflow relies on, proved against the real broker through
//! onceflow's own client configs and transactional helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{read_all, values};
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::kafka::names::{Names, Stage};
use onceflow::kafka::txn::{OffsetTracker, TxErrorKind, TxProducer, group_metadata};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn send(tx: &TxProducer, topic: &str, key: &str, value: &str) {
    tx.send(FutureRecord::to(topic).key(key).payload(value))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_are_invisible_to_read_committed_only() {
    let s = common::settings();
    let topic = common::topic(&s, "visibility", 1).await;
    let tx_id = Names::new(&s).transactional_id("crm", Stage::Process, "vis");
    let tx = TxProducer::init(&s.kafka, "test", &tx_id).await.unwrap();

    tx.begin().await.unwrap();
    for i in 0..3 {
        send(&tx, &topic, "k", &format!("aborted-{i}"));
    }
    // Abort purges records still queued in the client; flush first so that they reach the log and
    // the test shows the broker hiding written records, not the client dropping unsent ones.
    tx.producer().flush(Duration::from_secs(10)).unwrap();
    tx.abort().await.unwrap();

    tx.begin().await.unwrap();
    for i in 0..2 {
        send(&tx, &topic, "k", &format!("committed-{i}"));
    }
    tx.commit().await.unwrap();

    let s2 = s.clone();
    let t2 = topic.clone();
    let (committed, uncommitted) = tokio::task::spawn_blocking(move || {
        (
            read_all(&s2, &t2, Isolation::ReadCommitted),
            read_all(&s2, &t2, Isolation::ReadUncommitted),
        )
    })
    .await
    .unwrap();

    assert_eq!(values(&committed), vec!["committed-0", "committed-1"]);
    assert_eq!(
        values(&uncommitted),
        vec![
            "aborted-0",
            "aborted-1",
            "aborted-2",
            "committed-0",
            "committed-1"
        ],
        "read_uncommitted sees the aborted records too: they were written, only hidden"
    );
    common::cleanup(&s, &[&topic]).await;
}

/// Consumes whatever `consumer` has until `want` records arrived, producing one upper-cased output
/// per input inside the open transaction.
async fn transform(
    consumer: &StreamConsumer,
    tx: &TxProducer,
    output: &str,
    want: usize,
    tracker: &mut OffsetTracker,
) -> Vec<(String, i32, i64)> {
    let mut consumed = Vec::new();
    while consumed.len() < want {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("inputs arrive")
            .unwrap();
        let value = String::from_utf8_lossy(m.payload().unwrap()).to_uppercase();
        tx.send(
            FutureRecord::to(output)
                .key(m.key().unwrap())
                .payload(&value),
        )
        .unwrap();
        tracker.consumed(&m);
        consumed.push((m.topic().to_string(), m.partition(), m.offset()));
    }
    consumed
}

async fn committed(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let c = Arc::clone(consumer);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got =
        tokio::task::spawn_blocking(move || c.committed_offsets(tpl, Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_commits_outputs_and_offsets_together() {
    let s = common::settings();
    let input = common::topic(&s, "ctp.in", 3).await;
    let output = common::topic(&s, "ctp.out", 3).await;
    let names = Names::new(&s);

    let plain: FutureProducer = client::producer(&s.kafka, "test.seed").create().unwrap();
    let seed = |range: std::ops::Range<i32>| {
        let plain = plain.clone();
        let input = input.clone();
        async move {
            for i in range {
                let key = format!("key-{i}");
                let value = format!("v{i}");
                plain
                    .send(
                        FutureRecord::to(&input).key(&key).payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    seed(0..12).await;

    let group = names.group("crm", Stage::Process);
    let consumer: Arc<StreamConsumer> = Arc::new(
        client::consumer(
            &s.kafka,
            "test.ctp",
            &group,
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()
        .unwrap(),
    );
    consumer.subscribe(&[&input]).unwrap();
    let tx = TxProducer::init(
        &s.kafka,
        "test.ctp",
        &names.transactional_id("crm", Stage::Process, "0"),
    )
    .await
    .unwrap();

    // Round 1: commit. The group's offsets become exactly the consumed positions.
    tx.begin().await.unwrap();
    let mut tracker = OffsetTracker::new();
    let consumed = transform(&consumer, &tx, &output, 12, &mut tracker).await;
    let mut expected: BTreeMap<i32, i64> = BTreeMap::new();
    for (_, p, o) in &consumed {
        let e = expected.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    tx.send_offsets(
        tracker.take().unwrap(),
        group_metadata(consumer.as_ref()).unwrap(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        committed(&consumer, &input, 3).await,
        expected,
        "committed offsets = consumed positions"
    );
    let (s2, o2) = (s.clone(), output.clone());
    let visible = tokio::task::spawn_blocking(move || read_all(&s2, &o2, Isolation::ReadCommitted))
        .await
        .unwrap();
    assert_eq!(values(&visible), {
        let mut v: Vec<String> = (0..12).map(|i| format!("V{i}")).collect();
        v.sort();
        v
    });

    // Round 2: abort. Offsets stay where round 1 left them; outputs stay invisible.
    seed(12..18).await;
    tx.begin().await.unwrap();
    let mut tracker = OffsetTracker::new();
    transform(&consumer, &tx, &output, 6, &mut tracker).await;
    tx.send_offsets(
        tracker.take().unwrap(),
        group_metadata(consumer.as_ref()).unwrap(),
    )
    .await
    .unwrap();
    tx.producer().flush(Duration::from_secs(10)).unwrap(); // written, so the abort must hide them
    tx.abort().await.unwrap();

    assert_eq!(
        committed(&consumer, &input, 3).await,
        expected,
        "an abort leaves the committed offsets unchanged"
    );
    let (s2, o2) = (s.clone(), output.clone());
    let (visible, all) = tokio::task::spawn_blocking(move || {
        (
            read_all(&s2, &o2, Isolation::ReadCommitted),
            read_all(&s2, &o2, Isolation::ReadUncommitted),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        visible.len(),
        12,
        "the aborted outputs are invisible to read_committed"
    );
    assert_eq!(all.len(), 18, "yet they were written");

    common::cleanup(&s, &[&input, &output]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let s = common::settings();
    let topic = common::topic(&s, "fencing", 1).await;
    let tx_id = Names::new(&s).transactional_id("crm", Stage::Process, "same");

    let zombie = TxProducer::init(&s.kafka, "test.zombie", &tx_id)
        .await
        .unwrap();
    zombie.begin().await.unwrap();
    for i in 0..3 {
        send(&zombie, &topic, "k", &format!("zombie-{i}"));
    }
    // Make sure the zombie's records reach the log before it is fenced.
    zombie.producer().flush(Duration::from_secs(10)).unwrap();

    let successor = TxProducer::init(&s.kafka, "test.successor", &tx_id)
        .await
        .unwrap();
    successor.begin().await.unwrap();
    send(&successor, &topic, "k", "successor-0");
    successor.commit().await.unwrap();

    let err = zombie
        .commit()
        .await
        .expect_err("a fenced producer cannot commit");
    assert_eq!(err.kind, TxErrorKind::Fatal, "{err}");
    assert!(err.is_fenced(), "{err}");

    let (s2, t2) = (s.clone(), topic.clone());
    let (visible, all) = tokio::task::spawn_blocking(move || {
        (
            read_all(&s2, &t2, Isolation::ReadCommitted),
            read_all(&s2, &t2, Isolation::ReadUncommitted),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        values(&visible),
        vec!["successor-0"],
        "the zombie's open transaction never became visible"
    );
    assert_eq!(
        values(&all),
        vec!["successor-0", "zombie-0", "zombie-1", "zombie-2"]
    );
    common::cleanup(&s, &[&topic]).await;
}

/// `TxProducer::delivered` waits for the records of the open transaction only: an aborted
/// transaction's records (purged while queued, or written and hidden) are not counted in the next
/// one, and each record of the next is given where the log has it, in the order it was sent. The
/// stage's store takes its changelog checkpoints from those positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_gives_the_open_transaction_s_records_where_the_log_has_them() {
    let s = common::settings();
    let topic = common::topic(&s, "delivered", 2).await;
    let tx_id = Names::new(&s).transactional_id("crm", Stage::Process, "delivered");
    let tx = TxProducer::init(&s.kafka, "test", &tx_id).await.unwrap();

    tx.begin().await.unwrap();
    for i in 0..50 {
        send(&tx, &topic, &format!("k{i}"), &format!("aborted-{i}"));
    }
    tx.abort().await.unwrap();

    tx.begin().await.unwrap();
    let sent: Vec<String> = (0..6).map(|i| format!("committed-{i}")).collect();
    for (i, v) in sent.iter().enumerate() {
        tx.send(
            FutureRecord::to(&topic)
                .partition((i % 2) as i32)
                .key("k")
                .payload(v),
        )
        .unwrap();
    }
    let at = tx.delivered().await.unwrap();
    tx.commit().await.unwrap();

    let (s2, t2) = (s.clone(), topic.clone());
    let log = tokio::task::spawn_blocking(move || read_all(&s2, &t2, Isolation::ReadCommitted))
        .await
        .unwrap();
    let where_the_log_has_them: Vec<(i32, i64)> = sent
        .iter()
        .map(|v| {
            let r = log.iter().find(|r| &r.value == v).unwrap();
            (r.partition, r.offset)
        })
        .collect();
    assert_eq!(at, where_the_log_has_them);
    assert_eq!(log.len(), sent.len());
    common::cleanup(&s, &[&topic]).await;
}
