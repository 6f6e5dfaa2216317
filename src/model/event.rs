//! Events: the types onceflow knows, their typed bodies, the `meta` envelope every event carries,
//! and the mapping between an [`Event`] and its Avro record.
//!
//! Invariants:
//! - An event's `meta.event_id` is fixed at construction from its source identity
//!   ([`identity`](super::identity)), never from the time it was received.
//! - [`Event::to_avro`] is the one gate into Kafka for both the HTTP intake and the Rust producer:
//!   it checks the data against the Avro schema (unknown fields, types, required fields) and
//!   against the type's business rules (a plausible e-mail, an ISO currency, a positive amount),
//!   with errors that name the field as the sender wrote it (`data.email`).
//! - The partition key is the entity key of the type: the hashed normalised e-mail of a person,
//!   the content id, the billing customer id. Every duplicate of an event therefore lands in the
//!   same partition as the original.

use std::collections::BTreeMap;
use std::fmt;

use apache_avro::types::Value;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::datum_json::EnvelopeError;
use super::identity;
use super::json_avro::{FieldError, Meta, MetaValue, envelope_from_avro, envelope_to_datum};
use crate::codec::{RecordSchema, Written};

/// The event types of the product's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A person left their contact details.
    LeadCaptured,
    /// A piece of content went live.
    ContentPublished,
    /// A campaign message is due for one recipient.
    CampaignTriggered,
    /// Billing should issue an invoice.
    InvoiceRequested,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 4] = [
        EventType::LeadCaptured,
        EventType::ContentPublished,
        EventType::CampaignTriggered,
        EventType::InvoiceRequested,
    ];

    /// The name in the HTTP contract and in `meta.type`.
    pub fn name(self) -> &'static str {
        match self {
            EventType::LeadCaptured => "LeadCaptured",
            EventType::ContentPublished => "ContentPublished",
            EventType::CampaignTriggered => "CampaignTriggered",
            EventType::InvoiceRequested => "InvoiceRequested",
        }
    }

    /// The schema file stem in `schemas/` (`lead_captured` for `lead_captured.v2.avsc`).
    pub fn schema_name(self) -> &'static str {
        match self {
            EventType::LeadCaptured => "lead_captured",
            EventType::ContentPublished => "content_published",
            EventType::CampaignTriggered => "campaign_triggered",
            EventType::InvoiceRequested => "invoice_requested",
        }
    }

    /// The type with this contract name.
    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The type whose Avro record has this full name (`io.onceflow.events.LeadCaptured`).
    pub fn from_record_name(full_name: &str) -> Option<EventType> {
        let short = full_name.rsplit('.').next().unwrap_or(full_name);
        EventType::from_name(short)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The envelope every event carries (`io.onceflow.EventMeta`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Idempotency key: deterministic from (source, source event id).
    pub event_id: String,
    /// Who sent it (the `{source}` of the intake URL, or the producing service).
    pub source: String,
    /// The sender's id of the event, or one derived from its payload.
    pub source_event_id: String,
    /// The event type's name.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it happened, epoch milliseconds.
    pub occurred_at: i64,
    /// When onceflow received it, epoch milliseconds.
    pub received_at: i64,
    /// Traces the event through every stage.
    pub correlation_id: String,
    /// Version of the schema it was written with.
    pub schema_version: i32,
}

impl Meta for EventMeta {
    const FIELDS: &'static [&'static str] = &[
        "event_id",
        "source",
        "source_event_id",
        "type",
        "occurred_at",
        "received_at",
        "correlation_id",
        "schema_version",
    ];

    fn field(&self, name: &str) -> Option<MetaValue<'_>> {
        Some(match name {
            "event_id" => MetaValue::Str(&self.event_id),
            "source" => MetaValue::Str(&self.source),
            "source_event_id" => MetaValue::Str(&self.source_event_id),
            "type" => MetaValue::Str(&self.event_type),
            "occurred_at" => MetaValue::Long(self.occurred_at),
            "received_at" => MetaValue::Long(self.received_at),
            "correlation_id" => MetaValue::Str(&self.correlation_id),
            "schema_version" => MetaValue::Long(i64::from(self.schema_version)),
            _ => return None,
        })
    }
}

