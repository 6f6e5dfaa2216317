//! `onceflow-sandbox`: serves the provider sandboxes on loopback until SIGTERM or Ctrl-C, printing
//! `onceflow-sandbox listening on <addr>` first (so a parent can read the port of `--listen
//! 127.0.0.1:0`). Logs go to stderr and never contain request bodies.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;
use onceflow_sandbox::{Faults, Provider, Sandbox, SandboxConfig};
use serde_json::{Map, Value as Json};

#[derive(Parser)]
#[command(
    name = "onceflow-sandbox",
    version,
    about = "Provider sandboxes for onceflow (tests, demo)"
)]
struct Cli {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Environment variable with the API key the providers expect ("sandbox-key" if unset).
    #[arg(long, default_value = "ONCEFLOW_SANDBOX_API_KEY")]
    api_key_env: String,
    /// Environment variable with the webhook receiver's whsec_ secret.
    #[arg(long, default_value = "ONCEFLOW_SANDBOX_WEBHOOK_SECRET")]
    webhook_secret_env: String,
    /// A fault at start: `<provider>.<knob>=<JSON value>`, e.g. `billing.p_5xx=0.1`,
    /// `crm.latency_ms=[40,60]`, `email.storm=true`.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Seed of the fault dice.
    #[arg(long)]
    seed: Option<u64>,
}

fn faults(specs: &[String]) -> Result<BTreeMap<Provider, Faults>, String> {
    let mut knobs: BTreeMap<Provider, Map<String, Json>> = BTreeMap::new();
    for spec in specs {
        let (target, value) = spec
            .split_once('=')
            .ok_or(format!("{spec}: expected <provider>.<knob>=<value>"))?;
        let (provider, knob) = target
            .split_once('.')
            .ok_or(format!("{spec}: expected <provider>.<knob>"))?;
        let p = Provider::parse(provider).ok_or(format!("{spec}: no provider {provider}"))?;
        let v = serde_json::from_str(value).unwrap_or_else(|_| Json::String(value.into()));
        knobs.entry(p).or_default().insert(knob.into(), v);
    }
    knobs
        .into_iter()
        .map(|(p, k)| {
            serde_json::from_value::<Faults>(Json::Object(k))
                .map(|f| (p, f))
                .map_err(|e| format!("{}: {e}", p.as_str()))
        })
        .collect()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let faults = match faults(&cli.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("onceflow-sandbox: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let defaults = SandboxConfig::default();
    let config = SandboxConfig {
        listen: cli.listen,
        api_key: std::env::var(&cli.api_key_env).unwrap_or(defaults.api_key),
        webhook_secret: std::env::var(&cli.webhook_secret_env).unwrap_or(defaults.webhook_secret),
        faults,
        seed: cli.seed,
    };
    let running = match Sandbox::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("onceflow-sandbox: cannot listen on {}: {e}", cli.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("onceflow-sandbox listening on {}", running.addr);
    let _ = std::io::stdout().flush();
    tracing::info!(addr = %running.addr, "serving crm, email, billing, analytics and webhook sandboxes");
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    running.stop();
    std::process::ExitCode::SUCCESS
}
