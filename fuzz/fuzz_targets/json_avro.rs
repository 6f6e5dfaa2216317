//! Arbitrary JSON through the JSON → Avro mapping of `model::json_avro`, for every compiled-in
//! schema, and through the intake's own path (`Event::new` + `Event::to_avro`, envelope and rules)
//! for every version of every event type.
//!
//! Input: the first byte picks the schema, the rest is JSON text (inputs that are not JSON are
//! skipped: serde_json is not under test).
//!
//! Properties:
//! - Nothing panics; every refusal is a `FieldError` whose `field` is the dotted path under `data`
//!   (`data`, `data.x`, `data[i]`…), never the intake-built `meta`.
//! - `to_datum` writes apache-avro's encoding of the value `to_avro` gives (up to the order of a
//!   map's entries: the lengths are compared), and refuses with the same error.
//! - A value that converts validates against its schema, converts back to JSON and again to the same
//!   value (`to_json` is the inverse), and survives the Avro binary round trip through
//!   `codec::decode_datum` unchanged.
//! - An event that converts reads back (`Event::from_avro`) with the same `meta`, and converting
//!   what was read back gives the same record.
#![no_main]

use std::sync::LazyLock;

use apache_avro::Schema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use libfuzzer_sys::fuzz_target;
use onceflow::codec::catalog::{Catalog, Entry};
use onceflow::codec::decode_datum;
use onceflow::model::json_avro::{FieldError, to_avro, to_datum, to_json};
use onceflow::model::{Event, EventType};
use serde_json::Value as Json;

static CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| Catalog::builtin().expect("the compiled-in catalog parses"));

fn under_data(e: &FieldError) -> bool {
    e.field == "data" || e.field.starts_with("data.") || e.field.starts_with("data[")
}

/// Validation, the JSON round trip and the binary round trip of a converted value.
fn check_value(entry: &Entry, schema: &Schema, value: &Value, datum: &[u8]) {
    let file = entry.file();
    assert!(
        value.validate(schema),
        "{file}: converted an invalid value: {value:?}"
    );
    let back = to_json(value);
    assert_eq!(
        to_avro(&back, schema, "data").as_ref(),
        Ok(value),
        "{file}: to_json is not the inverse for {back}"
    );
    let mut bytes = Vec::new();
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_ref(&mut bytes, value))
        .unwrap_or_else(|e| panic!("{file}: a valid value does not encode: {e}"));
    // A map's entries may come in another order (apache-avro's map is a `HashMap`), so the
    // lengths are compared: the same entries, each written once, in one block.
    assert_eq!(
        datum.len(),
        bytes.len(),
        "{file}: the datum written from JSON is not as long as apache-avro's encoding of its value"
    );
    assert_eq!(
        decode_datum(schema, &bytes).as_ref(),
        Ok(value),
        "{file}: binary round trip"
    );
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, text)) = input.split_first() else {
        return;
    };
    let Ok(json) = serde_json::from_slice::<Json>(text) else {
        return;
    };
    let entries: Vec<&Entry> = CATALOG.iter().collect();
    let entry = entries[usize::from(pick) % entries.len()];
    let schema = entry.schema().schema();

    // The mapping alone, on the whole record (meta included).
    match (
        to_avro(&json, schema, "data"),
        to_datum(&json, schema, "data"),
    ) {
        (Ok(value), Ok(datum)) => check_value(entry, schema, &value, &datum),
        (Err(e), Err(same)) => {
            assert_eq!(e, same, "{}: to_avro and to_datum disagree", entry.file());
            assert!(under_data(&e), "{}: error outside data: {e}", entry.file());
        }
        (value, datum) => panic!("{}: {value:?} but {datum:?}", entry.file()),
    }

    // The intake's path, for the event types: meta built by onceflow, data from the sender.
    let Some(event_type) = EventType::ALL
        .into_iter()
        .find(|t| t.schema_name() == entry.name())
    else {
        return;
    };
    let Json::Object(data) = json else {
        return;
    };
    let mut event = Event::new(
        event_type,
        "fuzz",
        Some("fuzz-1"),
        0,
        data,
        Some("corr-1".into()),
    );
    let datum = event.clone().to_datum(entry.schema(), entry.version());
    match event.to_avro(entry.schema(), entry.version()) {
        Ok(value) => {
            let datum = datum.unwrap_or_else(|e| panic!("{}: {e}", entry.file()));
            check_value(entry, schema, &value, &datum);
            let mut read = Event::from_avro(&value).unwrap_or_else(|e| {
                panic!(
                    "{}: a converted event does not read back: {e}",
                    entry.file()
                )
            });
            assert_eq!(
                read.meta,
                event.meta,
                "{}: meta changed on the way",
                entry.file()
            );
            assert_eq!(
                read.to_avro(entry.schema(), entry.version()).as_ref(),
                Ok(&value),
                "{}: an event read back converts differently",
                entry.file()
            );
        }
        Err(e) => assert!(under_data(&e), "{}: error outside data: {e}", entry.file()),
    }
});
