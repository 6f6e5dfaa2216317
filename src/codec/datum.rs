//! One Avro datum (the bytes after the Confluent frame): decoded strictly, and encoded, with a
//! reader or writer built once per schema.
//!
//! Invariants:
//! - A datum decodes only if its bytes hold exactly one whole value of the writer schema: a read
//!   past the end is an error (never a `null`), and so are bytes left over after the value.
//! - Any valid Avro encoding decodes, not only the canonical one: arrays and maps in several blocks
//!   (or with negative block counts and sizes) and varints longer than they need be are Avro, and
//!   Java and other writers may produce them.
//! - A [`DatumReader`] or [`DatumWriter`] resolves its schema's names once; reading or writing a
//!   datum resolves nothing. Its schema lives for the rest of the process (see [`intern`]), so each
//!   distinct schema is held once however many readers and writers are built for it.
//! - A [`DatumWriter`] writes only values valid for its schema: an invalid one is an error, and
//!   nothing is appended.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;

/// Reads a datum and refuses, as an error, any read past its end. apache-avro takes an
/// `UnexpectedEof` in some places (a boolean, a string, a union index) as a clean end and reads
/// `null` there; this reader never returns one, so a datum that ends early is always an error.
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

/// Reads `datum` with `reader`: the whole datum and nothing past it (see the module invariants).
/// A last union index cut in the middle of its varint (one byte `0xf9`) was once read as `null`
/// (found by fuzz/fuzz_targets/wire_format.rs); through [`Strict`] it is an error.
fn read_strict(reader: &GenericDatumReader<'_>, datum: &[u8]) -> Result<Value, String> {
    let mut strict = Strict { datum, position: 0 };
    let value = reader.read_value(&mut strict).map_err(|e| {
        format!(
            "truncated or corrupt: the bytes do not hold a whole record of the writer schema ({e})"
        )
    })?;
    if strict.position != datum.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            datum.len() - strict.position
        ));
    }
    Ok(value)
}

/// Decodes one datum of `writer` strictly (see the module invariants). Resolves the schema's
/// names on every call: for one-off decodes; a stage keeps a [`DatumReader`] per schema.
pub fn decode_datum(writer: &Schema, datum: &[u8]) -> Result<Value, String> {
    let reader = GenericDatumReader::builder(writer)
        .build()
        .map_err(|e| format!("writer schema: {e}"))?;
    read_strict(&reader, datum)
}

/// The process-wide copy of `schema`, for readers that must outlive any one codec. Interned by its
/// full JSON form (not the parsing canonical form, which drops logical types: a `uuid` string and a
/// plain one decode to different values), so the memory held is bounded by the distinct schemas
/// this process has decoded with: a registry's, which codecs cache for the process's lifetime
/// anyway.
fn intern(schema: &Schema) -> Result<&'static Schema, String> {
    static SCHEMAS: LazyLock<Mutex<HashMap<String, &'static Schema>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let canonical = serde_json::to_string(schema).map_err(|e| format!("writer schema: {e}"))?;
    // A poisoned lock only means a panic elsewhere mid-insert; the map is still valid.
    let mut schemas = SCHEMAS.lock().unwrap_or_else(|p| p.into_inner());
    Ok(*schemas
        .entry(canonical)
        .or_insert_with(|| Box::leak(Box::new(schema.clone()))))
}

/// A strict reader of one writer schema's datums, its names resolved once.
pub struct DatumReader {
    schema: &'static Schema,
    reader: GenericDatumReader<'static>,
    record_name: Option<String>,
}

impl std::fmt::Debug for DatumReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatumReader")
            .field("record_name", &self.record_name)
            .finish_non_exhaustive()
    }
}

