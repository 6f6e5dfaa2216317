//! The processor in-process against the real broker and registry: duplicates, poison pills, retry
//! tiers and the DLQ, fencing and aborts. (Crashes of the real binary: `processor_crash.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Running, await_caught_up, create_plan, doubles, lead, outbox_event_ids, publish};
use onceflow::adapters::{Adapter, AdapterError};
use onceflow::codec::catalog::Catalog;
use onceflow::codec::{AvroCodec, Codec};
use onceflow::config::{AdapterSettings, Settings};
use onceflow::kafka::client::{self, Isolation};
use onceflow::kafka::names::{Names, Stage};
use onceflow::kafka::txn::TxProducer;
use onceflow::model::command::{Command, CommandType};
use onceflow::model::event::now_ms;
use onceflow::model::headers::{ErrorClass, ErrorEnvelope, name};
use onceflow::model::{Event, identity};
use onceflow::processor::Processor;
use onceflow::stage::fault::{FaultPlan, Point};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const CATCH_UP: Duration = Duration::from_secs(90);

use common::{crm, processor_settings as settings};

fn group(s: &Settings, adapter: &str) -> String {
    Names::new(s).group(adapter, Stage::Process)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_yield_one_command_and_still_one_after_a_restart() {
    let s = settings("dup").await;
    let outbox = Names::new(&s).outbox("crm");
    // The same source event three times, as three Kafka records far apart, between others.
    publish(&s, vec![lead("L-1", "a@x.io"), lead("L-2", "b@x.io")]).await;
    publish(&s, vec![lead("L-1", "a@x.io")]).await;

    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let first = running.stop().await;
    assert_eq!((first.tally.ok, first.tally.duplicate), (2, 1), "{first:?}");

    // After a restart the dedupe state comes back from the changelog.
    publish(&s, vec![lead("L-1", "a@x.io"), lead("L-3", "c@x.io")]).await;
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let second = running.stop().await;
    assert_eq!(
        (second.tally.ok, second.tally.duplicate),
        (1, 1),
        "{second:?}"
    );

    let ids = outbox_event_ids(&s, &outbox).await;
    let mut want: Vec<String> = ["L-1", "L-2", "L-3"]
        .iter()
        .map(|id| identity::event_id("test", id))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    common::cleanup_plan(&s).await;
}

/// A large batch is judged on several threads (`processor.threads`), cut into runs of records:
/// an event and its copy in another run are still decided once, since copies within a batch are
/// settled in the batch's order after the threads are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_across_threads_decides_each_event_once() {
    let mut s = settings("shards").await;
    s.processor.threads = 3;
    s.processor.batch_max_records = 5_000;
    let outbox = Names::new(&s).outbox("crm");
    let events: Vec<Event> = (0..1_200)
        .map(|i| lead(&format!("S-{i}"), &format!("s{i}@x.io")))
        .collect();
    // Every copy on the input before the processor starts: its batches are full and hold both
    // copies of most events.
    publish(&s, events.clone()).await;
    publish(&s, events).await;

    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    assert_eq!(
        (counts.tally.ok, counts.tally.duplicate),
        (1_200, 1_200),
        "{counts:?}"
    );
    let ids = outbox_event_ids(&s, &outbox).await;
    assert_eq!(doubles(&ids), vec![], "{counts:?}");
    assert_eq!(ids.len(), 1_200);
    common::cleanup_plan(&s).await;
}

