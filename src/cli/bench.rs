//! `onceflow bench fill`: benchmark helpers.

use std::process::ExitCode;

use clap::Subcommand;
use onceflow::config::Settings;
use onceflow::ops;

/// `bench` verbs.
#[derive(Subcommand)]
pub enum BenchVerb {
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

/// Runs a `bench` verb.
pub async fn run(verb: BenchVerb, settings: Settings) -> anyhow::Result<ExitCode> {
    let BenchVerb::Fill {
        events,
        concurrency,
    } = verb;
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
