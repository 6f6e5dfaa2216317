//! The consumer context of a stage: rebalance bookkeeping shared with librdkafka's callbacks, and
//! lag and retry-depth gauges from its statistics.
//!
//! Invariants:
//! - The callbacks record what moved (the partitions and an epoch counter); the session reacts
//!   at its next batch, outside the callback, where it may block.
//! - A revoke first waits until no transaction is in the committer's hands
//!   ([`Gate`](super::committer::Gate)): partitions leave only with their last batch committed or
//!   aborted, never with its records, changelog entries or offsets in an open transaction.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use tracing::{info, warn};

use super::committer::Gate;
use crate::kafka::names::Stage;
use crate::telemetry::metrics::{self, StageMetrics};

/// Shared with librdkafka's callbacks.
pub(super) struct StageContext {
    pub(super) adapter: String,
    /// The instance id, for the logs.
    pub(super) instance: String,
    pub(super) stage: Stage,
    pub(super) metrics: &'static StageMetrics,
    /// Bumped on every assignment or revocation.
    pub(super) epoch: AtomicU64,
    /// Partitions assigned or revoked since the session last looked.
    pub(super) touched: Mutex<HashSet<(String, i32)>>,
    /// The committer's gate (transactional sessions), which a revoke waits on.
    pub(super) gate: Option<Arc<Gate>>,
}

impl StageContext {
    /// The partitions touched since the last call, and forgets them.
    pub(super) fn take_touched(&self) -> HashSet<(String, i32)> {
        let mut t = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *t)
    }

    /// The rebalance epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

impl ClientContext for StageContext {
    fn stats(&self, statistics: Statistics) {
        let retry_marker = format!(".{}.retry.", self.stage.as_str());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    ::metrics::gauge!(self.metrics.lag, "adapter" => self.adapter.clone(),
                        "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                }
            }
            if let Some(tier) = topic
                .rsplit_once(retry_marker.as_str())
                .map(|(_, n)| n.to_string())
            {
                let depth: i64 = t.partitions.values().map(|p| p.consumer_lag.max(0)).sum();
                ::metrics::gauge!(metrics::RETRY_DEPTH, "adapter" => self.adapter.clone(),
                    "stage" => self.stage.as_str(), "tier" => tier)
                .set(depth as f64);
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (tpl, revoked) = match rebalance {
            Rebalance::Assign(tpl) => (*tpl, false),
            Rebalance::Revoke(tpl) => (*tpl, true),
            Rebalance::Error(e) => {
                warn!(error = %e, "rebalance error");
                return;
            }
        };
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        info!(adapter = %self.adapter, stage = self.stage.as_str(), instance = %self.instance,
            revoked, ?partitions, "rebalance");
        if revoked && let Some(gate) = &self.gate {
            gate.wait_idle();
        }
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        for e in tpl.elements() {
            touched.insert((e.topic().to_string(), e.partition()));
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        ::metrics::counter!(self.metrics.rebalances, "adapter" => self.adapter.clone())
            .increment(1);
    }
}
