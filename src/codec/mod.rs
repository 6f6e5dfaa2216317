//! Avro values in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary)
//! through a Confluent-compatible schema registry, with `TopicRecordNameStrategy` subjects
//! (`<topic>-<record full name>`) so one topic carries several event types.
//!
//! Invariants:
//! - Encoding resolves the schema id once per (subject, schema) and caches it; with `auto_register`
//!   on, the first use registers the schema, otherwise the subject's latest registered version is
//!   used and a missing subject is an error. schema_registry_converter caches by subject alone, so
//!   [`AvroCodec`] keeps one encoder per schema text: two versions of one record on one topic (same
//!   subject) are each encoded with their own schema, never with whichever came first.
//! - A failed encode is not remembered: a subject registered later (by CI, with `auto_register`
//!   off) is found by the next attempt without a restart. Decoding failures stay cached, so a flood
//!   of records with an unknown schema id does not hammer the registry.
//! - Decoding never panics: a bad magic byte, an unknown schema id or truncated bytes is a
//!   [`CodecError::Decode`] that says whether a retry could help (registry unreachable) or not.
//! - Schemas come from `.avsc` files parsed with apache-avro before they are ever sent anywhere.
//! - A codec made with [`AvroCodec::verifying`] (ingest's) returns bytes only once the registry
//!   confirmed their schema id after they were encoded ([`ids`]); an id the registry lost is
//!   dropped from the cache and the schema registered again, so nothing is acknowledged that no
//!   consumer could decode.

pub mod catalog;
pub mod ids;

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
    json: String,
    parsed: apache_avro::Schema,
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
            json: json.to_string(),
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

    /// Decodes bytes written by [`Codec::encode`] (or any Confluent-compatible producer).
    fn decode(&self, bytes: &[u8]) -> impl Future<Output = Result<Decoded, CodecError>> + Send;
}

/// Encoders and a decoder sharing one registry connection.
#[derive(Debug)]
pub struct AvroCodec {
    registry: SrSettings,
    /// One encoder per schema text (see the module invariants).
    encoders: Mutex<HashMap<String, Arc<AvroEncoder>>>,
    decoder: AvroDecoder,
    auto_register: bool,
    /// Confirms schema ids with the registry: each encoded record's (ingest's codec,
    /// `verify_each`), or a batch's before it is committed ([`AvroCodec::confirm`]).
    verifier: ids::Verifier,
    verify_each: bool,
}

