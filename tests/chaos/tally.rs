//! The end of a run: what Kafka and the providers hold, against what the sender was told.
//! Every outbox, results topic and DLQ is read from the beginning with `read_committed`; values
//! are decoded through the registry. Per adapter:
//! - commands per accepted event: exactly 1 for an event the adapter decides, unless that event
//!   is in the adapter's process DLQ with a reason (then 0 commands);
//! - effects per command at the provider: exactly 1, unless the command is in the deliver DLQ
//!   with a reason (then at most 1); receipts per command at most 1.
//!
//! Anything else is a loss (0 where 1 was due, with no dead letter) or a duplicate (2 or more).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use onceflow::codec::{AvroCodec, Codec};
use onceflow::config::Settings;
use onceflow::kafka::client::{self, Isolation, StartAt};
use onceflow::kafka::names::{Names, Stage};
use onceflow::model::headers::ErrorEnvelope;
use onceflow::model::json_avro;
use onceflow_sandbox::{Provider, Sandbox};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::sender::Kind;

/// One record read back: its value bytes and, on a DLQ, its error envelope.
struct Raw {
    value: Vec<u8>,
    envelope: Option<ErrorEnvelope>,
}

/// Every record of `topic` a `read_committed` reader sees, until each partition reaches its
/// high watermark (or nothing arrives for 10 s).
fn read(s: &Settings, topic: &str) -> Vec<Raw> {
    let c: BaseConsumer = client::consumer(
        &s.kafka,
        "chaos.reader",
        "chaos.reader",
        Isolation::ReadCommitted,
        StartAt::Earliest,
    )
    .create()
    .expect("a reader");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut high = Vec::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("a partition");
        let (_, hw) = c
            .fetch_watermarks(topic, p.id(), Duration::from_secs(30))
            .expect("watermarks");
        high.push((p.id(), hw));
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last = Instant::now();
    loop {
        // An error is a broker that does not answer (yet); the reader goes on with the others.
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push(Raw {
                value: m.payload().unwrap_or_default().to_vec(),
                envelope: ErrorEnvelope::read(m.headers()),
            });
            last = Instant::now();
            continue;
        }
        let pos = c.position().expect("position");
        let at_end = high.iter().all(|&(p, hw)| {
            hw == 0
                || matches!(pos.find_partition(topic, p).map(|e| e.offset()),
                            Some(Offset::Offset(o)) if o >= hw)
        });
        if at_end || last.elapsed() > Duration::from_secs(10) {
            return out;
        }
    }
}

/// Decodes `raw` values to JSON (Avro through the registry, schema ids cached).
async fn decode(codec: &AvroCodec, raw: &[Raw]) -> Vec<serde_json::Value> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        match codec.decode(&r.value).await {
            Ok(d) => out.push(json_avro::to_json(&d.value)),
            Err(e) => out.push(serde_json::json!({"undecodable": e.to_string()})),
        }
    }
    out
}

async fn read_decoded(
    s: &Settings,
    codec: &AvroCodec,
    topic: &str,
) -> (Vec<Raw>, Vec<serde_json::Value>) {
    let (s2, t) = (s.clone(), topic.to_string());
    let raw = tokio::task::spawn_blocking(move || read(&s2, &t))
        .await
        .expect("reader thread");
    let json = decode(codec, &raw).await;
    (raw, json)
}

/// A dead letter's reason: its class and message, digits folded so reasons group.
fn reason(e: &Option<ErrorEnvelope>) -> String {
    match e {
        Some(e) => {
            let msg: String = e
                .message
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .take(90)
                .collect();
            format!("{:?}: {msg}", e.class).to_lowercase()
        }
        None => "(no envelope)".into(),
    }
}

