//! What Qwen2.5-VL is: configuration, weight names, the text model and vision tower as graphs,
//! and the 3-D position ids (get_rope_index).

pub mod config;
pub mod positions;
pub mod text;
pub mod vision;
pub mod weights;

use crate::error::Result;
use crate::model::config::{GenerationConfig, ModelConfig, PreprocessorConfig};
use crate::prompt::messages::Message;
use crate::prompt::template::{apply_system_prompt, ChatTemplate, RenderOptions};
use crate::prompt::Tokenizer;
use crate::store::{open_model, WeightStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A checkpoint opened from disk: configs, tokenizer, chat template and memory-mapped weights.
pub struct Model {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    pub preprocessor: PreprocessorConfig,
    pub store: Arc<dyn WeightStore>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl Model {
    /// Opens a checkpoint directory (or a GGUF file written by reel-quantize).
    pub fn load(path: &Path) -> Result<Model> {
        let files = open_model(path)?;
        let tokenizer = match &files.tokenizer_json {
            Some(t) => Tokenizer::from_bytes(t.as_bytes(), path.join("tokenizer.json"))?,
            None => Tokenizer::from_model_dir(&files.dir)?,
        };
        let template = match &files.chat_template {
            Some(t) => {
                ChatTemplate::from_source(t.clone(), format!("{} (chat template)", path.display()))?
            }
            None if files.tokenizer_json.is_some() => ChatTemplate::stock(),
            None => ChatTemplate::from_model_dir(&files.dir)?,
        };
        Ok(Model {
            dir: files.dir,
            config: files.config,
            generation: files.generation,
            preprocessor: files.preprocessor,
            store: files.store,
            tokenizer,
            template,
        })
    }

    /// Renders a conversation with the chat template (generation prompt appended) and
    /// tokenizes it. Vision pads are not yet expanded.
    pub fn render(&self, messages: &[Message], system: Option<&str>) -> Result<Vec<u32>> {
        let messages = apply_system_prompt(messages.to_vec(), system)?;
        let text = self.template.render(&messages, &RenderOptions::default())?;
        self.tokenizer.encode(&text)
    }

    /// Token ids of a one-turn text conversation.
    pub fn text_prompt(&self, text: &str, system: Option<&str>) -> Result<Vec<u32>> {
        self.render(&[Message::text("user", text)], system)
    }

    /// Stop ids: generation_config.json's EOS list, else config.json's.
    pub fn eos_tokens(&self) -> Vec<u32> {
        if self.generation.eos_token_ids.is_empty() {
            self.config.tokens.eos.clone()
        } else {
            self.generation.eos_token_ids.clone()
        }
    }

    /// Configuration and tensor inventory, for `reel info`.
    pub fn describe(&self) -> String {
        let mut inventory = String::new();
        for name in self.store.names() {
            let (dtype, shape) = match self.store.get(&name) {
                Some(t) => (t.dtype.name().to_string(), format!("{:?}", t.shape)),
                None => (
                    self.store.file_dtype(&name).unwrap_or_default(),
                    "(unreadable)".into(),
                ),
            };
            inventory.push_str(&format!("  {name:<56} {dtype:<5} {shape}\n"));
        }
        format!(
            "model: qwen2_5_vl (Qwen2_5_VLForConditionalGeneration)\n{}\n{}\ntokenizer: {} ({} ids)\nchat template: {}\n{}\ntensors:\n{}",
            self.store.describe(),
            self.config.summary(),
            self.tokenizer.origin().display(),
            self.tokenizer.vocab_size(),
            self.template.origin(),
            weights::store_summary(self.store.as_ref()),
            inventory.trim_end()
        )
    }
}
