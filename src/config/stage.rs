//! The `[processor]` and `[dispatcher]` sections: the two transactional stages, and what their
//! shared loop needs of either ([`StageSettings`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, check_name, invalid, millis, socket, within};
use crate::dedupe::Backend;

/// Delivery guarantee of the processor loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Outputs, dedupe changes and offsets in one Kafka transaction per batch.
    ExactlyOnce,
    /// The same loop without a transaction: outputs flushed, then offsets committed. A crash in
    /// between redoes the batch. For comparison (benchmarks), not for production.
    AtLeastOnce,
}

/// The processor (`onceflow process --adapter NAME`).
#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    /// Exactly-once (default) or at-least-once.
    pub guarantee: Guarantee,
    /// Most records in one transaction.
    pub batch_max_records: usize,
    /// Longest time a batch collects records before it is committed.
    pub batch_max: Duration,
    /// A batch also closes once no record has come for this long ([`StageSettings::batch_linger`]).
    pub batch_linger: Option<Duration>,
    /// This instance's stable name: its `transactional.id` is derived from it, so a restarted
    /// instance fences its own zombie. Two live instances must have different names.
    pub instance_id: String,
    /// How long the dedupe store remembers an event id.
    pub dedupe_ttl: Duration,
    /// Bound on a graceful shutdown (finish the batch, commit, leave the group).
    pub shutdown_timeout: Duration,
    /// Static group membership (`group.instance.id` from the instance id): a restarted instance
    /// takes its partitions back without a rebalance, but a stopped one does not leave the group
    /// (its partitions wait for the session timeout). Off by default.
    pub static_membership: bool,
    /// Address of the Prometheus `/metrics` listener of `onceflow process`, when wanted.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the dedupe store's local checkpoints are kept (`state_dir`; none by default: every
    /// restore reads the whole changelog), or its files with `store = "disk"`.
    pub state_dir: Option<PathBuf>,
    /// Where the dedupe store's partitions live (`store`: `memory`, the default, or `disk`, which
    /// needs a `state_dir`).
    pub store: Backend,
    /// Steps of nice the stage's helper threads run below its loop ([`crate::priority`]).
    pub helper_nice: i32,
    /// Threads a large batch is judged on, cut into runs of its records (`threads`; by default
    /// the machine's cores, at most 4; 1 judges every batch on the loop's thread).
    pub threads: usize,
}

impl ProcessorSettings {
    /// What the shared transactional loop needs.
    pub fn stage(&self) -> StageSettings {
        StageSettings {
            guarantee: self.guarantee,
            batch_max_records: self.batch_max_records,
            batch_max: self.batch_max,
            batch_linger: self.batch_linger,
            instance_id: self.instance_id.clone(),
            static_membership: self.static_membership,
            helper_nice: self.helper_nice,
        }
    }
}

/// The dispatcher (`onceflow deliver --adapter NAME`).
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    /// Most commands in one transaction.
    pub batch_max_records: usize,
    /// Longest time a batch collects commands before they are called.
    pub batch_max: Duration,
    /// A batch also closes once no command has come for this long.
    pub batch_linger: Option<Duration>,
    /// This instance's stable name (its `transactional.id` derives from it).
    pub instance_id: String,
    /// How long the ledger remembers a command id.
    pub ledger_ttl: Duration,
    /// Bound on a graceful shutdown (finish the calls in flight, commit, leave the group).
    pub shutdown_timeout: Duration,
    /// Static group membership, as for the processor.
    pub static_membership: bool,
    /// Address of the Prometheus `/metrics` listener of `onceflow deliver`, when wanted.
    pub metrics_listen: Option<SocketAddr>,
    /// Calls in flight at once per instance (calls for one entity key always run one at a time).
    pub concurrency: usize,
    /// Bound on establishing a connection to a provider.
    pub connect_timeout: Duration,
    /// Bound on one whole call (connect, send, answer).
    pub request_timeout: Duration,
    /// Longest a batch waits in line for a rate limit or a Retry-After before it defers the rest of
    /// its commands and pauses (keeps every batch well inside the consumer's poll interval).
    pub max_wait: Duration,
    /// Where the ledger's local checkpoints are kept (`state_dir`; none by default), or its files
    /// with `store = "disk"`.
    pub state_dir: Option<PathBuf>,
    /// Where the ledger's partitions live (`store`: `memory` or `disk`, as for the processor).
    pub store: Backend,
    /// Steps of nice the stage's helper threads run below its loop, as for the processor.
    pub helper_nice: i32,
}