/// The figures of one adapter.
#[derive(Debug, Default)]
pub struct Figures {
    /// The adapter.
    pub adapter: String,
    /// Accepted events it decides.
    pub expected: usize,
    /// Events by commands in the outbox (0, 1, 2+), over the accepted events it decides.
    pub commands_per_event: BTreeMap<usize, usize>,
    /// Commands in the outbox of events the sender was never told were accepted.
    pub commands_unaccepted: usize,
    /// Process DLQ by reason.
    pub process_dlq: BTreeMap<String, usize>,
    /// Extra dead letters of one event coming from other copies of it in the input.
    pub dead_letter_copies: usize,
    /// Dead letters of one input record beyond the first (a double).
    pub doubled_dead_letters: usize,
    /// Events lost in the process stage (no command, no dead letter).
    pub lost_events: usize,
    /// Events with 2+ commands, or a command and a dead letter.
    pub doubled_events: usize,
    /// Distinct commands in the outbox.
    pub commands: usize,
    /// Commands by effects at the provider (0, 1, 2+).
    pub effects_per_command: BTreeMap<usize, usize>,
    /// Commands with 2+ receipts.
    pub doubled_receipts: usize,
    /// Deliver DLQ by reason.
    pub deliver_dlq: BTreeMap<String, usize>,
    /// Commands without an effect and without a dead letter.
    pub lost_commands: usize,
    /// Commands with 2+ effects.
    pub doubled_effects: usize,
    /// Effects at the provider naming no command of the outbox.
    pub stray_effects: usize,
}

impl Figures {
    /// Whether nothing was lost or doubled.
    pub fn clean(&self) -> bool {
        self.lost_events == 0
            && self.doubled_events == 0
            && self.lost_commands == 0
            && self.doubled_effects == 0
            && self.doubled_receipts == 0
            && self.stray_effects == 0
            && self.doubled_dead_letters == 0
    }
}

/// Whether `adapter` decides events of `kind` (billing refuses a `RefusedInvoice`, which is then
/// due in its process DLQ: the accounting below accepts either a command or a dead letter).
fn decides(adapter: &str, kind: Kind) -> bool {
    matches!(
        (adapter, kind),
        ("crm", Kind::Lead) | ("billing", Kind::Invoice | Kind::RefusedInvoice) | ("analytics", _)
    )
}

fn provider(adapter: &str) -> Provider {
    Provider::parse(adapter).expect("an adapter named like its provider")
}

/// Counts one adapter.
pub async fn adapter(
    s: &Settings,
    codec: &AvroCodec,
    sandbox: &Sandbox,
    adapter: &str,
    accepted: &BTreeMap<String, Kind>,
) -> Figures {
    let names = Names::new(s);
    let mut f = Figures {
        adapter: adapter.into(),
        ..Figures::default()
    };
    // ---- process stage: commands per accepted event
    let (_, outbox) = read_decoded(s, codec, &names.outbox(adapter)).await;
    let mut per_event: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut per_command: BTreeMap<String, usize> = BTreeMap::new();
    for c in &outbox {
        let event = c["meta"]["event_id"].as_str().unwrap_or("?").to_string();
        let command = c["meta"]["command_id"].as_str().unwrap_or("?").to_string();
        *per_command.entry(command.clone()).or_default() += 1;
        per_event.entry(event).or_default().insert(command);
    }
    let (raw, dlq) = read_decoded(s, codec, &names.dlq(adapter, Stage::Process)).await;
    // Per event: its dead letters' origins (input topic, partition, offset). Copies of one event
    // in `events` (a sender's retry after a lost 202) are distinct input records, each refused
    // again (a dead-lettered event is not remembered as seen, so that a replay can process it);
    // one input record dead-lettered twice would be a double.
    let mut dead_events: BTreeMap<String, Vec<(String, i32, i64)>> = BTreeMap::new();
    for (r, v) in raw.iter().zip(&dlq) {
        *f.process_dlq.entry(reason(&r.envelope)).or_default() += 1;
        let id = v["meta"]["event_id"].as_str().unwrap_or("?").to_string();
        let origin = r
            .envelope
            .as_ref()
            .map(|e| (e.origin.topic.clone(), e.origin.partition, e.origin.offset))
            .unwrap_or_default();
        dead_events.entry(id).or_default().push(origin);
    }
    for origins in dead_events.values() {
        let distinct: BTreeSet<_> = origins.iter().collect();
        f.dead_letter_copies += distinct.len() - 1;
        f.doubled_dead_letters += origins.len() - distinct.len();
    }
    for (id, kind) in accepted {
        if !decides(adapter, *kind) {
            continue;
        }
        f.expected += 1;
        // Commands per event: outbox records (a command written twice counts twice).
        let n: usize = per_event
            .get(id)
            .map(|cs| cs.iter().map(|c| per_command[c]).sum())
            .unwrap_or(0);
        *f.commands_per_event.entry(n.min(2)).or_default() += 1;
        let dead = dead_events.get(id).map_or(0, Vec::len);
        match (n, dead) {
            (0, 0) => f.lost_events += 1,
            (1, 0) | (0, 1..) => {}
            _ => f.doubled_events += 1,
        }
    }
    f.commands_unaccepted = per_event
        .iter()
        .filter(|(e, _)| !accepted.contains_key(*e))
        .map(|(_, cs)| cs.len())
        .sum();

    // ---- deliver stage: effects per command
    f.commands = per_command.len();
    let mut effects: BTreeMap<String, usize> = BTreeMap::new();
    for e in sandbox.effects(provider(adapter)) {
        *effects.entry(e.command_id.unwrap_or_default()).or_default() += 1;
    }
    let (_, receipts) = read_decoded(s, codec, &names.results(adapter)).await;
    let mut receipt_count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &receipts {
        let id = r["command_id"].as_str().unwrap_or("?").to_string();
        *receipt_count.entry(id).or_default() += 1;
    }
    let (raw, dlq) = read_decoded(s, codec, &names.dlq(adapter, Stage::Deliver)).await;
    let mut dead_commands = BTreeSet::new();
    for (r, v) in raw.iter().zip(&dlq) {
        *f.deliver_dlq.entry(reason(&r.envelope)).or_default() += 1;
        dead_commands.insert(v["meta"]["command_id"].as_str().unwrap_or("?").to_string());
    }
    for id in per_command.keys() {
        let n = effects.get(id).copied().unwrap_or(0);
        *f.effects_per_command.entry(n.min(2)).or_default() += 1;
        if n >= 2 {
            f.doubled_effects += 1;
        } else if n == 0 && !dead_commands.contains(id) {
            f.lost_commands += 1;
        }
        if receipt_count.get(id).copied().unwrap_or(0) >= 2 {
            f.doubled_receipts += 1;
        }
    }
    f.stray_effects = effects
        .keys()
        .filter(|id| !per_command.contains_key(*id))
        .count();
    f
}

