//! The schema catalog: every `.avsc` of `schemas/`, compiled into the binary from the explicit
//! list [`Catalog::FILES`], so nothing reads a schemas folder at run time.
//!
//! Invariants (checked by [`Catalog::from_files`], so [`Catalog::builtin`] fails on a bad file):
//! - A file is named `<snake name>.v<N>.avsc` (N ≥ 1, no leading zeros) and holds one record whose
//!   simple name is the snake name in CamelCase (`lead_captured` ↔ `LeadCaptured`) and which has a
//!   namespace. One snake name is one full name across all its versions, and its versions run
//!   1..=N without gaps.
//! - A record uses another record of the catalog (e.g. `io.onceflow.EventMeta`) by its full name, a
//!   plain string type. The catalog inlines that record's JSON definition (of its latest version) at
//!   its first use inside the record; a later use inside the same record stays a name reference, as
//!   Avro requires. The stored schema is therefore self-contained, and the registry needs no schema
//!   references. A name that is neither a primitive, nor defined earlier in the record, nor a record
//!   of the catalog is a [`CodecError::Schema`] naming the file.
//! - Every stored schema has been parsed by apache-avro ([`RecordSchema::parse`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use serde_json::Value;

use crate::codec::{CodecError, RecordSchema};

/// One line per schema file: `(file name, text)`.
macro_rules! schema_file {
    ($name:literal) => {
        ($name, include_str!(concat!("../../schemas/", $name)))
    };
}

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// One schema file, resolved and parsed.
#[derive(Debug, Clone)]
pub struct Entry {
    name: String,
    version: u32,
    file: String,
    schema: RecordSchema,
}

impl Entry {
    /// Snake name, e.g. `lead_captured`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Version, the N of `<name>.vN.avsc`.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// File name, e.g. `lead_captured.v1.avsc`.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The self-contained JSON (shared records inlined), as parsed and as sent to the registry.
    pub fn json(&self) -> &str {
        self.schema.json()
    }

    /// The parsed schema.
    pub fn schema(&self) -> &RecordSchema {
        &self.schema
    }
}

/// Every schema, by snake name and version.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Snake name → its versions; index `v - 1` holds version `v`.
    by_name: BTreeMap<String, Vec<Entry>>,
}

