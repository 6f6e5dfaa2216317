//! JSON ↔ Avro (datums and values), guided by the Avro schema, with errors that name the offending
//! field.
//!
//! Invariants:
//! - `to_avro` accepts exactly what the schema allows: unknown fields are refused (a typo never
//!   silently drops data), a missing field takes the schema's default or is an error, numbers must
//!   fit their Avro type, and `timestamp-millis` accepts an RFC 3339 string or epoch milliseconds.
//! - Every error carries the dotted path of the field (`data.tags[2]`), which the HTTP layer returns
//!   as `field` in its 422 body.
//! - `to_json` is the inverse for values of the supported schemas (timestamps become epoch
//!   milliseconds, unions unwrap), so typed structs round-trip through serde.
//! - [`to_datum`] writes the Avro binary straight from the JSON, with no `Value` tree in between:
//!   it is the one converter. [`to_avro`] is its datum read back, so the two accept and refuse
//!   alike. The datum is what apache-avro writes for the same value (up to the order of a map's
//!   entries); the tests pin it byte for byte and the `json_avro` fuzz target checks it.
//! - A union tries its branches in order, and a branch that does not fit leaves no byte behind.
//! - An envelope's meta ([`Meta`]) is written from its fields as it borrows them, to the bytes its
//!   serde JSON object would give (`event_and_command_metas_are_written_as_serde_would`).

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::{Map, Value as Json};

use crate::codec::datum::wire;

/// A value that does not fit its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FieldError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

fn err(field: impl std::fmt::Display, detail: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        detail: detail.into(),
    }
}

/// Where a value sits in what is converted: written out (`data.tags[2]`) only when an error names
/// it, so a record that converts builds no path strings.
#[derive(Clone, Copy)]
enum Path<'a> {
    /// The value the caller passed, named as the caller said.
    Root(&'a str),
    /// A record's field: `parent.name`, or `name` under an unnamed root.
    Field(&'a Path<'a>, &'a str),
    /// A map's entry: `parent.key`.
    Key(&'a Path<'a>, &'a str),
    /// An array's item: `parent[i]`.
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root(name) => f.write_str(name),
            Path::Field(Path::Root(""), name) => f.write_str(name),
            Path::Field(parent, name) | Path::Key(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Converts `json` into a value of `schema`; `path` names it in errors. The value is read back
/// from the datum [`to_datum`] writes, so the two agree by construction.
pub fn to_avro(json: &Json, schema: &Schema, path: &str) -> Result<Value, FieldError> {
    let datum = to_datum(json, schema, path)?;
    read_back(schema, &datum, path)
}

/// The Avro binary datum of `json` in `schema`, written straight from the JSON (no [`Value`] tree
/// in between); `path` names the value in errors.
pub fn to_datum(json: &Json, schema: &Schema, path: &str) -> Result<Vec<u8>, FieldError> {
    let mut out = Vec::with_capacity(128);
    write(json, schema, &Path::Root(path), &mut out)?;
    Ok(out)
}

/// A datum this module wrote, decoded. It always decodes; were it not to, that is said as an error
/// of the value rather than a panic.
fn read_back(schema: &Schema, datum: &[u8], path: &str) -> Result<Value, FieldError> {
    crate::codec::decode_datum(schema, datum).map_err(|e| err(path, e))
}

/// Writes the datum of `json` in `schema` onto `out`. On an error `out` may end with part of the
/// value: a union that tries its next branch cuts it off; [`to_datum`] drops the whole buffer.
fn write(
    json: &Json,
    schema: &Schema,
    path: &Path<'_>,
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    let expected = |what: &str| err(path, format!("expected {what}, got {}", kind(json)));
    match schema {
        Schema::Null => {
            if !json.is_null() {
                return Err(expected("null"));
            }
        }
        Schema::Boolean => wire::boolean(out, json.as_bool().ok_or_else(|| expected("a boolean"))?),
        Schema::Int => {
            let n = json.as_i64().ok_or_else(|| expected("an integer"))?;
            let n = i32::try_from(n)
                .map_err(|_| err(path, format!("{n} does not fit a 32-bit integer")))?;
            wire::long(out, i64::from(n));
        }
        Schema::Long => wire::long(out, json.as_i64().ok_or_else(|| expected("an integer"))?),
        Schema::Float => wire::float(
            out,
            json.as_f64().ok_or_else(|| expected("a number"))? as f32,
        ),
        Schema::Double => wire::double(out, json.as_f64().ok_or_else(|| expected("a number"))?),
        Schema::String => {
            let s = json.as_str().ok_or_else(|| expected("a string"))?;
            wire::bytes(out, s.as_bytes());
        }
        Schema::TimestampMillis => {
            let ms = match json {
                Json::Number(n) => n.as_i64().ok_or_else(|| expected("epoch milliseconds"))?,
                Json::String(s) => parse_timestamp_ms(s)
                    .map_err(|e| err(path, format!("not an RFC 3339 timestamp: {e}")))?,
                _ => return Err(expected("an RFC 3339 timestamp or epoch milliseconds")),
            };
            wire::long(out, ms);
        }
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| expected("an array"))?;
            if !items.is_empty() {
                wire::long(out, items.len() as i64);
                for (i, item) in items.iter().enumerate() {
                    write(item, &a.items, &Path::Index(path, i), out)?;
                }
            }
            wire::long(out, 0);
        }
        Schema::Map(m) => {
            let entries = json.as_object().ok_or_else(|| expected("an object"))?;
            if !entries.is_empty() {
                wire::long(out, entries.len() as i64);
                for (k, v) in entries {
                    wire::bytes(out, k.as_bytes());
                    write(v, &m.types, &Path::Key(path, k), out)?;
                }
            }
            wire::long(out, 0);
        }
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| expected("a string"))?;
            let Some(i) = e.symbols.iter().position(|sym| sym == s) else {
                return Err(err(
                    path,
                    format!("`{s}` is not one of {}", e.symbols.join(", ")),
                ));
            };
            wire::long(out, i as i64);
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if json.is_null() {
                return match variants.iter().position(|v| matches!(v, Schema::Null)) {
                    Some(i) => {
                        wire::long(out, i as i64);
                        Ok(())
                    }
                    None => Err(err(path, "must not be null")),
                };
            }
            let start = out.len();
            let mut first_error = None;
            for (i, variant) in variants
                .iter()
                .enumerate()
                .filter(|(_, v)| !matches!(v, Schema::Null))
            {
                wire::long(out, i as i64);
                match write(json, variant, path, out) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        out.truncate(start);
                        first_error.get_or_insert(e);
                    }
                }
            }
            return Err(first_error.unwrap_or_else(|| err(path, "no variant of the union fits")));
        }
        Schema::Record(r) => {
            let object = json.as_object().ok_or_else(|| expected("an object"))?;
            record(object, r, path, None, out)?;
        }
        other => {
            return Err(err(
                path,
                format!("schema type {other:?} is not supported by the JSON contract"),
            ));
        }
    }
    Ok(())
}

