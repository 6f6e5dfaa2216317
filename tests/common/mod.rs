//! Shared helpers of the integration tests. They run against the real local stack
//! (`deploy/local/stack up`: Kafka on 127.0.0.1:9092, schema registry on 127.0.0.1:8081), which
//! `make test` starts; `ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS` and `ONCEFLOW__REGISTRY__URL` point them
//! elsewhere.
//!
//! Every test works in a namespace of its own (`t<random>`), so tests run in parallel and a rerun
//! never sees an earlier run's records.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::time::{Duration, Instant};

use onceflow::config::Settings;
use onceflow::kafka::admin::Admin;
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::kafka::names::{Cleanup, TopicSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Settings for the local stack under a fresh namespace.
pub fn settings() -> Settings {
    let ns = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let bootstrap = std::env::var("ONCEFLOW__KAFKA__BOOTSTRAP_SERVERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".into());
    let registry =
        std::env::var("ONCEFLOW__REGISTRY__URL").unwrap_or_else(|_| "http://127.0.0.1:8081".into());
    let toml = format!(
        "namespace = '{ns}'\n\
         [kafka]\nbootstrap_servers = '{bootstrap}'\ntransaction_timeout_ms = 20000\nmessage_timeout_ms = 15000\n\
         session_timeout_ms = 6000\n\
         [registry]\nurl = '{registry}'\n\
         [topics]\ninputs = ['{ns}.events']\npartitions = 3\n\
         [adapters.crm]\n[adapters.email]\n"
    );
    Settings::from_toml_str(&toml).expect("test settings are valid")
}

/// A uniquely named topic of this test's namespace, created with `partitions` partitions.
pub async fn topic(settings: &Settings, suffix: &str, partitions: i32) -> String {
    let name = format!("{}.{suffix}", settings.namespace);
    let spec = TopicSpec {
        name: name.clone(),
        partitions,
        replication_factor: 1,
        cleanup: Cleanup::Delete(None),
    };
    Admin::new(&settings.kafka)
        .unwrap()
        .create(&[spec])
        .await
        .unwrap();
    name
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
}

/// One record as read back, value as bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawRec {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Vec<u8>,
}

/// [`read_all_bytes`] with values as (lossy) UTF-8.
pub fn read_all(settings: &Settings, topic: &str, isolation: Isolation) -> Vec<Rec> {
    read_all_bytes(settings, topic, isolation)
        .into_iter()
        .map(|r| Rec {
            partition: r.partition,
            offset: r.offset,
            key: r.key,
            value: String::from_utf8_lossy(&r.value).into_owned(),
        })
        .collect()
}

/// Reads every record of `topic` visible at `isolation`, from the beginning, until each partition's
/// position reaches its high watermark or nothing arrived for `quiet`. An open transaction keeps a
/// `read_committed` reader below the high watermark, so `quiet` bounds that case.
pub fn read_all_bytes(settings: &Settings, topic: &str, isolation: Isolation) -> Vec<RawRec> {
    let quiet = Duration::from_secs(3);
    let consumer: BaseConsumer = client::consumer(
        &settings.kafka,
        "test.reader",
        "test.reader",
        isolation,
        StartAt::Earliest,
    )
    .create()
    .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut high = Vec::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, hw) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        high.push((p, hw));
    }
    consumer.assign(&tpl).unwrap();

    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            out.push(RawRec {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: m.payload().unwrap_or_default().to_vec(),
            });
            last = Instant::now();
            continue;
        }
        let position = consumer.position().unwrap();
        let at_end = high.iter().all(|&(p, hw)| {
            hw == 0
                || matches!(position.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= hw)
        });
        if at_end || last.elapsed() > quiet {
            break;
        }
    }
    out.sort();
    out
}

/// Values of `recs`, sorted.
pub fn values(recs: &[Rec]) -> Vec<String> {
    let mut v: Vec<String> = recs.iter().map(|r| r.value.clone()).collect();
    v.sort();
    v
}

/// Deletes this test's topics (best effort: a failed test leaves them for inspection otherwise).
pub async fn cleanup(settings: &Settings, topics: &[&str]) {
    if let Ok(admin) = Admin::new(&settings.kafka) {
        let _ = admin.delete(topics).await;
    }
}
