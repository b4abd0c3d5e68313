//! The front ends that drive the engine: [`eval`] runs a Video-R1 evaluation file through it
//! (`reel eval`), [`chat`] keeps a conversation's KV cache between questions (`reel chat`).

pub mod chat;
pub mod eval;
