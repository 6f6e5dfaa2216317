//! `onceflow offsets reset|show`: a consumer group's committed offsets, moved with the semantics of
//! Kafka's `kafka-consumer-groups --reset-offsets`, and its lag.
//!
//! Invariants (the same as Kafka's tool, so an operator's habits carry over):
//! - Scope: `--topic T` is every partition of T, `--topic T:0,1` those partitions, `--all-topics`
//!   every partition the group has a committed offset for. A partition that does not exist is an
//!   error naming it.
//! - `to-earliest`: the log start; `to-latest`: the log end (high watermark); `to-datetime` and
//!   `by-duration`: the first offset whose timestamp is at or after the time, or the log end when
//!   there is none; `to-offset N` and `shift-by N` (from the committed offset; a partition without
//!   one is an error) are clamped into [log start, log end]; `to-current`: the committed offset,
//!   or the log end where there is none.
//! - A plan is only computed (dry run) unless executed; executing is refused while the group has
//!   members, naming them, because a live member would overwrite the new offsets at its next
//!   commit. Only an executed plan writes anything.
//! - Lag ([`show`]) counts data, not offsets: a transactional writer's commit marker after the last
//!   record is not lag ([`crate::kafka::admin::group_lag`]).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::KafkaSettings;
use crate::kafka::client::{self, Isolation, StartAt};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a reset could not be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// A client call failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The scope names a partition that does not exist.
    #[error("partition {0} does not exist")]
    NoSuchPartition(String),
    /// `shift-by` on a partition without a committed offset.
    #[error("cannot shift the offset of {0}: the group has no committed offset there")]
    NothingToShift(String),
    /// A `--topic` argument is malformed.
    #[error("invalid topic argument `{0}`: expected TOPIC or TOPIC:P1,P2")]
    BadTopic(String),
    /// The group has members.
    #[error(
        "the group {group} has {} active member(s) ({}); stop them before resetting its offsets",
        members.len(),
        members.join(", ")
    )]
    Active {
        /// The group.
        group: String,
        /// `client id (host)` of each member.
        members: Vec<String>,
    },
}

/// Which partitions a reset covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `--topic` arguments: `T` or `T:0,1`.
    Topics(Vec<String>),
    /// `--all-topics`: the partitions with committed offsets.
    AllTopics,
}

/// Where a reset moves each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// The first offset at or after this time (epoch ms), else the log end.
    Datetime(i64),
    /// `Datetime(now - duration)`.
    Duration(Duration),
    /// This offset, clamped.
    Offset(i64),
    /// The committed offset plus this, clamped.
    ShiftBy(i64),
    /// The committed offset (the log end where there is none).
    Current,
}

/// One line of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The committed offset now, if any.
    pub current: Option<i64>,
    /// The offset after the reset.
    pub new: i64,
}

/// One line of [`show`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LagRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The committed offset, if any.
    pub current: Option<i64>,
    /// The log end.
    pub end: i64,
    /// Records not yet processed (markers not counted).
    pub lag: i64,
}

fn reader(kafka: &KafkaSettings, group: &str) -> Result<BaseConsumer, KafkaError> {
    // Carries the group id to read its offsets and commit for it; never subscribes, so it never
    // joins. read_uncommitted: log ends are high watermarks, as Kafka's tool reports them.
    client::consumer(
        kafka,
        "offsets",
        group,
        Isolation::ReadUncommitted,
        StartAt::Earliest,
    )
    .create()
}

/// `client id (host)` of every member of `group` (blocking).
pub fn members(kafka: &KafkaSettings, group: &str) -> Result<Vec<String>, KafkaError> {
    let c = reader(kafka, group)?;
    let list = c.fetch_group_list(Some(group), TIMEOUT)?;
    Ok(list
        .groups()
        .iter()
        .flat_map(|g| {
            g.members()
                .iter()
                .map(|m| format!("{} ({})", m.client_id(), m.client_host()))
        })
        .collect())
}

