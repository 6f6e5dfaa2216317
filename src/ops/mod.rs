//! Operator verbs: what `onceflow topics …` does, and the demo round trip behind `make demo`.
//!
//! Invariant: these functions return reports; printing and exit codes belong to `main`.

pub mod demo;
pub mod topics;
