//! The schema registry keeps its schemas across a restart of the whole stack (its PostgreSQL
//! storage, deploy/local/stack): records written before `stack down` and `stack up` still
//! resolve their schema ids afterwards and decode, with a codec that has never seen them, to
//! the events that were published.
//!
//! The test restarts the shared stack; it is the only test in this binary, and cargo runs test
//! binaries one after another.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use onceflow::codec::{AvroCodec, Codec};
use onceflow::kafka::client::Isolation;
use onceflow::model::Event;

fn stack(verb: &str) {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/stack"))
        .arg(verb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stack {verb}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_written_before_a_stack_restart_decodes_after_it() {
    let s = common::settings();
    let topic = common::topic(&s, "events", 3).await;
    // Several event types: several subjects' schemas, each with its own id.
    let mut events: Vec<Event> = (0..20)
        .map(|i| common::lead(&format!("dur-{i}"), &format!("p{i}@example.com")))
        .collect();
    events.extend((0..20).map(|i| common::invoice_event(i, "EUR")));
    let published: BTreeSet<String> = common::publish(&s, events).await.into_iter().collect();
    assert_eq!(published.len(), 40);

    let read = |s: onceflow::config::Settings, topic: String| async move {
        tokio::task::spawn_blocking(move || {
            common::read_all_bytes(&s, &topic, Isolation::ReadCommitted)
        })
        .await
        .unwrap()
    };
    let before = read(s.clone(), topic.clone()).await;
    assert_eq!(before.len(), 40);
    let ids: BTreeSet<u32> = before
        .iter()
        .map(|r| u32::from_be_bytes(r.value[1..5].try_into().unwrap()))
        .collect();
    assert!(ids.len() >= 2, "{ids:?}");

    stack("down");
    stack("up");

    let http = reqwest::Client::new();
    for id in &ids {
        let r = http
            .get(format!("{}/schemas/ids/{id}", s.registry.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "schema {id} is gone after the restart");
    }
    let after = read(s.clone(), topic.clone()).await;
    assert_eq!(after.len(), before.len(), "Kafka kept the records");
    let codec = AvroCodec::new(&s.registry).unwrap();
    let mut decoded = BTreeSet::new();
    for r in &after {
        let d = codec.decode(&r.value).await.unwrap();
        let event = Event::from_avro(&d.value).unwrap();
        assert_eq!(
            d.record_name
                .as_deref()
                .map(|n| n.ends_with(&event.meta.event_type)),
            Some(true),
            "{:?} decoded as {}",
            d.record_name,
            event.meta.event_type
        );
        decoded.insert(event.meta.event_id);
    }
    assert_eq!(decoded, published);
    common::cleanup(&s, &[&topic]).await;
}
