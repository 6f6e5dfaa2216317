//! `onceflow demo …`: the parts `make demo` runs, each printing what happened.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use onceflow::config::Settings;
use onceflow::ops;

/// The demo's parts.
#[derive(Subcommand)]
pub enum DemoPart {
    /// A transactional round trip (produce → transform → produce with offsets) on the broker.
    RoundTrip {
        /// Records to send through the round trip.
        #[arg(long, default_value_t = 5)]
        records: usize,
    },
    /// Run a processor for every configured adapter over the input topics until each has caught
    /// up, and print what each did.
    Processors,
    /// Run a dispatcher for every configured adapter until each has delivered its outbox, and
    /// print what each did.
    Dispatchers,
    /// Print what the provider sandboxes did (their own effect log), and the effects of the sample
    /// lead that was posted twice.
    Providers {
        /// Base URL of `onceflow-sandbox`.
        #[arg(long, default_value = "http://127.0.0.1:8700")]
        sandbox: String,
        /// Folder of sample request bodies (for the duplicated lead's id).
        #[arg(long, default_value = "deploy/local/samples")]
        samples: PathBuf,
    },
    /// Post the signed sample webhooks (plus a duplicate, a bad signature, a schema violation) to a
    /// running `onceflow ingest` and print each answer.
    Webhooks {
        /// Base URL of the intake.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Folder of sample request bodies.
        #[arg(long, default_value = "deploy/local/samples")]
        samples: PathBuf,
    },
}

/// Runs a demo part.
pub async fn run(part: DemoPart, settings: Settings) -> anyhow::Result<ExitCode> {
    match part {
        DemoPart::Webhooks { url, samples } => {
            let outcomes = ops::demo::post_samples(&settings, &url, &samples)
                .await
                .context("demo webhooks")?;
            println!(
                "signed webhooks → {url}/v1/sources/{}/events",
                ops::demo::DEMO_SOURCE
            );
            let mut seen: Vec<(String, String)> = Vec::new();
            for o in &outcomes {
                let b = &o.body;
                let text = |k: &str| b[k].as_str().unwrap_or("").to_string();
                let what = match o.status {
                    202 => {
                        let id = text("event_id");
                        let note = match seen.iter().find(|(seen_id, _)| *seen_id == id) {
                            Some((_, first)) => {
                                format!(" — a duplicate: same event_id as {first}")
                            }
                            None => String::new(),
                        };
                        seen.push((id.clone(), o.label.clone()));
                        format!("accepted, event_id {id}{note}")
                    }
                    _ => {
                        let field = text("field");
                        let at = if field.is_empty() {
                            String::new()
                        } else {
                            format!(" at {field}")
                        };
                        format!("{}{at}: {}", text("error"), text("detail"))
                    }
                };
                println!("  {}  {:<48} {what}", o.status, o.label);
            }
            Ok(ExitCode::SUCCESS)
        }
        DemoPart::Processors => {
            let outcomes = ops::demo::run_processors(&settings)
                .await
                .context("demo processors")?;
            let names = onceflow::kafka::names::Names::new(&settings);
            println!(
                "processors (one consumer group per adapter, one Kafka transaction per batch):"
            );
            for o in &outcomes {
                let c = &o.counts.tally;
                println!(
                    "  {:<10} {} events decided, {} commands to {}, {} duplicates dropped, {} retried, {} dead-lettered",
                    o.adapter,
                    c.ok,
                    c.outputs,
                    names.outbox(&o.adapter),
                    c.duplicate,
                    c.retry,
                    c.dlq
                );
                for (class, message) in &o.dead_letters {
                    println!("  {:<10}   dead letter ({class}): {message}", "");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DemoPart::Dispatchers => {
            let outcomes = ops::demo::delivery::run_dispatchers(
                &settings,
                std::time::Duration::from_secs(120),
            )
            .await
            .context("demo dispatchers")?;
            let names = onceflow::kafka::names::Names::new(&settings);
            println!(
                "dispatchers (one consumer group per adapter; ledger, receipts and offsets in one transaction):"
            );
            for o in &outcomes {
                let t = &o.counts.tally;
                println!(
                    "  {:<10} {} commands delivered (receipts in {}), {} duplicates not resent, {} in doubt, {} retried, {} dead-lettered",
                    o.adapter,
                    t.ok,
                    names.results(&o.adapter),
                    t.duplicate,
                    t.in_doubt,
                    t.retry,
                    t.dlq
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DemoPart::Providers { sandbox, samples } => {
            let lead: serde_json::Value =
                std::fs::read_to_string(samples.join("lead_captured.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .context("reading the lead_captured sample")?;
            let lead_id = lead["id"].as_str().unwrap_or_default();
            let r = ops::demo::delivery::providers(&settings, &sandbox, lead_id)
                .await
                .context("demo providers")?;
            println!("providers (the sandboxes' own log of what they did, {sandbox}/_effects):");
            for (provider, kinds) in &r.effects {
                let what: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
                println!(
                    "  {:<10} {} (from {} calls)",
                    provider,
                    what.join(", "),
                    r.calls.get(provider).copied().unwrap_or(0)
                );
            }
            if r.effects.is_empty() {
                println!(
                    "  nothing new: every sample was a duplicate of an earlier demo run's events, so no command reached a provider again"
                );
            }
            let per: Vec<String> = r
                .duplicate_effects
                .iter()
                .map(|(a, n)| format!("{a} {n}"))
                .collect();
            if !per.is_empty() {
                println!(
                    "  the lead posted twice (event {}) had one effect per provider: {}",
                    r.duplicate_event,
                    per.join(", ")
                );
            }
            let ok = r.duplicate_effects.values().all(|n| *n == 1);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                println!("  MISMATCH: a provider saw the duplicated lead more than once");
                ExitCode::FAILURE
            })
        }
        DemoPart::RoundTrip { records } => {
            let r = ops::demo::round_trip(&settings, records)
                .await
                .context("demo round trip")?;
            println!("transactional round trip: {} → {}", r.input, r.output);
            println!(
                "  produced {} records to {} (idempotent producer, acks=all)",
                r.produced, r.input
            );
            println!(
                "  one transaction: consumed {}, produced {} upper-cased records, sent offsets {:?}, committed in {:?}",
                r.transformed, r.transformed, r.sent_offsets, r.transaction_time
            );
            println!("  group's committed offsets now {:?}", r.committed_offsets);
            println!(
                "  read_committed reader sees {} of this run's {} outputs",
                r.visible_outputs, r.produced
            );
            let ok = r.committed_offsets == r.sent_offsets && r.visible_outputs == r.produced;
            println!(
                "  {}",
                if ok {
                    "OK: outputs and offsets committed together"
                } else {
                    "MISMATCH"
                }
            );
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
