//! Tokenizer, chat template, Video-R1 prompt templates and <think>/<answer> parsing.
