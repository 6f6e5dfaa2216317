//! A broker of the bootstrap list that is down (here: a closed port ahead of the live broker)
//! never fails a read that the live brokers can serve. librdkafka hands every refused connection
//! to the application as a consumer error; in the 1 M chaos run a broker that could not restart
//! made every changelog restore (sessions ended and rejoined, 97 times) and every lag look-up
//! fail for an hour. Each read is tried several times, since a client picks its bootstrap broker
//! at random.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::time::Duration;

use onceflow::dedupe::Restore;
use onceflow::kafka::admin::group_lag;
use onceflow::kafka::names::{Names, Stage};
use onceflow::kafka::scan::{Range, scan};
use onceflow::kafka::txn::TxProducer;
use onceflow::model::event::now_ms;
use rdkafka::producer::FutureRecord;

const TRIES: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_lag_and_scan_read_past_a_dead_bootstrap_broker() {
    let s = common::settings();
    let topic = common::topic(&s, "deadbroker", 1).await;
    // Five store records in one transaction: its commit marker makes a gap of six offsets, which
    // the lag look-up reads to count records.
    let tx_id = Names::new(&s).transactional_id("crm", Stage::Process, "deadbroker");
    let tx = TxProducer::init(&s.kafka, "test", &tx_id).await.unwrap();
    tx.begin().await.unwrap();
    let at = now_ms().to_string();
    for _ in 0..5 {
        let key = uuid::Uuid::new_v4().to_string();
        tx.send(FutureRecord::to(&topic).key(&key).payload(&at))
            .unwrap();
    }
    tx.commit().await.unwrap();

    let mut dead = s.clone();
    dead.kafka.bootstrap_servers = format!(
        "127.0.0.1:{},{}",
        common::free_port(),
        s.kafka.bootstrap_servers
    );
    let (k, t) = (dead.kafka.clone(), topic.clone());
    tokio::task::spawn_blocking(move || {
        for n in 0..TRIES {
            let restored = Restore {
                kafka: &k,
                changelog: &t,
                reader_group: "test.deadbroker",
                partitions: &[0],
                ttl: Duration::from_secs(3_600),
                now: now_ms(),
                max_wait: Duration::from_secs(20),
                state_dir: None,
                backend: onceflow::dedupe::Backend::Memory,
            }
            .run::<i64>()
            .unwrap_or_else(|e| panic!("restore {n}: {e}"));
            assert_eq!(restored.records_read, 5, "restore {n}");

            let lag = group_lag(&k, &format!("{t}.nobody"), std::slice::from_ref(&t))
                .unwrap_or_else(|e| panic!("lag look-up {n}: {e}"));
            assert_eq!(lag, 5, "lag look-up {n}: records, not the marker");

            let mut seen = 0;
            scan(&k, &t, "test.deadbroker", &Range::default(), |_| {
                seen += 1;
                true
            })
            .unwrap_or_else(|e| panic!("scan {n}: {e}"));
            assert_eq!(seen, 5, "scan {n}");
        }
    })
    .await
    .unwrap();
    common::cleanup(&s, &[&topic]).await;
}
