//! `onceflow offsets show|reset`: a group's lag, and `kafka-consumer-groups --reset-offsets` with
//! its flags, dry run by default, `--execute` to apply (audited).

use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};
use onceflow::config::Settings;
use onceflow::kafka::names::Names;
use onceflow::model::event::now_ms;
use onceflow::ops::audit::{self, AuditRecord};
use onceflow::ops::offsets::{self, OffsetsError, ResetTo, Scope};
use serde_json::json;

use super::print_json;

/// `offsets` verbs.
#[derive(Subcommand)]
pub enum OffsetsVerb {
    /// Committed offset, log end and lag (records, not transaction markers) per partition.
    Show {
        /// The consumer group.
        #[arg(long)]
        group: String,
        /// Only these topics (TOPIC or TOPIC:P1,P2); every partition the group committed when
        /// omitted.
        #[arg(long)]
        topic: Vec<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reset a group's offsets; prints the plan (TOPIC PARTITION CURRENT NEW) and applies it only
    /// with --execute, refused while the group has members.
    Reset(ResetArgs),
}

/// `offsets reset`, with the flags of `kafka-consumer-groups --reset-offsets`.
#[derive(Args)]
#[command(group(ArgGroup::new("scope").required(true).args(["topic", "all_topics"])))]
#[command(group(ArgGroup::new("to").required(true).args([
    "to_earliest", "to_latest", "to_datetime", "by_duration", "to_offset", "shift_by", "to_current"
])))]
#[command(group(ArgGroup::new("mode").args(["dry_run", "execute"])))]
pub struct ResetArgs {
    /// The consumer group.
    #[arg(long)]
    group: String,
    /// TOPIC (every partition) or TOPIC:P1,P2 (repeatable).
    #[arg(long)]
    topic: Vec<String>,
    /// Every partition the group has committed offsets for.
    #[arg(long)]
    all_topics: bool,
    /// To the log start.
    #[arg(long)]
    to_earliest: bool,
    /// To the log end.
    #[arg(long)]
    to_latest: bool,
    /// To the first record at or after this time (RFC 3339 or YYYY-MM-DDTHH:mm:SS.sss[zone]).
    #[arg(long)]
    to_datetime: Option<String>,
    /// To the first record at or after now minus this ISO 8601 duration (PT1H, P1DT2H).
    #[arg(long)]
    by_duration: Option<String>,
    /// To this offset (clamped into the log).
    #[arg(long, allow_hyphen_values = true)]
    to_offset: Option<i64>,
    /// Move each committed offset by this many (negative: back), clamped into the log.
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
    /// To the committed offset (the log end where there is none).
    #[arg(long)]
    to_current: bool,
    /// Only print the plan (the default).
    #[arg(long)]
    dry_run: bool,
    /// Apply the plan and record it on <ns>.audit.
    #[arg(long)]
    execute: bool,
    /// Who resets (recorded); the OS user by default.
    #[arg(long)]
    operator: Option<String>,
    /// Why (recorded).
    #[arg(long)]
    reason: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl ResetArgs {
    fn to(&self) -> anyhow::Result<ResetTo> {
        Ok(if self.to_earliest {
            ResetTo::Earliest
        } else if self.to_latest {
            ResetTo::Latest
        } else if let Some(t) = &self.to_datetime {
            ResetTo::Datetime(offsets::parse_datetime(t).map_err(anyhow::Error::msg)?)
        } else if let Some(d) = &self.by_duration {
            ResetTo::Duration(offsets::parse_duration(d).map_err(anyhow::Error::msg)?)
        } else if let Some(o) = self.to_offset {
            ResetTo::Offset(o)
        } else if let Some(n) = self.shift_by {
            ResetTo::ShiftBy(n)
        } else {
            ResetTo::Current
        })
    }
}

/// Runs an `offsets` verb.
pub async fn run(verb: OffsetsVerb, settings: Settings) -> anyhow::Result<ExitCode> {
    match verb {
        OffsetsVerb::Show { group, topic, json } => {
            let (k, g) = (settings.kafka.clone(), group.clone());
            let rows = tokio::task::spawn_blocking(move || offsets::show(&k, &g, &topic)).await??;
            if json {
                print_json(&rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            let width = rows.iter().map(|r| r.topic.len()).max().unwrap_or(5).max(5);
            println!(
                "{:<width$} {:>9} {:>14} {:>14} {:>8}",
                "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"
            );
            for r in &rows {
                let current = r.current.map_or("-".to_string(), |c| c.to_string());
                println!(
                    "{:<width$} {:>9} {:>14} {:>14} {:>8}",
                    r.topic, r.partition, current, r.end, r.lag
                );
            }
            println!("total lag: {}", rows.iter().map(|r| r.lag).sum::<i64>());
            Ok(ExitCode::SUCCESS)
        }
        OffsetsVerb::Reset(args) => reset(args, settings).await,
    }
}

async fn reset(args: ResetArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let to = args.to()?;
    let scope = if args.all_topics {
        Scope::AllTopics
    } else {
        Scope::Topics(args.topic.clone())
    };
    let (k, g, sc) = (settings.kafka.clone(), args.group.clone(), scope.clone());
    let plan = tokio::task::spawn_blocking(move || offsets::plan(&k, &g, &sc, to))
        .await?
        .context("planning the reset")?;
    if args.json {
        print_json(&json!({"group": args.group, "executed": args.execute, "plan": plan}))?;
    } else {
        let width = plan.iter().map(|r| r.topic.len()).max().unwrap_or(5).max(5);
        println!(
            "{:<width$} {:>9} {:>14} {:>10}",
            "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"
        );
        for r in &plan {
            let current = r.current.map_or("-".to_string(), |c| c.to_string());
            println!(
                "{:<width$} {:>9} {:>14} {:>10}",
                r.topic, r.partition, current, r.new
            );
        }
    }
    if !args.execute {
        if !args.json {
            println!("dry run: nothing changed (add --execute to apply)");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (k, g, p) = (settings.kafka.clone(), args.group.clone(), plan.clone());
    match tokio::task::spawn_blocking(move || offsets::execute(&k, &g, &p)).await? {
        Ok(()) => {}
        Err(e @ OffsetsError::Active { .. }) => {
            eprintln!("onceflow: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).context("applying the reset"),
    }
    let record = AuditRecord {
        at: now_ms(),
        operator: audit::operator(args.operator.as_deref()),
        action: "offsets.reset".into(),
        target: args.group.clone(),
        reason: args.reason.clone(),
        detail: json!({"scope": format!("{scope:?}"), "to": format!("{to:?}"), "plan": plan}),
    };
    audit::write(&settings.kafka, &Names::new(&settings).audit(), &record)
        .await
        .context("recording the reset on the audit topic")?;
    if !args.json {
        println!(
            "executed: {} partition(s) of {} moved, recorded on the audit topic",
            plan.len(),
            args.group
        );
    }
    Ok(ExitCode::SUCCESS)
}
