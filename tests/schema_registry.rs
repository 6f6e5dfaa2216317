//! The codec against the real schema registry: a schema from `schemas/` registered through
//! schema_registry_converter, a value encoded in the Confluent wire format and decoded back equal.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use apache_avro::types::Value;
use onceflow::codec::catalog::Catalog;
use onceflow::codec::{AvroCodec, Codec, CodecError, RecordSchema};

fn lead_v1() -> RecordSchema {
    Catalog::builtin()
        .unwrap()
        .get("lead_captured", 1)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_schema_from_the_folder_round_trips_through_the_registry() {
    let s = common::settings();
    let schema = lead_v1();
    assert_eq!(schema.full_name(), "io.onceflow.events.LeadCaptured");
    let topic = &s.topics.inputs[0];
    let codec = AvroCodec::new(&s.registry).unwrap();

    let bytes = codec
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());

    // A second encoder (no shared cache) gets the same id: the schema is registered under the
    // TopicRecordNameStrategy subject, not merely cached.
    let other = AvroCodec::new(&s.registry).unwrap();
    let again = other
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(u32::from_be_bytes(again[1..5].try_into().unwrap()), id);

    // A fresh decoder must fetch the writer schema by id from the registry.
    let decoded = AvroCodec::new(&s.registry)
        .unwrap()
        .decode(&bytes)
        .await
        .unwrap();
    assert_eq!(decoded.value, common::lead_v1_value());
    assert_eq!(
        decoded.record_name.as_deref(),
        Some("io.onceflow.events.LeadCaptured")
    );
}

#[tokio::test]
async fn undecodable_bytes_are_typed_errors_not_panics() {
    let s = common::settings();
    let codec = AvroCodec::new(&s.registry).unwrap();

    for garbage in [
        &b""[..],
        &b"\x01\x00\x00\x00\x01abc"[..],
        &b"{\"json\":true}"[..],
        &b"\x00\x00"[..],
    ] {
        match codec.decode(garbage).await {
            Err(e @ CodecError::Decode { .. }) => assert!(!e.is_retriable(), "{e}"),
            other => panic!("{garbage:?}: expected a decode error, got {other:?}"),
        }
    }
    // Wire format, but a schema id the registry never issued.
    let unknown = [0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 3];
    assert!(matches!(
        codec.decode(&unknown).await,
        Err(CodecError::Decode { .. })
    ));

    // Truncated: a valid record cut short.
    let schema = lead_v1();
    let bytes = codec
        .encode(&s.topics.inputs[0], &schema, common::lead_v1_value())
        .await
        .unwrap();
    let cut = &bytes[..bytes.len() - 10];
    let r = codec.decode(cut).await;
    assert!(matches!(r, Err(CodecError::Decode { .. })), "{r:?}");
}

#[tokio::test]
async fn a_value_that_does_not_match_its_schema_is_refused_before_the_registry() {
    let s = common::settings();
    let codec = AvroCodec::new(&s.registry).unwrap();
    let schema = lead_v1();
    let bad = Value::Record(vec![("email".into(), Value::Int(3))]);
    assert!(matches!(
        codec.encode("x", &schema, bad).await,
        Err(CodecError::Encode {
            retriable: false,
            ..
        })
    ));
}

#[tokio::test]
async fn without_auto_registration_an_unregistered_subject_is_an_error_and_a_registered_one_works()
{
    let s = common::settings();
    let topic = &s.topics.inputs[0];
    let schema = lead_v1();
    let mut production = s.registry.clone();
    production.auto_register = false;
    let strict = AvroCodec::new(&production).unwrap();

    match strict.encode(topic, &schema, common::lead_v1_value()).await {
        Err(e @ CodecError::Encode { .. }) => assert!(!e.is_retriable(), "{e}"),
        other => panic!("expected an encode error for an unregistered subject, got {other:?}"),
    }

    // Registered (here by a codec that may register; in production by CI), the same strict codec
    // finds the subject on its next attempt, with the registered id: the failure was not cached.
    let registering = AvroCodec::new(&s.registry).unwrap();
    let registered = registering
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    let bytes = strict
        .encode(topic, &schema, common::lead_v1_value())
        .await
        .unwrap();
    assert_eq!(bytes[1..5], registered[1..5], "same schema id");
    assert_eq!(bytes, registered);
}