/// `LeadCaptured` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadCaptured {
    /// Contact e-mail (PII).
    pub email: String,
    /// Given name (PII).
    #[serde(default)]
    pub first_name: Option<String>,
    /// Family name (PII).
    #[serde(default)]
    pub last_name: Option<String>,
    /// Company.
    #[serde(default)]
    pub company: Option<String>,
    /// Phone (PII).
    #[serde(default)]
    pub phone: Option<String>,
    /// The form or channel that captured the lead.
    pub form_id: String,
    /// Marketing consent given.
    #[serde(default)]
    pub consent_marketing: bool,
    /// Campaign that brought the lead (v2; absent in v1 records).
    #[serde(default)]
    pub utm_campaign: Option<String>,
}

/// `ContentPublished` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentPublished {
    /// Content id.
    pub content_id: String,
    /// Title.
    pub title: String,
    /// Public URL.
    pub url: String,
    /// Author's e-mail (PII).
    #[serde(default)]
    pub author_email: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Locale, e.g. `en`.
    #[serde(default = "default_locale")]
    pub locale: String,
}

fn default_locale() -> String {
    "en".into()
}

/// `CampaignTriggered` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignTriggered {
    /// Campaign id.
    pub campaign_id: String,
    /// Recipient (PII).
    pub recipient_email: String,
    /// Message template.
    pub template_id: String,
    /// When the message is due, epoch milliseconds.
    pub scheduled_at: i64,
    /// Template variables.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// `InvoiceRequested` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceRequested {
    /// Billing customer id.
    pub customer_id: String,
    /// Billing e-mail (PII).
    pub customer_email: String,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// Amount in minor units (cents).
    pub amount_minor: i64,
    /// Line description.
    pub description: String,
    /// Due date, epoch milliseconds.
    #[serde(default)]
    pub due_at: Option<i64>,
}

/// The typed data of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// See [`LeadCaptured`].
    LeadCaptured(LeadCaptured),
    /// See [`ContentPublished`].
    ContentPublished(ContentPublished),
    /// See [`CampaignTriggered`].
    CampaignTriggered(CampaignTriggered),
    /// See [`InvoiceRequested`].
    InvoiceRequested(InvoiceRequested),
}

impl EventBody {
    /// The body's type.
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::LeadCaptured(_) => EventType::LeadCaptured,
            EventBody::ContentPublished(_) => EventType::ContentPublished,
            EventBody::CampaignTriggered(_) => EventType::CampaignTriggered,
            EventBody::InvoiceRequested(_) => EventType::InvoiceRequested,
        }
    }

    /// The body as a JSON object.
    pub fn to_json(&self) -> Map<String, Json> {
        let json = match self {
            EventBody::LeadCaptured(b) => serde_json::to_value(b),
            EventBody::ContentPublished(b) => serde_json::to_value(b),
            EventBody::CampaignTriggered(b) => serde_json::to_value(b),
            EventBody::InvoiceRequested(b) => serde_json::to_value(b),
        };
        match json {
            Ok(Json::Object(map)) => map,
            // Plain structs of strings and numbers always serialise to an object.
            _ => Map::new(),
        }
    }

    /// Reads a body of type `t` from its JSON data.
    pub fn from_json(
        t: EventType,
        data: &Map<String, Json>,
    ) -> Result<EventBody, serde_json::Error> {
        let data = Json::Object(data.clone());
        Ok(match t {
            EventType::LeadCaptured => EventBody::LeadCaptured(serde_json::from_value(data)?),
            EventType::ContentPublished => {
                EventBody::ContentPublished(serde_json::from_value(data)?)
            }
            EventType::CampaignTriggered => {
                EventBody::CampaignTriggered(serde_json::from_value(data)?)
            }
            EventType::InvoiceRequested => {
                EventBody::InvoiceRequested(serde_json::from_value(data)?)
            }
        })
    }
}

