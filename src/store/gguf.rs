//! GGUF v3 files written by reel-quantize: reading (memory-mapped) and writing.
