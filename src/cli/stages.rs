//! `onceflow ingest`, `onceflow process --adapter NAME`, `onceflow deliver --adapter NAME`: the
//! long-running roles, each until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use onceflow::config::Settings;
use onceflow::telemetry::{endpoint, trace};

use super::{shutdown_signal, stop_on_signal};

/// Which adapter's stage, as which instance.
#[derive(Args)]
pub struct StageArgs {
    /// The adapter (one of the registry's: analytics, billing, crm, email, webhook).
    #[arg(long)]
    adapter: String,
    /// This instance's stable name (its transactional id); overrides the stage's instance_id.
    #[arg(long)]
    instance: Option<String>,
}

fn build(
    settings: &Settings,
    name: &str,
) -> anyhow::Result<std::sync::Arc<dyn onceflow::adapters::Adapter>> {
    let config = settings.adapters.get(name).with_context(|| {
        format!("adapter `{name}` is not enabled in the settings ([adapters.{name}])")
    })?;
    onceflow::adapters::build(name, config)
        .with_context(|| format!("no adapter named `{name}` in the registry"))
}

/// `onceflow process`.
pub async fn process(args: StageArgs, mut settings: Settings) -> anyhow::Result<ExitCode> {
    let StageArgs { adapter, instance } = args;
    if let Some(id) = instance {
        settings.processor.instance_id = id;
    }
    let adapter = build(&settings, &adapter)?;
    let exporting = trace::install(&settings.telemetry, "process")?;
    let readiness = match settings.processor.metrics_listen {
        Some(listen) => endpoint::start(listen).await?,
        None => endpoint::Readiness::default(),
    };
    let processor =
        onceflow::processor::Processor::new(&settings, adapter)?.with_readiness(readiness);
    let stopped = stop_on_signal(settings.processor.shutdown_timeout);
    let counts = processor.run(stopped).await?;
    flush(exporting).await;
    println!(
        "processed: {} decided, {} duplicates, {} retried, {} dead-lettered in {} batches ({} aborts, {} rejoins); the loop: {}",
        counts.tally.ok,
        counts.tally.duplicate,
        counts.tally.retry,
        counts.tally.dlq,
        counts.batches,
        counts.aborts,
        counts.rejoins,
        counts.time
    );
    Ok(ExitCode::SUCCESS)
}

/// `onceflow deliver`.
pub async fn deliver(args: StageArgs, mut settings: Settings) -> anyhow::Result<ExitCode> {
    let StageArgs { adapter, instance } = args;
    if let Some(id) = instance {
        settings.dispatcher.instance_id = id;
    }
    let adapter = build(&settings, &adapter)?;
    let exporting = trace::install(&settings.telemetry, "deliver")?;
    let readiness = match settings.dispatcher.metrics_listen {
        Some(listen) => endpoint::start(listen).await?,
        None => endpoint::Readiness::default(),
    };
    let dispatcher =
        onceflow::dispatcher::Dispatcher::new(&settings, adapter)?.with_readiness(readiness);
    let stopped = stop_on_signal(settings.dispatcher.shutdown_timeout);
    let counts = dispatcher.run(stopped).await?;
    flush(exporting).await;
    let t = &counts.tally;
    println!(
        "delivered: {} delivered, {} duplicates, {} in doubt, {} retried, {} dead-lettered in {} batches ({} aborts, {} rejoins); the loop: {}",
        t.ok,
        t.duplicate,
        t.in_doubt,
        t.retry,
        t.dlq,
        counts.batches,
        counts.aborts,
        counts.rejoins,
        counts.time
    );
    Ok(ExitCode::SUCCESS)
}

/// `onceflow ingest`.
pub async fn ingest(settings: Settings) -> anyhow::Result<ExitCode> {
    // The intake's own /readyz (broker and registry) is on its public port; this one only says
    // the process is up.
    endpoint::start(settings.ingest.metrics_listen)
        .await?
        .set(true);
    let exporting = trace::install(&settings.telemetry, "ingest")?;
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
    flush(exporting).await;
    Ok(ExitCode::SUCCESS)
}

/// Sends the spans not yet exported, off the runtime's workers (the exporter's requests run on
/// them).
async fn flush(exporting: Option<trace::Exporting>) {
    if let Some(e) = exporting {
        let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    }
}