/// An event: envelope plus data (a JSON object in the type's schema).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The envelope.
    pub meta: EventMeta,
    /// The type's data fields.
    pub data: Map<String, Json>,
    /// The entity key once computed (an e-mail's costs an NFKC normalisation and a SHA-256, and
    /// both the adapter and [`Command::new`](super::command::Command::new) ask for it).
    key_memo: KeyMemo,
}

/// An entity key computed from a data field, kept with that field's value: a key is reused only
/// while the field still holds the value it came from, so changing `data` never serves a stale
/// key. Not part of an event's identity (two events equal but for it are equal).
#[derive(Debug, Clone, Default)]
struct KeyMemo(std::sync::OnceLock<(String, String)>);

impl PartialEq for KeyMemo {
    fn eq(&self, _: &KeyMemo) -> bool {
        true
    }
}

impl KeyMemo {
    /// The key of `value`: the one kept if it came from `value`, else `compute(value)` (kept when
    /// nothing is kept yet).
    fn get(&self, value: &str, compute: impl FnOnce(&str) -> String) -> String {
        if let Some((from, key)) = self.0.get()
            && from == value
        {
            return key.clone();
        }
        let key = compute(value);
        let _ = self.0.set((value.to_string(), key.clone()));
        key
    }
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn field_str<'a>(data: &'a Map<String, Json>, name: &str) -> Result<&'a str, FieldError> {
    data.get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| FieldError {
            field: format!("data.{name}"),
            detail: "is required and must be a string".into(),
        })
}

fn reject(field: &str, detail: &str) -> FieldError {
    FieldError {
        field: format!("data.{field}"),
        detail: detail.into(),
    }
}

impl Event {
    /// An event of `event_type` from `source`. Without a `source_event_id` the id is derived from
    /// the payload and the second it occurred in. Without a `correlation_id` a new one is made.
    pub fn new(
        event_type: EventType,
        source: &str,
        source_event_id: Option<&str>,
        occurred_at_ms: i64,
        data: Map<String, Json>,
        correlation_id: Option<String>,
    ) -> Event {
        let source_event_id = match source_event_id {
            Some(id) => id.to_string(),
            None => identity::derived_source_event_id(
                event_type.name(),
                &Json::Object(data.clone()),
                occurred_at_ms,
            ),
        };
        Event {
            meta: EventMeta {
                event_id: identity::event_id(source, &source_event_id),
                source: source.to_string(),
                source_event_id,
                event_type: event_type.name().to_string(),
                occurred_at: occurred_at_ms,
                received_at: now_ms(),
                correlation_id: correlation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                schema_version: 0,
            },
            data,
            key_memo: KeyMemo::default(),
        }
    }

    /// An event from typed data (the Rust producer API).
    pub fn from_body(
        source: &str,
        source_event_id: Option<&str>,
        occurred_at_ms: i64,
        body: &EventBody,
    ) -> Event {
        Event::new(
            body.event_type(),
            source,
            source_event_id,
            occurred_at_ms,
            body.to_json(),
            None,
        )
    }

    /// The event's type, when `meta.type` names a known one.
    pub fn event_type(&self) -> Option<EventType> {
        EventType::from_name(&self.meta.event_type)
    }

    /// The typed body.
    pub fn body(&self) -> Result<EventBody, FieldError> {
        let t = self.event_type().ok_or_else(|| FieldError {
            field: "type".into(),
            detail: format!("unknown event type `{}`", self.meta.event_type),
        })?;
        EventBody::from_json(t, &self.data).map_err(|e| FieldError {
            field: "data".into(),
            detail: e.to_string(),
        })
    }

