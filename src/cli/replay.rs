//! `onceflow replay --adapter A --stage process|deliver`: dead letters copied back into that
//! adapter's stage, exactly once; a dry run (counts by reason) unless `--execute --reason "..."`.
//! A progress bar on a terminal, a JSON summary otherwise.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;
use onceflow::config::Settings;
use onceflow::ops::audit;
use onceflow::ops::replay::{self, Bound, ReplaySpec};

use super::dlq::{FilterArgs, Which};
use super::{parse_time, print_json};

/// `replay` arguments.
#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    which: Which,
    #[command(flatten)]
    filter: FilterArgs,
    /// Start at this time instead of the replay group's committed offsets (same forms as --since).
    #[arg(long, value_parser = parse_time, conflicts_with = "from_offset")]
    from: Option<i64>,
    /// Stop at this time instead of the DLQ's end as of now.
    #[arg(long, value_parser = parse_time, conflicts_with = "to_offset")]
    to: Option<i64>,
    /// Start at this offset in every partition.
    #[arg(long)]
    from_offset: Option<i64>,
    /// Stop before this offset in every partition.
    #[arg(long)]
    to_offset: Option<i64>,
    /// Copy the selected dead letters (the default is a dry run that changes nothing).
    #[arg(long, requires = "reason")]
    execute: bool,
    /// Why (recorded on every copy and on the audit topic); required with --execute.
    #[arg(long)]
    reason: Option<String>,
    /// Who replays (recorded); the OS user by default.
    #[arg(long)]
    operator: Option<String>,
    /// Dead letters per transaction.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// A JSON summary even on a terminal.
    #[arg(long)]
    json: bool,
}

/// Runs `replay`.
pub async fn run(args: ReplayArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let spec = ReplaySpec {
        adapter: args.which.adapter.clone(),
        stage: args.which.stage.into(),
        filter: args.filter.filter(None, None),
        from: args
            .from
            .map(Bound::Time)
            .or(args.from_offset.map(Bound::Offset)),
        to: args
            .to
            .map(Bound::Time)
            .or(args.to_offset.map(Bound::Offset)),
        execute: args.execute,
        reason: args.reason.clone(),
        operator: audit::operator(args.operator.as_deref()),
        batch: args.batch,
    };
    let human = !args.json && std::io::stdout().is_terminal();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:40}] {pos}/{len} dead letters read ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(if spec.execute { "replaying" } else { "dry run" });
        bar
    });
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total.max(done));
            b.set_position(done);
        }
    };
    let summary = replay::run(&settings, &spec, &mut progress).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !human {
        print_json(&summary)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if summary.dry_run {
        "would copy"
    } else {
        "copied"
    };
    println!(
        "{}: read {} dead letter(s), {verb} {} to {} in {} transaction(s)",
        summary.dlq, summary.scanned, summary.selected, summary.target, summary.transactions
    );
    println!("  {:>8}  REASON", "COUNT");
    for (reason, n) in &summary.by_reason {
        println!("  {n:>8}  {reason}");
    }
    if summary.dry_run {
        println!("dry run: nothing changed (add --execute --reason \"...\" to replay)");
    }
    Ok(ExitCode::SUCCESS)
}
