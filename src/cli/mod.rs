//! The verbs of the `onceflow` command, one file each; `main` only parses arguments, loads the
//! settings and sets up logging. Every verb calls the library (`onceflow::ops`, the stages), never
//! a second implementation.
//!
//! Conventions (those of the tools operators know): human tables on stdout and `--json` for
//! scripts; logs on stderr; changes only with `--execute` (dry run by default) for verbs that
//! change state; exit 0 on success, 1 when a check finds differences or a refusal, 2 on usage or
//! configuration errors.

mod audit;
mod bench;
mod console;
mod demo;
mod dlq;
mod offsets;
mod probe;
mod replay;
mod stages;
mod topics;

use std::process::ExitCode;

use clap::Subcommand;
use onceflow::config::Settings;
use serde::Serialize;

/// Every verb.
#[derive(Subcommand)]
pub enum Command {
    /// Create or verify the topics of the configured inputs and adapters.
    Topics {
        #[command(subcommand)]
        verb: topics::TopicsVerb,
    },
    /// Serve the signed HTTP intake (POST /v1/sources/{source}/events) and /metrics.
    Ingest,
    /// Run the transactional processor of one adapter until SIGTERM.
    Process(stages::StageArgs),
    /// Run the dispatcher of one adapter until SIGTERM: deliver its outbox to the external API.
    Deliver(stages::StageArgs),
    /// Inspect dead letters: list, count by reason, show one (PII masked).
    Dlq {
        #[command(subcommand)]
        verb: dlq::DlqVerb,
    },
    /// Show a group's lag, or reset its offsets as `kafka-consumer-groups --reset-offsets` does.
    Offsets {
        #[command(subcommand)]
        verb: offsets::OffsetsVerb,
    },
    /// Replay dead letters of one adapter's stage into that stage, exactly once (dry run unless
    /// --execute).
    Replay(replay::ReplayArgs),
    /// Serve the operator console (pages and /api) on console.listen until SIGTERM.
    Console,
    /// The operator actions recorded on <ns>.audit.
    Audit {
        #[command(subcommand)]
        verb: audit::AuditVerb,
    },
    /// GET a health URL and exit 0 on 2xx (container health checks; the image has no curl).
    Probe(probe::ProbeArgs),
    /// Benchmark helpers.
    Bench {
        #[command(subcommand)]
        verb: bench::BenchVerb,
    },
    /// The demo's parts (`make demo` runs them all).
    Demo {
        #[command(subcommand)]
        part: demo::DemoPart,
    },
}

/// Runs `command`.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Topics { verb } => topics::run(verb, settings).await,
        Command::Ingest => stages::ingest(settings).await,
        Command::Process(args) => stages::process(args, settings).await,
        Command::Deliver(args) => stages::deliver(args, settings).await,
        Command::Dlq { verb } => dlq::run(verb, settings).await,
        Command::Offsets { verb } => offsets::run(verb, settings).await,
        Command::Replay(args) => replay::run(args, settings).await,
        Command::Audit { verb } => audit::run(verb, settings).await,
        Command::Console => console::run(settings).await,
        Command::Probe(args) => probe::run(args).await,
        Command::Bench { verb } => bench::run(verb, settings).await,
        Command::Demo { part } => demo::run(part, settings).await,
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

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An epoch-ms time as RFC 3339 (UTC), for tables.
fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// Parses a time argument: RFC 3339, Kafka's `YYYY-MM-DDTHH:mm:SS.sss[zone]`, or an ISO 8601
/// duration back from now (`PT1H`).
fn parse_time(s: &str) -> Result<i64, String> {
    if s.starts_with('P') {
        let d = onceflow::ops::offsets::parse_duration(s)?;
        return Ok(
            onceflow::model::event::now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        );
    }
    onceflow::ops::offsets::parse_datetime(s)
}
