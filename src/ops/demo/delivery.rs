//! The delivery part of the demo: run every adapter's dispatcher until its outbox is delivered,
//! then ask the provider sandboxes what they did, and show that the sample lead posted twice had
//! one effect at each provider.
//!
//! Invariant: this reads the sandboxes' own effect log (`GET /_effects`), not onceflow's view, so
//! what it prints is what the providers saw.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::DemoError;
use crate::config::Settings;
use crate::kafka::names::{Names, Stage};
use crate::model::identity;
use crate::stage::Counts;

/// What one adapter's dispatcher did in the demo.
#[derive(Debug)]
pub struct DispatcherOutcome {
    /// Adapter.
    pub adapter: String,
    /// Its counts.
    pub counts: Counts,
}

/// Runs a dispatcher for every configured adapter until each group has delivered everything in
/// its outbox and retry tiers (or `limit` passes), then stops them and reports their counts.
pub async fn run_dispatchers(
    settings: &Settings,
    limit: Duration,
) -> Result<Vec<DispatcherOutcome>, DemoError> {
    use crate::dispatcher::Dispatcher;
    let names = Names::new(settings);
    let mut running = Vec::new();
    for (name, config) in &settings.adapters {
        let adapter = crate::adapters::build(name, config)
            .ok_or_else(|| DemoError::Samples(format!("no adapter named {name}")))?;
        let d =
            Dispatcher::new(settings, adapter).map_err(|e| DemoError::Samples(e.to_string()))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { d.run(stopped).await });
        running.push((name.clone(), stop, task));
    }
    let deadline = Instant::now() + limit;
    for (name, _, _) in &running {
        let group = names.group(name, Stage::Deliver);
        let mut topics = vec![names.outbox(name)];
        topics
            .extend((1..=settings.retry.tiers.len()).map(|n| names.retry(name, Stage::Deliver, n)));
        if !super::caught_up(settings, &group, &topics, deadline).await? {
            return Err(DemoError::Timeout(
                "the dispatchers to deliver the outboxes",
            ));
        }
    }
    let mut outcomes = Vec::new();
    for (adapter, stop, task) in running {
        let _ = stop.send(true);
        let counts = task.await?.map_err(|e| DemoError::Samples(e.to_string()))?;
        outcomes.push(DispatcherOutcome { adapter, counts });
    }
    Ok(outcomes)
}

/// What the sandboxes did, per provider: effect kind → count; and, for the sample lead that was
/// posted twice, the effects of its command at each provider.
#[derive(Debug, Default)]
pub struct ProviderReport {
    /// Provider → effect kind → count.
    pub effects: BTreeMap<String, BTreeMap<String, usize>>,
    /// Provider → calls received.
    pub calls: BTreeMap<String, usize>,
    /// The duplicated sample lead's event id.
    pub duplicate_event: String,
    /// Adapter → effects of the duplicated lead's command there.
    pub duplicate_effects: BTreeMap<String, usize>,
}

/// Reads the sandboxes' effect and call logs at `sandbox_url`; `lead_id` is the sample lead's
/// sender id (posted twice by the demo).
pub async fn providers(
    settings: &Settings,
    sandbox_url: &str,
    lead_id: &str,
) -> Result<ProviderReport, DemoError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let effects: Json = http
        .get(format!("{sandbox_url}/_effects"))
        .send()
        .await?
        .json()
        .await?;
    let calls: Json = http
        .get(format!("{sandbox_url}/_calls"))
        .send()
        .await?
        .json()
        .await?;
    let mut report = ProviderReport {
        duplicate_event: identity::event_id(super::DEMO_SOURCE, lead_id),
        ..ProviderReport::default()
    };
    let by_command: BTreeMap<String, String> = settings
        .adapter_names()
        .map(|a| {
            (
                identity::command_id(&report.duplicate_event, a, 0),
                a.to_string(),
            )
        })
        .collect();
    for e in effects["effects"].as_array().into_iter().flatten() {
        let provider = e["provider"].as_str().unwrap_or("?").to_string();
        let kind = e["kind"].as_str().unwrap_or("?").to_string();
        *report
            .effects
            .entry(provider)
            .or_default()
            .entry(kind)
            .or_insert(0) += 1;
        if let Some(adapter) = e["command_id"].as_str().and_then(|c| by_command.get(c)) {
            *report.duplicate_effects.entry(adapter.clone()).or_insert(0) += 1;
        }
    }
    for c in calls["calls"].as_array().into_iter().flatten() {
        let provider = c["provider"].as_str().unwrap_or("?").to_string();
        *report.calls.entry(provider).or_insert(0) += 1;
    }
    Ok(report)
}
