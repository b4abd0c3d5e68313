//! Safetensors shards, memory-mapped.
