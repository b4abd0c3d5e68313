//! Qwen2.5-VL, and the Video-R1 checkpoints fine-tuned from it: config.json, the tensor
//! inventory, the text model and the vision tower as graphs, M-RoPE positions
//! (`get_rope_index`) and the input assembly (qwen-vl-utils + the transformers processor).

pub mod config;
pub mod inputs;
pub mod inventory;
pub mod positions;
pub mod text;
pub mod vision;
pub mod weights;

pub use config::{open_model, GgufModelConfig, ModelConfig, ModelFiles, VisionConfig};

use crate::backend::{Backend, TRef};
use crate::error::Result;
use crate::graph::Graph;
use crate::kv::KvSpec;
use crate::model::config::TextConfig;
use crate::model::inputs::{MediaOptions, Prepared, VisionInput};
use crate::model::text::TextPass;
use crate::model::{
    Architecture, Model, Opened, PromptLayout, Registration, TextModel, VisionModel,
};
use crate::prompt::messages::Message;
use crate::store::WeightStore;
use crate::tensor::DType;
use std::path::Path;
use std::sync::Arc;
use weights::{TextRefs, VisionWeightRefs};

/// How config.json names Qwen2.5-VL.
pub static REGISTRATION: Registration = Registration {
    model_type: "qwen2_5_vl",
    hf_class: "Qwen2_5_VLForConditionalGeneration",
    label: "Qwen2.5-VL",
    open,
    classify: inventory::classify,
};

fn open(text: &str, origin: &Path) -> Result<Opened> {
    let cfg = ModelConfig::from_json(text, origin)?;
    Ok(Opened {
        config: cfg.common(),
        summary: cfg.summary(),
        arch: Arc::new(Qwen2_5Vl { cfg }),
    })
}

/// Qwen2.5-VL with a checkpoint's configuration.
pub struct Qwen2_5Vl {
    pub cfg: ModelConfig,
}

impl Architecture for Qwen2_5Vl {
    fn load_text(
        &self,
        be: &mut dyn Backend,
        store: &dyn WeightStore,
    ) -> Result<Box<dyn TextModel>> {
        Ok(Box::new(Text {
            cfg: self.cfg.text.clone(),
            weights: TextRefs::load(be, store, &self.cfg)?,
        }))
    }

    fn load_vision(
        &self,
        be: &mut dyn Backend,
        store: &dyn WeightStore,
    ) -> Result<Box<dyn VisionModel>> {
        Ok(Box::new(Vision {
            cfg: self.cfg.vision.clone(),
            weights: VisionWeightRefs::load(be, store, &self.cfg)?,
        }))
    }

    fn prepare(
        &self,
        model: &Model,
        messages: &[Message],
        system: Option<&str>,
        opts: &MediaOptions,
    ) -> Result<Prepared> {
        inputs::prepare(&self.cfg, model, messages, system, opts)
    }

    fn prompt_layout(&self, prompt: &[u32], media: &[VisionInput]) -> Result<PromptLayout> {
        let (t, v) = (&self.cfg.tokens, &self.cfg.vision);
        let (rows, rope_delta) = positions::rope_index(
            prompt,
            &positions::spans(media),
            t.image_pad,
            t.video_pad,
            v.spatial_merge_size,
            v.tokens_per_second,
            false,
        )?;
        let vision_rows = (0..prompt.len() as i32)
            .filter(|&i| {
                let id = prompt[i as usize];
                id == t.image_pad || id == t.video_pad
            })
            .collect();
        Ok(PromptLayout {
            positions: positions::to_row_major(&rows),
            rope_delta,
            vision_rows,
        })
    }

    fn decode_positions(&self, cache_pos: usize, rope_delta: i32) -> [i32; 3] {
        positions::decode_positions(cache_pos, rope_delta)
    }
}

/// The language model on a backend.
pub struct Text {
    pub cfg: TextConfig,
    pub weights: TextRefs,
}

impl TextModel for Text {
    fn kv_spec(&self, dtype: DType) -> KvSpec {
        KvSpec {
            n_layers: self.cfg.num_hidden_layers,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
            dtype,
        }
    }

    fn build(&self, pass: &TextPass, act: DType) -> Graph {
        text::build(&self.cfg, &self.weights, pass, act)
    }
}

/// The vision tower on a backend.
pub struct Vision {
    pub cfg: VisionConfig,
    pub weights: VisionWeightRefs,
}

impl VisionModel for Vision {
    fn encode(&self, be: &mut dyn Backend, media: &[VisionInput], act: DType) -> Result<TRef> {
        let grids: Vec<[usize; 3]> = media.iter().map(|v| v.rows.grid_thw).collect();
        let mut rows = Vec::with_capacity(media.iter().map(|v| v.rows.rows.len()).sum());
        for v in media {
            rows.extend_from_slice(&v.rows.rows);
        }
        vision::encode(be, &self.weights, &self.cfg, &rows, &grids, act)
    }
}
