//! The records onceflow moves: events with their envelope, deterministic identities, and the
//! schema-guided mapping between JSON (the HTTP contract, typed structs) and Avro (the wire):
//! [`json_avro`] writes datums from JSON, [`datum_json`] reads them back into JSON.
//!
//! Invariant: this module does no I/O; it is pure data and rules, tested without a broker.

pub mod command;
pub mod datum_json;
pub mod event;
pub mod headers;
pub mod identity;
pub mod json_avro;

pub use event::{Event, EventBody, EventMeta, EventType};
pub use json_avro::FieldError;
