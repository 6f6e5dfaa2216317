//! Confluent wire-format bytes, as a consumer reads them off a topic, through
//! `codec::split_wire_format` and `codec::decode_datum` against every compiled-in schema.
//!
//! Properties, for any bytes:
//! - Neither function panics.
//! - `model::datum_json::read_json`, the processor's reader, covers every catalog schema and agrees
//!   with the strict decode followed by `to_json`: the same JSON, or both refuse.
//! - `split_wire_format` accepts exactly the inputs with magic byte 0 and a 4-byte id, and returns
//!   that id (big-endian) and the rest.
//! - The schema id picks a catalog entry (id modulo the catalog's size), as a registry would. A datum
//!   that decodes is a valid value of its writer schema, takes exactly as many bytes as that
//!   value's encoding (nothing truncated, nothing trailing; not the same bytes, since map entries
//!   come back in another order), whose decoding is the same value, and resolves into every later
//!   version of its record (the evolution rules of schemas/README.md).
#![no_main]

use std::sync::LazyLock;

use apache_avro::writer::datum::GenericDatumWriter;
use libfuzzer_sys::fuzz_target;
use onceflow::codec::catalog::{Catalog, Entry};
use onceflow::codec::{decode_datum, split_wire_format};
use onceflow::model::datum_json::{Unread, decoded_json, read_json};

static CATALOG: LazyLock<Catalog> =
    LazyLock::new(|| Catalog::builtin().expect("the compiled-in catalog parses"));

fuzz_target!(|bytes: &[u8]| {
    let entries: Vec<&Entry> = CATALOG.iter().collect();
    let (id, datum) = match split_wire_format(bytes) {
        Ok(split) => split,
        Err(e) => {
            assert!(
                bytes.len() < 5 || bytes[0] != 0,
                "refused a well-formed frame: {e}"
            );
            assert!(!e.is_retriable(), "a framing error is never retriable");
            return;
        }
    };
    assert_eq!(bytes[0], 0, "accepted a frame without the magic byte");
    assert_eq!(
        id.to_be_bytes(),
        bytes[1..5],
        "schema id is not big-endian bytes 1..5"
    );
    assert_eq!(datum, &bytes[5..], "the datum is not the rest of the frame");

    let entry = entries[id as usize % entries.len()];
    let writer = entry.schema().schema();
    // The processor's reader, straight into JSON, agrees with the strict decode and to_json.
    let decoded = decoded_json(writer, datum);
    match read_json(writer, datum) {
        Ok(json) => assert_eq!(
            decoded.as_ref(),
            Ok(&json),
            "{}: read_json and the strict decode disagree",
            entry.file()
        ),
        Err(Unread::Corrupt(reason)) => assert!(
            decoded.is_err(),
            "{}: read_json refused what decodes: {reason}",
            entry.file()
        ),
        Err(Unread::Unsupported) => panic!("{}: read_json does not cover it", entry.file()),
    }

    let Ok(value) = decode_datum(writer, datum) else {
        return;
    };
    assert!(
        value.validate(writer),
        "{}: decoded an invalid value",
        entry.file()
    );
    let mut again = Vec::new();
    GenericDatumWriter::builder(writer)
        .build()
        .and_then(|w| w.write_value_ref(&mut again, &value))
        .expect("a decoded value encodes again");
    assert!(
        again.len() <= datum.len(),
        "{}: the value takes {} bytes, more than its datum's {}",
        entry.file(),
        again.len(),
        datum.len()
    );
    assert_eq!(
        decode_datum(writer, &again).as_ref(),
        Ok(&value),
        "{}: the value's own encoding decodes differently",
        entry.file()
    );

    for later in (entry.version() + 1)..=*CATALOG.versions(entry.name()).end() {
        let reader = CATALOG
            .get(entry.name(), later)
            .expect("versions are contiguous");
        let resolved = value
            .clone()
            .resolve(reader.schema())
            .unwrap_or_else(|e| panic!("{} does not resolve to v{later}: {e}", entry.file()));
        assert!(resolved.validate(reader.schema()));
    }
});
