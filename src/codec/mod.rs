//! Avro values in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary)
//! through a Confluent-compatible schema registry, with `TopicRecordNameStrategy` subjects
//! (`<topic>-<record full name>`) so one topic carries several event types.
//!
//! Invariants:
//! - Encoding resolves the schema id once per (subject, schema) and caches it; with `auto_register`
//!   on, the first use registers the schema, otherwise the subject's latest registered version is
//!   used and a missing subject is an error. schema_registry_converter caches by subject alone, so
//!   [`AvroCodec`] keeps one encoding per schema: two versions of one record on one topic (same
//!   subject) are each encoded with their own schema, never with whichever came first. Once the id
//!   is known, a record is written through that schema's [`DatumWriter`] with the id in front:
//!   nothing is looked up or resolved per record, and an invalid value is still refused. A datum
//!   given ready-made ([`Codec::encode_datum`]) goes out behind the id as it is: its maker
//!   (`model::json_avro::to_datum`) wrote it from the schema and checked it on the way.
//! - [`Codec::written`] hands a record's datum with its writer schema's reader, for readers that
//!   read it straight into their own form (`model::datum_json`); [`Written::decode`] is the strict
//!   decode of the same datum, and their errors carry the schema id alike.
//! - A failed encode is not remembered: a subject registered later (by CI, with `auto_register`
//!   off) is found by the next attempt without a restart. Decoding failures stay cached, so a flood
//!   of records with an unknown schema id does not hammer the registry.
//! - Decoding never panics: a bad magic byte, an unknown schema id or truncated bytes is a
//!   [`CodecError::Decode`] that says whether a retry could help (registry unreachable) or not.
//!   Each writer schema id gets one strict [`DatumReader`] ([`datum`]).
//! - Schemas come from `.avsc` files parsed with apache-avro before they are ever sent anywhere.
//! - A codec made with [`AvroCodec::verifying`] (ingest's) returns bytes only once the registry
//!   confirmed, after they were encoded, that it gives their schema id to their schema ([`ids`]);
//!   an id the registry lost or gave another schema is dropped from the cache and the schema
//!   registered again, so nothing is acknowledged that no consumer could decode, or would decode
//!   as something else. [`AvroCodec::confirm`] checks a stage's batch the same way, against the
//!   schema the codec learnt each id for since its last failed confirmation; an id it learnt for
//!   two schemas meanwhile fails the confirmation, and a failed one forgets the encoders and the
//!   learnt ids together, so the batch redone learns them afresh.

pub mod catalog;
pub mod datum;
pub mod ids;

pub use datum::{DatumReader, DatumWriter, decode_datum};

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::config::RegistrySettings;

/// A codec failure.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A schema file could not be read or is not valid Avro.
    #[error("schema {origin}: {reason}")]
    Schema {
        /// File path or schema name.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A value could not be encoded (it does not match its schema, or the registry refused it).
    #[error("encode {subject}: {reason}")]
    Encode {
        /// Registry subject.
        subject: String,
        /// What went wrong.
        reason: String,
        /// A later attempt may succeed (the registry was unreachable).
        retriable: bool,
    },
    /// Bytes could not be decoded.
    #[error("decode: {reason}")]
    Decode {
        /// What went wrong.
        reason: String,
        /// A later attempt may succeed (the registry was unreachable).
        retriable: bool,
    },
}

impl CodecError {
    /// A later attempt may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            CodecError::Schema { .. } => false,
            CodecError::Encode { retriable, .. } | CodecError::Decode { retriable, .. } => {
                *retriable
            }
        }
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// An Avro record schema, parsed and named.
#[derive(Debug, Clone)]
pub struct RecordSchema {
    full_name: String,
    /// Shared by the schema's clones: [`AvroCodec`] keys its encodings by this allocation.
    json: Arc<str>,
    parsed: apache_avro::Schema,
    /// Its Avro parsing canonical form: what the registry must give for the schema's id.
    canonical: Arc<str>,
}

impl RecordSchema {
    /// Parses a record schema from its JSON text.
    pub fn parse(origin: &str, json: &str) -> Result<RecordSchema, CodecError> {
        let err = |reason: String| CodecError::Schema {
            origin: origin.to_string(),
            reason,
        };
        let parsed = apache_avro::Schema::parse_str(json).map_err(|e| err(e.to_string()))?;
        let full_name = match &parsed {
            apache_avro::Schema::Record(r) => r.name.fullname(None),
            other => return Err(err(format!("top level is {other:?}, not a record"))),
        };
        Ok(RecordSchema {
            full_name,
            json: Arc::from(json),
            canonical: parsed.canonical_form().into(),
            parsed,
        })
    }

