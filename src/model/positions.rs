//! 3-D M-RoPE position ids (get_rope_index, the transformers-4.49/vLLM rule) and rope_delta.