/// A field the caller writes itself (like `meta`): its name, and what writes it given its schema.
type Provided<'a> = (
    &'a str,
    &'a dyn Fn(&Schema, &mut Vec<u8>) -> Result<(), FieldError>,
);

/// Writes a JSON object as a record of `schema`. A `provided` field is taken from there (and
/// refused in the object); unknown keys are refused; missing ones take their default.
fn record(
    object: &Map<String, Json>,
    schema: &apache_avro::schema::RecordSchema,
    path: &Path<'_>,
    provided: Option<Provided<'_>>,
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    let is_provided = |name: &str| provided.is_some_and(|(p, _)| p == name);
    if let Some(unknown) = object
        .keys()
        .find(|k| is_provided(k) || !schema.fields.iter().any(|f| &f.name == *k))
    {
        return Err(err(Path::Field(path, unknown), "unknown field"));
    }
    for field in &schema.fields {
        match (provided, object.get(&field.name), &field.default) {
            (Some((name, provide)), _, _) if name == field.name => provide(&field.schema, out)?,
            (_, Some(json), _) | (_, None, Some(json)) => {
                write(json, &field.schema, &Path::Field(path, &field.name), out)?;
            }
            (_, None, None) => return Err(err(Path::Field(path, &field.name), "is required")),
        }
    }
    Ok(())
}

/// A value of an envelope's meta field, borrowed from the meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaValue<'a> {
    /// A string.
    Str(&'a str),
    /// An integer (`long`, `int` or `timestamp-millis` in the schema).
    Long(i64),
}

impl MetaValue<'_> {
    fn to_json(self) -> Json {
        match self {
            MetaValue::Str(s) => Json::String(s.to_string()),
            MetaValue::Long(n) => Json::from(n),
        }
    }
}

