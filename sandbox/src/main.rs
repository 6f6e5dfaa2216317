//! `onceflow-sandbox` (placeholder; being written).
fn main() {}
