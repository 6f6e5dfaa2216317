//! Intake: the producer API ([`producer`]) and the signed HTTP endpoint ([`http`]) in front of it.
//!
//! Invariant: an event is acknowledged (202, or `Ok` from `publish`) only after the broker
//! acknowledged its record; every refusal says exactly why, and nothing half-written is reported
//! as accepted.

pub mod http;
pub mod openapi;
pub mod producer;
pub mod signature;

pub use producer::{Context, Delivery, Producer, PublishError};