/// An envelope's meta (`EventMeta`, `CommandMeta`), written field by field from what it borrows:
/// a JSON map of owned names built for every record was 6 % of the processor's loop thread
/// (bench/PROFILE.md). The names are the type's serde names (a test checks both types).
pub trait Meta {
    /// Every field's name.
    const FIELDS: &'static [&'static str];
    /// The value of field `name`, if the meta has one by that name.
    fn field(&self, name: &str) -> Option<MetaValue<'_>>;
}

/// `meta` as the JSON object serde makes of it.
fn meta_json<M: Meta>(meta: &M) -> Json {
    Json::Object(
        M::FIELDS
            .iter()
            .filter_map(|f| Some(((*f).to_string(), meta.field(f)?.to_json())))
            .collect(),
    )
}

/// Writes `meta` as its record `schema` (named `root` in errors), as [`write`] would write it as a
/// JSON object: unknown fields refused, missing ones defaulted or an error.
fn write_meta<M: Meta>(
    meta: &M,
    schema: &Schema,
    root: &str,
    out: &mut Vec<u8>,
) -> Result<(), FieldError> {
    let path = Path::Root(root);
    let Schema::Record(r) = schema else {
        return write(&meta_json(meta), schema, &path, out);
    };
    if let Some(unknown) = M::FIELDS
        .iter()
        .find(|f| !r.fields.iter().any(|x| x.name == **f))
    {
        return Err(err(Path::Field(&path, unknown), "unknown field"));
    }
    for field in &r.fields {
        let path = Path::Field(&path, &field.name);
        match (meta.field(&field.name), &field.schema, &field.default) {
            (Some(MetaValue::Str(s)), Schema::String, _) => wire::bytes(out, s.as_bytes()),
            (Some(MetaValue::Long(n)), Schema::Long | Schema::TimestampMillis, _) => {
                wire::long(out, n);
            }
            (Some(v), schema, _) => write(&v.to_json(), schema, &path, out)?,
            (None, schema, Some(json)) => write(json, schema, &path, out)?,
            (None, _, None) => return Err(err(path, "is required")),
        }
    }
    Ok(())
}

/// The datum of `schema` for an envelope `meta` (the record's `meta` field) and `data` (every other
/// field): how events and commands become Avro. `data_path` prefixes field names in errors.
pub fn envelope_to_datum<M: Meta>(
    meta: &M,
    data: &Map<String, Json>,
    schema: &Schema,
    data_path: &str,
) -> Result<Vec<u8>, FieldError> {
    let Schema::Record(record_schema) = schema else {
        return Err(err("", "schema is not a record"));
    };
    if !record_schema.fields.iter().any(|f| f.name == "meta") {
        return Err(err("meta", "schema has no meta field"));
    }
    let mut out = Vec::with_capacity(256);
    record(
        data,
        record_schema,
        &Path::Root(data_path),
        Some(("meta", &|schema, out| write_meta(meta, schema, "meta", out))),
        &mut out,
    )?;
    Ok(out)
}

/// [`envelope_to_datum`], read back as a [`Value`].
pub fn envelope_to_avro<M: Meta>(
    meta: &M,
    data: &Map<String, Json>,
    schema: &Schema,
    data_path: &str,
) -> Result<Value, FieldError> {
    let datum = envelope_to_datum(meta, data, schema, data_path)?;
    read_back(schema, &datum, data_path)
}

/// The inverse of [`envelope_to_avro`]: the `meta` field read into `M`, the other fields as JSON.
/// Field by field: the record is not first turned into one JSON object that `meta` is taken out of.
pub fn envelope_from_avro<M: serde::de::DeserializeOwned>(
    value: &Value,
) -> Result<(M, Map<String, Json>), FieldError> {
    let fields = match value {
        Value::Record(fields) => fields,
        Value::Union(_, inner) => return envelope_from_avro(inner),
        _ => return Err(err("", "not a record")),
    };
    let mut meta = None;
    let mut data = Map::new();
    for (name, field) in fields {
        if name == "meta" {
            meta = Some(field);
        } else {
            data.insert(name.clone(), to_json(field));
        }
    }
    let meta = meta.ok_or_else(|| err("meta", "missing"))?;
    let meta = serde_json::from_value(to_json(meta)).map_err(|e| err("meta", e.to_string()))?;
    Ok((meta, data))
}

