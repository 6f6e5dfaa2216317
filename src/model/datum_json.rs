//! An Avro datum read straight into JSON: how the processor reads events and the dispatcher
//! commands, without apache-avro's `Value` tree in between (bench/PROFILE.md: building the tree and
//! then the JSON from it was a fifth of a record's instructions).
//!
//! Invariants:
//! - What this reads is exactly what the strict decode ([`Written::decode`]) followed by
//!   [`json_avro::to_json`] gives, and it refuses exactly the datums that decode refuses: a read
//!   past the end, bytes left over, a bad varint, boolean, length, union branch or enum index. The
//!   `wire_format` fuzz target compares the two on arbitrary bytes.
//! - A schema this reader does not cover (named references, decimals, UUIDs, durations,
//!   nanosecond times, arrays of items that may take no bytes) is [`Unread::Unsupported`]: the
//!   caller then takes the strict decode's way, which covers all of Avro. Nothing is guessed.

use apache_avro::Schema;
use serde_json::{Map, Value as Json};

use super::json_avro::{FieldError, envelope_from_avro, to_json};
use crate::codec::datum::wire::Cursor;
use crate::codec::{CodecError, Written};

/// Why a datum was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unread {
    /// The schema uses something this reader does not cover; decode it the general way.
    Unsupported,
    /// The bytes do not hold one whole value of the schema.
    Corrupt(String),
}

/// Why an envelope was not read from a record.
#[derive(Debug)]
pub enum EnvelopeError {
    /// The datum does not decode.
    Decode(CodecError),
    /// It decodes, but its `meta` is missing or not an envelope.
    Field(FieldError),
}

/// The value of `datum` in `schema`, as JSON (see the module invariants).
pub fn read_json(schema: &Schema, datum: &[u8]) -> Result<Json, Unread> {
    let mut cursor = Cursor::new(datum);
    let json = read(schema, &mut cursor).map_err(corrupt)?;
    finished(&cursor)?;
    Ok(json)
}

/// The envelope `meta` (read into `M`) and the other fields (as JSON) of the record in `written`.
pub fn envelope<M: serde::de::DeserializeOwned>(
    written: &Written<'_>,
) -> Result<(M, Map<String, Json>), EnvelopeError> {
    let schema = written.reader.schema();
    let fields = match schema {
        Schema::Record(record) => read_fields(record, written.datum),
        _ => Err(Unread::Unsupported),
    };
    let (meta, data) = match fields {
        Ok(fields) => fields,
        Err(Unread::Corrupt(reason)) => return Err(EnvelopeError::Decode(written.corrupt(reason))),
        Err(Unread::Unsupported) => {
            let decoded = written.decode().map_err(EnvelopeError::Decode)?;
            return envelope_from_avro(&decoded.value).map_err(EnvelopeError::Field);
        }
    };
    let meta = meta.ok_or_else(|| EnvelopeError::Field(field_error("missing")))?;
    let meta = match meta {
        // A record's fields go to `M` as they are: no map of owned names is built for them.
        Meta::Fields(fields) => M::deserialize(serde::de::value::MapDeserializer::<
            _,
            serde_json::Error,
        >::new(fields.into_iter())),
        Meta::Other(value) => serde_json::from_value(value),
    }
    .map_err(|e| EnvelopeError::Field(field_error(e)))?;
    Ok((meta, data))
}

/// The `meta` field as read: a record's fields by name, or another value (which `M` refuses).
enum Meta<'s> {
    Fields(Vec<(&'s str, Json)>),
    Other(Json),
}

fn field_error(detail: impl ToString) -> FieldError {
    FieldError {
        field: "meta".into(),
        detail: detail.to_string(),
    }
}

/// The record's `meta` field and its other fields.
fn read_fields<'s>(
    record: &'s apache_avro::schema::RecordSchema,
    datum: &[u8],
) -> Result<(Option<Meta<'s>>, Map<String, Json>), Unread> {
    let mut cursor = Cursor::new(datum);
    let mut meta = None;
    let mut data = Map::new();
    for field in &record.fields {
        if field.name == "meta" {
            meta = Some(match &field.schema {
                Schema::Record(r) => {
                    let mut fields = Vec::with_capacity(r.fields.len());
                    for f in &r.fields {
                        fields.push((
                            f.name.as_str(),
                            read(&f.schema, &mut cursor).map_err(corrupt)?,
                        ));
                    }
                    Meta::Fields(fields)
                }
                other => Meta::Other(read(other, &mut cursor).map_err(corrupt)?),
            });
        } else {
            let value = read(&field.schema, &mut cursor).map_err(corrupt)?;
            data.insert(field.name.clone(), value);
        }
    }
    finished(&cursor)?;
    Ok((meta, data))
}

