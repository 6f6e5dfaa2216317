//! The `[console]` section: the operator console's listener, its token and where it reads the
//! dispatchers' metrics (for the circuit breakers' state).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, SecretRef, invalid, socket};

/// The operator console (`onceflow console`).
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    /// Address of the console's pages and `/api`.
    pub listen: SocketAddr,
    /// The token every page and API call needs, from the environment or a file.
    pub token: Option<SecretRef>,
    /// Prometheus endpoints of the dispatchers (and processors) to read breaker states from.
    pub metrics: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConsole {
    listen: String,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    metrics: Vec<String>,
}

impl Default for RawConsole {
    fn default() -> Self {
        RawConsole {
            listen: "127.0.0.1:8090".into(),
            token_env: None,
            token_file: None,
            metrics: Vec::new(),
        }
    }
}

pub(super) fn validate(raw: RawConsole) -> Result<ConsoleSettings, ConfigError> {
    let token = match (raw.token_env, raw.token_file) {
        (None, None) => None,
        (Some(env), None) if !env.is_empty() => Some(SecretRef::Env(env)),
        (None, Some(path)) => Some(SecretRef::File(path)),
        _ => {
            return Err(invalid(
                "console.token_env",
                "set at most one of token_env or token_file",
            ));
        }
    };
    for (i, url) in raw.metrics.iter().enumerate() {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                format!("console.metrics[{i}]"),
                format!("`{url}` is not an http(s) URL"),
            ));
        }
    }
    Ok(ConsoleSettings {
        listen: socket("console.listen", &raw.listen)?,
        token,
        metrics: raw.metrics,
    })
}