impl AvroCodec {
    /// A codec for the configured registry.
    pub fn new(settings: &RegistrySettings) -> Result<AvroCodec, CodecError> {
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
            auto_register: settings.auto_register,
            verifier: ids::Verifier::new(&settings.url),
            verify_each: false,
        })
    }

    /// A codec whose every encoded record's schema id is confirmed with the registry before the
    /// bytes are returned (see the module invariants): ingest's, which acknowledges what it
    /// writes.
    pub fn verifying(settings: &RegistrySettings) -> Result<AvroCodec, CodecError> {
        Ok(AvroCodec {
            verify_each: true,
            ..AvroCodec::new(settings)?
        })
    }

    /// Confirms that the registry still has every schema id in `ids`, by lookups that start now
    /// (one per id). For a stage that encodes a batch with cached ids and must not commit records
    /// nobody could decode: an id the registry lost makes this codec forget its encoders, so the
    /// batch encoded again registers the schema again, and the error is retriable.
    pub async fn confirm(&self, ids: impl IntoIterator<Item = u32>) -> Result<(), CodecError> {
        let at = tokio::time::Instant::now();
        for id in ids {
            if self.verifier.check(id, at).await? == ids::Check::Gone {
                tracing::warn!(
                    schema_id = id,
                    "the schema registry no longer has a schema id this batch was encoded with; encoding it again"
                );
                self.encoders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                return Err(CodecError::Encode {
                    subject: format!("schema id {id}"),
                    reason: "the registry no longer has it; the records are encoded again".into(),
                    retriable: true,
                });
            }
        }
        Ok(())
    }

    fn encoder_for(&self, schema: &RecordSchema) -> Arc<AvroEncoder> {
        // A poisoned lock only means another encode panicked mid-insert; the map is still valid.
        let mut encoders = self.encoders.lock().unwrap_or_else(|p| p.into_inner());
        // Look up by reference: the schema text is only copied when its encoder is created.
        if let Some(encoder) = encoders.get(schema.json.as_str()) {
            return Arc::clone(encoder);
        }
        let encoder = Arc::new(AvroEncoder::new(self.registry.clone()));
        encoders.insert(schema.json.clone(), Arc::clone(&encoder));
        encoder
    }

    fn strategy(&self, topic: &str, schema: &RecordSchema) -> SubjectNameStrategy {
        if self.auto_register {
            SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                topic.to_string(),
                SuppliedSchema::new(
                    Some(schema.full_name.clone()),
                    SchemaType::Avro,
                    schema.json.clone(),
                ),
            )
        } else {
            SubjectNameStrategy::TopicRecordNameStrategy(
                topic.to_string(),
                schema.full_name.clone(),
            )
        }
    }

    /// Encodes `value` (a record of `schema`) for `topic` in the Confluent wire format.
    async fn encode_value(
        &self,
        topic: &str,
        schema: &RecordSchema,
        value: Value,
    ) -> Result<Vec<u8>, CodecError> {
        if !value.validate(&schema.parsed) {
            return Err(CodecError::Encode {
                subject: schema.subject(topic),
                reason: "value does not match the schema".into(),
                retriable: false,
            });
        }
        if !self.verify_each {
            return self.encode_once(topic, schema, value).await;
        }
        let verifier = &self.verifier;
        let bytes = self.encode_once(topic, schema, value.clone()).await?;
        let (id, _) = split_wire_format(&bytes)?;
        if verifier.check(id, tokio::time::Instant::now()).await? == ids::Check::Known {
            return Ok(bytes);
        }
        // The registry lost the id this encoder cached: register the schema again.
        tracing::warn!(subject = %schema.subject(topic), schema_id = id,
            "the schema registry no longer has this schema id; registering the schema again");
        self.encoders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(schema.json.as_str());
        let bytes = self.encode_once(topic, schema, value).await?;
        let (id, _) = split_wire_format(&bytes)?;
        match verifier.check(id, tokio::time::Instant::now()).await? {
            ids::Check::Known => Ok(bytes),
            ids::Check::Gone => Err(CodecError::Encode {
                subject: schema.subject(topic),
                reason: format!("the registry gave schema id {id} and then did not know it"),
                retriable: true,
            }),
        }
    }

    /// One encode with the cached (or newly registered) schema id.
    async fn encode_once(
        &self,
        topic: &str,
        schema: &RecordSchema,
        value: Value,
    ) -> Result<Vec<u8>, CodecError> {
        let encoder = self.encoder_for(schema);
        encoder
            .encode_value(value, &self.strategy(topic, schema))
            .await
            .map_err(|e| {
                // schema_registry_converter caches non-retriable errors (a subject not registered
                // yet); forget them so that the next attempt asks the registry again.
                encoder.remove_errors_from_cache();
                CodecError::Encode {
                    subject: schema.subject(topic),
                    reason: describe(&e),
                    retriable: e.retriable,
                }
            })
    }

    /// Decodes Confluent wire-format bytes with the writer's schema from the registry.
    async fn decode_bytes(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        let (id, datum) = split_wire_format(bytes)?;
        let writer = self
            .decoder
            .get_schema(id)
            .await
            .map_err(|e| CodecError::Decode {
                reason: format!("schema id {id}: {}", describe(&e)),
                retriable: e.retriable,
            })?;
        let value = decode_datum(&writer.parsed, datum).map_err(|reason| CodecError::Decode {
            reason: format!("schema id {id}: {reason}"),
            retriable: false,
        })?;
        let record_name = match &writer.parsed {
            apache_avro::Schema::Record(r) => Some(r.name.fullname(None)),
            _ => None,
        };
        Ok(Decoded { record_name, value })
    }
}

impl Codec for AvroCodec {
    async fn encode(
        &self,
        topic: &str,
        schema: &RecordSchema,
        value: Value,
    ) -> Result<Vec<u8>, CodecError> {
        self.encode_value(topic, schema, value).await
    }

    async fn decode(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        self.decode_bytes(bytes).await
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

/// Reads a datum and refuses, as an error, any read past its end. apache-avro takes an
/// `UnexpectedEof` in some places (a union index) as a clean end and reads `null` there; this reader
/// never returns one, so a datum that ends early is always an error.
struct Strict<'a> {
    datum: &'a [u8],
    position: usize,
}

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.datum[self.position..];
        if rest.is_empty() && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the datum ends in the middle of a value",
            ));
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.position += n;
        Ok(n)
    }
}

