//! Everything that knows Kafka: client configs ([`client`], the only home of librdkafka keys), topic
//! and group names ([`names`], the only place that formats them), topic administration ([`admin`]),
//! reading a topic to its end ([`scan`]), the transactional loop helpers ([`txn`]) and the count of a
//! transaction's deliveries ([`deliveries`]), records whose
//! header names rdkafka cannot read ([`headers`]) and which consumer errors end a read ([`polled`]).
//!
//! Invariant: code outside this module never builds a `ClientConfig` or formats a topic name.

pub mod admin;
pub mod client;
pub mod deliveries;
pub mod headers;
pub mod names;
pub mod polled;
pub mod scan;
pub mod txn;
