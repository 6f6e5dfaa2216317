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
//! process stops when it is fenced a second time within [`FENCED_TWICE`] of a first fence, its
//! consumer (by another member of its `group.instance.id`) or its producer: two processes fence
//! each other in turn, and the first fenced twice (the older) stops. One consumer fence alone is
//! followed by a rejoin: librdkafka raises one itself after a session timeout.
//!
//! Invariant: with dynamic membership a process never stops for a member that is itself or older;
//! of two processes of one instance, the older one stops once it has been fenced and has seen the
//! newer one join. Either way one of them stops and nothing is written twice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};

/// Static membership: a process fenced a second time within this long after a first fence stops.
pub const FENCED_TWICE: Duration = Duration::from_secs(60);
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