/// Decodes one Avro datum strictly: every byte must be consumed, and the value must account for
/// every byte. apache-avro reads a union whose index is missing at end of input as `null` (and a
/// plain reader may fill unread fields with `Null`), so a truncated record would otherwise decode
/// "successfully". Two guards: the datum is read through [`Strict`], so a read past its end is an
/// error (a last union index cut in the middle of its varint, one byte `0xf9`, was read as `null`
/// and had the length of the canonical `0x00`; found by fuzz/fuzz_targets/wire_format.rs); and
/// the value is encoded again and must take as many bytes, because a missing field costs at least
/// one byte when written back. (Not the same bytes: map entries come back in another order.)
/// Writers that use the canonical single-block encoding (Java, Confluent, Go and Python clients)
/// always pass.
pub fn decode_datum(writer: &apache_avro::Schema, datum: &[u8]) -> Result<Value, String> {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    let invalid = "truncated or corrupt: the bytes do not hold a whole record of the writer schema";
    let mut reader = Strict { datum, position: 0 };
    let value = GenericDatumReader::builder(writer)
        .build()
        .and_then(|r| r.read_value(&mut reader))
        .map_err(|e| format!("{invalid} ({e})"))?;
    if reader.position != datum.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            datum.len() - reader.position
        ));
    }
    // The datum writer validates the value against the schema before writing it. Its returned
    // count leaves out union indexes (apache-avro 0.22), so count what reaches the writer instead.
    let mut rewritten = Vec::with_capacity(datum.len());
    GenericDatumWriter::builder(writer)
        .build()
        .and_then(|w| w.write_value_ref(&mut rewritten, &value))
        .map_err(|e| format!("{invalid} ({e})"))?;
    if rewritten.len() != datum.len() {
        return Err(invalid.into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"R","namespace":"t","fields":[
        {"name":"a","type":"string"},
        {"name":"b","type":["null","string"],"default":null},
        {"name":"c","type":"long"},
        {"name":"d","type":["null","long"],"default":null}]}"#;

    fn record() -> Value {
        Value::Record(vec![
            ("a".into(), Value::String("hello".into())),
            (
                "b".into(),
                Value::Union(1, Box::new(Value::String("world".into()))),
            ),
            ("c".into(), Value::Long(123_456)),
            ("d".into(), Value::Union(1, Box::new(Value::Long(7)))),
        ])
    }

    fn encode(schema: &apache_avro::Schema) -> Vec<u8> {
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(record())
            .unwrap()
    }

    #[test]
    fn every_truncation_is_an_error() {
        let schema = apache_avro::Schema::parse_str(SCHEMA).unwrap();
        let datum = encode(&schema);
        assert_eq!(decode_datum(&schema, &datum).unwrap(), record());
        for len in 0..datum.len() {
            assert!(
                decode_datum(&schema, &datum[..len]).is_err(),
                "{len} of {} bytes decoded",
                datum.len()
            );
        }
    }

    #[test]
    fn a_last_union_index_cut_mid_varint_is_an_error() {
        let schema = apache_avro::Schema::parse_str(SCHEMA).unwrap();
        let mut record = record();
        let Value::Record(fields) = &mut record else {
            unreachable!()
        };
        fields[3].1 = Value::Union(0, Box::new(Value::Null));
        let mut datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(record)
            .unwrap();
        assert_eq!(datum.last(), Some(&0), "`d` is null: union index 0");
        // The byte the fuzzer found: a varint whose continuation bit promises a byte that is not
        // there. Same length as the canonical `0x00`, so the length check alone let it through.
        *datum.last_mut().unwrap() = 0xf9;
        let e = decode_datum(&schema, &datum).unwrap_err();
        assert!(e.contains("truncated or corrupt"), "{e}");
    }

    #[test]
    fn a_map_decodes_whatever_order_its_entries_come_back_in() {
        let schema = apache_avro::Schema::parse_str(
            r#"{"type":"record","name":"M","fields":[{"name":"m","type":{"type":"map","values":"long"}}]}"#,
        )
        .unwrap();
        let map: std::collections::HashMap<String, Value> =
            (0..16).map(|i| (format!("k{i}"), Value::Long(i))).collect();
        let value = Value::Record(vec![("m".into(), Value::Map(map))]);
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap();
        // Each HashMap iterates in its own order: re-encoding a decoded map gives other bytes of
        // the same length, which must not be taken for corruption.
        for _ in 0..8 {
            let datum = writer.write_value_to_vec(value.clone()).unwrap();
            assert_eq!(decode_datum(&schema, &datum).unwrap(), value);
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let schema = apache_avro::Schema::parse_str(SCHEMA).unwrap();
        let mut datum = encode(&schema);
        datum.push(0);
        assert!(
            decode_datum(&schema, &datum)
                .unwrap_err()
                .contains("trailing")
        );
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
