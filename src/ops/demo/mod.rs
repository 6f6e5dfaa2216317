//! The demo's transactional round trip: produce a few records, then consume → transform → produce
//! with the consumer's offsets inside the same transaction, and show what a `read_committed` reader
//! and the group's committed offsets say afterwards.
//!
//! Also the webhook part of the demo: post the signed samples of `deploy/local/samples/` to a running
//! `onceflow ingest`, plus a duplicate, a bad signature and a schema violation, and report each answer.
//!
//! The processors' part runs every adapter's processor until caught up; the delivery part
//! ([`delivery`]) runs the dispatchers and reads what the provider sandboxes did.
//!
//! Invariants:
//! - One run's outputs and its input offsets become visible together, in one commit, or not at all.
//! - Runs share one group (`<ns>.demo.roundtrip`), so a second run resumes after the first one's
//!   committed offsets instead of transforming old records again.

pub mod delivery;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::admin::{Admin, AdminError};
use crate::kafka::client::{self, Isolation, StartAt};
use crate::kafka::names::{Cleanup, Names, Stage, TopicSpec};
use crate::kafka::txn::{OffsetTracker, TxError, TxProducer, group_metadata};

/// How long the demo waits for records before it gives up.
const WAIT: Duration = Duration::from_secs(30);

/// A failed demo run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A Kafka client call failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A transactional call failed.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// Creating the demo topics failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Records did not arrive in time.
    #[error("timed out after {WAIT:?} waiting for {0}")]
    Timeout(&'static str),
    /// A blocking call was cancelled.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// An HTTP call to the intake failed.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// A sample could not be read.
    #[error("samples: {0}")]
    Samples(String),
    /// The demo source or its secret is not configured.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// What the intake answered to one demo request.
#[derive(Debug)]
pub struct WebhookOutcome {
    /// What was sent.
    pub label: String,
    /// HTTP status.
    pub status: u16,
    /// The answer's JSON body.
    pub body: serde_json::Value,
}

/// The demo's source name in the settings.
pub const DEMO_SOURCE: &str = "demo";

/// Posts every sample in `samples` (sorted by file name) to the intake at `base_url`, then the lead
/// sample again (a duplicate), with a wrong signature, and with an invalid e-mail.
pub async fn post_samples(
    settings: &Settings,
    base_url: &str,
    samples: &std::path::Path,
) -> Result<Vec<WebhookOutcome>, DemoError> {
    let source = settings.ingest.sources.get(DEMO_SOURCE).ok_or_else(|| {
        DemoError::Samples(format!("no [ingest.sources.{DEMO_SOURCE}] in the settings"))
    })?;
    let secret = source
        .secret
        .resolve(&format!("ingest.sources.{DEMO_SOURCE}.secret_env"))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // Wait until the intake is ready (broker and registry answer).
    let deadline = Instant::now() + WAIT;
    loop {
        match http.get(format!("{base_url}/readyz")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() >= deadline => {
                return Err(DemoError::Timeout("the intake to be ready"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let mut files: Vec<_> = std::fs::read_dir(samples)
        .map_err(|e| DemoError::Samples(format!("{}: {e}", samples.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut bodies = Vec::new();
    for path in &files {
        let body = std::fs::read_to_string(path)
            .map_err(|e| DemoError::Samples(format!("{}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        bodies.push((name, body));
    }
    let lead = bodies
        .iter()
        .find(|(name, _)| name.starts_with("lead_captured"))
        .map(|(_, b)| b.clone())
        .ok_or_else(|| DemoError::Samples("no lead_captured sample".into()))?;
    let invalid = lead.replace("Ada.Lovelace@Example.com", "ada.lovelace-at-example.com");

    let url = format!("{base_url}/v1/sources/{DEMO_SOURCE}/events");
    let mut outcomes = Vec::new();
    let mut send = async |label: String, body: String, key: &[u8]| -> Result<(), DemoError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .header(
                crate::ingest::signature::HEADER,
                crate::ingest::signature::sign(key, now, body.as_bytes()),
            )
            .body(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(serde_json::Value::Null);
        outcomes.push(WebhookOutcome {
            label,
            status,
            body,
        });
        Ok(())
    };
    for (name, body) in bodies {
        send(name, body, secret.as_bytes()).await?;
    }
    send(
        "lead_captured.json again (a sender's retry)".into(),
        lead.clone(),
        secret.as_bytes(),
    )
    .await?;
    send(
        "lead_captured.json signed with a wrong secret".into(),
        lead,
        b"not-the-secret",
    )
    .await?;
    send(
        "lead_captured.json with an invalid e-mail".into(),
        invalid,
        secret.as_bytes(),
    )
    .await?;
    Ok(outcomes)
}

/// What one round trip did.
#[derive(Debug)]
pub struct RoundTrip {
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Records produced to the input topic this run.
    pub produced: usize,
    /// Records the transaction consumed (this run's, plus any earlier run left unprocessed).
    pub transformed: usize,
    /// Next offset per input partition, as sent with the transaction.
    pub sent_offsets: BTreeMap<i32, i64>,
    /// The group's committed offsets afterwards, for the same partitions.
    pub committed_offsets: BTreeMap<i32, i64>,
    /// This run's outputs that a `read_committed` reader sees.
    pub visible_outputs: usize,
    /// Time from the first consumed record to the end of the commit.
    pub transaction_time: Duration,
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Runs the round trip with `count` records.
pub async fn round_trip(settings: &Settings, count: usize) -> Result<RoundTrip, DemoError> {
    let names = Names::new(settings);
    let (input, output) = names.demo_topics();
    let spec = |name: &String| TopicSpec {
        name: name.clone(),
        partitions: settings.topics.partitions,
        replication_factor: settings.topics.replication_factor,
        cleanup: Cleanup::Delete(None),
    };
    Admin::new(&settings.kafka)?
        .create(&[spec(&input), spec(&output)])
        .await?;

    // 1. Publish this run's records with the idempotent producer.
    let run = format!("run-{}", unix_millis());
    let producer: FutureProducer = client::producer(&settings.kafka, "demo.publish").create()?;
    for i in 0..count {
        let key = format!("{run}-{i}");
        let value = format!("{{\"run\":\"{run}\",\"n\":{i},\"text\":\"hello from onceflow\"}}");
        producer
            .send(
                FutureRecord::to(&input).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }

    // 2. Consume → transform → produce, offsets in the same transaction.
    let (group, reader_group) = names.demo_groups();
    let consumer: Arc<StreamConsumer> = Arc::new(
        client::consumer(
            &settings.kafka,
            "demo.transform",
            &group,
            Isolation::ReadCommitted,
            StartAt::Earliest,
        )
        .create()?,
    );
    consumer.subscribe(&[&input])?;
    let tx_id = names.transactional_id("demo", Stage::Process, "0");
    let tx = TxProducer::init(&settings.kafka, "demo.transform", &tx_id).await?;

    let mut tracker = OffsetTracker::new();
    let mut seen_this_run = 0;
    let mut transformed = 0;
    let deadline = Instant::now() + WAIT;
    let mut started: Option<Instant> = None;
    while seen_this_run < count {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(remaining, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => return Err(DemoError::Timeout("the demo's input records")),
        };
        if started.is_none() {
            started = Some(Instant::now());
            tx.begin().await?;
        }
        let upper = message
            .payload()
            .map(|p| String::from_utf8_lossy(p).to_uppercase())
            .unwrap_or_default();
        let key = message.key().unwrap_or_default();
        tx.send(FutureRecord::to(&output).key(key).payload(&upper))?;
        tracker.consumed(&message);
        transformed += 1;
        if key.starts_with(run.as_bytes()) {
            seen_this_run += 1;
        }
    }
    let offsets = tracker.take()?;
    let sent_offsets = partition_offsets(&offsets);
    tx.send_offsets(offsets.clone(), group_metadata(consumer.as_ref())?)
        .await?;
    tx.commit().await?;
    let transaction_time = started.map_or(Duration::ZERO, |s| s.elapsed());

    // 3. What the group committed, and what a read_committed reader sees.
    let c = Arc::clone(&consumer);
    let committed =
        tokio::task::spawn_blocking(move || c.committed_offsets(offsets, Duration::from_secs(10)))
            .await??;
    let committed_offsets = partition_offsets(&committed);
    let visible_outputs = count_visible(settings, &reader_group, &output, &run, count).await?;

    Ok(RoundTrip {
        input,
        output,
        produced: count,
        transformed,
        sent_offsets,
        committed_offsets,
        visible_outputs,
        transaction_time,
    })
}

fn partition_offsets(tpl: &TopicPartitionList) -> BTreeMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Counts this run's records on `topic` as a `read_committed` reader sees them.
async fn count_visible(
    settings: &Settings,
    group: &str,
    topic: &str,
    run: &str,
    expect: usize,
) -> Result<usize, DemoError> {
    let reader: StreamConsumer = client::consumer(
        &settings.kafka,
        "demo.reader",
        group,
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..settings.topics.partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    reader.assign(&assignment)?;
    let mut seen = 0;
    let deadline = Instant::now() + WAIT;
    while seen < expect {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, reader.recv()).await {
            Ok(m) => {
                if m?.key().is_some_and(|k| k.starts_with(run.as_bytes())) {
                    seen += 1;
                }
            }
            Err(_) => break,
        }
    }
    Ok(seen)
}

/// Waits until `group` has committed everything in `topics`; false if `deadline` passed first.
async fn caught_up(
    settings: &Settings,
    group: &str,
    topics: &[String],
    deadline: Instant,
) -> Result<bool, DemoError> {
    loop {
        let (kafka, g, t) = (settings.kafka.clone(), group.to_string(), topics.to_vec());
        let lag =
            tokio::task::spawn_blocking(move || crate::kafka::admin::group_lag(&kafka, &g, &t))
                .await?;
        if matches!(lag, Ok(0)) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What one adapter's processor did in the demo.
#[derive(Debug)]
pub struct ProcessorOutcome {
    /// Adapter.
    pub adapter: String,
    /// Its counts.
    pub counts: crate::stage::Counts,
    /// Dead letters this run added: (class, message).
    pub dead_letters: Vec<(String, String)>,
}

/// Runs a processor for every configured adapter until each group has committed everything in the
/// input topics, then stops them and reports what each did, with the reasons of new dead letters.
pub async fn run_processors(settings: &Settings) -> Result<Vec<ProcessorOutcome>, DemoError> {
    use crate::processor::Processor;
    let names = Names::new(settings);
    let started = crate::model::event::now_ms();
    let mut running = Vec::new();
    for (name, config) in &settings.adapters {
        let adapter = crate::adapters::build(name, config)
            .ok_or_else(|| DemoError::Samples(format!("no adapter named {name}")))?;
        let processor =
            Processor::new(settings, adapter).map_err(|e| DemoError::Samples(e.to_string()))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { processor.run(stopped).await });
        running.push((name.clone(), stop, task));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for (name, _, _) in &running {
        let group = names.group(name, Stage::Process);
        let caught_up = caught_up(settings, &group, &settings.topics.inputs, deadline).await?;
        if !caught_up {
            return Err(DemoError::Timeout("the processors to catch up"));
        }
    }
    let mut outcomes = Vec::new();
    for (name, stop, task) in running {
        let _ = stop.send(true);
        let counts = task.await?.map_err(|e| DemoError::Samples(e.to_string()))?;
        let (kafka, topic) = (settings.kafka.clone(), names.dlq(&name, Stage::Process));
        let letters = tokio::task::spawn_blocking(move || {
            super::dlq::read(&kafka, &topic, &super::dlq::Filter::default())
        })
        .await??;
        let dead_letters = letters
            .into_iter()
            .filter_map(|d| d.envelope)
            .filter(|e| e.first_failed_at >= started)
            .map(|e| (e.class.as_str().to_string(), e.message))
            .collect();
        outcomes.push(ProcessorOutcome {
            adapter: name,
            counts,
            dead_letters,
        });
    }
    Ok(outcomes)
}