impl DatumReader {
    /// A reader of datums written with `writer`.
    pub fn new(writer: &Schema) -> Result<DatumReader, String> {
        let schema = intern(writer)?;
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| format!("writer schema: {e}"))?;
        let record_name = match schema {
            Schema::Record(r) => Some(r.name.fullname(None)),
            _ => None,
        };
        Ok(DatumReader {
            schema,
            reader,
            record_name,
        })
    }

    /// Full name of the writer's record schema (none for a schema that is not a record).
    pub fn record_name(&self) -> Option<&str> {
        self.record_name.as_deref()
    }

    /// The writer schema (the process's interned copy).
    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// Decodes one datum strictly (see the module invariants).
    pub fn read(&self, datum: &[u8]) -> Result<Value, String> {
        read_strict(&self.reader, datum)
    }
}

/// A writer of one schema's datums, its names resolved once.
pub struct DatumWriter {
    writer: GenericDatumWriter<'static>,
}

impl std::fmt::Debug for DatumWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatumWriter").finish_non_exhaustive()
    }
}

impl DatumWriter {
    /// A writer of datums of `schema`.
    pub fn new(schema: &Schema) -> Result<DatumWriter, String> {
        let writer = GenericDatumWriter::builder(intern(schema)?)
            .build()
            .map_err(|e| format!("schema: {e}"))?;
        Ok(DatumWriter { writer })
    }

    /// Appends `value`'s datum to `out`; a value that does not match the schema is an error, and
    /// `out` is left as it was.
    pub fn write(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        self.writer
            .write_value_ref(out, value)
            .map(drop)
            .map_err(|e| {
                out.truncate(start);
                format!("value does not match the schema ({e})")
            })
    }
}

/// Avro's binary encoding of the primitive types, for writers that walk a schema themselves
/// (`model::json_avro` writes a JSON value's datum without building a [`Value`] first).
pub mod wire {
    /// A `long` (or an `int`, an enum's index, a union's branch, a block's count, a length): its
    /// zig-zag varint.
    pub fn long(out: &mut Vec<u8>, n: i64) {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }

