//! Commands: the work an adapter decided for one external system, written to its outbox.
//!
//! Invariants:
//! - A command's id is deterministic from (event id, adapter, index of the command among that
//!   event's commands): redoing a batch after a crash yields the same ids, and the dispatcher sends
//!   the id as the external system's idempotency key.
//! - A command carries the event's id and correlation id, and its partition key is the event's
//!   entity key, so all work for one entity stays ordered in one outbox partition.
//! - [`Command::to_avro`] validates the data against the command's schema, like events.

use std::fmt;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::datum_json::EnvelopeError;
use super::event::{Event, now_ms};
use super::identity;
use super::json_avro::{FieldError, Meta, MetaValue, envelope_to_avro, envelope_to_datum};
use crate::codec::{RecordSchema, Written};

/// The command types of the built-in adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandType {
    /// Create or update a CRM contact by e-mail.
    CrmUpsertContact,
    /// Send one transactional or campaign e-mail.
    EmailSend,
    /// Create an invoice (Stripe-style, with an idempotency key).
    InvoiceCreate,
    /// Record an analytics track call.
    AnalyticsTrack,
    /// POST the event to a configured URL, signed.
    WebhookPost,
}

impl CommandType {
    /// Every type.
    pub const ALL: [CommandType; 5] = [
        CommandType::CrmUpsertContact,
        CommandType::EmailSend,
        CommandType::InvoiceCreate,
        CommandType::AnalyticsTrack,
        CommandType::WebhookPost,
    ];

    /// Record name.
    pub fn name(self) -> &'static str {
        match self {
            CommandType::CrmUpsertContact => "CrmUpsertContact",
            CommandType::EmailSend => "EmailSend",
            CommandType::InvoiceCreate => "InvoiceCreate",
            CommandType::AnalyticsTrack => "AnalyticsTrack",
            CommandType::WebhookPost => "WebhookPost",
        }
    }

    /// Schema file stem in `schemas/`.
    pub fn schema_name(self) -> &'static str {
        match self {
            CommandType::CrmUpsertContact => "crm_upsert_contact",
            CommandType::EmailSend => "email_send",
            CommandType::InvoiceCreate => "invoice_create",
            CommandType::AnalyticsTrack => "analytics_track",
            CommandType::WebhookPost => "webhook_post",
        }
    }

    /// The type whose record has this full name.
    pub fn from_record_name(full_name: &str) -> Option<CommandType> {
        let short = full_name.rsplit('.').next().unwrap_or(full_name);
        CommandType::ALL.into_iter().find(|t| t.name() == short)
    }
}

impl fmt::Display for CommandType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The envelope every command carries (`io.onceflow.CommandMeta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMeta {
    /// Idempotency key towards the external system.
    pub command_id: String,
    /// The event it was decided from.
    pub event_id: String,
    /// The event's correlation id.
    pub correlation_id: String,
    /// Adapter that decided and delivers it.
    pub adapter: String,
    /// The originating event's type.
    pub event_type: String,
    /// When it was decided, epoch ms.
    pub created_at: i64,
}

impl Meta for CommandMeta {
    const FIELDS: &'static [&'static str] = &[
        "command_id",
        "event_id",
        "correlation_id",
        "adapter",
        "event_type",
        "created_at",
    ];

    fn field(&self, name: &str) -> Option<MetaValue<'_>> {
        Some(match name {
            "command_id" => MetaValue::Str(&self.command_id),
            "event_id" => MetaValue::Str(&self.event_id),
            "correlation_id" => MetaValue::Str(&self.correlation_id),
            "adapter" => MetaValue::Str(&self.adapter),
            "event_type" => MetaValue::Str(&self.event_type),
            "created_at" => MetaValue::Long(self.created_at),
            _ => return None,
        })
    }
}

/// A command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Envelope.
    pub meta: CommandMeta,
    /// Type.
    pub command_type: CommandType,
    /// Partition key (the event's entity key).
    pub key: String,
    /// The type's data fields.
    pub data: Map<String, Json>,
}

impl Command {
    /// The `index`-th command `adapter` decided from `event`.
    pub fn new(
        event: &Event,
        adapter: &str,
        index: usize,
        command_type: CommandType,
        data: Map<String, Json>,
    ) -> Result<Command, FieldError> {
        Ok(Command {
            meta: CommandMeta {
                command_id: identity::command_id(&event.meta.event_id, adapter, index),
                event_id: event.meta.event_id.clone(),
                correlation_id: event.meta.correlation_id.clone(),
                adapter: adapter.to_string(),
                event_type: event.meta.event_type.clone(),
                created_at: now_ms(),
            },
            command_type,
            key: event.entity_key()?,
            data,
        })
    }

    /// The command's Avro record in `schema`.
    pub fn to_avro(&self, schema: &RecordSchema) -> Result<Value, FieldError> {
        envelope_to_avro(&self.meta, &self.data, schema.schema(), "")
    }

    /// The command's Avro datum in `schema` (what [`Command::to_avro`] holds, as bytes), written
    /// without building the record first.
    pub fn to_datum(&self, schema: &RecordSchema) -> Result<Vec<u8>, FieldError> {
        envelope_to_datum(&self.meta, &self.data, schema.schema(), "")
    }

    /// A command from its record's datum, read straight into its envelope and data
    /// ([`datum_json`](super::datum_json)); `key` is the record's key.
    pub fn from_written(
        written: &Written<'_>,
        command_type: CommandType,
        key: String,
    ) -> Result<Command, EnvelopeError> {
        let (meta, data) = super::datum_json::envelope(written)?;
        Ok(Command {
            meta,
            command_type,
            key,
            data,
        })
    }
}
