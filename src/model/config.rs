//! Qwen2.5-VL configuration: config.json (flat 4.x keys or nested text_config/vision_config),
//! generation_config.json and preprocessor_config.json.

/// The language model.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Frequency pairs per M-RoPE section (temporal, height, width); sums to head_dim / 2.
    pub mrope_section: [usize; 3],
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// The vision tower. Fields missing from the file take the `Qwen2_5_VLVisionConfig` defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub in_channels: usize,
    pub out_hidden_size: usize,
    /// Window side in pixels (112 → 8×8 patches → 4×4 merged units).
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub tokens_per_second: f32,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
}

/// Special token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenIds {
    pub bos: Option<u32>,
    /// EOS ids from config.json (generation_config.json's list wins when present).
    pub eos: Vec<u32>,
    pub image_pad: u32,
    pub video_pad: u32,
    pub vision_start: u32,
    pub vision_end: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: TokenIds,
    /// `torch_dtype` from the file (informational; weights carry their own dtype).
    pub torch_dtype: String,
}

/// Sampling defaults from generation_config.json.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub do_sample: Option<bool>,
}

/// Image preprocessing constants from preprocessor_config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        PreprocessorConfig {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_1],
        }
    }
}

impl Default for VisionConfig {
    /// `Qwen2_5_VLVisionConfig`'s class defaults. Note hidden_size 3584 and tokens_per_second 4:
    /// both differ from the 7B checkpoints, whose files must override them.
    fn default() -> Self {
        VisionConfig {
            depth: 32,
            hidden_size: 3584,
            num_heads: 16,
            intermediate_size: 3420,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            in_channels: 3,
            out_hidden_size: 3584,
            window_size: 112,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            tokens_per_second: 4.0,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
        }
    }
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

impl TextConfig {
    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