fn committed(
    c: &BaseConsumer,
    partitions: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), i64>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let got = c.committed_offsets(tpl, TIMEOUT)?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// Every partition the group has a committed offset for, on the topics the cluster has.
fn committed_partitions(c: &BaseConsumer) -> Result<Vec<(String, i32)>, KafkaError> {
    let metadata = c.fetch_metadata(None, TIMEOUT)?;
    let all: Vec<(String, i32)> = metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(|p| (t.name().to_string(), p.id()))
        })
        .collect();
    Ok(committed(c, &all)?.into_keys().collect())
}

/// The partitions of `scope`.
fn partitions(c: &BaseConsumer, scope: &Scope) -> Result<Vec<(String, i32)>, OffsetsError> {
    let args = match scope {
        Scope::AllTopics => return Ok(committed_partitions(c)?),
        Scope::Topics(args) => args,
    };
    let mut out = Vec::new();
    for arg in args {
        let (topic, wanted) = match arg.split_once(':') {
            None => (arg.as_str(), None),
            Some((t, ps)) => {
                let ps = ps
                    .split(',')
                    .map(|p| p.trim().parse::<i32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| OffsetsError::BadTopic(arg.clone()))?;
                (t, Some(ps))
            }
        };
        if topic.is_empty() {
            return Err(OffsetsError::BadTopic(arg.clone()));
        }
        let metadata = c.fetch_metadata(Some(topic), TIMEOUT)?;
        let existing: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        match wanted {
            None if existing.is_empty() => {
                return Err(OffsetsError::NoSuchPartition(format!("{topic}-*")));
            }
            None => out.extend(existing.into_iter().map(|p| (topic.to_string(), p))),
            Some(ps) => {
                for p in ps {
                    if !existing.contains(&p) {
                        return Err(OffsetsError::NoSuchPartition(format!("{topic}-{p}")));
                    }
                    out.push((topic.to_string(), p));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The offsets of the first records at or after `at` (epoch ms); `None` where there is none.
fn offsets_for_time(
    c: &BaseConsumer,
    partitions: &[(String, i32)],
    at: i64,
) -> Result<BTreeMap<(String, i32), Option<i64>>, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition_offset(t, *p, Offset::Offset(at))?;
    }
    let found = c.offsets_for_times(tpl, TIMEOUT)?;
    Ok(found
        .elements()
        .iter()
        .map(|e| {
            let o = match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            };
            ((e.topic().to_string(), e.partition()), o)
        })
        .collect())
}

/// The plan of resetting `group`'s offsets on `scope` to `to` (blocking; changes nothing).
pub fn plan(
    kafka: &KafkaSettings,
    group: &str,
    scope: &Scope,
    to: ResetTo,
) -> Result<Vec<PlanRow>, OffsetsError> {
    let c = reader(kafka, group)?;
    let parts = partitions(&c, scope)?;
    let current = committed(&c, &parts)?;
    let mut bounds = BTreeMap::new();
    for (t, p) in &parts {
        bounds.insert((t.clone(), *p), c.fetch_watermarks(t, *p, TIMEOUT)?);
    }
    let at = match to {
        ResetTo::Datetime(ms) => Some(ms),
        ResetTo::Duration(d) => {
            Some(crate::model::event::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        _ => None,
    };
    let by_time = match at {
        Some(ms) => offsets_for_time(&c, &parts, ms)?,
        None => BTreeMap::new(),
    };
    let mut rows = Vec::with_capacity(parts.len());
    for tp in parts {
        let (low, high) = bounds[&tp];
        let now = current.get(&tp).copied();
        let clamp = |o: i64| o.clamp(low, high);
        let new = match to {
            ResetTo::Earliest => low,
            ResetTo::Latest => high,
            ResetTo::Datetime(_) | ResetTo::Duration(_) => {
                by_time.get(&tp).copied().flatten().unwrap_or(high)
            }
            ResetTo::Offset(o) => clamp(o),
            ResetTo::ShiftBy(n) => match now {
                Some(o) => clamp(o.saturating_add(n)),
                None => return Err(OffsetsError::NothingToShift(format!("{}-{}", tp.0, tp.1))),
            },
            ResetTo::Current => now.unwrap_or(high),
        };
        rows.push(PlanRow {
            topic: tp.0,
            partition: tp.1,
            current: now,
            new,
        });
    }
    Ok(rows)
}

/// Applies `plan` to `group` (blocking); refused while the group has members.
pub fn execute(kafka: &KafkaSettings, group: &str, plan: &[PlanRow]) -> Result<(), OffsetsError> {
    let members = members(kafka, group)?;
    if !members.is_empty() {
        return Err(OffsetsError::Active {
            group: group.to_string(),
            members,
        });
    }
    let c = reader(kafka, group)?;
    let mut tpl = TopicPartitionList::new();
    for r in plan {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.new))?;
    }
    c.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// The committed offsets, log ends and lag of `group` on every partition it has committed
/// offsets for, or on `topics` when given (blocking).
pub fn show(
    kafka: &KafkaSettings,
    group: &str,
    topics: &[String],
) -> Result<Vec<LagRow>, OffsetsError> {
    let c = reader(kafka, group)?;
    let parts = if topics.is_empty() {
        committed_partitions(&c)?
    } else {
        partitions(&c, &Scope::Topics(topics.to_vec()))?
    };
    let current = committed(&c, &parts)?;
    let mut rows = Vec::with_capacity(parts.len());
    for (topic, partition) in parts {
        let (_, end) = c.fetch_watermarks(&topic, partition, TIMEOUT)?;
        let now = current.get(&(topic.clone(), partition)).copied();
        let lag =
            crate::kafka::admin::partition_lag(kafka, &topic, partition, now.unwrap_or(0), end)?;
        rows.push(LagRow {
            topic,
            partition,
            current: now,
            end,
            lag,
        });
    }
    Ok(rows)
}

/// Parses a `--to-datetime` value: RFC 3339 (`2026-11-24T10:00:00Z`), or Kafka's
/// `YYYY-MM-DDTHH:mm:SS.sss` with an optional zone (`+01:00`), without one in local time.
pub fn parse_datetime(s: &str) -> Result<i64, String> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let civil: jiff::civil::DateTime = s.parse().map_err(|e| {
        format!("`{s}` is not a date-time (2026-11-24T10:00:00.000[Z|+01:00]): {e}")
    })?;
    jiff::tz::TimeZone::system()
        .to_timestamp(civil)
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a `--by-duration` value, ISO 8601 as Kafka's tool takes it (`PT5M`, `P1DT2H`; days are
/// 24 hours).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if !s.trim_start_matches('-').starts_with(['P', 'p']) {
        return Err(format!("`{s}` is not an ISO 8601 duration (PT5M, P1DT2H)"));
    }
    let span: jiff::Span = s
        .parse()
        .map_err(|e| format!("`{s}` is not an ISO 8601 duration (PT5M, P1DT2H): {e}"))?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("`{s}`: {e}"))?;
    Duration::try_from(d.abs()).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_style_times_and_durations_parse() {
        assert_eq!(
            parse_datetime("2026-11-24T10:00:00Z"),
            Ok(1_795_514_400_000)
        );
        assert_eq!(
            parse_datetime("2026-11-24T11:00:00.000+01:00"),
            Ok(1_795_514_400_000)
        );
        assert!(parse_datetime("2026-11-24T10:00:00.000").is_ok());
        assert!(parse_datetime("yesterday").is_err());
        assert_eq!(parse_duration("PT5M"), Ok(Duration::from_secs(300)));
        assert_eq!(
            parse_duration("P1DT2H"),
            Ok(Duration::from_secs(26 * 3_600))
        );
        assert!(parse_duration("5 minutes").is_err());
    }
}
