//! Topic administration: create the topics of a [`topic_plan`](super::names::topic_plan) and check a
//! live cluster against it.
//!
//! Invariants:
//! - `create` never alters or deletes an existing topic; an existing topic that differs from the plan
//!   is reported, not "fixed" (changing partitions of a keyed topic breaks co-partitioning).
//! - `check` reports every difference (missing topic, partitions, replication factor, cleanup
//!   policy, retention) so an operator sees the whole picture in one run.
//! - Topic-level configuration keys (broker side, not librdkafka) are named only here.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::names::{Cleanup, TopicSpec};
use crate::config::KafkaSettings;

const CLEANUP_POLICY: &str = "cleanup.policy";
const RETENTION_MS: &str = "retention.ms";

/// How long one admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed admin operation.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be built or the cluster did not answer.
    #[error("kafka admin: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused an operation on one topic.
    #[error("{op} topic {topic}: {code}")]
    Refused {
        /// What was asked: `creating`, `describing`, `deleting`.
        op: &'static str,
        /// Topic name.
        topic: String,
        /// Broker error.
        code: RDKafkaErrorCode,
    },
    /// Created topics did not show in the metadata in time.
    #[error("created topics not visible in the metadata after {ADMIN_TIMEOUT:?}: {0:?}")]
    NotVisible(Vec<String>),
    /// The blocking metadata call panicked or was cancelled.
    #[error("metadata task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One way a live topic differs from the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicDiff {
    /// The topic does not exist.
    Missing {
        /// Topic name.
        topic: String,
    },
    /// A setting has another value than planned.
    Differs {
        /// Topic name.
        topic: String,
        /// What differs (`partitions`, `replication factor`, `cleanup.policy`, `retention.ms`).
        what: &'static str,
        /// Planned value.
        want: String,
        /// Value on the cluster.
        found: String,
    },
}

impl TopicDiff {
    /// The topic that differs.
    pub fn topic(&self) -> &str {
        match self {
            TopicDiff::Missing { topic } | TopicDiff::Differs { topic, .. } => topic,
        }
    }
}

impl fmt::Display for TopicDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicDiff::Missing { topic } => write!(f, "{topic}: missing"),
            TopicDiff::Differs {
                topic,
                what,
                want,
                found,
            } => {
                write!(f, "{topic}: {what} is {found}, want {want}")
            }
        }
    }
}

/// Admin operations on one cluster.
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
}

fn cleanup_config(cleanup: Cleanup) -> (String, Option<String>) {
    match cleanup {
        Cleanup::Compact => ("compact".into(), None),
        Cleanup::Delete(retention) => (
            "delete".into(),
            retention.map(|r| r.as_millis().to_string()),
        ),
    }
}

