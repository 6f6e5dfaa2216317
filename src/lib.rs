//! onceflow: an exactly-once event pipeline on Kafka.
//!
//! ```text
//!  webhook / service ──► ingest ──► events (Avro, Confluent wire format)
//!                                      │  one consumer group per adapter: <ns>.<adapter>.process
//!                                      ▼
//!                                  processor ── one Kafka transaction per batch: dedupe changes,
//!                                      │        outbox commands, retry/DLQ records, input offsets
//!                                      ▼
//!                              <ns>.<adapter>.outbox ──► dispatcher ──► external API
//!                                                            │  ledger + results + offsets in one
//!                                                            ▼  transaction
//!                                   <ns>.<adapter>.<stage>.retry.<n> ──► … ──► <ns>.<adapter>.<stage>.dlq
//! ```
//!
//! Every arrow into a topic from a processor or dispatcher is inside that stage's transaction, and
//! every consumer reads with `isolation.level=read_committed`. The full design is DESIGN.md.
//!
//! Modules:
//! - [`adapters`]: pure decision logic per external system, and their registry.
//! - [`config`]: settings from TOML and `ONCEFLOW__SECTION__KEY`, validated once.
//! - [`kafka`]: client configs, topic and group names, admin, transactional helpers.
//! - [`codec`]: Avro in the Confluent wire format through a schema registry; the schema catalog.
//! - [`model`]: events, identities (event ids, entity keys), JSON ↔ Avro.
//! - [`ingest`]: the producer API and the signed HTTP intake.
//! - [`stage`]: the transactional-stage skeleton shared by the processor and the dispatcher
//!   (consume, handle, then commit outputs, store changes and offsets in one transaction);
//!   [`retry`] its tiers; [`dedupe`] the keyed changelog stores (dedupe store, effect ledger).
//! - [`processor`]: the stage that turns events into commands.
//! - [`dispatcher`]: the stage that delivers commands to external APIs, with its effect ledger,
//!   rate limit and circuit breaker.
//! - [`console`]: the operator console (web pages and a JSON API over [`ops`]).
//! - [`ops`]: operator verbs (`topics`, `dlq`, `offsets`, `replay`, `audit`, health) and the demo.
//! - [`telemetry`]: structured logging set-up.
//! - [`priority`]: a stage's helper threads below its loop on the CPU.

pub mod adapters;
pub mod codec;
pub mod config;
pub mod console;
pub mod dedupe;
pub mod dispatcher;
pub mod ingest;
pub mod kafka;
pub mod model;
pub mod ops;
pub mod priority;
pub mod processor;
pub mod retry;
pub mod stage;
pub mod telemetry;