    /// Reads and parses an `.avsc` file.
    pub fn load(path: &Path) -> Result<RecordSchema, CodecError> {
        let origin = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|e| CodecError::Schema {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        RecordSchema::parse(&origin, &json)
    }

    /// Full name, e.g. `io.onceflow.events.LeadCaptured`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// The schema's JSON text, as registered.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The parsed schema, for validation and Avro schema resolution.
    pub fn schema(&self) -> &apache_avro::Schema {
        &self.parsed
    }

    /// The registry subject of this record on `topic` under `TopicRecordNameStrategy`.
    pub fn subject(&self, topic: &str) -> String {
        format!("{topic}-{}", self.full_name)
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Full name of the writer's record schema, when the registry named it.
    pub record_name: Option<String>,
    /// The value, in the writer's schema.
    pub value: Value,
}

impl Decoded {
    /// The value in `reader`'s schema (Avro schema resolution: fields the writer lacks take the
    /// reader's defaults, fields the reader lacks are dropped).
    pub fn resolve(self, reader: &RecordSchema) -> Result<Value, CodecError> {
        self.value
            .resolve(reader.schema())
            .map_err(|e| CodecError::Decode {
                reason: format!("cannot resolve to {}: {e}", reader.full_name()),
                retriable: false,
            })
    }
}

/// Turns values into bytes for a topic and bytes back into values. The one seam between onceflow
/// and the wire format: processors, ingest and operators take a `Codec`, tests may supply another.
pub trait Codec: Send + Sync {
    /// Encodes `value` (a record of `schema`) for `topic`.
    fn encode(
        &self,
        topic: &str,
        schema: &RecordSchema,
        value: Value,
    ) -> impl Future<Output = Result<Vec<u8>, CodecError>> + Send;

    /// Encodes `datum` for `topic`: the Avro binary of a record of `schema`, written and checked
    /// against the schema by its maker ([`json_avro::to_datum`](crate::model::json_avro::to_datum)).
    /// Once the schema's id is known for the topic, the datum goes out as it is, behind the id.
    fn encode_datum(
        &self,
        topic: &str,
        schema: &RecordSchema,
        datum: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, CodecError>> + Send;

    /// Decodes bytes written by [`Codec::encode`] (or any Confluent-compatible producer).
    fn decode(&self, bytes: &[u8]) -> impl Future<Output = Result<Decoded, CodecError>> + Send;

    /// The datum in `bytes` with the reader of the schema it was written with, not decoded yet:
    /// for readers that take the datum straight into their own form
    /// ([`datum_json`](crate::model::datum_json)).
    fn written<'a>(
        &self,
        bytes: &'a [u8],
    ) -> impl Future<Output = Result<Written<'a>, CodecError>> + Send;
}

/// A record's datum, with the strict reader of the schema it was written with.
#[derive(Debug)]
pub struct Written<'a> {
    /// The writer's schema id.
    pub id: u32,
    /// The reader of that schema.
    pub reader: Arc<DatumReader>,
    /// The Avro datum (the bytes after the frame).
    pub datum: &'a [u8],
}

impl Written<'_> {
    /// The datum decoded strictly into a value of the writer's schema.
    pub fn decode(&self) -> Result<Decoded, CodecError> {
        let value = self
            .reader
            .read(self.datum)
            .map_err(|reason| self.corrupt(reason))?;
        Ok(Decoded {
            record_name: self.reader.record_name().map(str::to_owned),
            value,
        })
    }

    /// The error of a datum that does not decode: `reason`, with the schema id.
    pub fn corrupt(&self, reason: String) -> CodecError {
        CodecError::Decode {
            reason: format!("schema id {}: {reason}", self.id),
            retriable: false,
        }
    }
}

/// What an encode is given: a value, which the schema's writer checks and writes, or a datum its
/// maker already wrote and checked ([`Codec::encode_datum`]).
#[derive(Debug, Clone, Copy)]
enum Body<'a> {
    Value(&'a Value),
    Datum(&'a [u8]),
}

/// How one schema text is encoded: the registry's encoder until the schema id is known for a
/// topic, then straight through a writer built once, with that id in front.
#[derive(Debug)]
struct Encoding {
    registry: AvroEncoder,
    writer: DatumWriter,
    /// The schema id on each topic (its subject), learnt from the registry's encoder.
    ids: Mutex<HashMap<String, u32>>,
}

impl Encoding {
    fn id(&self, topic: &str) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied()
    }
}

