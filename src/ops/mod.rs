//! Operator verbs: what `onceflow topics …` does, the demo behind `make demo`, benchmark helpers.
//!
//! Invariant: these functions return reports; printing and exit codes belong to `main`.

pub mod bench;
pub mod demo;
pub mod dlq;
pub mod topics;
