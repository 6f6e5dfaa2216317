//! `onceflow topics create|check`: every topic of the configured inputs and adapters.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use onceflow::config::Settings;
use onceflow::ops;

/// `topics` verbs.
#[derive(Subcommand)]
pub enum TopicsVerb {
    /// Create the missing topics, then report any existing topic that differs from the plan.
    Create,
    /// Report every difference between the cluster and the plan; exit 1 if there is one.
    Check,
}

/// Runs a `topics` verb.
pub async fn run(verb: TopicsVerb, settings: Settings) -> anyhow::Result<ExitCode> {
    match verb {
        TopicsVerb::Create => {
            let report = ops::topics::create(&settings)
                .await
                .context("topics create")?;
            println!(
                "topics: {} planned, {} created",
                report.planned,
                report.created.len()
            );
            for name in &report.created {
                println!("  created {name}");
            }
            Ok(print_diffs(&report.diffs))
        }
        TopicsVerb::Check => {
            let diffs = ops::topics::check(&settings)
                .await
                .context("topics check")?;
            Ok(print_diffs(&diffs))
        }
    }
}

fn print_diffs(diffs: &[onceflow::kafka::admin::TopicDiff]) -> ExitCode {
    if diffs.is_empty() {
        println!("topics: every planned topic exists with the planned settings");
        return ExitCode::SUCCESS;
    }
    println!("topics: {} difference(s) from the plan:", diffs.len());
    for d in diffs {
        println!("  {d}");
    }
    ExitCode::from(1)
}