/// A [`RecordSchema`]'s text as a map key, by its allocation: hashing or comparing the text itself
/// (kilobytes) for every record cost more than encoding it. Clones of one schema share the text;
/// the map holds it, so no other text can take its address while it is a key. A schema parsed
/// twice is two keys, each with its own (equally correct) encoding.
#[derive(Debug)]
struct SchemaKey(Arc<str>);

impl SchemaKey {
    fn of(schema: &RecordSchema) -> SchemaKey {
        SchemaKey(Arc::clone(&schema.json))
    }
}

impl PartialEq for SchemaKey {
    fn eq(&self, other: &SchemaKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SchemaKey {}

impl std::hash::Hash for SchemaKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0).cast::<u8>(), state);
    }
}

/// Encoders and a decoder sharing one registry connection.
#[derive(Debug)]
pub struct AvroCodec {
    registry: SrSettings,
    /// One encoding per schema (see the module invariants).
    encoders: Mutex<HashMap<SchemaKey, Arc<Encoding>>>,
    decoder: AvroDecoder,
    /// One strict reader per writer schema id, its names resolved once ([`datum`]).
    readers: Mutex<HashMap<u32, Arc<DatumReader>>>,
    auto_register: bool,
    /// Confirms schema ids with the registry: each encoded record's (ingest's codec,
    /// `verify_each`), or a batch's before it is committed ([`AvroCodec::confirm`]).
    verifier: ids::Verifier,
    verify_each: bool,
    /// The canonical form of the schema each id was learnt for since the last failed
    /// [`AvroCodec::confirm`]; `None` for an id learnt for two schemas (the registry gave it to
    /// another one meanwhile).
    learnt: Mutex<HashMap<u32, Option<Arc<str>>>>,
}

impl AvroCodec {
    /// A codec for the configured registry; [`AvroCodec::confirm`] checks a batch's ids.
    pub fn new(settings: &RegistrySettings) -> Result<AvroCodec, CodecError> {
        AvroCodec::with_verifier(settings, ids::Verifier::per_batch(&settings.url), false)
    }

    /// A codec whose every encoded record's schema id is confirmed with the registry before the
    /// bytes are returned (see the module invariants): ingest's, which acknowledges what it
    /// writes.
    pub fn verifying(settings: &RegistrySettings) -> Result<AvroCodec, CodecError> {
        AvroCodec::with_verifier(settings, ids::Verifier::new(&settings.url), true)
    }