/// Encodes `event` as ingest would, for producing by hand to an exact partition.
async fn encoded(s: &Settings, codec: &AvroCodec, mut event: Event) -> Vec<u8> {
    let catalog = Catalog::builtin().unwrap();
    let (version, schema) = catalog.latest("lead_captured").unwrap();
    let value = event.to_avro(schema, version).unwrap();
    codec
        .encode(&s.topics.inputs[0], schema, value)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_go_to_the_dlq_with_their_reason_while_the_good_records_around_them_flow() {
    let s = settings("poison").await;
    let names = Names::new(&s);
    let input = &s.topics.inputs[0];
    let codec = AvroCodec::new(&s.registry).unwrap();

    let good = |n: usize| lead(&format!("G-{n}"), &format!("g{n}@x.io"));
    let mut truncated = encoded(&s, &codec, good(99)).await;
    truncated.truncate(truncated.len() - 3);
    // A well-formed record of a schema that is not an event (a command on the events topic).
    let catalog = Catalog::builtin().unwrap();
    let (_, track) = catalog.latest("analytics_track").unwrap();
    let command = Command::new(
        &good(98),
        "analytics",
        0,
        CommandType::AnalyticsTrack,
        json!({"event_name": "x", "user_key": "u", "properties": {}, "timestamp": 0})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap();
    let wrong_schema = codec
        .encode(input, track, command.to_avro(track).unwrap())
        .await
        .unwrap();

    let records: Vec<(&str, Vec<u8>)> = vec![
        ("good", encoded(&s, &codec, good(1)).await),
        ("garbage", b"\xde\xad\xbe\xef not avro at all".to_vec()),
        ("good", encoded(&s, &codec, good(2)).await),
        (
            "unknown schema id",
            vec![0, 0x7f, 0xff, 0xff, 0xf0, 2, 4, 6],
        ),
        ("good", encoded(&s, &codec, good(3)).await),
        ("wrong schema", wrong_schema),
        ("truncated", truncated),
        ("good", encoded(&s, &codec, good(4)).await),
    ];
    let producer: FutureProducer = client::producer(&s.kafka, "test.poison").create().unwrap();
    for (i, (what, value)) in records.iter().enumerate() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "test.what",
            value: Some(*what),
        });
        let key = format!("k{i}");
        let record = FutureRecord::to(input)
            .partition(1)
            .key(&key)
            .payload(value)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }

    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    assert_eq!((counts.tally.ok, counts.tally.dlq), (4, 4), "{counts:?}");

    let ids = outbox_event_ids(&s, &names.outbox("crm")).await;
    let mut want: Vec<String> = (1..=4)
        .map(|n| identity::event_id("test", &format!("G-{n}")))
        .collect();
    want.sort();
    assert_eq!(
        ids, want,
        "every good record decided, in spite of the poison between them"
    );

    let (s2, dlq) = (s.clone(), names.dlq("crm", Stage::Process));
    let dead = tokio::task::spawn_blocking(move || dead_letters(&s2, &dlq))
        .await
        .unwrap();
    let expect = [
        ("garbage", 1, ErrorClass::Decode),
        ("unknown schema id", 3, ErrorClass::Decode),
        ("wrong schema", 5, ErrorClass::Schema),
        ("truncated", 6, ErrorClass::Decode),
    ];
    assert_eq!(dead.len(), expect.len());
    for ((value, headers, partition), (what, offset, class)) in dead.iter().zip(expect) {
        let env = ErrorEnvelope::read(Some(headers)).unwrap();
        assert_eq!(env.class, class, "{what}: {}", env.message);
        assert_eq!(
            (
                env.origin.topic.as_str(),
                env.origin.partition,
                env.origin.offset
            ),
            (input.as_str(), 1, offset)
        );
        assert_eq!(
            (env.attempt, env.adapter.as_str(), env.stage),
            (1, "crm", Stage::Process)
        );
        assert!(!env.message.is_empty());
        assert_eq!(*partition, 1, "the origin's partition");
        assert_eq!(
            value, &records[offset as usize].1,
            "{what}: value byte-identical"
        );
        assert_eq!(
            onceflow::model::headers::get(Some(headers), "test.what"),
            Some(what)
        );
    }
    common::cleanup_plan(&s).await;
}

/// (value, headers, partition) of every record of `topic`, in offset order per partition.
fn dead_letters(s: &Settings, topic: &str) -> Vec<(Vec<u8>, OwnedHeaders, i32)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client::consumer(
        &s.kafka,
        "test.dlq",
        "test.dlq",
        Isolation::ReadCommitted,
        client::StartAt::Earliest,
    )
    .create()
    .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..s.topics.partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 20 {
        match consumer.poll(Duration::from_millis(100)) {
            Some(m) => {
                let m = m.unwrap();
                out.push((
                    m.offset(),
                    m.payload().unwrap_or_default().to_vec(),
                    m.headers().map(|h| h.detach()).unwrap_or_default(),
                    m.partition(),
                ));
                idle = 0;
            }
            None => idle += 1,
        }
    }
    out.sort_by_key(|r| (r.3, r.0));
    out.into_iter().map(|(_, v, h, p)| (v, h, p)).collect()
}

