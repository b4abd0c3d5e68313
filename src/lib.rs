//! reel: a Qwen2.5-VL / Video-R1 inference engine.
//!
//! Layout (see docs/ARCHITECTURE.md): `store` reads checkpoint files, `model` describes each
//! architecture (one folder each, Qwen2.5-VL today) as graphs of generic ops, `graph` plans and
//! executes them on a `backend`, `kv` holds the paged KV cache, `prompt` turns conversations
//! into token ids, `media` turns files into pixel rows, `quant` holds the quantized block
//! formats, and `engine` runs a generation.

pub mod backend;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fence;
pub mod fuzz;
pub mod graph;
pub mod kv;
pub mod media;
pub mod model;
pub mod prompt;
pub mod quant;
pub mod store;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::{DType, Shape};