    fn with_verifier(
        settings: &RegistrySettings,
        verifier: ids::Verifier,
        verify_each: bool,
    ) -> Result<AvroCodec, CodecError> {
        let sr = SrSettings::new_builder(settings.url.clone())
            .set_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| CodecError::Schema {
                origin: settings.url.clone(),
                reason: describe(&e),
            })?;
        Ok(AvroCodec {
            registry: sr.clone(),
            encoders: Mutex::new(HashMap::new()),
            decoder: AvroDecoder::new(sr),
            readers: Mutex::new(HashMap::new()),
            auto_register: settings.auto_register,
            verifier,
            verify_each,
            learnt: Mutex::new(HashMap::new()),
        })
    }

    /// Confirms that the registry still gives every schema id in `ids` to the schema this codec
    /// encoded with under it, by lookups that start now (one per id). For a stage that encodes a
    /// batch with cached ids and must not commit records nobody could decode, or would decode as
    /// something else: an id the registry lost or gave another schema makes this codec forget
    /// its encoders and the ids it learnt, so the batch encoded again registers its schemas
    /// again, and the error is retriable. An id this codec did not learn, or learnt for two
    /// schemas, fails the same way.
    pub async fn confirm(&self, ids: impl IntoIterator<Item = u32>) -> Result<(), CodecError> {
        let at = tokio::time::Instant::now();
        for id in ids {
            let check = match self.learnt_for(id) {
                Some(expected) => self.verifier.check(id, &expected, at).await?,
                None => ids::Check::Other,
            };
            if check != ids::Check::Known {
                tracing::warn!(
                    schema_id = id,
                    registry = ?check,
                    "the schema registry no longer gives a schema id this batch was encoded with to its schema; encoding it again"
                );
                self.encoders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                self.learnt
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                return Err(CodecError::Encode {
                    subject: format!("schema id {id}"),
                    reason: format!(
                        "the registry no longer gives it to the schema it was encoded with ({check:?}); the records are encoded again"
                    ),
                    retriable: true,
                });
            }
        }
        Ok(())
    }

    fn encoding_for(
        &self,
        topic: &str,
        schema: &RecordSchema,
    ) -> Result<Arc<Encoding>, CodecError> {
        // A poisoned lock only means another encode panicked mid-insert; the map is still valid.
        let mut encoders = self.encoders.lock().unwrap_or_else(|p| p.into_inner());
        let key = SchemaKey::of(schema);
        if let Some(encoding) = encoders.get(&key) {
            return Ok(Arc::clone(encoding));
        }
        let writer = DatumWriter::new(&schema.parsed).map_err(|reason| CodecError::Encode {
            subject: schema.subject(topic),
            reason,
            retriable: false,
        })?;
        let encoding = Arc::new(Encoding {
            registry: AvroEncoder::new(self.registry.clone()),
            writer,
            ids: Mutex::new(HashMap::new()),
        });
        encoders.insert(key, Arc::clone(&encoding));
        Ok(encoding)
    }

    fn strategy(&self, topic: &str, schema: &RecordSchema) -> SubjectNameStrategy {
        if self.auto_register {
            SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                topic.to_string(),
                SuppliedSchema::new(
                    Some(schema.full_name.clone()),
                    SchemaType::Avro,
                    schema.json.to_string(),
                ),
            )
        } else {
            SubjectNameStrategy::TopicRecordNameStrategy(
                topic.to_string(),
                schema.full_name.clone(),
            )
        }
    }

    /// Encodes `body` (a record of `schema`) for `topic` in the Confluent wire format.
    async fn encode_body(
        &self,
        topic: &str,
        schema: &RecordSchema,
        body: Body<'_>,
    ) -> Result<Vec<u8>, CodecError> {
        if !self.verify_each {
            return self.encode_once(topic, schema, body).await;
        }
        let bytes = self.encode_once(topic, schema, body).await?;
        let (id, _) = split_wire_format(&bytes)?;
        let check = self.check_now(id, schema).await?;
        if check == ids::Check::Known {
            return Ok(bytes);
        }
        // The registry lost the id this encoder cached, or gave it another schema: register the
        // schema again.
        tracing::warn!(subject = %schema.subject(topic), schema_id = id, registry = ?check,
            "the schema registry no longer gives this schema id to the schema; registering the schema again");
        self.encoders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&SchemaKey::of(schema));
        let bytes = self.encode_once(topic, schema, body).await?;
        let (id, _) = split_wire_format(&bytes)?;
        match self.check_now(id, schema).await? {
            ids::Check::Known => Ok(bytes),
            ids::Check::Gone | ids::Check::Other => Err(CodecError::Encode {
                subject: schema.subject(topic),
                reason: format!(
                    "the registry gave schema id {id} and then did not give it to the schema"
                ),
                retriable: true,
            }),
        }
    }

    /// The canonical form of the one schema this codec learnt `id` for.
    fn learnt_for(&self, id: u32) -> Option<Arc<str>> {
        self.learnt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .flatten()
    }

    /// Checks `id`, which this codec just encoded a record of `schema` with, by a lookup that
    /// starts now.
    async fn check_now(&self, id: u32, schema: &RecordSchema) -> Result<ids::Check, CodecError> {
        self.verifier
            .check(id, &schema.canonical, tokio::time::Instant::now())
            .await
    }

    /// One encode with the cached (or newly registered) schema id.
    async fn encode_once(
        &self,
        topic: &str,
        schema: &RecordSchema,
        body: Body<'_>,
    ) -> Result<Vec<u8>, CodecError> {
        let encoding = self.encoding_for(topic, schema)?;
        let invalid = |reason: String| CodecError::Encode {
            subject: schema.subject(topic),
            reason,
            retriable: false,
        };
        if let Some(id) = encoding.id(topic) {
            // A datum's frame is allocated once, at its size (a command outgrew 128 bytes and was
            // reallocated on every record).
            let size = match body {
                Body::Value(_) => 128,
                Body::Datum(datum) => 5 + datum.len(),
            };
            let mut bytes = Vec::with_capacity(size);
            bytes.push(0);
            bytes.extend_from_slice(&id.to_be_bytes());
            match body {
                Body::Value(value) => encoding.writer.write(value, &mut bytes).map_err(invalid)?,
                Body::Datum(datum) => bytes.extend_from_slice(datum),
            }
            return Ok(bytes);
        }
        // The first record of this schema on this topic goes through the registry's encoder,
        // which takes a value: a datum is read back into one (once per schema and topic).
        let value = match body {
            Body::Value(value) => value.clone(),
            Body::Datum(datum) => decode_datum(&schema.parsed, datum).map_err(invalid)?,
        };
        // Checked here, so that an invalid value is said to be one rather than whatever the
        // registry's encoder makes of it.
        if !value.validate(&schema.parsed) {
            return Err(invalid("value does not match the schema".into()));
        }
        let bytes = encoding
            .registry
            .encode_value(value, &self.strategy(topic, schema))
            .await
            .map_err(|e| {
                // schema_registry_converter caches non-retriable errors (a subject not registered
                // yet); forget them so that the next attempt asks the registry again.
                encoding.registry.remove_errors_from_cache();
                CodecError::Encode {
                    subject: schema.subject(topic),
                    reason: describe(&e),
                    retriable: e.retriable,
                }
            })?;
        let (id, _) = split_wire_format(&bytes)?;
        self.learnt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .and_modify(|was| {
                if was.as_ref().is_some_and(|c| *c != schema.canonical) {
                    *was = None;
                }
            })
            .or_insert_with(|| Some(Arc::clone(&schema.canonical)));
        encoding
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string(), id);
        Ok(bytes)
    }

    /// The strict reader of schema id `id`, built once from the registry's schema.
    async fn reader_for(&self, id: u32) -> Result<Arc<DatumReader>, CodecError> {
        let cached = self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some(reader) = cached {
            return Ok(reader);
        }
        let writer = self
            .decoder
            .get_schema(id)
            .await
            .map_err(|e| CodecError::Decode {
                reason: format!("schema id {id}: {}", describe(&e)),
                retriable: e.retriable,
            })?;
        let reader =
            Arc::new(
                DatumReader::new(&writer.parsed).map_err(|reason| CodecError::Decode {
                    reason: format!("schema id {id}: {reason}"),
                    retriable: false,
                })?,
            );
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::clone(&reader));
        Ok(reader)
    }

    /// The datum of Confluent wire-format bytes and the reader of its schema id.
    async fn written_bytes<'a>(&self, bytes: &'a [u8]) -> Result<Written<'a>, CodecError> {
        let (id, datum) = split_wire_format(bytes)?;
        let reader = self.reader_for(id).await?;
        Ok(Written { id, reader, datum })
    }
}