/// Converts an Avro value back into JSON (unions unwrap; timestamps become epoch milliseconds).
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(*i),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::LocalTimestampMillis(l)
        | Value::LocalTimestampMicros(l)
        | Value::TimeMicros(l) => Json::from(*l),
        Value::Float(f) => Json::from(f64::from(*f)),
        Value::Double(d) => Json::from(*d),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(hex::encode(b)),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        other => Json::String(format!("{other:?}")),
    }
}

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_timestamp_ms(s: &str) -> Result<i64, String> {
    let ts: jiff::Timestamp = s.parse().map_err(|e: jiff::Error| e.to_string())?;
    Ok(ts.as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An envelope's datum written with its meta taken field by field is the datum of the whole
    /// record as one JSON object, the meta as serde makes it; and the meta names its fields as
    /// serde does.
    fn meta_written_as_serde_would<M: Meta + serde::Serialize>(
        meta: &M,
        data: &Map<String, Json>,
        schema: &Schema,
    ) {
        let serde_meta = serde_json::to_value(meta).unwrap();
        assert_eq!(meta_json(meta), serde_meta);
        let mut whole = data.clone();
        whole.insert("meta".into(), serde_meta);
        assert_eq!(
            envelope_to_datum(meta, data, schema, "data").unwrap(),
            to_datum(&Json::Object(whole), schema, "data").unwrap()
        );
    }

    #[test]
    fn event_and_command_metas_are_written_as_serde_would() {
        let catalog = crate::codec::catalog::Catalog::builtin().unwrap();
        let event = crate::adapters::test_support::lead();
        let (_, schema) = catalog.latest("lead_captured").unwrap();
        meta_written_as_serde_would(&event.meta, &event.data, schema.schema());
        let adapter = crate::adapters::build("analytics", &Default::default()).unwrap();
        let command = adapter.decide(&event).unwrap().remove(0);
        let (_, schema) = catalog.latest(command.command_type.schema_name()).unwrap();
        meta_written_as_serde_would(&command.meta, &command.data, schema.schema());
    }

    fn schema() -> Schema {
        Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"email","type":"string"},
                {"name":"age","type":["null","int"],"default":null},
                {"name":"tags","type":{"type":"array","items":"string"},"default":[]},
                {"name":"vars","type":{"type":"map","values":"string"},"default":{}},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"ok","type":"boolean","default":false}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_valid_object_converts_and_round_trips() {
        let s = schema();
        let v = to_avro(
            &json!({"email":"a@b.io","age":3,"tags":["x"],"at":"2026-11-23T10:00:00.5Z"}),
            &s,
            "data",
        )
        .unwrap();
        assert!(v.validate(&s));
        assert_eq!(
            to_json(&v),
            json!({"email":"a@b.io","age":3,"tags":["x"],"vars":{},"at":1_795_428_000_500_i64,"ok":false})
        );
        // And back: epoch milliseconds are accepted too.
        assert_eq!(to_avro(&to_json(&v), &s, "data").unwrap(), v);
    }

    #[test]
    fn errors_name_the_field() {
        let s = schema();
        let e = |j: Json| to_avro(&j, &s, "data").unwrap_err();
        assert_eq!(e(json!({"at": 1})).field, "data.email");
        assert_eq!(e(json!({"at": 1})).detail, "is required");
        assert_eq!(e(json!({"email": 5, "at": 1})).field, "data.email");
        assert_eq!(
            e(json!({"email": "a", "at": 1, "tags": ["x", 2]})).field,
            "data.tags[1]"
        );
        assert_eq!(
            e(json!({"email": "a", "at": 1, "vars": {"k": true}})).field,
            "data.vars.k"
        );
        assert_eq!(e(json!({"email": "a", "at": "yesterday"})).field, "data.at");
        assert_eq!(
            e(json!({"email": "a", "at": 1, "age": 1e12})).field,
            "data.age"
        );
        assert_eq!(
            e(json!({"email": "a", "at": 1, "emial": "typo"})).field,
            "data.emial"
        );
        assert_eq!(
            e(json!({"email": "a", "at": 1, "emial": "typo"})).detail,
            "unknown field"
        );
        assert_eq!(e(json!([1])).field, "data");
    }

    #[test]
    fn paths_are_spelt_as_before_under_an_unnamed_root() {
        let s = schema();
        let e = |j: Json| to_avro(&j, &s, "").unwrap_err().field;
        assert_eq!(e(json!({"at": 1})), "email");
        assert_eq!(e(json!({"email": "a", "at": 1, "tags": [2]})), "tags[0]");
        assert_eq!(
            e(json!({"email": "a", "at": 1, "vars": {"k": 1}})),
            "vars.k"
        );
        let e = to_avro(
            &json!([1]),
            &Schema::parse_str(r#"{"type":"array","items":"string"}"#).unwrap(),
            "",
        )
        .unwrap_err();
        assert_eq!(e.field, "[0]");
    }

    /// apache-avro's own encoding of `value`.
    fn apache(schema: &Schema, value: Value) -> Vec<u8> {
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    #[test]
    fn the_datum_is_the_one_apache_avro_writes_for_the_same_value() {
        let s = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"s","type":"string"},
                {"name":"u","type":["null","string","long"]},
                {"name":"n","type":["null","int"],"default":null},
                {"name":"i","type":"int"},
                {"name":"l","type":"long"},
                {"name":"f","type":"float"},
                {"name":"d","type":"double"},
                {"name":"b","type":"boolean"},
                {"name":"a","type":{"type":"array","items":"long"}},
                {"name":"e","type":{"type":"array","items":"string"}},
                {"name":"m","type":{"type":"map","values":"string"}},
                {"name":"k","type":{"type":"enum","name":"K","symbols":["X","Y","Z"]}},
                {"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"r","type":{"type":"record","name":"Inner","fields":[{"name":"z","type":"int"}]}}]}"#,
        )
        .unwrap();
        let json = json!({"s":"héllo","u":-7,"i":-2_147_483_648_i64,"l":i64::MAX,"f":1.5,"d":-0.25,
            "b":true,"a":[0,-1,63,-64,64,8192,i64::MIN],"e":[],"m":{"only":"one"},"k":"Z",
            "t":"2026-11-23T10:00:00.5Z","r":{"z":300}});
        let value = Value::Record(vec![
            ("s".into(), Value::String("héllo".into())),
            ("u".into(), Value::Union(2, Box::new(Value::Long(-7)))),
            ("n".into(), Value::Union(0, Box::new(Value::Null))),
            ("i".into(), Value::Int(i32::MIN)),
            ("l".into(), Value::Long(i64::MAX)),
            ("f".into(), Value::Float(1.5)),
            ("d".into(), Value::Double(-0.25)),
            ("b".into(), Value::Boolean(true)),
            (
                "a".into(),
                Value::Array(
                    [0, -1, 63, -64, 64, 8192, i64::MIN]
                        .into_iter()
                        .map(Value::Long)
                        .collect(),
                ),
            ),
            ("e".into(), Value::Array(Vec::new())),
            (
                "m".into(),
                Value::Map([("only".to_string(), Value::String("one".into()))].into()),
            ),
            ("k".into(), Value::Enum(2, "Z".into())),
            ("t".into(), Value::TimestampMillis(1_795_428_000_500)),
            (
                "r".into(),
                Value::Record(vec![("z".into(), Value::Int(300))]),
            ),
        ]);
        let datum = to_datum(&json, &s, "data").unwrap();
        assert_eq!(datum, apache(&s, value.clone()));
        assert_eq!(to_avro(&json, &s, "data").unwrap(), value);
    }

    #[test]
    fn a_union_branch_that_does_not_fit_leaves_nothing_behind() {
        // "x" is tried as the record first, which writes its union index and then fails on the
        // missing field: that index must not stay in the datum.
        let s = Schema::parse_str(
            r#"{"type":"record","name":"O","fields":[{"name":"v","type":["null",
                {"type":"record","name":"P","fields":[{"name":"q","type":"long"},{"name":"w","type":"long"}]},
                {"type":"map","values":"long"}]}]}"#,
        )
        .unwrap();
        let json = json!({"v":{"q":1}});
        let map = Value::Map([("q".to_string(), Value::Long(1))].into());
        let expected = Value::Record(vec![("v".into(), Value::Union(2, Box::new(map)))]);
        assert_eq!(to_datum(&json, &s, "").unwrap(), apache(&s, expected));
    }

    #[test]
    fn int_range_is_checked() {
        let e = to_avro(&json!(3_000_000_000_i64), &Schema::Int, "n").unwrap_err();
        assert!(e.detail.contains("32-bit"), "{e}");
    }
}
