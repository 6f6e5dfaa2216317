//! `onceflow probe URL`: a container health check without curl in the image. GETs `URL` (a role's
//! `/healthz` or `/readyz`) and exits 0 on a 2xx answer, 1 on anything else (another status, no
//! answer within the timeout), printing why on stderr.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Arguments of `onceflow probe`.
#[derive(Args)]
pub struct ProbeArgs {
    /// The URL to GET, e.g. http://127.0.0.1:9465/readyz.
    url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
}

/// Runs `onceflow probe`.
pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(args.timeout_ms))
        .build()?;
    match client.get(&args.url).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("onceflow probe: {} answered {}", args.url, r.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("onceflow probe: {}: {e}", args.url);
            Ok(ExitCode::FAILURE)
        }
    }
}