impl Codec for AvroCodec {
    async fn encode(
        &self,
        topic: &str,
        schema: &RecordSchema,
        value: Value,
    ) -> Result<Vec<u8>, CodecError> {
        self.encode_body(topic, schema, Body::Value(&value)).await
    }

    async fn encode_datum(
        &self,
        topic: &str,
        schema: &RecordSchema,
        datum: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        self.encode_body(topic, schema, Body::Datum(datum)).await
    }

    async fn decode(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        self.written_bytes(bytes).await?.decode()
    }

    async fn written<'a>(&self, bytes: &'a [u8]) -> Result<Written<'a>, CodecError> {
        self.written_bytes(bytes).await
    }
}

/// Splits Confluent wire-format bytes into the schema id and the Avro datum.
pub fn split_wire_format(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes {
        [0, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(CodecError::Decode {
            reason: format!(
                "not Confluent wire format ({} bytes, first byte {:?})",
                bytes.len(),
                bytes.first()
            ),
            retriable: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_and_its_clones_are_one_key_and_a_reparse_another() {
        let json = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
        let schema = RecordSchema::parse("test", json).unwrap();
        let mut keys = std::collections::HashSet::new();
        assert!(keys.insert(SchemaKey::of(&schema)));
        assert!(!keys.insert(SchemaKey::of(&schema.clone())));
        assert!(keys.insert(SchemaKey::of(&RecordSchema::parse("test", json).unwrap())));
    }

    #[test]
    fn wire_format_needs_magic_byte_and_id() {
        assert_eq!(
            split_wire_format(&[0, 0, 0, 1, 2, 9]).unwrap(),
            (258, &[9u8][..])
        );
        assert!(split_wire_format(&[1, 0, 0, 1, 2, 9]).is_err());
        assert!(split_wire_format(&[0, 0, 0]).is_err());
    }
}
