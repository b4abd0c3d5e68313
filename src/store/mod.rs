//! Checkpoint files: Hugging Face safetensors shards (memory-mapped) and GGUF.

pub mod gguf;
