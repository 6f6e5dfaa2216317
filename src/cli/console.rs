//! `onceflow console`: the operator console on `console.listen` until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use onceflow::config::Settings;

use super::shutdown_signal;

/// Runs the console.
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let router = onceflow::console::build(&settings).context("console start-up")?;
    let listen = settings.console.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(listen = %listen, "console listening");
    onceflow::console::serve(listener, router, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