impl Catalog {
    /// Every file of `schemas/`, compiled in: `(file name, text)`.
    pub const FILES: &'static [(&'static str, &'static str)] = &[
        schema_file!("event_meta.v1.avsc"),
        schema_file!("command_meta.v1.avsc"),
        schema_file!("lead_captured.v1.avsc"),
        schema_file!("lead_captured.v2.avsc"),
        schema_file!("content_published.v1.avsc"),
        schema_file!("campaign_triggered.v1.avsc"),
        schema_file!("invoice_requested.v1.avsc"),
        schema_file!("crm_upsert_contact.v1.avsc"),
        schema_file!("email_send.v1.avsc"),
        schema_file!("invoice_create.v1.avsc"),
        schema_file!("analytics_track.v1.avsc"),
        schema_file!("webhook_post.v1.avsc"),
        schema_file!("delivery_receipt.v1.avsc"),
    ];

    /// The catalog of [`Catalog::FILES`].
    pub fn builtin() -> Result<Catalog, CodecError> {
        Catalog::from_files(Catalog::FILES)
    }

    /// A catalog of `(file name, text)` pairs, checked as the module documentation says.
    pub fn from_files(files: &[(&str, &str)]) -> Result<Catalog, CodecError> {
        let mut raw: BTreeMap<(String, u32), Raw> = BTreeMap::new();
        let mut full_of: BTreeMap<String, String> = BTreeMap::new();
        let mut name_of: BTreeMap<String, String> = BTreeMap::new();
        for &(file, text) in files {
            let r = Raw::read(file, text)?;
            let clash = |reason: String| Err(schema_error(file, reason));
            match full_of.insert(r.name.clone(), r.full.clone()) {
                Some(other) if other != r.full => {
                    return clash(format!("{} is {other} in another version", r.name));
                }
                _ => {}
            }
            match name_of.insert(r.full.clone(), r.name.clone()) {
                Some(other) if other != r.name => {
                    return clash(format!("{} is also defined by {other}.v*.avsc", r.full));
                }
                _ => {}
            }
            if let Some(other) = raw.insert((r.name.clone(), r.version), r) {
                return clash(format!("listed twice (also as {})", other.file));
            }
        }

        // Shared definitions: full name → the latest version's JSON (`raw` is ordered by version).
        let mut shared: BTreeMap<String, &Value> = BTreeMap::new();
        for r in raw.values() {
            shared.insert(r.full.clone(), &r.json);
        }

        let mut by_name: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for ((name, version), r) in &raw {
            let versions = by_name.entry(name.clone()).or_default();
            let expected = u32::try_from(versions.len() + 1).unwrap_or(u32::MAX);
            if *version != expected {
                return Err(schema_error(
                    &r.file,
                    format!(
                        "versions of {name} must run 1..=N without gaps; v{expected} is missing"
                    ),
                ));
            }
            let mut json = r.json.clone();
            Resolver {
                shared: &shared,
                defined: BTreeSet::new(),
                origin: &r.file,
            }
            .walk(&mut json, None)?;
            let json =
                serde_json::to_string(&json).map_err(|e| schema_error(&r.file, e.to_string()))?;
            let schema = RecordSchema::parse(&r.file, &json)?;
            versions.push(Entry {
                name: name.clone(),
                version: *version,
                file: r.file.clone(),
                schema,
            });
        }
        Ok(Catalog { by_name })
    }

    /// Version `version` of `name` (a snake name such as `lead_captured`).
    pub fn get(&self, name: &str, version: u32) -> Option<&RecordSchema> {
        self.entry(name, version).map(Entry::schema)
    }

    /// The entry of version `version` of `name`, with its file name and resolved JSON.
    pub fn entry(&self, name: &str, version: u32) -> Option<&Entry> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.by_name.get(name)?.get(index)
    }

    /// The highest version of `name`.
    pub fn latest(&self, name: &str) -> Option<(u32, &RecordSchema)> {
        let e = self.by_name.get(name)?.last()?;
        Some((e.version, &e.schema))
    }

    /// Version `version` of the record with full name `full_name` (e.g.
    /// `io.onceflow.events.LeadCaptured`).
    pub fn by_full_name(&self, full_name: &str, version: u32) -> Option<&RecordSchema> {
        let name = self
            .by_name
            .values()
            .find(|v| v.first().is_some_and(|e| e.schema.full_name() == full_name))?
            .first()?
            .name();
        self.get(name, version)
    }

    /// The versions of `name`, `1..=N`; empty for an unknown name.
    pub fn versions(&self, name: &str) -> RangeInclusive<u32> {
        let n = self.by_name.get(name).map_or(0, Vec::len);
        1..=u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Every entry, ordered by snake name, then version.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.by_name.values().flatten()
    }
}

fn schema_error(origin: &str, reason: String) -> CodecError {
    CodecError::Schema {
        origin: origin.to_string(),
        reason,
    }
}

/// A file as read: names checked, JSON not yet resolved.
#[derive(Debug)]
struct Raw {
    file: String,
    name: String,
    version: u32,
    full: String,
    json: Value,
}

impl Raw {
    fn read(file: &str, text: &str) -> Result<Raw, CodecError> {
        let err = |reason: String| schema_error(file, reason);
        let (name, version) = parse_file_name(file).ok_or_else(|| {
            err("file name is not <snake_name>.v<N>.avsc (N ≥ 1, no leading zeros)".into())
        })?;
        let json: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        if json.get("type").and_then(Value::as_str) != Some("record") {
            return Err(err("top level is not a record".into()));
        }
        let Some((full, Some(_))) = json.as_object().and_then(|o| named(o, None)) else {
            return Err(err("the record needs a name and a namespace".into()));
        };
        let simple = full.rsplit('.').next().unwrap_or(&full);
        if snake_case(simple) != name {
            return Err(err(format!(
                "record {simple} belongs in {}.v{version}.avsc",
                snake_case(simple)
            )));
        }
        Ok(Raw {
            file: file.to_string(),
            name: name.to_string(),
            version,
            full,
            json,
        })
    }
}