/// A read error, in the strict decode's words.
fn corrupt(e: Unread) -> Unread {
    match e {
        Unread::Corrupt(detail) => Unread::Corrupt(format!(
            "truncated or corrupt: the bytes do not hold a whole record of the writer schema ({detail})"
        )),
        unsupported => unsupported,
    }
}

fn finished(cursor: &Cursor<'_>) -> Result<(), Unread> {
    match cursor.remaining() {
        0 => Ok(()),
        n => Err(Unread::Corrupt(format!(
            "{n} trailing bytes after the record"
        ))),
    }
}

/// Whether a value of `schema` may take no bytes at all: an array of such items could claim any
/// number of them from a few bytes, which apache-avro bounds by memory and this reader does not
/// try to match.
fn may_be_empty(schema: &Schema) -> bool {
    match schema {
        Schema::Null => true,
        Schema::Record(r) => r.fields.iter().all(|f| may_be_empty(&f.schema)),
        Schema::Fixed(f) => f.size == 0,
        _ => false,
    }
}

fn read(schema: &Schema, c: &mut Cursor<'_>) -> Result<Json, Unread> {
    let bad = Unread::Corrupt;
    Ok(match schema {
        Schema::Null => Json::Null,
        Schema::Boolean => Json::Bool(c.boolean().map_err(bad)?),
        Schema::Int | Schema::Date | Schema::TimeMillis => Json::from(c.int().map_err(bad)?),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => Json::from(c.long().map_err(bad)?),
        Schema::Float => Json::from(f64::from(c.float().map_err(bad)?)),
        Schema::Double => Json::from(c.double().map_err(bad)?),
        Schema::Bytes => Json::String(hex::encode(c.bytes().map_err(bad)?)),
        Schema::Fixed(f) => Json::String(hex::encode(c.take(f.size).map_err(bad)?)),
        Schema::String => Json::String(text(c)?),
        Schema::Enum(e) => {
            let i = c.int().map_err(bad)?;
            let symbol = usize::try_from(i).ok().and_then(|i| e.symbols.get(i));
            Json::String(
                symbol
                    .ok_or_else(|| bad(format!("enum index {i} of {}", e.symbols.len())))?
                    .clone(),
            )
        }
        Schema::Union(u) => {
            let i = c.long().map_err(bad)?;
            let variants = u.variants();
            let variant = usize::try_from(i).ok().and_then(|i| variants.get(i));
            let variant =
                variant.ok_or_else(|| bad(format!("union branch {i} of {}", variants.len())))?;
            read(variant, c)?
        }
        Schema::Array(a) => {
            if may_be_empty(&a.items) {
                return Err(Unread::Unsupported);
            }
            let mut items = Vec::new();
            loop {
                let n = c.block().map_err(bad)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    items.push(read(&a.items, c)?);
                }
            }
            Json::Array(items)
        }
        Schema::Map(m) => {
            let mut entries = Map::new();
            loop {
                let n = c.block().map_err(bad)?;
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    let key = text(c)?;
                    let value = read(&m.types, c)?;
                    entries.insert(key, value);
                }
            }
            Json::Object(entries)
        }
        Schema::Record(r) => {
            let mut fields = Map::new();
            for field in &r.fields {
                fields.insert(field.name.clone(), read(&field.schema, c)?);
            }
            Json::Object(fields)
        }
        _ => return Err(Unread::Unsupported),
    })
}

