//! The `onceflow` command: parse arguments, load and validate settings, set up telemetry, run the
//! chosen verb (`cli`, one file per verb). Exit code 0 on success, 1 when a check finds
//! differences or a refusal, 2 on a usage or configuration error (clap's convention), and 1 on
//! any other failure.

mod allocator;
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use onceflow::config::Settings;
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
    command: cli::Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogArg {
    Json,
    Text,
}

fn main() -> ExitCode {
    allocator::tune();
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
    let result = runtime.block_on(cli::run(cli.command, settings));
    // Do not wait for blocking threads still running: one may be a librdkafka call that never
    // returns (kafka::txn, STUCK_GRACE), abandoned by its stage.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("onceflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}
