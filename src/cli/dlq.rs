//! `onceflow dlq list|stats|show --adapter A --stage process|deliver`: dead letters with masked
//! previews, counts by class and reason, one record in full (masked).

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use onceflow::codec::AvroCodec;
use onceflow::config::Settings;
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::headers::ErrorClass;
use onceflow::ops::dlq::{self, DeadLetter, Filter, Preview};
use serde_json::json;

use super::{parse_time, print_json, time};

/// A stage, as the command line names it.
#[derive(Clone, Copy, ValueEnum)]
pub enum StageArg {
    /// The processor (events → commands).
    Process,
    /// The dispatcher (commands → external APIs).
    Deliver,
}

impl From<StageArg> for Stage {
    fn from(s: StageArg) -> Stage {
        match s {
            StageArg::Process => Stage::Process,
            StageArg::Deliver => Stage::Deliver,
        }
    }
}

/// Whose dead letters.
#[derive(Args)]
pub struct Which {
    /// The adapter.
    #[arg(long)]
    pub adapter: String,
    /// The stage whose DLQ to read.
    #[arg(long, value_enum, default_value = "process")]
    pub stage: StageArg,
}

/// Which dead letters (all of these must match).
#[derive(Args, Default)]
pub struct FilterArgs {
    /// Dead-lettered at or after: RFC 3339, YYYY-MM-DDTHH:mm:SS, or a duration back from now (PT1H).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Dead-lettered before (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
    /// Error class: retryable, permanent, decode, schema, timeout, in_doubt.
    #[arg(long, value_parser = parse_class)]
    pub class: Option<ErrorClass>,
    /// Text the error message contains (case-insensitive).
    #[arg(long = "error")]
    pub error: Option<String>,
    /// The record key (the entity key).
    #[arg(long)]
    pub key: Option<String>,
    /// The event id.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Only this partition (repeatable).
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
}

fn parse_class(s: &str) -> Result<ErrorClass, String> {
    ErrorClass::parse(s).ok_or_else(|| {
        let all: Vec<&str> = ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        format!("`{s}` is not one of {}", all.join(", "))
    })
}

impl FilterArgs {
    /// The library filter, with an offset range.
    pub fn filter(&self, from_offset: Option<i64>, to_offset: Option<i64>) -> Filter {
        Filter {
            since: self.since,
            until: self.until,
            class: self.class,
            reason: self.error.clone(),
            key: self.key.clone(),
            event_id: self.event_id.clone(),
            partitions: (!self.partitions.is_empty()).then(|| self.partitions.clone()),
            from_offset,
            to_offset,
        }
    }
}