    /// The partition key: the entity the event is about.
    pub fn entity_key(&self) -> Result<String, FieldError> {
        let t = self.event_type().ok_or_else(|| FieldError {
            field: "type".into(),
            detail: "unknown event type".into(),
        })?;
        Ok(match t {
            EventType::LeadCaptured => self
                .key_memo
                .get(field_str(&self.data, "email")?, identity::email_key),
            EventType::CampaignTriggered => self.key_memo.get(
                field_str(&self.data, "recipient_email")?,
                identity::email_key,
            ),
            EventType::ContentPublished => field_str(&self.data, "content_id")?.to_string(),
            EventType::InvoiceRequested => field_str(&self.data, "customer_id")?.to_string(),
        })
    }

    /// The type's business rules, beyond what the schema says.
    fn check_rules(&self, t: EventType) -> Result<(), FieldError> {
        let email = |name: &str| -> Result<(), FieldError> {
            if identity::plausible_email(&identity::normalize_email(field_str(&self.data, name)?)) {
                Ok(())
            } else {
                Err(reject(name, "is not a valid e-mail address"))
            }
        };
        let non_empty = |name: &str| -> Result<(), FieldError> {
            if field_str(&self.data, name)?.trim().is_empty() {
                Err(reject(name, "must not be empty"))
            } else {
                Ok(())
            }
        };
        match t {
            EventType::LeadCaptured => {
                email("email")?;
                non_empty("form_id")
            }
            EventType::CampaignTriggered => {
                email("recipient_email")?;
                non_empty("campaign_id")?;
                non_empty("template_id")
            }
            EventType::ContentPublished => {
                non_empty("content_id")?;
                let url = field_str(&self.data, "url")?;
                if url.starts_with("https://") || url.starts_with("http://") {
                    Ok(())
                } else {
                    Err(reject("url", "must be an http(s) URL"))
                }
            }
            EventType::InvoiceRequested => {
                non_empty("customer_id")?;
                email("customer_email")?;
                let currency = field_str(&self.data, "currency")?;
                if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(reject("currency", "must be an ISO 4217 code such as EUR"));
                }
                match self.data.get("amount_minor").and_then(Json::as_i64) {
                    Some(n) if n > 0 => Ok(()),
                    _ => Err(reject(
                        "amount_minor",
                        "must be a positive integer (minor units)",
                    )),
                }
            }
        }
    }

    /// The Avro record of this event in `schema` (version `version`); checks the schema and the
    /// type's rules. Sets `meta.schema_version`.
    pub fn to_avro(&mut self, schema: &RecordSchema, version: u32) -> Result<Value, FieldError> {
        let datum = self.to_datum(schema, version)?;
        crate::codec::decode_datum(schema.schema(), &datum).map_err(|detail| FieldError {
            field: "data".into(),
            detail,
        })
    }

    /// [`Event::to_avro`]'s record as its Avro datum, written without building the record first.
    pub fn to_datum(&mut self, schema: &RecordSchema, version: u32) -> Result<Vec<u8>, FieldError> {
        let t = self.event_type().ok_or_else(|| FieldError {
            field: "type".into(),
            detail: format!("unknown event type `{}`", self.meta.event_type),
        })?;
        self.meta.schema_version = i32::try_from(version).unwrap_or(i32::MAX);
        let datum = envelope_to_datum(&self.meta, &self.data, schema.schema(), "data")?;
        self.check_rules(t)?;
        Ok(datum)
    }

    /// The event in a record's datum, read straight into its envelope and data
    /// ([`datum_json`](super::datum_json)): what [`Event::from_avro`] gives for the decoded
    /// record, without the decoded record.
    pub fn from_written(written: &Written<'_>) -> Result<Event, EnvelopeError> {
        let (meta, data) = super::datum_json::envelope(written)?;
        Ok(Event {
            meta,
            data,
            key_memo: KeyMemo::default(),
        })
    }

    /// The event in an Avro record (as decoded, possibly resolved to a reader schema).
    pub fn from_avro(value: &Value) -> Result<Event, FieldError> {
        let (meta, data) = envelope_from_avro(value)?;
        Ok(Event {
            meta,
            data,
            key_memo: KeyMemo::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lead_schema() -> RecordSchema {
        RecordSchema::parse(
            "test",
            r#"{"type":"record","name":"LeadCaptured","namespace":"io.onceflow.events","fields":[
              {"name":"meta","type":{"type":"record","name":"EventMeta","namespace":"io.onceflow","fields":[
                {"name":"event_id","type":"string"},{"name":"source","type":"string"},
                {"name":"source_event_id","type":"string"},{"name":"type","type":"string"},
                {"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"received_at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"correlation_id","type":"string"},{"name":"schema_version","type":"int"}]}},
              {"name":"email","type":"string"},
              {"name":"first_name","type":["null","string"],"default":null},
              {"name":"form_id","type":"string"},
              {"name":"consent_marketing","type":"boolean","default":false}]}"#,
        )
        .unwrap()
    }

    fn lead(data: Json) -> Event {
        let Json::Object(map) = data else {
            panic!("object")
        };
        Event::new(
            EventType::LeadCaptured,
            "demo",
            Some("L-1"),
            1_700_000_000_000,
            map,
            Some("c-1".into()),
        )
    }

    #[test]
    fn a_lead_maps_to_avro_and_back() {
        let mut e = lead(json!({"email": "Ada@Example.com", "form_id": "contact"}));
        let schema = lead_schema();
        let v = e.to_avro(&schema, 1).unwrap();
        assert!(v.validate(schema.schema()));
        let back = Event::from_avro(&v).unwrap();
        assert_eq!(back.meta, e.meta);
        assert_eq!(back.data["email"], "Ada@Example.com");
        assert_eq!(
            back.data["consent_marketing"], false,
            "defaults are filled in"
        );
        assert_eq!(
            e.entity_key().unwrap(),
            identity::email_key("ada@example.com")
        );
        assert_eq!(e.meta.event_id, identity::event_id("demo", "L-1"));
        assert_eq!(e.meta.schema_version, 1);
    }

    #[test]
    fn the_entity_key_is_kept_only_while_its_field_is_unchanged() {
        let mut e = lead(json!({"email": "Ada@Example.com", "form_id": "contact"}));
        let unasked = e.clone();
        let ada = identity::email_key("ada@example.com");
        assert_eq!(e.entity_key().unwrap(), ada);
        assert_eq!(e, unasked, "the kept key is not part of the event");
        assert_eq!(e.entity_key().unwrap(), ada, "asked again: the kept key");
        let before = e.clone();
        e.data.insert("email".into(), json!("bob@example.com"));
        assert_eq!(
            e.entity_key().unwrap(),
            identity::email_key("bob@example.com")
        );
        assert_eq!(before.entity_key().unwrap(), ada);
    }

    #[test]
    fn rules_and_schema_name_the_field() {
        let schema = lead_schema();
        let field = |d: Json| lead(d).to_avro(&schema, 1).unwrap_err().field;
        assert_eq!(
            field(json!({"email": "not-an-email", "form_id": "f"})),
            "data.email"
        );
        assert_eq!(field(json!({"form_id": "f"})), "data.email");
        assert_eq!(
            field(json!({"email": "a@b.io", "form_id": " "})),
            "data.form_id"
        );
        assert_eq!(
            field(json!({"email": "a@b.io", "form_id": "f", "meta": {}})),
            "data.meta"
        );
    }

    #[test]
    fn typed_bodies_round_trip_through_json() {
        let body = EventBody::InvoiceRequested(InvoiceRequested {
            customer_id: "cus_1".into(),
            customer_email: "billing@acme.io".into(),
            currency: "EUR".into(),
            amount_minor: 1999,
            description: "Pro plan".into(),
            due_at: None,
        });
        let e = Event::from_body("billing-service", Some("inv-7"), 0, &body);
        assert_eq!(e.body().unwrap(), body);
        assert_eq!(e.entity_key().unwrap(), "cus_1");
    }

    #[test]
    fn type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_name(t.name()), Some(t));
            assert_eq!(
                EventType::from_record_name(&format!("io.onceflow.events.{}", t.name())),
                Some(t)
            );
        }
        assert_eq!(EventType::from_name("leadcaptured"), None);
    }
}
