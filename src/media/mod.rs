//! Pixels in: video decoding (FFmpeg), frame sampling, resizing, normalization, patchify.
