//! Operator verbs: `topics` ([`topics`]), `dlq` ([`dlq`]), `offsets` ([`offsets`]), `replay`
//! ([`replay`]) and `audit` ([`audit`]); the demo behind `make demo`; benchmark helpers. The CLI and
//! the console call these functions; neither has a second implementation.
//!
//! Invariant: these functions return reports; printing and exit codes belong to `main`.

pub mod audit;
pub mod bench;
pub mod demo;
pub mod dlq;
pub mod health;
pub mod offsets;
pub mod replay;
pub mod topics;
