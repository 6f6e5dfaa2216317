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
    /// Headers as (name, UTF-8 value).
    pub headers: Vec<(String, String)>,
    /// The record's timestamp (epoch ms; its producer's create time).
    pub timestamp: i64,
}

impl RawRec {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
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
/// The high watermark of `topic`'s partition `p`, asked again for up to 30 s: right after a stack
/// restart a partition can still be without a leader (NotLeaderForPartition), which a reader
/// waits out rather than fails on.
fn high_watermark(consumer: &BaseConsumer, topic: &str, p: i32) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok((_, high)) => return high,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic}/{p}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("watermarks of {topic}/{p}: {e}"),
        }
    }
}

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
        high.push((p, high_watermark(&consumer, topic, p)));
    }
    consumer.assign(&tpl).unwrap();

    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            use rdkafka::message::Headers;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(RawRec {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
                timestamp: m.timestamp().to_millis().unwrap_or(0),
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

/// Creates every planned topic of `settings` (inputs, audit, each adapter's topics).
pub async fn create_plan(settings: &Settings) {
    let report = onceflow::ops::topics::create(settings).await.unwrap();
    assert!(report.diffs.is_empty(), "{:?}", report.diffs);
}

/// Deletes every planned topic of `settings`.
pub async fn cleanup_plan(settings: &Settings) {
    let names: Vec<String> = onceflow::kafka::names::topic_plan(settings)
        .into_iter()
        .map(|t| t.name)
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    cleanup(settings, &refs).await;
}

/// A LeadCaptured event from source `test` with sender id `id`.
pub fn lead(id: &str, email: &str) -> onceflow::model::Event {
    let data = serde_json::json!({"email": email, "form_id": "test", "first_name": "T"});
    let serde_json::Value::Object(map) = data else {
        unreachable!()
    };
    onceflow::model::Event::new(
        onceflow::model::EventType::LeadCaptured,
        "test",
        Some(id),
        1_795_428_000_000,
        map,
        None,
    )
}

/// Publishes `events` through the producer API, `concurrency` at a time; returns their ids.
pub async fn publish(settings: &Settings, events: Vec<onceflow::model::Event>) -> Vec<String> {
    let producer = std::sync::Arc::new(onceflow::ingest::Producer::new(settings).unwrap());
    let mut set = tokio::task::JoinSet::new();
    let mut ids = Vec::with_capacity(events.len());
    for e in events {
        while set.len() >= 128 {
            ids.push(set.join_next().await.unwrap().unwrap());
        }
        let p = std::sync::Arc::clone(&producer);
        set.spawn(async move { p.publish(&e).await.unwrap().event_id });
    }
    while let Some(r) = set.join_next().await {
        ids.push(r.unwrap());
    }
    ids
}

/// Waits until `group` has committed everything in `topics` (bounded by `limit`). A client error
/// (a time-out on a loaded machine) is retried until the limit.
pub async fn await_caught_up(settings: &Settings, group: &str, topics: &[String], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (s, g, t) = (settings.clone(), group.to_string(), topics.to_vec());
        let lag = tokio::task::spawn_blocking(move || {
            onceflow::kafka::admin::group_lag(&s.kafka, &g, &t)
        })
        .await
        .unwrap();
        if matches!(lag, Ok(0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} not caught up after {limit:?}: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The event id of every command in `outbox` (read_committed), decoded with the registry.
pub async fn outbox_event_ids(settings: &Settings, outbox: &str) -> Vec<String> {
    use onceflow::codec::Codec;
    let (s, t) = (settings.clone(), outbox.to_string());
    let raw = tokio::task::spawn_blocking(move || read_all_bytes(&s, &t, Isolation::ReadCommitted))
        .await
        .unwrap();
    let codec = onceflow::codec::AvroCodec::new(&settings.registry).unwrap();
    let mut ids = Vec::with_capacity(raw.len());
    for r in raw {
        let decoded = codec.decode(&r.value).await.unwrap();
        let json = onceflow::model::json_avro::to_json(&decoded.value);
        ids.push(json["meta"]["event_id"].as_str().unwrap().to_string());
    }
    ids.sort();
    ids
}

/// Ids that occur more than once, and the count of each.
pub fn doubles(ids: &[String]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// Avro `Union` of a present string (branch 1 of `["null", "string"]`).
pub fn some(s: &str) -> apache_avro::types::Value {
    apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::String(s.into())))
}

/// Avro `Union` of null (branch 0).
pub fn none() -> apache_avro::types::Value {
    apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))
}

/// A LeadCaptured v1 record as an Avro value, for codec and schema tests.
pub fn lead_v1_value() -> apache_avro::types::Value {
    use apache_avro::types::Value;
    let meta = Value::Record(vec![
        ("event_id".into(), Value::String("evt-1".into())),
        ("source".into(), Value::String("demo".into())),
        ("source_event_id".into(), Value::String("form-42".into())),
        ("type".into(), Value::String("LeadCaptured".into())),
        (
            "occurred_at".into(),
            Value::TimestampMillis(1_763_900_000_000),
        ),
        (
            "received_at".into(),
            Value::TimestampMillis(1_763_900_000_123),
        ),
        ("correlation_id".into(), Value::String("corr-1".into())),
        ("schema_version".into(), Value::Int(1)),
    ]);
    Value::Record(vec![
        ("meta".into(), meta),
        ("email".into(), Value::String("ada@example.com".into())),
        ("first_name".into(), some("Ada")),
        ("last_name".into(), none()),
        ("company".into(), some("Analytical Engines")),
        ("phone".into(), none()),
        ("form_id".into(), Value::String("contact-us".into())),
        ("consent_marketing".into(), Value::Boolean(true)),
    ])
}

/// The commands the built-in adapter `adapter` (configured as in `settings`) decides for `events`.
pub fn decide(
    settings: &Settings,
    adapter: &str,
    events: &[onceflow::model::Event],
) -> Vec<onceflow::model::command::Command> {
    let config = settings.adapters.get(adapter).cloned().unwrap_or_default();
    let a = onceflow::adapters::build(adapter, &config).unwrap();
    events.iter().flat_map(|e| a.decide(e).unwrap()).collect()
}

/// Writes `commands` to the outbox of their adapter, as the processor would (Avro through the
/// registry, keyed by entity), with `headers` on every record.
pub async fn write_outbox(
    settings: &Settings,
    commands: &[onceflow::model::command::Command],
    headers: &[(&str, &str)],
) {
    use onceflow::codec::Codec;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let codec = onceflow::codec::AvroCodec::new(&settings.registry).unwrap();
    let catalog = onceflow::codec::catalog::Catalog::builtin().unwrap();
    let names = onceflow::kafka::names::Names::new(settings);
    let producer: FutureProducer = client::producer(&settings.kafka, "test.outbox")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for c in commands {
        let outbox = names.outbox(&c.meta.adapter);
        let (_, schema) = catalog.latest(c.command_type.schema_name()).unwrap();
        let value = c.to_avro(schema).unwrap();
        let payload = codec.encode(&outbox, schema, value).await.unwrap();
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let record = FutureRecord::to(&outbox)
            .key(c.key.as_bytes())
            .payload(&payload)
            .headers(h);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Every receipt on `topic` (read_committed), decoded to JSON.
pub async fn receipts(settings: &Settings, topic: &str) -> Vec<serde_json::Value> {
    use onceflow::codec::Codec;
    let (s, t) = (settings.clone(), topic.to_string());
    let raw = tokio::task::spawn_blocking(move || read_all_bytes(&s, &t, Isolation::ReadCommitted))
        .await
        .unwrap();
    let codec = onceflow::codec::AvroCodec::new(&settings.registry).unwrap();
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let decoded = codec.decode(&r.value).await.unwrap();
        out.push(onceflow::model::json_avro::to_json(&decoded.value));
    }
    out
}

/// Every record of a DLQ or retry topic (read_committed) with its envelope and key.
pub fn envelopes(
    settings: &Settings,
    topic: &str,
) -> Vec<(String, onceflow::model::headers::ErrorEnvelope)> {
    let raw = read_all_bytes(settings, topic, Isolation::ReadCommitted);
    raw.into_iter()
        .map(|r| {
            let mut h = rdkafka::message::OwnedHeaders::new();
            for (k, v) in &r.headers {
                h = h.insert(rdkafka::message::Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let env = onceflow::model::headers::ErrorEnvelope::read(Some(&h))
                .expect("a complete envelope");
            (r.key, env)
        })
        .collect()
}

/// An InvoiceRequested event for customer `cus_<n>` in `currency`.
pub fn invoice_event(n: usize, currency: &str) -> onceflow::model::Event {
    let data = serde_json::json!({"customer_id": format!("cus_{n}"), "customer_email": format!("b{n}@x.io"),
        "currency": currency, "amount_minor": 1000 + n as i64, "description": "Pro plan", "due_at": null});
    let serde_json::Value::Object(map) = data else {
        unreachable!()
    };
    onceflow::model::Event::new(
        onceflow::model::EventType::InvoiceRequested,
        "test",
        Some(&format!("inv-{n}")),
        1_795_428_000_000,
        map,
        None,
    )
}

/// The last `lines` lines of every `.log` file in `dir`, for a failure message.
pub fn log_tails(dir: &std::path::Path, lines: usize) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!(
                "--- {}\n{}\n",
                p.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    out
}

/// The settings file of `settings`' namespace, broker, registry and topics (with the tests' short
/// timeouts), for a real binary; callers append their own sections.
pub fn config_toml(settings: &Settings) -> String {
    format!(
        "namespace = '{ns}'\n\
         [kafka]\nbootstrap_servers = '{b}'\ntransaction_timeout_ms = 20000\nmessage_timeout_ms = 15000\n\
         session_timeout_ms = 6000\n\
         [registry]\nurl = '{r}'\n[topics]\ninputs = ['{input}']\npartitions = {p}\n",
        ns = settings.namespace,
        b = settings.kafka.bootstrap_servers,
        r = settings.registry.url,
        input = settings.topics.inputs[0],
        p = settings.topics.partitions,
    )
}

/// A free loopback port (bound, then released) for a process under test to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A crm processor of `settings`.
pub fn crm(settings: &Settings) -> onceflow::processor::Processor {
    onceflow::processor::Processor::new(
        settings,
        onceflow::adapters::build("crm", &onceflow::config::AdapterSettings::default()).unwrap(),
    )
    .unwrap()
}

/// Settings under a fresh namespace for a processor instance `instance`, with every planned topic
/// created.
pub async fn processor_settings(instance: &str) -> Settings {
    let mut s = settings();
    s.processor.instance_id = instance.into();
    create_plan(&s).await;
    s
}

/// A processor running in this process; `stop` ends it and returns its counts.
pub struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task:
        tokio::task::JoinHandle<Result<onceflow::stage::Counts, onceflow::processor::ProcessError>>,
}

impl Running {
    /// Runs `processor` until [`Running::stop`].
    pub fn start(processor: onceflow::processor::Processor) -> Running {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { processor.run(stopped).await });
        Running { stop, task }
    }

    /// Stops it; its counts.
    pub async fn stop(self) -> onceflow::stage::Counts {
        self.finish().await.unwrap()
    }

    /// Stops it (if it still runs); what its run returned.
    pub async fn finish(
        self,
    ) -> Result<onceflow::stage::Counts, onceflow::processor::ProcessError> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }

    /// Whether its run has returned by itself.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Waits (30 s at most) until a server started by a test answers `url` at all; its log at `log`
/// says why when it does not.
pub async fn await_started(http: &reqwest::Client, url: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(url).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the server did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