/// `lead_captured.v12.avsc` → `("lead_captured", 12)`.
fn parse_file_name(file: &str) -> Option<(&str, u32)> {
    let (name, version) = file.strip_suffix(".avsc")?.rsplit_once(".v")?;
    let snake = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let digits = !version.is_empty()
        && !version.starts_with('0')
        && version.chars().all(|c| c.is_ascii_digit());
    if !snake || !digits {
        return None;
    }
    Some((name, version.parse().ok()?))
}

/// `CrmUpsertContact` → `crm_upsert_contact`.
fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The full name and namespace of a named type's JSON object, in the enclosing namespace `ns`.
fn named(
    obj: &serde_json::Map<String, Value>,
    ns: Option<&str>,
) -> Option<(String, Option<String>)> {
    let name = obj.get("name")?.as_str()?;
    if let Some((space, _)) = name.rsplit_once('.') {
        return Some((name.to_string(), Some(space.to_string())));
    }
    let space = match obj.get("namespace").and_then(Value::as_str) {
        Some("") => None,
        Some(space) => Some(space),
        None => ns,
    };
    Some((full_name(name, space), space.map(str::to_string)))
}

fn full_name(name: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if !name.contains('.') => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

/// Inlines catalog records at their first use inside one record.
struct Resolver<'a> {
    shared: &'a BTreeMap<String, &'a Value>,
    /// Full names already defined in this record, in document order (Avro's parse order).
    defined: BTreeSet<String>,
    origin: &'a str,
}

