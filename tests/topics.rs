//! `topics create` and `topics check` against the real broker.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use onceflow::kafka::admin::{Admin, TopicDiff};
use onceflow::kafka::names::{Cleanup, Names, TopicSpec, topic_plan};
use onceflow::ops::topics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_makes_every_planned_topic_and_check_then_agrees() {
    let s = common::settings();
    let plan = topic_plan(&s);
    assert!(
        !topics::check(&s).await.unwrap().is_empty(),
        "nothing exists yet"
    );

    let report = topics::create(&s).await.unwrap();
    assert_eq!(report.created.len(), plan.len());
    assert!(report.diffs.is_empty(), "{:?}", report.diffs);
    assert!(topics::check(&s).await.unwrap().is_empty());

    // Idempotent: a second create creates nothing and still agrees.
    let again = topics::create(&s).await.unwrap();
    assert!(
        again.created.is_empty() && again.diffs.is_empty(),
        "{again:?}"
    );

    let names: Vec<&str> = plan.iter().map(|t| t.name.as_str()).collect();
    common::cleanup(&s, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_what_differs() {
    let s = common::settings();
    let n = Names::new(&s);
    let admin = Admin::new(&s.kafka).unwrap();
    // A changelog that someone created by hand as a delete topic with the wrong partition count.
    let wrong = TopicSpec {
        name: n.dedupe("crm"),
        partitions: 1,
        replication_factor: 1,
        cleanup: Cleanup::Delete(None),
    };
    admin.create(&[wrong]).await.unwrap();

    let report = topics::create(&s).await.unwrap();
    let dedupe = n.dedupe("crm");
    let about: Vec<&TopicDiff> = report
        .diffs
        .iter()
        .filter(|d| matches!(d, TopicDiff::Differs { topic, .. } if *topic == dedupe))
        .collect();
    let whats: Vec<&str> = about
        .iter()
        .map(|d| match d {
            TopicDiff::Differs { what, .. } => *what,
            TopicDiff::Missing { .. } => "missing",
        })
        .collect();
    assert_eq!(
        whats,
        vec!["partitions", "cleanup.policy"],
        "{:?}",
        report.diffs
    );
    assert_eq!(
        report.diffs.len(),
        2,
        "only the hand-made topic differs: {:?}",
        report.diffs
    );
    assert_eq!(
        about[1].to_string(),
        format!("{dedupe}: cleanup.policy is delete, want compact")
    );

    let names: Vec<String> = topic_plan(&s).into_iter().map(|t| t.name).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    common::cleanup(&s, &refs).await;
}
