//! `onceflow topics create` and `onceflow topics check`: the topics of the configured inputs and
//! adapters (DESIGN.md §3) with the right partitions and cleanup policy.
//!
//! Invariant: `create` only adds missing topics and then checks everything, so its report shows
//! what an existing cluster still gets wrong; it never alters an existing topic.

use crate::config::Settings;
use crate::kafka::admin::{Admin, AdminError, TopicDiff};
use crate::kafka::names::topic_plan;

/// How long `create` waits for the topics it created to be described as planned.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// What `create` did and what still differs from the plan.
#[derive(Debug)]
pub struct CreateReport {
    /// Topics in the plan.
    pub planned: usize,
    /// Topics this run created.
    pub created: Vec<String>,
    /// Differences left after creating (existing topics with other settings).
    pub diffs: Vec<TopicDiff>,
}

/// Creates the missing topics of the plan, then checks the whole plan.
pub async fn create(settings: &Settings) -> Result<CreateReport, AdminError> {
    let plan = topic_plan(settings);
    let admin = Admin::new(&settings.kafka)?;
    let created = admin.create(&plan).await?;
    let mut diffs = admin.check(&plan).await?;
    // A broker that has not caught up with the controller yet describes a topic created a moment
    // ago with no configs (seen on the three-broker stack): differences on the topics this run
    // created are checked again for a while before they are reported.
    let deadline = tokio::time::Instant::now() + SETTLE;
    while diffs.iter().any(|d| created.iter().any(|c| c == d.topic()))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        diffs = admin.check(&plan).await?;
    }
    Ok(CreateReport {
        planned: plan.len(),
        created,
        diffs,
    })
}

/// Every difference between the cluster and the plan; empty when they agree.
pub async fn check(settings: &Settings) -> Result<Vec<TopicDiff>, AdminError> {
    let plan = topic_plan(settings);
    Admin::new(&settings.kafka)?.check(&plan).await
}