/// Fails every event whose e-mail starts with `retry`; decides the others. Records when each
/// attempt happened.
struct Flaky {
    calls: Mutex<Vec<(String, i64)>>,
}

/// The test adapters' one command for `event`.
fn track(event: &Event) -> Result<Vec<Command>, AdapterError> {
    let data = json!({"event_name": "x", "user_key": "u", "properties": {}, "timestamp": 0});
    Ok(vec![
        Command::new(
            event,
            "flaky",
            0,
            CommandType::AnalyticsTrack,
            data.as_object().unwrap().clone(),
        )
        .map_err(AdapterError::from)?,
    ])
}

impl Adapter for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        let email = event.data["email"].as_str().unwrap().to_string();
        self.calls.lock().unwrap().push((email.clone(), now_ms()));
        if email.starts_with("retry") {
            return Err(AdapterError::Retry {
                after: None,
                message: format!("503 from the CRM for {email}"),
            });
        }
        track(event)
    }
}

/// Fails each e-mail's first decision (retryable), decides every later one.
struct FailsOnce {
    failed: Mutex<std::collections::HashSet<String>>,
}

impl Adapter for FailsOnce {
    fn name(&self) -> &str {
        "flaky"
    }

    fn decide(&self, event: &Event) -> Result<Vec<Command>, AdapterError> {
        let email = event.data["email"].as_str().unwrap().to_string();
        if self.failed.lock().unwrap().insert(email.clone()) {
            return Err(AdapterError::Retry {
                after: None,
                message: format!("503 from the CRM for {email}"),
            });
        }
        track(event)
    }
}

