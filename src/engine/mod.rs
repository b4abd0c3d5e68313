//! A generation session: media -> vision -> prefill -> decode, sampling, streaming, timings.

pub mod sampling;
