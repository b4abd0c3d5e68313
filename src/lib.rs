//! reel: a Qwen2.5-VL / Video-R1 inference engine.
//!
//! Layout (see docs/ARCHITECTURE.md for the layers and the recipes): `store` reads checkpoint
//! files, `model` describes each architecture (one folder each, Qwen2.5-VL today) as graphs of
//! backend ops, `graph` plans and executes them on a `backend` (whose `harness` is the op table
//! every backend is checked and timed against), `kv` holds the paged KV cache, `prompt` turns
//! conversations into token ids, `media` turns files into pixel rows, `quant` holds the
//! quantized block formats and `quantize` the presets built on them, `engine` runs a
//! generation, and `eval` scores Video-R1 evaluations.

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
pub mod quantize;
pub mod store;
pub mod tensor;

pub use error::{Error, Result};
pub use tensor::{DType, Shape};