/// Partition p of the input and partition p of every retry tier share dedupe partition p, so they
/// must have one owner: with two instances, an event waiting in a retry tier and a duplicate of it
/// on the input are decided once, whichever instance reads which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_an_event_waiting_in_a_retry_tier_is_decided_once_across_instances() {
    let mut s = common::settings();
    s.processor.instance_id = "copart-a".into();
    s.retry.tiers = vec![Duration::from_secs(2)];
    s.adapters
        .insert("flaky".into(), AdapterSettings::default());
    create_plan(&s).await;
    let names = Names::new(&s);
    let adapter = Arc::new(FailsOnce {
        failed: Mutex::new(std::collections::HashSet::new()),
    });
    let a = Running::start(Processor::new(&s, adapter.clone()).unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut sb = s.clone();
    sb.processor.instance_id = "copart-b".into();
    let b = Running::start(Processor::new(&sb, adapter.clone()).unwrap());
    // Both instances hold partitions once the rebalance is over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let events: Vec<_> = (0..24)
        .map(|i| lead(&format!("CP-{i}"), &format!("cp{i}@x.io")))
        .collect();
    // Each event fails once and waits in the retry tier; its duplicate comes on the input.
    publish(&s, events.clone()).await;
    publish(&s, events).await;
    let mut topics = s.topics.inputs.clone();
    topics.push(names.retry("flaky", Stage::Process, 1));
    await_caught_up(&s, &group(&s, "flaky"), &topics, CATCH_UP).await;
    let (ca, cb) = (a.stop().await, b.stop().await);
    let ids = outbox_event_ids(&s, &names.outbox("flaky")).await;
    assert_eq!(doubles(&ids), vec![], "{ca:?} {cb:?}");
    assert_eq!(ids.len(), 24, "{ca:?} {cb:?}");
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_wait_their_tier_without_blocking_others_then_dead_letter() {
    let mut s = common::settings();
    s.processor.instance_id = "retry".into();
    let tier = Duration::from_secs(3);
    s.retry.tiers = vec![tier, tier];
    s.adapters
        .insert("flaky".into(), AdapterSettings::default());
    create_plan(&s).await;
    let names = Names::new(&s);
    let flaky = Arc::new(Flaky {
        calls: Mutex::new(Vec::new()),
    });
    let running = Running::start(Processor::new(&s, flaky.clone()).unwrap());

    // The failing event, with a header of its own that must survive every hop.
    let codec = AvroCodec::new(&s.registry).unwrap();
    let failing = encoded(&s, &codec, lead("R-1", "retry@x.io")).await;
    let producer: FutureProducer = client::producer(&s.kafka, "test.retry").create().unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some("00-abc-01"),
    });
    let (origin_partition, origin_offset) = {
        let r = FutureRecord::to(&s.topics.inputs[0])
            .partition(2)
            .key("r")
            .payload(&failing)
            .headers(headers);
        let d = producer.send(r, Duration::from_secs(10)).await.unwrap();
        (d.partition, d.offset)
    };
    let attempts = |calls: &[(String, i64)]| -> Vec<i64> {
        calls
            .iter()
            .filter(|(e, _)| e == "retry@x.io")
            .map(|(_, t)| *t)
            .collect()
    };
    // Once it failed, other events keep flowing while it waits.
    let deadline = std::time::Instant::now() + CATCH_UP;
    while attempts(&flaky.calls.lock().unwrap()).is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(
        &s,
        (0..6)
            .map(|i| lead(&format!("N-{i}"), &format!("n{i}@x.io")))
            .collect(),
    )
    .await;

    let dlq = names.dlq("flaky", Stage::Process);
    let deadline = std::time::Instant::now() + CATCH_UP;
    let dead = loop {
        let (s2, t) = (s.clone(), dlq.clone());
        let dead = tokio::task::spawn_blocking(move || dead_letters(&s2, &t))
            .await
            .unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the DLQ"
        );
    };
    let counts = running.stop().await;
    assert_eq!(
        (counts.tally.retry, counts.tally.dlq, counts.tally.ok),
        (2, 1, 6),
        "{counts:?}"
    );

    let calls = flaky.calls.lock().unwrap().clone();
    let tries = attempts(&calls);
    assert_eq!(tries.len(), 3, "first try plus one per tier: {tries:?}");
    let others: Vec<i64> = calls
        .iter()
        .filter(|(e, _)| e.starts_with('n'))
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(others.len(), 6);
    assert!(
        others.iter().all(|t| *t < tries[1]),
        "others were decided while the failed one waited"
    );

    // Each retry ran no earlier than its record's not_before, which is at least a tier after the
    // failure, and no later than not_before plus one batch (and scheduling slack on 2 cores).
    let mut due = Vec::new();
    for n in 1..=2 {
        let (s2, t) = (s.clone(), names.retry("flaky", Stage::Process, n));
        let recs = tokio::task::spawn_blocking(move || dead_letters(&s2, &t))
            .await
            .unwrap();
        assert_eq!(recs.len(), 1, "retry.{n}");
        let env = ErrorEnvelope::read(Some(&recs[0].1)).unwrap();
        assert_eq!((env.attempt, env.class), (n as u32, ErrorClass::Retryable));
        assert_eq!(
            recs[0].2, origin_partition,
            "retry records keep the origin partition"
        );
        due.push(env);
    }
    let tier_ms = tier.as_millis() as i64;
    let slack_ms = s.processor.batch_max.as_millis() as i64 + 2_000;
    assert_eq!(due[0].first_failed_at, due[1].first_failed_at);
    assert!(
        due[0].not_before - due[0].first_failed_at >= tier_ms,
        "{:?}",
        due[0]
    );
    assert!(
        due[0].not_before - due[0].first_failed_at < 2 * tier_ms,
        "jitter stays within a tier"
    );
    for (attempt, env) in tries[1..].iter().zip(&due) {
        assert!(
            *attempt >= env.not_before,
            "retried before it was due: {attempt} < {}",
            env.not_before
        );
        assert!(
            *attempt <= env.not_before + slack_ms,
            "retried {} ms late",
            attempt - env.not_before
        );
    }
    assert!(tries[2] - tries[1] >= tier_ms - 50, "{tries:?}");

    // The dead letter: full envelope, one of it, and the original bytes and headers.
    let (value, headers, partition) = &dead[0];
    assert_eq!(value, &failing, "byte-identical value");
    assert_eq!(*partition, origin_partition);
    let env = ErrorEnvelope::read(Some(headers)).unwrap();
    assert_eq!(
        (env.class, env.attempt, env.not_before),
        (ErrorClass::Retryable, 3, 0)
    );
    assert_eq!(env.first_failed_at, due[0].first_failed_at);
    assert_eq!(
        (
            env.origin.topic.as_str(),
            env.origin.partition,
            env.origin.offset
        ),
        (s.topics.inputs[0].as_str(), origin_partition, origin_offset)
    );
    assert!(env.message.contains("r***@x.io"), "masked: {}", env.message);
    assert_eq!(
        env.correlation_id.as_deref().map(str::is_empty),
        Some(false)
    );
    use rdkafka::message::Headers;
    let count = |k: &str| headers.iter().filter(|h| h.key == k).count();
    assert_eq!(count(name::ATTEMPT), 1, "one envelope, never accumulated");
    assert_eq!(count("traceparent"), 1);
    assert_eq!(
        onceflow::model::headers::get(Some(headers), "traceparent"),
        Some("00-abc-01")
    );
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_processor_rejoins_and_stays_exactly_once() {
    let s = settings("fence").await;
    let names = Names::new(&s);
    let running = Running::start(crm(&s));
    let batch = |from: usize| {
        (from..from + 40)
            .map(|i| lead(&format!("F-{i}"), &format!("f{i}@x.io")))
            .collect()
    };
    publish(&s, batch(0)).await;
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;

    // Another producer takes the instance's transactional id: the processor is now a zombie.
    let usurper = TxProducer::init(
        &s.kafka,
        "test.usurper",
        &names.transactional_id("crm", Stage::Process, "fence"),
    )
    .await
    .unwrap();
    drop(usurper);
    publish(&s, batch(40)).await;
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    assert!(
        counts.rejoins >= 1,
        "it noticed the fencing and rejoined: {counts:?}"
    );

    let ids = outbox_event_ids(&s, &names.outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![]);
    assert_eq!(ids.len(), 80);
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transaction_is_redone_from_the_committed_offsets() {
    let s = settings("abort").await;
    publish(
        &s,
        (0..30)
            .map(|i| lead(&format!("A-{i}"), &format!("a{i}@x.io")))
            .collect(),
    )
    .await;
    // Only the first transaction of batch 1 is aborted: the processor does not send a batch's
    // commands again in place (Work::commit_attempts is 1), it redoes the batch from its input.
    let processor = crm(&s).with_fault(FaultPlan::at(Point::AbortFirstAttempt, 1));
    let running = Running::start(processor);
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    // The injected abort, and possibly real ones (a generation that moved on during the first
    // rebalances refuses the offsets): either way the batch is redone, never doubled.
    assert!(counts.aborts >= 1, "{counts:?}");
    let ids = outbox_event_ids(&s, &Names::new(&s).outbox("crm")).await;
    assert_eq!(doubles(&ids), vec![]);
    assert_eq!(ids.len(), 30);
    common::cleanup_plan(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_carries_the_events_hop_count_trace_and_receipt_time() {
    let s = settings("hop").await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let producer = onceflow::ingest::Producer::new(&s).unwrap();
    let event = lead("H-1", "hop@x.io");
    let received_at = event.meta.received_at;
    let context = onceflow::ingest::Context {
        hop: 3,
        traceparent: Some(trace.into()),
    };
    producer.publish_with(&event, &context).await.unwrap();
    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    running.stop().await;

    let (s2, outbox) = (s.clone(), Names::new(&s).outbox("crm"));
    let records = tokio::task::spawn_blocking(move || {
        common::read_all_bytes(&s2, &outbox, Isolation::ReadCommitted)
    })
    .await
    .unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.header(name::HOP), Some("3"));
    // The command continues the event's trace as a child of the processor's span.
    let sent = r.header(name::TRACEPARENT).unwrap();
    assert_eq!(sent[..36], trace[..36], "{sent}");
    assert_ne!(sent, trace);
    assert_eq!(
        r.headers
            .iter()
            .filter(|(k, _)| k == name::TRACEPARENT)
            .count(),
        1,
        "one traceparent, not the event's beside it"
    );
    assert_eq!(
        r.header(name::EVENT_RECEIVED_AT),
        Some(received_at.to_string().as_str())
    );
    common::cleanup_plan(&s).await;
}

/// A record whose header name is not UTF-8 (Kafka allows it; kcat and Go clients write it)
/// crashed any stage that touched its headers, rdkafka panicking in `try_get`, and crashed it
/// again after every restart. It is dead-lettered with its reason, the readable headers kept, and
/// the records around it flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_header_name_that_is_not_utf8_is_dead_lettered_not_a_crash() {
    let s = settings("badheader").await;
    let names = Names::new(&s);
    let input = s.topics.inputs[0].clone();
    let codec = AvroCodec::new(&s.registry).unwrap();
    let producer: FutureProducer = client::producer(&s.kafka, "test.badheader")
        .create()
        .unwrap();
    let send = |value: Vec<u8>| {
        let (producer, input) = (producer.clone(), input.clone());
        async move {
            producer
                .send(
                    FutureRecord::<(), _>::to(&input)
                        .partition(0)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    };
    send(encoded(&s, &codec, lead("H-1", "h1@x.io")).await).await;
    // kcat writes the header name's bytes as they are: 0xff 0xfe is no UTF-8.
    let mut kcat = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kcat"),
    )
    .args([
        "-b",
        &s.kafka.bootstrap_servers,
        "-t",
        &input,
        "-p",
        "0",
        "-P",
    ])
    .arg("-H")
    .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\xfe=v"))
    .args(["-H", "test.what=bad header"])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    {
        use std::io::Write;
        let mut stdin = kcat.stdin.take().unwrap();
        stdin.write_all(b"not an event either").unwrap();
    }
    let out = kcat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    send(encoded(&s, &codec, lead("H-2", "h2@x.io")).await).await;

    let running = Running::start(crm(&s));
    await_caught_up(&s, &group(&s, "crm"), &s.topics.inputs, CATCH_UP).await;
    let counts = running.stop().await;
    assert_eq!((counts.tally.ok, counts.tally.dlq), (2, 1), "{counts:?}");
    let (s2, dlq) = (s.clone(), names.dlq("crm", Stage::Process));
    let dead = tokio::task::spawn_blocking(move || dead_letters(&s2, &dlq))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let (value, headers, _) = &dead[0];
    let env = ErrorEnvelope::read(Some(headers)).unwrap();
    assert_eq!(env.class, ErrorClass::Decode);
    assert!(env.message.contains("not UTF-8"), "{}", env.message);
    assert_eq!(env.origin.offset, 1);
    assert_eq!(value, b"not an event either");
    assert_eq!(
        onceflow::model::headers::get(Some(headers), "test.what"),
        Some("bad header"),
        "the readable headers are kept"
    );
    common::cleanup_plan(&s).await;
}

/// With a linger, a batch goes once its input pauses, not when its time bound ends: events under a
/// 120 s `batch_max` are committed long before it (without the linger the group could not catch up
/// inside the 60 s limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_linger_commits_when_its_input_pauses_not_at_its_time_bound() {
    let mut s = settings("linger").await;
    s.processor.batch_max = Duration::from_secs(120);
    s.processor.batch_linger = Some(Duration::from_millis(20));
    let g = group(&s, "crm");
    let caught_up = || await_caught_up(&s, &g, &s.topics.inputs, Duration::from_secs(60));
    let running = Running::start(crm(&s));
    publish(&s, vec![lead("G-1", "g1@x.io"), lead("G-2", "g2@x.io")]).await;
    caught_up().await;
    // A second burst, once the first has committed: a batch of its own, as soon as it pauses.
    publish(&s, vec![lead("G-3", "g3@x.io")]).await;
    caught_up().await;
    let counts = running.stop().await;
    assert_eq!(counts.tally.ok, 3, "{counts:?}");
    assert!(counts.batches >= 2, "{counts:?}");
    assert_eq!(
        outbox_event_ids(&s, &Names::new(&s).outbox("crm"))
            .await
            .len(),
        3
    );
    common::cleanup_plan(&s).await;
}
