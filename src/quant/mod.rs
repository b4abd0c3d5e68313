//! Quantized weight formats: ggml block layouts and reference (de)quantization.
