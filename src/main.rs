//! The `onceflow` command: parse arguments, load and validate settings, set up telemetry, run the
//! chosen verb. Exit code 0 on success, 1 when a check finds differences, 2 on a usage or
//! configuration error (clap's convention), and 1 on any other failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use onceflow::config::Settings;
use onceflow::ops;
use onceflow::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "onceflow",
    version,
    about = "Exactly-once event pipeline on Kafka"
)]
struct Cli {
    /// Settings file (TOML); `ONCEFLOW__SECTION__KEY` environment variables override it.
    #[arg(long, short, global = true, env = "ONCEFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogArg::Text)]
    log_format: LogArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogArg {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Create or verify the topics of the configured inputs and adapters.
    Topics {
        #[command(subcommand)]
        verb: TopicsVerb,
    },
    /// Serve the signed HTTP intake (POST /v1/sources/{source}/events) and /metrics.
    Ingest,
    /// Run the transactional processor of one adapter until SIGTERM.
    Process {
        /// The adapter (one of the registry's: analytics, billing, crm, email, webhook).
        #[arg(long)]
        adapter: String,
        /// This instance's stable name (its transactional id); overrides processor.instance_id.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Run the dispatcher of one adapter until SIGTERM: deliver its outbox to the external API.
    Deliver {
        /// The adapter (one of the registry's: analytics, billing, crm, email, webhook).
        #[arg(long)]
        adapter: String,
        /// This instance's stable name (its transactional id); overrides dispatcher.instance_id.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Benchmark helpers.
    Bench {
        #[command(subcommand)]
        verb: BenchVerb,
    },
    /// The demo's parts (`make demo` runs them all).
    Demo {
        #[command(subcommand)]
        part: DemoPart,
    },
}

#[derive(Subcommand)]
enum DemoPart {
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

#[derive(Subcommand)]
enum BenchVerb {
    /// Publish N distinct LeadCaptured events through the producer API to the ingest topic.
    Fill {
        /// How many events.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// Publishes in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
}

#[derive(Subcommand)]
enum TopicsVerb {
    /// Create the missing topics, then report any existing topic that differs from the plan.
    Create,
    /// Report every difference between the cluster and the plan; exit 1 if there is one.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(match cli.log_format {
        LogArg::Json => LogFormat::Json,
        LogArg::Text => LogFormat::Text,
    });
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("onceflow: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("onceflow: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("onceflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// A shutdown flag that turns true on SIGTERM or Ctrl-C; the batch in flight then gets `bound` to
/// finish, after which the process exits regardless.
fn stop_on_signal(bound: std::time::Duration) -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
        tokio::time::sleep(bound).await;
        tracing::error!("shutdown took longer than {bound:?}; exiting");
        std::process::exit(1);
    });
    stopped
}

async fn run(command: Command, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Process { adapter, instance } => {
            if let Some(id) = instance {
                settings.processor.instance_id = id;
            }
            let config = settings.adapters.get(&adapter).with_context(|| {
                format!("adapter `{adapter}` is not enabled in the settings ([adapters.{adapter}])")
            })?;
            let adapter = onceflow::adapters::build(&adapter, config)
                .with_context(|| format!("no adapter named `{adapter}` in the registry"))?;
            if let Some(listen) = settings.processor.metrics_listen {
                telemetry::metrics::install_prometheus(listen)
                    .map_err(|e| anyhow::anyhow!("metrics listener on {listen}: {e}"))?;
            }
            let processor = onceflow::processor::Processor::new(&settings, adapter)?;
            let stopped = stop_on_signal(settings.processor.shutdown_timeout);
            let counts = processor.run(stopped).await?;
            println!(
                "processed: {} decided, {} duplicates, {} retried, {} dead-lettered in {} batches ({} aborts, {} rejoins)",
                counts.tally.ok,
                counts.tally.duplicate,
                counts.tally.retry,
                counts.tally.dlq,
                counts.batches,
                counts.aborts,
                counts.rejoins
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliver { adapter, instance } => {
            if let Some(id) = instance {
                settings.dispatcher.instance_id = id;
            }
            let config = settings.adapters.get(&adapter).with_context(|| {
                format!("adapter `{adapter}` is not enabled in the settings ([adapters.{adapter}])")
            })?;
            let adapter = onceflow::adapters::build(&adapter, config)
                .with_context(|| format!("no adapter named `{adapter}` in the registry"))?;
            if let Some(listen) = settings.dispatcher.metrics_listen {
                telemetry::metrics::install_prometheus(listen)
                    .map_err(|e| anyhow::anyhow!("metrics listener on {listen}: {e}"))?;
            }
            let dispatcher = onceflow::dispatcher::Dispatcher::new(&settings, adapter)?;
            let stopped = stop_on_signal(settings.dispatcher.shutdown_timeout);
            let counts = dispatcher.run(stopped).await;
            let t = &counts.tally;
            println!(
                "delivered: {} delivered, {} duplicates, {} in doubt, {} retried, {} dead-lettered in {} batches ({} aborts, {} rejoins)",
                t.ok,
                t.duplicate,
                t.in_doubt,
                t.retry,
                t.dlq,
                counts.batches,
                counts.aborts,
                counts.rejoins
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            verb:
                BenchVerb::Fill {
                    events,
                    concurrency,
                },
        } => {
            let started = std::time::Instant::now();
            let published = ops::bench::fill(&settings, events, concurrency).await?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "published {published} events to {} in {secs:.1} s ({:.0}/s)",
                settings.ingest.topic,
                published as f64 / secs
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest => {
            telemetry::metrics::install_prometheus(settings.ingest.metrics_listen).map_err(
                |e| {
                    anyhow::anyhow!(
                        "metrics listener on {}: {e}",
                        settings.ingest.metrics_listen
                    )
                },
            )?;
            let router = onceflow::ingest::http::build(&settings).context("ingest start-up")?;
            let listener = tokio::net::TcpListener::bind(settings.ingest.listen)
                .await
                .with_context(|| format!("binding {}", settings.ingest.listen))?;
            tracing::info!(
                listen = %settings.ingest.listen,
                metrics = %settings.ingest.metrics_listen,
                topic = %settings.ingest.topic,
                "ingest listening"
            );
            onceflow::ingest::http::serve(listener, router, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics {
            verb: TopicsVerb::Create,
        } => {
            let report = ops::topics::create(&settings)
                .await
                .context("topics create")?;
            println!(
                "topics: {} planned, {} created",
                report.planned,
                report.created.len()
            );
            for name in &report.created {
                println!("  created {name}");
            }
            Ok(print_diffs(&report.diffs))
        }
        Command::Topics {
            verb: TopicsVerb::Check,
        } => {
            let diffs = ops::topics::check(&settings)
                .await
                .context("topics check")?;
            Ok(print_diffs(&diffs))
        }
        Command::Demo {
            part: DemoPart::Webhooks { url, samples },
        } => {
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
        Command::Demo {
            part: DemoPart::Processors,
        } => {
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
        Command::Demo {
            part: DemoPart::Dispatchers,
        } => {
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
        Command::Demo {
            part: DemoPart::Providers { sandbox, samples },
        } => {
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
        Command::Demo {
            part: DemoPart::RoundTrip { records },
        } => {
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

fn print_diffs(diffs: &[onceflow::kafka::admin::TopicDiff]) -> ExitCode {
    if diffs.is_empty() {
        println!("topics: every planned topic exists with the planned settings");
        return ExitCode::SUCCESS;
    }
    println!("topics: {} difference(s) from the plan:", diffs.len());
    for d in diffs {
        println!("  {d}");
    }
    ExitCode::from(1)
}
