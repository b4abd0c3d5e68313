//! Quantizing a model: the block type each tensor of the inventory gets under a preset
//! ([`preset`], the rule reel-quantize and `reel bench`'s synthetic weights share) and how
//! close a quantized model's next-token distributions stay to the original's ([`quality`]).
//! The block formats themselves are [`crate::quant`], below the backends; this module sits
//! above the model, whose tensor roles it reads.

pub mod preset;
pub mod quality;