fn hist(h: &BTreeMap<usize, usize>) -> String {
    format!(
        "{} / {} / {}",
        h.get(&0).copied().unwrap_or(0),
        h.get(&1).copied().unwrap_or(0),
        h.get(&2).copied().unwrap_or(0)
    )
}

/// The table of every adapter, then the dead letters by reason.
pub fn table(figures: &[Figures]) -> String {
    let mut out = format!(
        "{:<10} {:>9} {:>24} {:>6} {:>5} {:>5} {:>9} {:>24} {:>6} {:>5} {:>5}\n",
        "adapter",
        "expected",
        "commands/event 0/1/2+",
        "p-DLQ",
        "lost",
        "dup",
        "commands",
        "effects/command 0/1/2+",
        "d-DLQ",
        "lost",
        "dup"
    );
    for f in figures {
        out += &format!(
            "{:<10} {:>9} {:>24} {:>6} {:>5} {:>5} {:>9} {:>24} {:>6} {:>5} {:>5}\n",
            f.adapter,
            f.expected,
            hist(&f.commands_per_event),
            f.process_dlq.values().sum::<usize>(),
            f.lost_events,
            f.doubled_events,
            f.commands,
            hist(&f.effects_per_command),
            f.deliver_dlq.values().sum::<usize>(),
            f.lost_commands,
            f.doubled_effects + f.doubled_receipts,
        );
    }
    for f in figures {
        for (stage, dlq) in [("process", &f.process_dlq), ("deliver", &f.deliver_dlq)] {
            for (reason, n) in dlq {
                out += &format!("  DLQ {}.{stage}: {n:>7}  {reason}\n", f.adapter);
            }
        }
        if f.dead_letter_copies > 0 {
            out += &format!(
                "  {}: {} of the process dead letters are further copies of an event already dead-lettered, from other input records (a sender's retry)\n",
                f.adapter, f.dead_letter_copies
            );
        }
        if f.commands_unaccepted + f.stray_effects + f.doubled_receipts + f.doubled_dead_letters > 0
        {
            out += &format!(
                "  {}: {} commands of events never acknowledged to the sender, {} effects of no outbox command, {} commands with 2+ receipts, {} input records dead-lettered twice\n",
                f.adapter,
                f.commands_unaccepted,
                f.stray_effects,
                f.doubled_receipts,
                f.doubled_dead_letters
            );
        }
    }
    out
}
