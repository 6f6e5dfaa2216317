//! Provider sandboxes (placeholder; being written).