/// `dlq` verbs.
#[derive(Subcommand)]
pub enum DlqVerb {
    /// Dead letters with a masked preview of each, oldest first per partition.
    List {
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        filter: FilterArgs,
        /// First offset to read in each partition.
        #[arg(long)]
        from_offset: Option<i64>,
        /// First offset not to read.
        #[arg(long)]
        to_offset: Option<i64>,
        /// Most dead letters shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts by error class and reason.
    Stats {
        #[command(flatten)]
        which: Which,
        #[command(flatten)]
        filter: FilterArgs,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: its error envelope and its decoded value, masked.
    Show {
        #[command(flatten)]
        which: Which,
        /// Its partition.
        #[arg(long)]
        partition: i32,
        /// Its offset.
        #[arg(long)]
        offset: i64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn as_json(d: &DeadLetter, p: &Preview) -> serde_json::Value {
    let e = d.envelope.as_ref();
    json!({
        "partition": d.partition, "offset": d.offset, "dead_lettered_at": d.timestamp,
        "class": e.map(|e| e.class.as_str()), "message": e.map(|e| &e.message),
        "attempt": e.map(|e| e.attempt), "first_failed_at": e.map(|e| e.first_failed_at),
        "http_status": e.and_then(|e| e.http_status),
        "origin": e.map(|e| json!({"topic": e.origin.topic, "partition": e.origin.partition, "offset": e.origin.offset})),
        "correlation_id": e.and_then(|e| e.correlation_id.clone()),
        "key": d.key, "record": p.record, "event_id": p.event_id, "command_id": p.command_id,
        "preview": p.fields, "value": p.masked, "hex": p.hex, "undecodable": p.undecodable,
    })
}

/// Runs a `dlq` verb.
pub async fn run(verb: DlqVerb, settings: Settings) -> anyhow::Result<ExitCode> {
    let names = Names::new(&settings);
    let codec = AvroCodec::new(&settings.registry)?;
    match verb {
        DlqVerb::List {
            which,
            filter,
            from_offset,
            to_offset,
            limit,
            json,
        } => {
            let topic = names.dlq(&which.adapter, which.stage.into());
            let f = filter.filter(from_offset, to_offset);
            let letters = dlq::select(&settings.kafka, &codec, &topic, &f, limit).await?;
            if json {
                let rows: Vec<_> = letters.iter().map(|(d, p)| as_json(d, p)).collect();
                print_json(&rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{topic}: {} dead letter(s) shown (limit {limit})",
                letters.len()
            );
            for (d, p) in &letters {
                let e = d.envelope.as_ref();
                println!(
                    "\n{:>3}:{:<8} {}  {:<10} attempt {}  {}",
                    d.partition,
                    d.offset,
                    d.timestamp.map(time).unwrap_or_default(),
                    e.map_or("?", |e| e.class.as_str()),
                    e.map_or(0, |e| e.attempt),
                    e.map_or("no envelope", |e| e.message.as_str()),
                );
                let what = p.record.as_deref().unwrap_or("undecodable");
                let id = p.event_id.as_deref().unwrap_or("-");
                println!("    {what} event {id}");
                for line in &p.fields {
                    println!("      {line}");
                }
                if let Some(hex) = &p.hex {
                    println!("      bytes: {hex}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqVerb::Stats {
            which,
            filter,
            json,
        } => {
            let topic = names.dlq(&which.adapter, which.stage.into());
            let f = filter.filter(None, None);
            let stats = if f.event_id.is_some() {
                let letters = dlq::select(&settings.kafka, &codec, &topic, &f, usize::MAX).await?;
                dlq::stats(letters.iter().map(|(d, _)| d))
            } else {
                let (k, t) = (settings.kafka.clone(), topic.clone());
                let letters = tokio::task::spawn_blocking(move || dlq::read(&k, &t, &f)).await??;
                dlq::stats(&letters)
            };
            if json {
                print_json(&stats)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{topic}: {} dead letter(s)", stats.total);
            if let (Some(first), Some(last)) = (stats.first, stats.last) {
                println!("  from {} to {}", time(first), time(last));
            }
            println!("\n  {:<12} {:>8}", "CLASS", "COUNT");
            for (class, n) in &stats.by_class {
                println!("  {class:<12} {n:>8}");
            }
            println!("\n  {:>8}  REASON", "COUNT");
            let mut reasons: Vec<_> = stats.by_reason.iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(a.1));
            for (reason, n) in reasons {
                println!("  {n:>8}  {reason}");
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqVerb::Show {
            which,
            partition,
            offset,
            json,
        } => {
            let topic = names.dlq(&which.adapter, which.stage.into());
            let f = Filter {
                partitions: Some(vec![partition]),
                from_offset: Some(offset),
                to_offset: Some(offset + 1),
                ..Filter::default()
            };
            let found = dlq::select(&settings.kafka, &codec, &topic, &f, 1).await?;
            let Some((d, p)) = found.first() else {
                eprintln!(
                    "onceflow: no dead letter at {topic} partition {partition} offset {offset}"
                );
                return Ok(ExitCode::FAILURE);
            };
            let j = as_json(d, p);
            if json {
                print_json(&j)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!("{}", d.coordinates());
            for k in [
                "class",
                "message",
                "attempt",
                "http_status",
                "correlation_id",
                "origin",
                "record",
                "event_id",
                "command_id",
            ] {
                if !j[k].is_null() {
                    println!("  {k:<15} {}", j[k]);
                }
            }
            if let Some(e) = &d.envelope {
                println!("  {:<15} {}", "first_failed_at", time(e.first_failed_at));
            }
            match (&p.masked, &p.hex) {
                (Some(v), _) => println!("  value (masked):\n{}", serde_json::to_string_pretty(v)?),
                (None, Some(hex)) => println!(
                    "  bytes: {hex}\n  undecodable: {}",
                    p.undecodable.as_deref().unwrap_or("")
                ),
                (None, None) => println!("  no value"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