    /// A `bytes` or a `string`: its length, then the bytes.
    pub fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        long(out, b.len() as i64);
        out.extend_from_slice(b);
    }

    /// A `boolean`: one byte.
    pub fn boolean(out: &mut Vec<u8>, b: bool) {
        out.push(u8::from(b));
    }

    /// A `float`: four bytes, little-endian.
    pub fn float(out: &mut Vec<u8>, f: f32) {
        out.extend_from_slice(&f.to_le_bytes());
    }

    /// A `double`: eight bytes, little-endian.
    pub fn double(out: &mut Vec<u8>, d: f64) {
        out.extend_from_slice(&d.to_le_bytes());
    }

    /// A datum being read, for readers that walk a schema themselves. Every read checks its
    /// bounds: a read past the end is an error, never a default. The checks are apache-avro's
    /// (a varint of at most ten bytes, a length that is not negative, a boolean that is 0 or 1),
    /// so both refuse the same bytes; `fuzz/fuzz_targets/wire_format.rs` compares them.
    #[derive(Debug)]
    pub struct Cursor<'a> {
        rest: &'a [u8],
    }

    impl<'a> Cursor<'a> {
        /// A cursor at the start of `datum`.
        pub fn new(datum: &'a [u8]) -> Cursor<'a> {
            Cursor { rest: datum }
        }

        /// Bytes not read yet.
        pub fn remaining(&self) -> usize {
            self.rest.len()
        }

        /// The next `n` bytes.
        pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if n > self.rest.len() {
                return Err(format!("{n} bytes wanted, {} left", self.rest.len()));
            }
            let (head, rest) = self.rest.split_at(n);
            self.rest = rest;
            Ok(head)
        }

        fn byte(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }

        /// A zig-zag varint `long`.
        pub fn long(&mut self) -> Result<i64, String> {
            let mut z = 0_u64;
            for j in 0..10 {
                let b = self.byte()?;
                z |= u64::from(b & 0x7f) << (j * 7);
                if b & 0x80 == 0 {
                    return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
                }
            }
            Err("a varint longer than ten bytes".into())
        }

        /// An `int`: a `long` that fits 32 bits.
        pub fn int(&mut self) -> Result<i32, String> {
            let n = self.long()?;
            i32::try_from(n).map_err(|_| format!("{n} does not fit an int"))
        }

        /// A length: a `long` that is not negative.
        pub fn length(&mut self) -> Result<usize, String> {
            let n = self.long()?;
            usize::try_from(n).map_err(|_| format!("a negative length {n}"))
        }

        /// A `bytes` or a `string`: a length, then that many bytes.
        pub fn bytes(&mut self) -> Result<&'a [u8], String> {
            let n = self.length()?;
            self.take(n)
        }

        /// A `boolean`.
        pub fn boolean(&mut self) -> Result<bool, String> {
            match self.byte()? {
                0 => Ok(false),
                1 => Ok(true),
                b => Err(format!("{b} is not a boolean")),
            }
        }

        /// A `float`.
        pub fn float(&mut self) -> Result<f32, String> {
            let b = self.take(4)?;
            Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }

        /// A `double`.
        pub fn double(&mut self) -> Result<f64, String> {
            let b = self.take(8)?;
            let mut a = [0; 8];
            a.copy_from_slice(b);
            Ok(f64::from_le_bytes(a))
        }

        /// The item count of an array's or a map's next block; 0 ends the array or map. A
        /// negative count is followed by the block's size in bytes, which is skipped.
        pub fn block(&mut self) -> Result<usize, String> {
            let n = self.long()?;
            if n < 0 {
                self.long()?;
            }
            let n = n
                .checked_abs()
                .ok_or_else(|| "a block count that overflows".to_string())?;
            usize::try_from(n).map_err(|_| format!("a block count {n}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"R","namespace":"t","fields":[
        {"name":"a","type":"string"},
        {"name":"b","type":["null","string"],"default":null},
        {"name":"c","type":"long"},
        {"name":"d","type":["null","long"],"default":null},
        {"name":"e","type":"boolean","default":false}]}"#;

    fn record() -> Value {
        Value::Record(vec![
            ("a".into(), Value::String("hello".into())),
            (
                "b".into(),
                Value::Union(1, Box::new(Value::String("world".into()))),
            ),
            ("c".into(), Value::Long(123_456)),
            ("d".into(), Value::Union(1, Box::new(Value::Long(7)))),
            ("e".into(), Value::Boolean(true)),
        ])
    }

    fn encode(schema: &Schema, value: Value) -> Vec<u8> {
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    /// Both ways of decoding: the one-off function and a reader built once.
    fn both(schema: &Schema, datum: &[u8]) -> [Result<Value, String>; 2] {
        let reader = DatumReader::new(schema).unwrap();
        [decode_datum(schema, datum), reader.read(datum)]
    }

    #[test]
    fn wire_longs_are_apache_avros_at_every_varint_length() {
        let mut edges = vec![0, 1, -1, i64::MAX, i64::MIN];
        for bits in 1..63 {
            let n = 1_i64 << bits;
            edges.extend([n - 1, n, -n, -n - 1]);
        }
        for n in edges {
            let mut mine = Vec::new();
            wire::long(&mut mine, n);
            assert_eq!(mine, encode(&Schema::Long, Value::Long(n)), "{n}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let datum = encode(&schema, record());
        for decoded in both(&schema, &datum) {
            assert_eq!(decoded.unwrap(), record());
        }
        for len in 0..datum.len() {
            for decoded in both(&schema, &datum[..len]) {
                assert!(decoded.is_err(), "{len} of {} bytes decoded", datum.len());
            }
        }
    }

    #[test]
    fn a_last_union_index_cut_mid_varint_is_an_error() {
        // `R` without its last field, so that the union `d` ends the datum.
        let schema = Schema::parse_str(&SCHEMA.replace(
            r#",
        {"name":"e","type":"boolean","default":false}"#,
            "",
        ))
        .unwrap();
        let mut record = record();
        let Value::Record(fields) = &mut record else {
            unreachable!()
        };
        fields.pop();
        fields[3].1 = Value::Union(0, Box::new(Value::Null));
        let mut datum = encode(&schema, record);
        assert_eq!(datum.last(), Some(&0), "`d` is null: union index 0");
        // The byte the fuzzer found: a varint whose continuation bit promises a byte that is not
        // there. Same length as the canonical `0x00`.
        *datum.last_mut().unwrap() = 0xf9;
        for decoded in both(&schema, &datum) {
            let e = decoded.unwrap_err();
            assert!(e.contains("truncated or corrupt"), "{e}");
        }
    }

    #[test]
    fn a_missing_last_boolean_is_an_error_not_null() {
        // apache-avro reads a boolean at end of input as `null`; the strict reader refuses it.
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let mut datum = encode(&schema, record());
        datum.pop();
        for decoded in both(&schema, &datum) {
            assert!(decoded.unwrap_err().contains("truncated or corrupt"));
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let mut datum = encode(&schema, record());
        datum.push(0);
        for decoded in both(&schema, &datum) {
            assert!(decoded.unwrap_err().contains("1 trailing bytes"));
        }
    }

    #[test]
    fn a_map_decodes_whatever_order_its_entries_come_in() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"M","fields":[{"name":"m","type":{"type":"map","values":"long"}}]}"#,
        )
        .unwrap();
        let map: HashMap<String, Value> =
            (0..16).map(|i| (format!("k{i}"), Value::Long(i))).collect();
        let value = Value::Record(vec![("m".into(), Value::Map(map))]);
        // Each HashMap iterates in its own order: each encoding is other bytes of the same value.
        for _ in 0..8 {
            let datum = encode(&schema, value.clone());
            for decoded in both(&schema, &datum) {
                assert_eq!(decoded.unwrap(), value);
            }
        }
    }

    #[test]
    fn non_canonical_encodings_are_avro_and_decode() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"A","fields":[{"name":"xs","type":{"type":"array","items":"long"}},{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            (
                "xs".into(),
                Value::Array(vec![Value::Long(1), Value::Long(2), Value::Long(3)]),
            ),
            ("n".into(), Value::Long(0)),
        ]);
        // Three blocks: one item (count 1), then two items with a negative count (-2) and the
        // block's byte size (2), then the end; and `n` = 0 as a two-byte varint (0x80 0x00).
        // Zigzag: 1 → 0x02, 2 → 0x04, 3 → 0x06, -2 → 0x03.
        let datum = [0x02, 0x02, 0x03, 0x04, 0x04, 0x06, 0x00, 0x80, 0x00];
        for decoded in both(&schema, &datum) {
            assert_eq!(decoded.unwrap(), value);
        }
        // The same, cut anywhere, is still an error.
        for len in 0..datum.len() {
            for decoded in both(&schema, &datum[..len]) {
                assert!(decoded.is_err(), "{len} bytes decoded");
            }
        }
    }

    #[test]
    fn a_writer_writes_valid_values_and_refuses_others_leaving_the_buffer() {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let writer = DatumWriter::new(&schema).unwrap();
        let mut out = vec![0, 0, 0, 0, 1];
        writer.write(&record(), &mut out).unwrap();
        assert_eq!(out[..5], [0, 0, 0, 0, 1]);
        assert_eq!(out[5..], encode(&schema, record()));
        let before = out.clone();
        let e = writer.write(&Value::Long(1), &mut out).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert_eq!(out, before);
    }

    #[test]
    fn readers_of_one_schema_share_its_interned_copy() {
        let a = Schema::parse_str(SCHEMA).unwrap();
        // Same schema, other spelling (whitespace, attribute order).
        let b = Schema::parse_str(&SCHEMA.replace(
            r#""type":"record","name":"R""#,
            r#""name":"R", "type":"record""#,
        ))
        .unwrap();
        assert!(std::ptr::eq(intern(&a).unwrap(), intern(&b).unwrap()));
        // A logical type is another schema: a `uuid` string decodes to another value.
        let uuid = Schema::parse_str(&SCHEMA.replace(
            r#"{"name":"a","type":"string"}"#,
            r#"{"name":"a","type":{"type":"string","logicalType":"uuid"}}"#,
        ))
        .unwrap();
        assert!(!std::ptr::eq(intern(&a).unwrap(), intern(&uuid).unwrap()));
        assert_eq!(DatumReader::new(&a).unwrap().record_name(), Some("t.R"));
    }
}