fn text(c: &mut Cursor<'_>) -> Result<String, Unread> {
    let bytes = c.bytes().map_err(Unread::Corrupt)?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|e| Unread::Corrupt(format!("a string that is not UTF-8: {e}")))
}

/// [`to_json`] of the strict decode: what [`read_json`] must agree with (for tests and fuzzing).
pub fn decoded_json(schema: &Schema, datum: &[u8]) -> Result<Json, String> {
    crate::codec::decode_datum(schema, datum).map(|v| to_json(&v))
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde_json::json;

    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
        {"name":"s","type":"string"},
        {"name":"u","type":["null","string","long"]},
        {"name":"i","type":"int"},
        {"name":"f","type":"float"},
        {"name":"d","type":"double"},
        {"name":"b","type":"boolean"},
        {"name":"a","type":{"type":"array","items":"long"}},
        {"name":"m","type":{"type":"map","values":"string"}},
        {"name":"k","type":{"type":"enum","name":"K","symbols":["X","Y","Z"]}},
        {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"x","type":"bytes"},
        {"name":"y","type":{"type":"fixed","name":"F","size":2}},
        {"name":"r","type":{"type":"record","name":"Inner","fields":[{"name":"z","type":"int"}]}}]}"#;

    fn schema() -> Schema {
        Schema::parse_str(SCHEMA).unwrap()
    }

    fn datum() -> Vec<u8> {
        let value = Value::Record(vec![
            ("s".into(), Value::String("héllo".into())),
            ("u".into(), Value::Union(2, Box::new(Value::Long(-7)))),
            ("i".into(), Value::Int(i32::MIN)),
            ("f".into(), Value::Float(f32::NAN)),
            ("d".into(), Value::Double(-0.25)),
            ("b".into(), Value::Boolean(true)),
            (
                "a".into(),
                Value::Array(vec![Value::Long(i64::MIN), Value::Long(300)]),
            ),
            (
                "m".into(),
                Value::Map(
                    [
                        ("p".to_string(), Value::String("1".into())),
                        ("q".to_string(), Value::String("2".into())),
                    ]
                    .into(),
                ),
            ),
            ("k".into(), Value::Enum(1, "Y".into())),
            ("t".into(), Value::TimestampMillis(1_795_428_000_500)),
            ("x".into(), Value::Bytes(vec![0xde, 0xad])),
            ("y".into(), Value::Fixed(2, vec![0xbe, 0xef])),
            ("r".into(), Value::Record(vec![("z".into(), Value::Int(3))])),
        ]);
        GenericDatumWriter::builder(&schema())
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    #[test]
    fn reads_what_the_strict_decode_and_to_json_give() {
        let (s, d) = (schema(), datum());
        let json = read_json(&s, &d).unwrap();
        assert_eq!(Ok(json.clone()), decoded_json(&s, &d));
        assert_eq!(json["f"], Json::Null, "NaN is null, as to_json has it");
        assert_eq!(json["m"], json!({"p": "1", "q": "2"}));
        assert_eq!(json["y"], json!("beef"));
    }

    #[test]
    fn refuses_every_truncation_and_trailing_bytes() {
        let (s, d) = (schema(), datum());
        for len in 0..d.len() {
            let e = read_json(&s, &d[..len]).unwrap_err();
            assert!(matches!(&e, Unread::Corrupt(m) if m.starts_with("truncated or corrupt")));
            assert!(decoded_json(&s, &d[..len]).is_err(), "{len}");
        }
        let mut longer = d.clone();
        longer.push(0);
        assert_eq!(
            read_json(&s, &longer),
            Err(Unread::Corrupt("1 trailing bytes after the record".into()))
        );
    }

    #[test]
    fn refuses_what_apache_avro_refuses() {
        let union = r#"["null","string","long"]"#;
        let enumeration = r#"{"type":"enum","name":"K","symbols":["X","Y","Z"]}"#;
        let array = r#"{"type":"array","items":"long"}"#;
        let mut too_big_int = Vec::new();
        crate::codec::datum::wire::long(&mut too_big_int, 1 << 31);
        let mut min_block = vec![0xff; 9];
        min_block.extend([0x01, 0x00]); // a block count of i64::MIN, then its size
        let cases: [(&str, Vec<u8>, &str); 10] = [
            (
                r#""long""#,
                vec![0x80; 11],
                "a varint longer than ten bytes",
            ),
            (r#""int""#, too_big_int, "an int out of range"),
            (r#""boolean""#, vec![0x02], "a boolean of 2"),
            (r#""string""#, vec![0x01], "a negative length"),
            (
                r#""string""#,
                vec![0x02, 0xff],
                "a string that is not UTF-8",
            ),
            (union, vec![0x06], "union branch 3 of 3"),
            (union, vec![0x01], "union branch -1"),
            (enumeration, vec![0x06], "enum index 3 of 3"),
            (enumeration, vec![0x01], "enum index -1"),
            (array, min_block, "a block count that overflows"),
        ];
        for (schema, bytes, what) in cases {
            let s = Schema::parse_str(schema).unwrap();
            assert!(
                matches!(read_json(&s, &bytes), Err(Unread::Corrupt(_))),
                "{what}"
            );
            assert!(
                decoded_json(&s, &bytes).is_err(),
                "{what}: apache-avro read it"
            );
        }
    }

    #[test]
    fn negative_block_counts_carry_a_size_and_read_alike() {
        let s = Schema::parse_str(r#"{"type":"array","items":"long"}"#).unwrap();
        // Two blocks: -2 items (size 2 bytes follows), then 1 item, then the end.
        let d = [0x03, 0x04, 0x02, 0x04, 0x02, 0x06, 0x00];
        assert_eq!(read_json(&s, &d), Ok(json!([1, 2, 3])));
        assert_eq!(decoded_json(&s, &d), Ok(json!([1, 2, 3])));
    }

    #[test]
    fn an_event_reads_as_from_avro_reads_it_and_a_broken_one_says_why() {
        use std::sync::Arc;

        use crate::codec::DatumReader;
        use crate::codec::catalog::Catalog;
        use crate::model::{Event, EventType};

        let catalog = Catalog::builtin().unwrap();
        let (version, schema) = catalog.latest("lead_captured").unwrap();
        let data = json!({"email": "ada@example.com", "form_id": "f", "company": "C"});
        let Json::Object(data) = data else {
            unreachable!()
        };
        let mut event = Event::new(EventType::LeadCaptured, "t", Some("1"), 0, data, None);
        let datum = event.to_datum(schema, version).unwrap();
        let reader = Arc::new(DatumReader::new(schema.schema()).unwrap());
        let written = |datum| Written {
            id: 7,
            reader: Arc::clone(&reader),
            datum,
        };
        let read = Event::from_written(&written(&datum)).unwrap();
        let decoded = written(&datum).decode().unwrap();
        assert_eq!(read, Event::from_avro(&decoded.value).unwrap());
        assert_eq!(read.meta, event.meta);

        let Err(EnvelopeError::Decode(e)) = Event::from_written(&written(&datum[..10])) else {
            panic!("a truncated event read")
        };
        assert!(
            e.to_string().contains("schema id 7: truncated or corrupt"),
            "{e}"
        );
        let mut longer = datum.clone();
        longer.push(0);
        let Err(EnvelopeError::Decode(e)) = Event::from_written(&written(&longer)) else {
            panic!("an event with a trailing byte read")
        };
        assert!(e.to_string().contains("1 trailing bytes"), "{e}");
    }

    #[test]
    fn what_it_does_not_cover_is_said_not_guessed() {
        let nulls = Schema::parse_str(r#"{"type":"array","items":"null"}"#).unwrap();
        assert_eq!(read_json(&nulls, &[0x02, 0x00]), Err(Unread::Unsupported));
        let uuid = Schema::parse_str(r#"{"type":"string","logicalType":"uuid"}"#).unwrap();
        assert_eq!(read_json(&uuid, &[0x00]), Err(Unread::Unsupported));
    }
}
