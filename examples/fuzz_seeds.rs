//! Writes the seed corpus of the fuzz targets (fuzz/corpus/) from the sample webhooks of
//! deploy/local/samples: `cargo run --example fuzz_seeds`. Deterministic, so running it again
//! changes no file; the seeds are committed and `fuzz/run` starts from them.
//!
//! - `wire_format/`: each sample's event encoded as its type's newest schema (and v1 where the data
//!   fits it), framed in the Confluent wire format with the schema id that picks that schema in
//!   the target (its index in the catalog).
//! - `json_avro/`: the same index byte followed by the sample's `data`, and by the whole record as
//!   JSON (meta included).

use std::path::Path;

use anyhow::Context;
use apache_avro::writer::datum::GenericDatumWriter;
use onceflow::codec::catalog::Catalog;
use onceflow::model::json_avro::to_json;
use onceflow::model::{Event, EventType};
use serde_json::Value as Json;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = Catalog::builtin()?;
    let wire = root.join("fuzz/corpus/wire_format");
    let json = root.join("fuzz/corpus/json_avro");
    std::fs::create_dir_all(&wire)?;
    std::fs::create_dir_all(&json)?;
    let mut samples: Vec<_> = std::fs::read_dir(root.join("deploy/local/samples"))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    samples.sort();
    for path in samples {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("sample name")?
            .to_string();
        let sample: Json = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let event_type = sample["type"]
            .as_str()
            .and_then(EventType::from_name)
            .with_context(|| format!("{stem}: type"))?;
        let Some(data) = sample["data"].as_object() else {
            anyhow::bail!("{stem}: data is not an object");
        };
        for (index, entry) in catalog.iter().enumerate() {
            if entry.name() != event_type.schema_name() {
                continue;
            }
            let pick = u8::try_from(index)?;
            let name = format!("{stem}.v{}", entry.version());
            let mut with_pick = vec![pick];
            with_pick.extend(serde_json::to_vec(data)?);
            std::fs::write(json.join(format!("{name}.data")), &with_pick)?;

            let mut event = Event::new(
                event_type,
                "demo",
                sample["id"].as_str(),
                1_795_428_000_000,
                data.clone(),
                Some("seed".into()),
            );
            event.meta.received_at = 1_795_428_000_000;
            // A v2 sample may not fit v1 (unknown fields): only the fitting schemas get a seed.
            let Ok(value) = event.to_avro(entry.schema(), entry.version()) else {
                continue;
            };
            let mut whole = vec![pick];
            whole.extend(serde_json::to_vec(&to_json(&value))?);
            std::fs::write(json.join(format!("{name}.record")), &whole)?;

            let mut frame = vec![0];
            frame.extend(u32::try_from(index)?.to_be_bytes());
            GenericDatumWriter::builder(entry.schema().schema())
                .build()
                .and_then(|w| w.write_value_ref(&mut frame, &value))?;
            std::fs::write(wire.join(format!("{name}.avro")), &frame)?;
        }
    }
    Ok(())
}
