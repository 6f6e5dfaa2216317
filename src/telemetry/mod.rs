//! Structured logging set-up, metric names ([`metrics`]), the operations endpoint of every role
//! ([`endpoint`]: /metrics, /healthz, /readyz) and PII masking ([`mask`]).
//!
//! Invariants:
//! - Logs go to stderr, so stdout stays free for a command's own output (reports, JSON).
//! - The level comes from `RUST_LOG` (default `info`); the format is chosen once at start-up.
//! - Nothing logs raw event payloads: they carry PII.

pub mod endpoint;
pub mod mask;
pub mod metrics;
pub mod trace;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object a line, for machines.
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal; files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init fails only when a subscriber is already installed, which is fine.
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