impl Admin {
    /// Connects an admin client.
    pub fn new(settings: &KafkaSettings) -> Result<Admin, AdminError> {
        let client = super::client::admin(settings).create()?;
        Ok(Admin {
            client: Arc::new(client),
        })
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(ADMIN_TIMEOUT))
            .request_timeout(Some(ADMIN_TIMEOUT))
    }

    /// Creates the planned topics that do not exist yet; returns the names it created.
    pub async fn create(&self, plan: &[TopicSpec]) -> Result<Vec<String>, AdminError> {
        let configs: Vec<_> = plan.iter().map(|t| cleanup_config(t.cleanup)).collect();
        let new_topics: Vec<NewTopic<'_>> = plan
            .iter()
            .zip(&configs)
            .map(|(t, (policy, retention))| {
                let mut nt = NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication_factor),
                )
                .set(CLEANUP_POLICY, policy);
                if let Some(r) = retention {
                    nt = nt.set(RETENTION_MS, r);
                }
                nt
            })
            .collect();
        let mut created = Vec::new();
        for result in self
            .client
            .create_topics(&new_topics, &Self::options())
            .await?
        {
            match result {
                Ok(name) => created.push(name),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(AdminError::Refused {
                        op: "creating",
                        topic,
                        code,
                    });
                }
            }
        }
        self.await_visible(&created).await?;
        Ok(created)
    }

    /// Waits until every topic in `topics` shows in the broker's metadata with its partitions (the
    /// controller acknowledges a creation before every broker's metadata cache has it).
    async fn await_visible(&self, topics: &[String]) -> Result<(), AdminError> {
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            let layout = self.layout().await?;
            let pending: Vec<&String> =
                topics.iter().filter(|t| !layout.contains_key(*t)).collect();
            if pending.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AdminError::NotVisible(
                    pending.into_iter().cloned().collect(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Partition count and replication factor of every topic on the cluster.
    async fn layout(&self) -> Result<HashMap<String, (i32, i32)>, AdminError> {
        let client = Arc::clone(&self.client);
        // fetch_metadata blocks the calling thread: keep it off the async workers.
        let metadata =
            tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, ADMIN_TIMEOUT))
                .await??;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                let rf = t
                    .partitions()
                    .first()
                    .map_or(0, |p| p.replicas().len() as i32);
                (t.name().to_string(), (t.partitions().len() as i32, rf))
            })
            .collect())
    }

    /// Every difference between the cluster and the plan; empty when they agree.
    pub async fn check(&self, plan: &[TopicSpec]) -> Result<Vec<TopicDiff>, AdminError> {
        let layout = self.layout().await?;
        let mut diffs = Vec::new();
        let present: Vec<&TopicSpec> = plan
            .iter()
            .filter(|t| {
                let here = layout.contains_key(&t.name);
                if !here {
                    diffs.push(TopicDiff::Missing {
                        topic: t.name.clone(),
                    });
                }
                here
            })
            .collect();
        let differs = |topic: &str, what, want: String, found: String| TopicDiff::Differs {
            topic: topic.to_string(),
            what,
            want,
            found,
        };
        for t in &present {
            let (partitions, rf) = layout[&t.name];
            if partitions != t.partitions {
                diffs.push(differs(
                    &t.name,
                    "partitions",
                    t.partitions.to_string(),
                    partitions.to_string(),
                ));
            }
            if rf != t.replication_factor {
                diffs.push(differs(
                    &t.name,
                    "replication factor",
                    t.replication_factor.to_string(),
                    rf.to_string(),
                ));
            }
        }
        if present.is_empty() {
            return Ok(diffs);
        }
        let specifiers: Vec<_> = present
            .iter()
            .map(|t| ResourceSpecifier::Topic(&t.name))
            .collect();
        let described = self
            .client
            .describe_configs(&specifiers, &Self::options())
            .await?;
        for (t, result) in present.iter().zip(described) {
            let resource = result.map_err(|code| AdminError::Refused {
                op: "describing",
                topic: t.name.clone(),
                code,
            })?;
            let value = |k: &str| {
                resource
                    .get(k)
                    .and_then(|e| e.value.clone())
                    .unwrap_or_default()
            };
            let (policy, retention) = cleanup_config(t.cleanup);
            let found_policy = value(CLEANUP_POLICY);
            if found_policy != policy {
                diffs.push(differs(&t.name, "cleanup.policy", policy, found_policy));
            }
            if let Some(retention) = retention {
                let found = value(RETENTION_MS);
                if found != retention {
                    diffs.push(differs(&t.name, "retention.ms", retention, found));
                }
            }
        }
        Ok(diffs)
    }

    /// Deletes topics (tests clean up after themselves with it; operators never need it).
    pub async fn delete(&self, topics: &[&str]) -> Result<(), AdminError> {
        for result in self.client.delete_topics(topics, &Self::options()).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(AdminError::Refused {
                        op: "deleting",
                        topic,
                        code,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Records of `topics` that `group` has not committed yet: over partitions, the records between
/// the committed offset (0 without one) and the end ([`partition_lag`]). A transactional writer
/// leaves a commit marker after its last record; offsets committed with a transaction point just
/// past the last record, before the marker, so by offsets alone such a partition would lag by one
/// forever. Offsets a transaction holds pending are not committed yet: they neither count nor
/// hold the look-up back. Blocking; call it off the async runtime.
pub fn group_lag(kafka: &KafkaSettings, group: &str, topics: &[String]) -> Result<i64, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::client::{self, Isolation, StartAt};

    // Same group id to read its offsets; it never subscribes, so it never joins the group.
    // read_uncommitted: a read_committed client asks for stable offsets only, and librdkafka
    // retries while a transaction holds offsets of the group pending, so with a stage committing
    // several times a second the look-up waited out its time-out (every deliver group of the 1 M
    // chaos run). Lag counts what is committed; the records themselves are counted below with
    // read_committed.
    let consumer: BaseConsumer = client::consumer(
        kafka,
        "lag",
        group,
        Isolation::ReadUncommitted,
        StartAt::Earliest,
    )
    .create()?;
    let mut lag = 0;
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
        let committed = consumer.committed_offsets(tpl, ADMIN_TIMEOUT)?;
        for e in committed.elements() {
            let (_, high) = consumer.fetch_watermarks(topic, e.partition(), ADMIN_TIMEOUT)?;
            let done = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            lag += partition_lag(kafka, topic, e.partition(), done, high)?;
        }
    }
    Ok(lag)
}

/// Records of a partition between `from` (a committed offset) and `end` (its log end) that a
/// `read_committed` reader would get. A short gap (at most [`COUNTED_GAP`] offsets) is read and
/// its records counted, so transaction markers do not count; a longer one counts its offsets.
/// Blocking.
pub fn partition_lag(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
) -> Result<i64, KafkaError> {
    let gap = (end - from).max(0);
    if gap == 0 || gap > COUNTED_GAP {
        return Ok(gap);
    }
    Ok(records_in(kafka, topic, partition, from, end)?.unwrap_or(gap))
}

/// The largest gap [`partition_lag`] reads to count records.
const COUNTED_GAP: i64 = 64;

/// How many records offsets `from..to` of a partition hold for a `read_committed` reader, or
/// `None` when the read cannot finish (an open transaction holds it back).
fn records_in(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<Option<i64>, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    use super::client::{self, Isolation, StartAt};

    let reader: BaseConsumer = client::consumer(
        kafka,
        "lag.peek",
        "onceflow.lag.peek",
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    reader.assign(&tpl)?;
    let mut count = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Some(polled) = reader.poll(Duration::from_millis(100)) {
            let Some(m) = super::polled::record(&reader, polled)? else {
                continue;
            };
            if m.offset() < to {
                count += 1;
            }
            continue;
        }
        let position = reader.position()?;
        if matches!(position.find_partition(topic, partition).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= to)
        {
            return Ok(Some(count));
        }
    }
    Ok(None)
}
