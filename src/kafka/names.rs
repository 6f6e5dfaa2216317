//! Every topic, consumer-group and transactional-id name onceflow uses (DESIGN.md §3), and the plan
//! of topics to create for a configuration.
//!
//! Invariants:
//! - No other module formats a topic, group or transactional id: they ask [`Names`].
//! - Parts come from validated [`Settings`](crate::config::Settings), so every name is legal.
//! - A changelog topic has the partition count of the topic it shadows: the dedupe store shadows the
//!   inputs (and the process-stage retry topics, whose records keep the input partitioning key), the
//!   ledger shadows the outbox. The plan gives every topic the configured partition count, so
//!   co-partitioning holds by construction; `topics check` verifies it on a live cluster.

use std::fmt;
use std::time::Duration;

use crate::config::Settings;

/// The two stages that consume and may fail: turning events into commands, delivering commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Processor: input events → outbox commands.
    Process,
    /// Dispatcher: outbox commands → external API.
    Deliver,
}

impl Stage {
    /// Both stages.
    pub const ALL: [Stage; 2] = [Stage::Process, Stage::Deliver];

    /// The stage's name inside topic and group names.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Process => "process",
            Stage::Deliver => "deliver",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds names under one namespace.
#[derive(Debug, Clone)]
pub struct Names {
    ns: String,
}

impl Names {
    /// Names under the configured namespace.
    pub fn new(settings: &Settings) -> Names {
        Names {
            ns: settings.namespace.clone(),
        }
    }

    /// Names under an explicit namespace (tests use a fresh one each to stay apart).
    pub fn with_namespace(ns: impl Into<String>) -> Names {
        Names { ns: ns.into() }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `<ns>.<adapter>.outbox`: commands for the adapter's external system.
    pub fn outbox(&self, adapter: &str) -> String {
        format!("{}.{adapter}.outbox", self.ns)
    }

    /// `<ns>.<adapter>.results`: receipts of delivered commands.
    pub fn results(&self, adapter: &str) -> String {
        format!("{}.{adapter}.results", self.ns)
    }

    /// `<ns>.<adapter>.<stage>.retry.<n>`: records waiting for attempt n+1 (`n` starts at 1).
    pub fn retry(&self, adapter: &str, stage: Stage, n: usize) -> String {
        format!("{}.{adapter}.{stage}.retry.{n}", self.ns)
    }

    /// `<ns>.<adapter>.<stage>.dlq`: records that exhausted retries or failed permanently.
    pub fn dlq(&self, adapter: &str, stage: Stage) -> String {
        format!("{}.{adapter}.{stage}.dlq", self.ns)
    }

    /// `<ns>.<adapter>.dedupe`: changelog of the processor's dedupe store.
    pub fn dedupe(&self, adapter: &str) -> String {
        format!("{}.{adapter}.dedupe", self.ns)
    }

    /// `<ns>.<adapter>.ledger`: changelog of the dispatcher's completed command ids.
    pub fn ledger(&self, adapter: &str) -> String {
        format!("{}.{adapter}.ledger", self.ns)
    }

    /// `<ns>.audit`: operator actions.
    pub fn audit(&self) -> String {
        format!("{}.audit", self.ns)
    }

    /// Consumer group of a stage: `<ns>.<adapter>.process` or `<ns>.<adapter>.deliver`.
    pub fn group(&self, adapter: &str, stage: Stage) -> String {
        format!("{}.{adapter}.{stage}", self.ns)
    }

    /// Consumer group of a DLQ replay: `<ns>.<adapter>.<stage>.replay`.
    pub fn replay_group(&self, adapter: &str, stage: Stage) -> String {
        format!("{}.{adapter}.{stage}.replay", self.ns)
    }

    /// Stable `transactional.id` of a stage's DLQ replay: a second replay of the same DLQ fences
    /// the first.
    pub fn replay_transactional_id(&self, adapter: &str, stage: Stage) -> String {
        format!("{}.{adapter}.{stage}.replay.tx", self.ns)
    }

    /// Static group membership id (`group.instance.id`) of one instance of a stage: a restarted
    /// instance takes its partitions back without a rebalance, and fences its dead predecessor.
    pub fn static_member(&self, adapter: &str, stage: Stage, instance: &str) -> String {
        format!("{}.{adapter}.{stage}.member.{instance}", self.ns)
    }

    /// Id of the assign-only reader that restores a changelog (it never joins nor commits).
    pub fn changelog_reader(&self, adapter: &str, stage: Stage) -> String {
        format!("{}.{adapter}.{stage}.restore", self.ns)
    }

    /// Stable `transactional.id` of one instance of a stage. With KIP-447 fencing through the
    /// consumer-group metadata it need not encode partitions; it must only be stable per instance so
    /// that a restarted instance fences its own zombie.
    pub fn transactional_id(&self, adapter: &str, stage: Stage, instance: &str) -> String {
        format!("{}.{adapter}.{stage}.tx.{instance}", self.ns)
    }

    /// Input and output of the demo's transactional round trip (`onceflow demo`).
    pub fn demo_topics(&self) -> (String, String) {
        (
            format!("{}.demo.in", self.ns),
            format!("{}.demo.out", self.ns),
        )
    }

    /// Groups of the demo: the transforming group, and the id its assign-only reader uses (which
    /// never joins nor commits).
    pub fn demo_groups(&self) -> (String, String) {
        (
            format!("{}.demo.roundtrip", self.ns),
            format!("{}.demo.reader", self.ns),
        )
    }
}

/// How the broker cleans a topic up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Delete segments older than the retention (`None`: the broker's default).
    Delete(Option<Duration>),
    /// Keep the latest record per key (changelogs).
    Compact,
}

/// One topic the configuration needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Cleanup policy and retention.
    pub cleanup: Cleanup,
}

