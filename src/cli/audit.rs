//! `onceflow audit list`: the operator actions recorded on `<ns>.audit` (resets and replays).

use std::process::ExitCode;

use clap::Subcommand;
use onceflow::config::Settings;
use onceflow::kafka::names::Names;
use onceflow::ops::audit;

use super::{print_json, time};

/// `audit` verbs.
#[derive(Subcommand)]
pub enum AuditVerb {
    /// Every recorded action, oldest first.
    List {
        /// Only the newest N.
        #[arg(long)]
        last: Option<usize>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `audit` verb.
pub async fn run(verb: AuditVerb, settings: Settings) -> anyhow::Result<ExitCode> {
    let AuditVerb::List { last, json } = verb;
    let (k, t) = (settings.kafka.clone(), Names::new(&settings).audit());
    let mut records = tokio::task::spawn_blocking(move || audit::list(&k, &t)).await??;
    if let Some(n) = last {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    if json {
        print_json(&records)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<14} {:<14} {:<36} REASON",
        "WHEN", "WHO", "ACTION", "TARGET"
    );
    for r in &records {
        let count = r.detail["count"]
            .as_u64()
            .or_else(|| r.detail["plan"].as_array().map(|p| p.len() as u64));
        let what = match count {
            Some(n) => format!("{} ({n})", r.target),
            None => r.target.clone(),
        };
        println!(
            "{:<24} {:<14} {:<14} {:<36} {}",
            time(r.at),
            r.operator,
            r.action,
            what,
            r.reason.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