impl Resolver<'_> {
    /// Resolves the type at `ty`, whose enclosing namespace is `ns`.
    fn walk(&mut self, ty: &mut Value, ns: Option<&str>) -> Result<(), CodecError> {
        match ty {
            Value::String(name) => {
                if PRIMITIVES.contains(&name.as_str()) {
                    return Ok(());
                }
                let full = full_name(name, ns);
                if self.defined.contains(&full) {
                    return Ok(());
                }
                let Some(&definition) = self.shared.get(&full) else {
                    return Err(schema_error(
                        self.origin,
                        format!(
                            "unknown type {full}: not a primitive, not defined earlier in this \
                             record and not a record of the catalog"
                        ),
                    ));
                };
                // A catalog record always has its own namespace, so `ns` does not leak into it.
                let mut inlined = definition.clone();
                self.walk(&mut inlined, None)?;
                *ty = inlined;
                Ok(())
            }
            Value::Array(branches) => branches.iter_mut().try_for_each(|b| self.walk(b, ns)),
            Value::Object(obj) => {
                let kind = obj.get("type").and_then(Value::as_str).map(str::to_string);
                match kind.as_deref() {
                    Some("record" | "error") => {
                        let space = named(obj, ns).and_then(|(full, space)| {
                            self.defined.insert(full);
                            space
                        });
                        if let Some(Value::Array(fields)) = obj.get_mut("fields") {
                            for field in fields {
                                if let Some(t) = field.get_mut("type") {
                                    self.walk(t, space.as_deref())?;
                                }
                            }
                        }
                        Ok(())
                    }
                    Some("enum" | "fixed") => {
                        if let Some((full, _)) = named(obj, ns) {
                            self.defined.insert(full);
                        }
                        Ok(())
                    }
                    Some("array") => self.walk_key(obj, "items", ns),
                    Some("map") => self.walk_key(obj, "values", ns),
                    // `{"type": "long", "logicalType": …}`, or `{"type": <a type>}`.
                    _ => self.walk_key(obj, "type", ns),
                }
            }
            // Not a type; apache-avro reports it when the result is parsed.
            _ => Ok(()),
        }
    }

    fn walk_key(
        &mut self,
        obj: &mut serde_json::Map<String, Value>,
        key: &str,
        ns: Option<&str>,
    ) -> Result<(), CodecError> {
        match obj.get_mut(key) {
            Some(t) => self.walk(t, ns),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: (&str, &str) = (
        "event_meta.v1.avsc",
        r#"{"type":"record","name":"EventMeta","namespace":"io.onceflow",
            "fields":[{"name":"event_id","type":"string"}]}"#,
    );

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn every_file_parses() {
        let catalog = Catalog::builtin().unwrap();
        assert_eq!(catalog.iter().count(), Catalog::FILES.len());
        for e in catalog.iter() {
            assert_eq!(format!("{}.v{}.avsc", e.name(), e.version()), e.file());
            assert_eq!(
                catalog.get(e.name(), e.version()).unwrap().full_name(),
                e.schema().full_name()
            );
        }
        let (v, lead) = catalog.latest("lead_captured").unwrap();
        assert_eq!(
            (v, lead.full_name()),
            (2, "io.onceflow.events.LeadCaptured")
        );
        assert_eq!(catalog.versions("lead_captured"), 1..=2);
        assert!(catalog.versions("nope").is_empty());
        assert!(catalog.get("lead_captured", 0).is_none());
        assert!(catalog.get("lead_captured", 3).is_none());
        let v1 = catalog
            .by_full_name("io.onceflow.events.LeadCaptured", 1)
            .unwrap();
        assert_eq!(v1.full_name(), "io.onceflow.events.LeadCaptured");
        assert!(catalog.by_full_name("io.onceflow.events.Nope", 1).is_none());
    }

    #[test]
    fn an_unknown_reference_is_a_schema_error_naming_the_file() {
        let bad = (
            "thing.v1.avsc",
            r#"{"type":"record","name":"Thing","namespace":"t",
                "fields":[{"name":"meta","type":"io.onceflow.Nope"}]}"#,
        );
        match Catalog::from_files(&[META, bad]) {
            Err(CodecError::Schema { origin, reason }) => {
                assert_eq!(origin, "thing.v1.avsc");
                assert!(reason.contains("io.onceflow.Nope"), "{reason}");
            }
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn the_shared_meta_is_inlined_exactly_once_per_record() {
        // Every event and command record is one of the two metas or carries exactly one of them,
        // as an inlined definition (the `meta` field's type is an object, not a name). Receipts
        // (io.onceflow.results) are neither and carry no envelope.
        for e in Catalog::builtin()
            .unwrap()
            .iter()
            .filter(|e| !e.schema().full_name().starts_with("io.onceflow.results."))
        {
            let defs = count(e.json(), r#""name":"EventMeta""#)
                + count(e.json(), r#""name":"CommandMeta""#);
            assert_eq!(defs, 1, "{}: {}", e.file(), e.json());
            assert!(
                !e.json().contains(r#""io.onceflow.EventMeta""#),
                "{}",
                e.file()
            );
            assert!(
                !e.json().contains(r#""io.onceflow.CommandMeta""#),
                "{}",
                e.file()
            );
        }

        // A second use inside one record stays a name reference.
        let twice = (
            "twice.v1.avsc",
            r#"{"type":"record","name":"Twice","namespace":"t","fields":[
                {"name":"a","type":"io.onceflow.EventMeta"},
                {"name":"b","type":["null","io.onceflow.EventMeta"],"default":null}]}"#,
        );
        let catalog = Catalog::from_files(&[META, twice]).unwrap();
        let json = catalog.entry("twice", 1).unwrap().json();
        assert_eq!(count(json, r#""name":"EventMeta""#), 1, "{json}");
        assert_eq!(count(json, r#""io.onceflow.EventMeta""#), 1, "{json}");
    }

    #[test]
    fn file_names_and_versions_are_checked() {
        let rec = r#"{"type":"record","name":"Thing","namespace":"t","fields":[]}"#;
        for name in [
            "Thing.v1.avsc",
            "thing.v0.avsc",
            "thing.v01.avsc",
            "thing.avsc",
        ] {
            assert!(Catalog::from_files(&[(name, rec)]).is_err(), "{name}");
        }
        assert!(Catalog::from_files(&[("other.v1.avsc", rec)]).is_err());
        assert!(Catalog::from_files(&[("thing.v2.avsc", rec)]).is_err());
        let no_ns = r#"{"type":"record","name":"Thing","fields":[]}"#;
        assert!(Catalog::from_files(&[("thing.v1.avsc", no_ns)]).is_err());
        assert!(Catalog::from_files(&[("thing.v1.avsc", rec), ("thing.v2.avsc", rec)]).is_ok());
    }
}