impl DispatcherSettings {
    /// What the shared transactional loop needs.
    pub fn stage(&self) -> StageSettings {
        StageSettings {
            guarantee: Guarantee::ExactlyOnce,
            batch_max_records: self.batch_max_records,
            batch_max: self.batch_max,
            batch_linger: self.batch_linger,
            instance_id: self.instance_id.clone(),
            static_membership: self.static_membership,
            helper_nice: self.helper_nice,
        }
    }
}

/// What the transactional-stage loop shared by the processor and the dispatcher needs.
#[derive(Debug, Clone)]
pub struct StageSettings {
    /// Exactly-once, or at-least-once (processor benchmarks only).
    pub guarantee: Guarantee,
    /// Most records in one transaction.
    pub batch_max_records: usize,
    /// Longest time a batch collects records.
    pub batch_max: Duration,
    /// When set (`batch_linger_ms`, 0 by default), a batch also closes once the batch before it
    /// committed and no record has come for this long: under light traffic a batch holds what
    /// arrived while the previous one committed and goes at once, under heavy traffic records
    /// keep coming and batches grow to `batch_max_records` or `batch_max`. One transaction is in
    /// flight at a time, so the commit's own latency paces the transactions. None (or a linger
    /// as long as `batch_max`): every batch waits out `batch_max` after its first record.
    pub batch_linger: Option<Duration>,
    /// The instance's stable name.
    pub instance_id: String,
    /// Static group membership.
    pub static_membership: bool,
    /// Steps of nice (0 to 19; 10 by default, 0 turns it off) that the threads working for the
    /// loop run below it: librdkafka's and the committer ([`crate::priority`]).
    pub helper_nice: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProcessor {
    guarantee: String,
    batch_max_records: usize,
    batch_max_ms: u64,
    batch_linger_ms: Option<u64>,
    instance_id: Option<String>,
    dedupe_ttl_ms: u64,
    shutdown_timeout_ms: u64,
    static_membership: bool,
    metrics_listen: Option<String>,
    state_dir: Option<String>,
    store: String,
    helper_nice: i32,
    threads: Option<usize>,
}

impl Default for RawProcessor {
    fn default() -> Self {
        RawProcessor {
            guarantee: "exactly_once".into(),
            batch_max_records: 500,
            batch_max_ms: 100,
            batch_linger_ms: Some(0),
            instance_id: None,
            dedupe_ttl_ms: 7 * 24 * 3600 * 1000,
            shutdown_timeout_ms: 10_000,
            static_membership: false,
            metrics_listen: None,
            state_dir: None,
            store: "memory".into(),
            helper_nice: 10,
            threads: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDispatcher {
    batch_max_records: usize,
    batch_max_ms: u64,
    batch_linger_ms: Option<u64>,
    instance_id: Option<String>,
    ledger_ttl_ms: u64,
    shutdown_timeout_ms: u64,
    static_membership: bool,
    metrics_listen: Option<String>,
    concurrency: usize,
    connect_timeout_ms: u64,
    request_timeout_ms: u64,
    max_wait_ms: u64,
    state_dir: Option<String>,
    store: String,
    helper_nice: i32,
}

impl Default for RawDispatcher {
    fn default() -> Self {
        RawDispatcher {
            batch_max_records: 200,
            batch_max_ms: 50,
            batch_linger_ms: Some(0),
            instance_id: None,
            ledger_ttl_ms: 7 * 24 * 3600 * 1000,
            shutdown_timeout_ms: 30_000,
            static_membership: false,
            metrics_listen: None,
            concurrency: 32,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 10_000,
            max_wait_ms: 10_000,
            state_dir: None,
            store: "memory".into(),
            helper_nice: 10,
        }
    }
}

/// The instance id: the setting, else `HOSTNAME` (a pod's name), else `0`.
fn instance_id(key: &str, configured: Option<String>) -> Result<String, ConfigError> {
    let id = match configured {
        Some(id) => id,
        None => std::env::var("HOSTNAME").unwrap_or_else(|_| "0".into()),
    };
    check_name(key, &id)?;
    Ok(id)
}

fn batch_records(key: &str, n: usize) -> Result<usize, ConfigError> {
    within(key, n, 1..=100_000)
}

/// A linger, when set: 0 to 60 s (0: a batch holds only what is already there).
fn linger(key: &str, ms: Option<u64>) -> Result<Option<Duration>, ConfigError> {
    ms.map(|ms| millis(key, ms, 0, 60_000)).transpose()
}

fn listen(key: &str, value: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    value.map(|m| socket(key, m)).transpose()
}

/// A state directory: any non-empty path (created when first written).
fn state_dir(key: &str, value: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(invalid(key, "must be a path, or left out")),
        v => Ok(v.map(PathBuf::from)),
    }
}

/// Where a store's partitions live: `disk` needs a state directory to put them in.
fn store(key: &str, value: &str, state_dir: Option<&PathBuf>) -> Result<Backend, ConfigError> {
    match (value, state_dir) {
        ("memory", _) => Ok(Backend::Memory),
        ("disk", Some(_)) => Ok(Backend::Disk),
        ("disk", None) => Err(invalid(
            key,
            "`disk` needs a state_dir to keep the files in",
        )),
        (other, _) => Err(invalid(
            key,
            format!("`{other}` is neither memory nor disk"),
        )),
    }
}

pub(super) fn validate_processor(raw: RawProcessor) -> Result<ProcessorSettings, ConfigError> {
    let state_dir = state_dir("processor.state_dir", raw.state_dir)?;
    let store = store("processor.store", &raw.store, state_dir.as_ref())?;
    let guarantee = match raw.guarantee.as_str() {
        "exactly_once" => Guarantee::ExactlyOnce,
        "at_least_once" => Guarantee::AtLeastOnce,
        other => {
            return Err(invalid(
                "processor.guarantee",
                format!("`{other}` is neither exactly_once nor at_least_once"),
            ));
        }
    };
    Ok(ProcessorSettings {
        guarantee,
        batch_max_records: batch_records("processor.batch_max_records", raw.batch_max_records)?,
        batch_max: millis("processor.batch_max_ms", raw.batch_max_ms, 1, 60_000)?,
        batch_linger: linger("processor.batch_linger_ms", raw.batch_linger_ms)?,
        instance_id: instance_id("processor.instance_id", raw.instance_id)?,
        dedupe_ttl: millis(
            "processor.dedupe_ttl_ms",
            raw.dedupe_ttl_ms,
            1_000,
            365 * 86_400_000,
        )?,
        shutdown_timeout: millis(
            "processor.shutdown_timeout_ms",
            raw.shutdown_timeout_ms,
            100,
            600_000,
        )?,
        static_membership: raw.static_membership,
        metrics_listen: listen("processor.metrics_listen", raw.metrics_listen.as_deref())?,
        helper_nice: within("processor.helper_nice", raw.helper_nice, 0..=19)?,
        threads: match raw.threads {
            Some(n) => within("processor.threads", n, 1..=64)?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        },
        state_dir,
        store,
    })
}

pub(super) fn validate_dispatcher(raw: RawDispatcher) -> Result<DispatcherSettings, ConfigError> {
    within("dispatcher.concurrency", raw.concurrency, 1..=1_000)?;
    let state_dir = state_dir("dispatcher.state_dir", raw.state_dir)?;
    let store = store("dispatcher.store", &raw.store, state_dir.as_ref())?;
    let connect_timeout = millis(
        "dispatcher.connect_timeout_ms",
        raw.connect_timeout_ms,
        10,
        60_000,
    )?;
    let request_timeout = millis(
        "dispatcher.request_timeout_ms",
        raw.request_timeout_ms,
        10,
        300_000,
    )?;
    if request_timeout < connect_timeout {
        return Err(invalid(
            "dispatcher.request_timeout_ms",
            "must not be shorter than dispatcher.connect_timeout_ms",
        ));
    }
    Ok(DispatcherSettings {
        batch_max_records: batch_records("dispatcher.batch_max_records", raw.batch_max_records)?,
        batch_max: millis("dispatcher.batch_max_ms", raw.batch_max_ms, 1, 60_000)?,
        batch_linger: linger("dispatcher.batch_linger_ms", raw.batch_linger_ms)?,
        instance_id: instance_id("dispatcher.instance_id", raw.instance_id)?,
        ledger_ttl: millis(
            "dispatcher.ledger_ttl_ms",
            raw.ledger_ttl_ms,
            1_000,
            365 * 86_400_000,
        )?,
        shutdown_timeout: millis(
            "dispatcher.shutdown_timeout_ms",
            raw.shutdown_timeout_ms,
            100,
            600_000,
        )?,
        static_membership: raw.static_membership,
        metrics_listen: listen("dispatcher.metrics_listen", raw.metrics_listen.as_deref())?,
        helper_nice: within("dispatcher.helper_nice", raw.helper_nice, 0..=19)?,
        concurrency: raw.concurrency,
        connect_timeout,
        request_timeout,
        max_wait: millis("dispatcher.max_wait_ms", raw.max_wait_ms, 0, 120_000)?,
        state_dir,
        store,
    })
}
