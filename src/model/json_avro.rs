//! JSON ↔ Avro values, guided by the Avro schema, with errors that name the offending field.
//!
//! Invariants:
//! - `to_avro` accepts exactly what the schema allows: unknown fields are refused (a typo never
//!   silently drops data), a missing field takes the schema's default or is an error, numbers must
//!   fit their Avro type, and `timestamp-millis` accepts an RFC 3339 string or epoch milliseconds.
//! - Every error carries the dotted path of the field (`data.tags[2]`), which the HTTP layer returns
//!   as `field` in its 422 body.
//! - `to_json` is the inverse for values of the supported schemas (timestamps become epoch
//!   milliseconds, unions unwrap), so typed structs round-trip through serde.

use std::collections::HashMap;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::{Map, Value as Json};

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

/// Converts `json` into a value of `schema`; `path` names it in errors.
pub fn to_avro(json: &Json, schema: &Schema, path: &str) -> Result<Value, FieldError> {
    convert(json, schema, &Path::Root(path))
}

fn convert(json: &Json, schema: &Schema, path: &Path<'_>) -> Result<Value, FieldError> {
    let expected = |what: &str| err(path, format!("expected {what}, got {}", kind(json)));
    match schema {
        Schema::Null => json
            .is_null()
            .then_some(Value::Null)
            .ok_or_else(|| expected("null")),
        Schema::Boolean => json
            .as_bool()
            .map(Value::Boolean)
            .ok_or_else(|| expected("a boolean")),
        Schema::Int => {
            let n = json.as_i64().ok_or_else(|| expected("an integer"))?;
            i32::try_from(n)
                .map(Value::Int)
                .map_err(|_| err(path, format!("{n} does not fit a 32-bit integer")))
        }
        Schema::Long => json
            .as_i64()
            .map(Value::Long)
            .ok_or_else(|| expected("an integer")),
        Schema::Float => json
            .as_f64()
            .map(|f| Value::Float(f as f32))
            .ok_or_else(|| expected("a number")),
        Schema::Double => json
            .as_f64()
            .map(Value::Double)
            .ok_or_else(|| expected("a number")),
        Schema::String => json
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| expected("a string")),
        Schema::TimestampMillis => match json {
            Json::Number(n) => n
                .as_i64()
                .map(Value::TimestampMillis)
                .ok_or_else(|| expected("epoch milliseconds")),
            Json::String(s) => parse_timestamp_ms(s)
                .map(Value::TimestampMillis)
                .map_err(|e| err(path, format!("not an RFC 3339 timestamp: {e}"))),
            _ => Err(expected("an RFC 3339 timestamp or epoch milliseconds")),
        },
        Schema::Array(a) => {
            let items = json.as_array().ok_or_else(|| expected("an array"))?;
            items
                .iter()
                .enumerate()
                .map(|(i, item)| convert(item, &a.items, &Path::Index(path, i)))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Schema::Map(m) => {
            let entries = json.as_object().ok_or_else(|| expected("an object"))?;
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), convert(v, &m.types, &Path::Key(path, k))?)))
                .collect::<Result<HashMap<_, _>, FieldError>>()
                .map(Value::Map)
        }
        Schema::Enum(e) => {
            let s = json.as_str().ok_or_else(|| expected("a string"))?;
            match e.symbols.iter().position(|sym| sym == s) {
                Some(i) => Ok(Value::Enum(i as u32, s.to_string())),
                None => Err(err(
                    path,
                    format!("`{s}` is not one of {}", e.symbols.join(", ")),
                )),
            }
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if json.is_null() {
                return match variants.iter().position(|v| matches!(v, Schema::Null)) {
                    Some(i) => Ok(Value::Union(i as u32, Box::new(Value::Null))),
                    None => Err(err(path, "must not be null")),
                };
            }
            let mut first_error = None;
            for (i, variant) in variants
                .iter()
                .enumerate()
                .filter(|(_, v)| !matches!(v, Schema::Null))
            {
                match convert(json, variant, path) {
                    Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(first_error.unwrap_or_else(|| err(path, "no variant of the union fits")))
        }
        Schema::Record(r) => {
            let object = json.as_object().ok_or_else(|| expected("an object"))?;
            record(object, r, path, Vec::new())
        }
        other => Err(err(
            path,
            format!("schema type {other:?} is not supported by the JSON contract"),
        )),
    }
}

/// Converts a JSON object into a record of `schema`. Fields named in `provided` are taken from
/// there (the caller builds them, like `meta`) and are refused in the object; unknown keys are
/// refused; missing ones take their default.
pub fn record_to_avro(
    object: &Map<String, Json>,
    schema: &apache_avro::schema::RecordSchema,
    path: &str,
    provided: Vec<(&str, Value)>,
) -> Result<Value, FieldError> {
    record(object, schema, &Path::Root(path), provided)
}

fn record(
    object: &Map<String, Json>,
    schema: &apache_avro::schema::RecordSchema,
    path: &Path<'_>,
    mut provided: Vec<(&str, Value)>,
) -> Result<Value, FieldError> {
    if let Some(unknown) = object.keys().find(|k| {
        provided.iter().any(|(p, _)| p == k) || !schema.fields.iter().any(|f| &f.name == *k)
    }) {
        return Err(err(Path::Field(path, unknown), "unknown field"));
    }
    let mut fields = Vec::with_capacity(schema.fields.len());
    for field in &schema.fields {
        let field_path = Path::Field(path, &field.name);
        let value = if let Some(i) = provided.iter().position(|(p, _)| *p == field.name) {
            provided.swap_remove(i).1
        } else {
            match (object.get(&field.name), &field.default) {
                (Some(json), _) => convert(json, &field.schema, &field_path)?,
                (None, Some(default)) => convert(default, &field.schema, &field_path)?,
                (None, None) => return Err(err(field_path, "is required")),
            }
        };
        fields.push((field.name.clone(), value));
    }
    Ok(Value::Record(fields))
}

/// The record of `schema` for an envelope `meta` (the record's `meta` field) and `data` (every
/// other field): how events and commands become Avro. `data_path` prefixes field names in errors.
pub fn envelope_to_avro<M: serde::Serialize>(
    meta: &M,
    data: &Map<String, Json>,
    schema: &Schema,
    data_path: &str,
) -> Result<Value, FieldError> {
    let Schema::Record(record) = schema else {
        return Err(err("", "schema is not a record"));
    };
    let meta_field = record
        .fields
        .iter()
        .find(|f| f.name == "meta")
        .ok_or_else(|| err("meta", "schema has no meta field"))?;
    let meta_json = serde_json::to_value(meta).map_err(|e| err("meta", e.to_string()))?;
    let meta = to_avro(&meta_json, &meta_field.schema, "meta")?;
    record_to_avro(data, record, data_path, vec![("meta", meta)])
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

    #[test]
    fn int_range_is_checked() {
        let e = to_avro(&json!(3_000_000_000_i64), &Schema::Int, "n").unwrap_err();
        assert!(e.detail.contains("32-bit"), "{e}");
    }
}
