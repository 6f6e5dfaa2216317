//! The health of every adapter's stages, as the operator console's overview shows it: consumer
//! lag, dead letters (pending replay, placed in the last hour and day by reason), retry depth per
//! tier, the circuit breaker's state and the commands parked in doubt.
//!
//! Invariants:
//! - Everything comes from Kafka (offsets, watermarks, the DLQ's records and their envelopes),
//!   except the breaker's state, which only a dispatcher knows: it is read from the Prometheus
//!   endpoints listed in `console.metrics` (`unknown` when none answers for the adapter).
//! - Reading never joins a group nor commits.
//! - A stage whose read fails is read again (three reads in all) before the overview fails: the
//!   console answers 503 only when Kafka keeps failing.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::KafkaError;
use serde::Serialize;

use super::dlq::{self, Filter};
use crate::config::Settings;
use crate::kafka::admin::group_lag;
use crate::kafka::names::{Names, Stage};
use crate::model::event::now_ms;
use crate::model::headers::ErrorClass;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Reads of one stage's health before the overview answers 503.
const READ_ATTEMPTS: u32 = 3;
/// Pause between two reads.
const READ_PAUSE: Duration = Duration::from_millis(500);

/// One adapter's stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageHealth {
    /// Adapter.
    pub adapter: String,
    /// `process` or `deliver`.
    pub stage: String,
    /// Records the stage's group has yet to process, over its inputs and retry tiers.
    pub lag: i64,
    /// Records waiting in each retry tier (tier 1 first).
    pub retry_depth: Vec<i64>,
    /// Dead letters not yet replayed (beyond the replay group's offsets).
    pub dlq_pending: i64,
    /// Dead letters placed in the last hour, by `class: reason`.
    pub dlq_last_hour: BTreeMap<String, u64>,
    /// Dead letters placed in the last 24 hours, by `class: reason`.
    pub dlq_last_day: BTreeMap<String, u64>,
    /// Commands parked in doubt in the last 24 hours (deliver stage).
    pub in_doubt_last_day: u64,
    /// The circuit breaker (deliver stage): closed, half_open, open or unknown.
    pub breaker: Option<String>,
}

/// The breaker state of every adapter the metrics endpoints report (`adapter → state`).
pub async fn breakers(urls: &[String]) -> BTreeMap<String, String> {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for url in urls {
        let Ok(text) = async { http.get(url).send().await?.text().await }.await else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("onceflow_breaker_state{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let Some(adapter) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("adapter=\""))
                .map(|a| a.trim_end_matches('"').to_string())
            else {
                continue;
            };
            let state = match value.trim().parse::<f64>().map(|v| v.round() as i64) {
                Ok(0) => "closed",
                Ok(1) => "half_open",
                Ok(2) => "open",
                _ => continue,
            };
            out.insert(adapter, state.to_string());
        }
    }
    out
}

/// The health of one adapter's stage (blocking).
pub fn stage(settings: &Settings, adapter: &str, stage: Stage) -> Result<StageHealth, KafkaError> {
    let names = Names::new(settings);
    let kafka = &settings.kafka;
    let group = names.group(adapter, stage);
    let tiers: Vec<String> = (1..=settings.retry.tiers.len())
        .map(|n| names.retry(adapter, stage, n))
        .collect();
    let inputs = match stage {
        Stage::Process => settings.topics.inputs.clone(),
        Stage::Deliver => vec![names.outbox(adapter)],
    };
    let mut retry_depth = Vec::with_capacity(tiers.len());
    for t in &tiers {
        retry_depth.push(group_lag(kafka, &group, std::slice::from_ref(t))?);
    }
    let lag = group_lag(kafka, &group, &inputs)? + retry_depth.iter().sum::<i64>();
    let dlq_topic = names.dlq(adapter, stage);
    let dlq_pending = group_lag(
        kafka,
        &names.replay_group(adapter, stage),
        std::slice::from_ref(&dlq_topic),
    )?;
    let now = now_ms();
    let day = dlq::read(
        kafka,
        &dlq_topic,
        &Filter {
            since: Some(now - DAY_MS),
            ..Filter::default()
        },
    )?;
    let mut h = StageHealth {
        adapter: adapter.to_string(),
        stage: stage.as_str().to_string(),
        lag,
        retry_depth,
        dlq_pending,
        ..StageHealth::default()
    };
    for d in &day {
        let reason = d.reason();
        *h.dlq_last_day.entry(reason.clone()).or_insert(0) += 1;
        if d.timestamp.is_some_and(|t| t >= now - HOUR_MS) {
            *h.dlq_last_hour.entry(reason).or_insert(0) += 1;
        }
        if d.envelope
            .as_ref()
            .is_some_and(|e| e.class == ErrorClass::InDoubt)
        {
            h.in_doubt_last_day += 1;
        }
    }
    Ok(h)
}

/// [`stage`], asked again up to [`READ_ATTEMPTS`] times in all when Kafka fails: a read changes
/// nothing, and a broker busy creating topics or electing a leader answers the next ask.
fn stage_retried(settings: &Settings, adapter: &str, s: Stage) -> Result<StageHealth, KafkaError> {
    let mut attempt = 1;
    loop {
        match stage(settings, adapter, s) {
            Ok(h) => return Ok(h),
            Err(e) if attempt < READ_ATTEMPTS => {
                tracing::warn!(adapter, stage = s.as_str(), attempt, error = %e, "stage health read failed; asking again");
                attempt += 1;
                std::thread::sleep(READ_PAUSE);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The health of every configured adapter's two stages (read concurrently).
pub async fn overview(settings: &Settings) -> Result<Vec<StageHealth>, KafkaError> {
    let breakers = breakers(&settings.console.metrics).await;
    let mut tasks = Vec::new();
    for adapter in settings.adapter_names() {
        for s in Stage::ALL {
            let (set, a) = (settings.clone(), adapter.to_string());
            tasks.push(tokio::task::spawn_blocking(move || {
                stage_retried(&set, &a, s)
            }));
        }
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let mut h = t.await.map_err(|_| KafkaError::Canceled)??;
        if h.stage == Stage::Deliver.as_str() {
            h.breaker = Some(
                breakers
                    .get(&h.adapter)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
            );
        }
        out.push(h);
    }
    Ok(out)
}
