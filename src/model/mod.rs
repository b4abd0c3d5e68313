//! What Qwen2.5-VL is: configuration, weight names, the text model and vision tower as graphs,
//! and the 3-D position ids (get_rope_index).

pub mod config;
pub mod positions;
pub mod vision;
pub mod weights;