/// Every topic the configured inputs and adapters need, in a stable order: inputs, audit, then per
/// adapter outbox, results, dedupe, ledger, and per stage its retry tiers and DLQ.
pub fn topic_plan(settings: &Settings) -> Vec<TopicSpec> {
    let names = Names::new(settings);
    let t = &settings.topics;
    let spec = |name: String, cleanup| TopicSpec {
        name,
        partitions: t.partitions,
        replication_factor: t.replication_factor,
        cleanup,
    };
    let delete = Cleanup::Delete(None);
    let long = Cleanup::Delete(Some(t.dlq_retention));

    let mut plan: Vec<TopicSpec> = t.inputs.iter().map(|i| spec(i.clone(), delete)).collect();
    plan.push(spec(names.audit(), long));
    for adapter in settings.adapter_names() {
        plan.push(spec(names.outbox(adapter), delete));
        plan.push(spec(names.results(adapter), delete));
        plan.push(spec(names.dedupe(adapter), Cleanup::Compact));
        plan.push(spec(names.ledger(adapter), Cleanup::Compact));
        for stage in Stage::ALL {
            for n in 1..=settings.retry.tiers.len() {
                plan.push(spec(names.retry(adapter, stage, n), delete));
            }
            plan.push(spec(names.dlq(adapter, stage), long));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_design_section_3() {
        let n = Names::with_namespace("onceflow");
        assert_eq!(n.outbox("crm"), "onceflow.crm.outbox");
        assert_eq!(n.results("crm"), "onceflow.crm.results");
        assert_eq!(
            n.retry("crm", Stage::Process, 2),
            "onceflow.crm.process.retry.2"
        );
        assert_eq!(n.dlq("email", Stage::Deliver), "onceflow.email.deliver.dlq");
        assert_eq!(n.dedupe("crm"), "onceflow.crm.dedupe");
        assert_eq!(n.ledger("crm"), "onceflow.crm.ledger");
        assert_eq!(n.audit(), "onceflow.audit");
        assert_eq!(n.group("crm", Stage::Process), "onceflow.crm.process");
        assert_eq!(n.group("crm", Stage::Deliver), "onceflow.crm.deliver");
        assert_eq!(
            n.replay_group("crm", Stage::Deliver),
            "onceflow.crm.deliver.replay"
        );
    }

    #[test]
    fn plan_covers_every_topic_with_the_right_cleanup() {
        let s = Settings::from_toml_str("[adapters.crm]\n[adapters.email]\n").unwrap();
        let plan = topic_plan(&s);
        // inputs + audit + 2 adapters × (outbox, results, dedupe, ledger, 2 stages × (3 retry + dlq))
        assert_eq!(plan.len(), 1 + 1 + 2 * (4 + 2 * 4));
        let by_name = |n: &str| plan.iter().find(|t| t.name == n).unwrap().cleanup;
        assert_eq!(by_name("onceflow.crm.dedupe"), Cleanup::Compact);
        assert_eq!(by_name("onceflow.email.ledger"), Cleanup::Compact);
        assert_eq!(by_name("onceflow.crm.outbox"), Cleanup::Delete(None));
        assert_eq!(
            by_name("onceflow.crm.process.dlq"),
            Cleanup::Delete(Some(s.topics.dlq_retention))
        );
        assert!(plan.iter().all(|t| t.partitions == s.topics.partitions));
        let mut names: Vec<_> = plan.iter().map(|t| &t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), plan.len(), "no topic twice");
    }
}
