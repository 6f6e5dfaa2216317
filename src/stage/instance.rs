//! Which process holds a stage instance. `--instance` names the transactional id, so two processes
//! started with the same one fence each other's producer in turn: without a rule, each fenced one
//! rejoins and fences the other, forever. The rule: **the newer process wins**.
//!
//! Every process carries an incarnation (its start time in microseconds) in its consumer's client
//! id, `<client_id>.<adapter>.<stage>.<instance>.<incarnation>`. A session fenced by a producer of
//! its own transactional id looks, for a bounded time, at the group's members: a member of the same
//! instance with a later incarnation means a newer process took over, and this one stops
//! ([`super::StageError::Superseded`]) instead of rejoining. A fence with no newer member in sight
//! (the broker timed the transaction out, or a lone producer borrowed the id) is followed by a
//! rejoin, as before.
//!
//! With static membership the member list cannot tell: a member's entry keeps the client id of the
//! process that first joined with its `group.instance.id` when another takes it over. There, a
//! process stops when it is fenced a second time within [`FENCED_TWICE`] of a first fence and one
//! of the two fenced its producer ([`Fences`]): two processes of one instance share the
//! transactional id, so each one's start or rejoin fences the other's producer as well as its
//! consumer, and the first fenced twice (the older) stops. Consumer fences alone never stop a
//! process: librdkafka raises one itself when, after a session timeout, its own rejoin replaces the
//! member a request in flight was sent for. A lone dispatcher met two of those 29 s apart in the
//! chaos run (a paused broker, then a killed coordinator) and stopped while nothing else ran its
//! instance. (Two processes that both stay idle fence only each other's consumers and keep
//! rejoining in turn, writing nothing, until a record comes and the producer fence decides.)
//!
//! Invariant: with dynamic membership a process never stops for a member that is itself or older;
//! of two processes of one instance, the older one stops once it has been fenced and has seen the
//! newer one join. Either way one of them stops and nothing is written twice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};

/// Static membership: a process fenced a second time within this long after a first fence, one of
/// the two its producer's, stops.
pub const FENCED_TWICE: Duration = Duration::from_secs(60);

/// What fenced a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Its producer: another producer initialised the same transactional id.
    Producer,
    /// Its consumer: another member joined with its `group.instance.id` (maybe librdkafka's own
    /// rejoin).
    Consumer,
}

/// Static membership's rule for when a fenced process stops (see the module docs): a fence
/// within [`FENCED_TWICE`] of the one before, one of the two a producer fence.
#[derive(Debug, Default)]
pub struct Fences {
    last: Option<(std::time::Instant, Fence)>,
}

impl Fences {
    /// Records a fence at `now`; true when the process should stop.
    pub fn fenced(&mut self, fence: Fence, now: std::time::Instant) -> bool {
        let stop = self.last.is_some_and(|(at, before)| {
            now.saturating_duration_since(at) < FENCED_TWICE
                && (fence == Fence::Producer || before == Fence::Producer)
        });
        self.last = Some((now, fence));
        stop
    }
}

/// How long a fenced session looks for a newer process of its instance before it rejoins.
pub const LOOK_FOR: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(5);

/// A new incarnation: now, in microseconds since the epoch (one per runner, taken when it is made).
pub fn incarnation() -> u64 {
    now_micros()
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The client-id role of instance `instance` of `<adapter>.<stage>` in incarnation `incarnation`.
pub fn role(adapter: &str, stage: &str, instance: &str, incarnation: u64) -> String {
    format!("{adapter}.{stage}.{instance}.{incarnation}")
}

/// What the client id of every member of that instance starts with, given the configured
/// `kafka.client_id`.
pub fn member_prefix(client_id: &str, adapter: &str, stage: &str, instance: &str) -> String {
    format!("{client_id}.{adapter}.{stage}.{instance}.")
}

/// The incarnation in `client_id` when it is a member of the same instance as `prefix`
/// (`<client_id>.<adapter>.<stage>.<instance>.`).
pub fn incarnation_of(prefix: &str, client_id: &str) -> Option<u64> {
    client_id.strip_prefix(prefix)?.parse().ok()
}

/// The client id of a member of `group` that belongs to the same instance with an incarnation
/// later than `ours`, waiting up to [`LOOK_FOR`] for one to show up (blocking).
pub fn newer_member(
    kafka: &KafkaSettings,
    group: &str,
    prefix: &str,
    ours: u64,
) -> Result<Option<String>, KafkaError> {
    let c: BaseConsumer = client::consumer(
        kafka,
        "instance-check",
        &format!("{group}.instance-check"),
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let deadline = std::time::Instant::now() + LOOK_FOR;
    loop {
        let list = c.fetch_group_list(Some(group), TIMEOUT)?;
        tracing::debug!(group, members = ?list.groups().iter().flat_map(|g| g.members())
            .map(|m| m.client_id()).collect::<Vec<_>>(), "looking for a newer process of this instance");
        let newer =
            list.groups().iter().flat_map(|g| g.members()).find(|m| {
                incarnation_of(prefix, m.client_id()).is_some_and(|theirs| theirs > ours)
            });
        if let Some(m) = newer {
            return Ok(Some(m.client_id().to_string()));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_fence_within_the_window_stops_only_when_a_producer_was_fenced() {
        use std::time::Instant;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // librdkafka's own rejoins after session time-outs: consumer fences only, never a stop.
        let mut f = Fences::default();
        assert!(!f.fenced(Fence::Consumer, at(0)));
        assert!(!f.fenced(Fence::Consumer, at(29)));
        assert!(!f.fenced(Fence::Consumer, at(30)));
        // Another process of the instance: its start fences the producer too.
        assert!(f.fenced(Fence::Producer, at(40)), "consumer, then producer");
        let mut f = Fences::default();
        assert!(!f.fenced(Fence::Producer, at(0)));
        assert!(f.fenced(Fence::Consumer, at(10)), "producer, then consumer");
        let mut f = Fences::default();
        assert!(!f.fenced(Fence::Producer, at(0)));
        assert!(f.fenced(Fence::Producer, at(59)), "producer twice");
        // Only the fence before counts, and only within the window.
        let mut f = Fences::default();
        assert!(!f.fenced(Fence::Producer, at(0)));
        assert!(!f.fenced(Fence::Producer, at(60)), "a minute apart");
        let mut f = Fences::default();
        assert!(!f.fenced(Fence::Producer, at(0)));
        assert!(!f.fenced(Fence::Consumer, at(70)));
        assert!(
            !f.fenced(Fence::Consumer, at(80)),
            "the producer fence is two back"
        );
    }

    #[test]
    fn only_members_of_the_same_instance_have_an_incarnation() {
        let prefix = &member_prefix("onceflow", "crm", "process", "i-1");
        let id = format!("onceflow.{}", role("crm", "process", "i-1", 17));
        assert_eq!(incarnation_of(prefix, &id), Some(17));
        assert_eq!(
            incarnation_of(prefix, "onceflow.crm.process.i-1.x.17"),
            None,
            "instance i-1.x is another instance"
        );
        assert_eq!(incarnation_of(prefix, "onceflow.crm.process.i-10.17"), None);
        assert_eq!(incarnation_of(prefix, "onceflow.crm.deliver.i-1.17"), None);
    }
}
