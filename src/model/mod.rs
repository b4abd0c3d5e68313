//! What the models are. Each architecture has a folder (config parsing, tensor inventory, text
//! model and vision tower as graphs of generic ops, positions, input assembly) and one line in
//! [`ARCHITECTURES`]; the engine reaches it through the [`Architecture`] traits. Shared here:
//! checkpoint opening and checks, the inventory and config types every architecture fills,
//! the text-pass interface, and preprocessed inputs.

pub mod arch;
pub mod checkpoint;
pub mod config;
pub mod inputs;
pub mod inventory;
pub mod qwen2_5_vl;
pub mod text;

pub use arch::{Architecture, PromptLayout, TextModel, VisionModel};

use crate::error::Result;
use crate::model::config::{Config, Fields, GenerationConfig, PreprocessorConfig};
use crate::model::inputs::{MediaOptions, Prepared};
use crate::model::inventory::{Role, TensorClass};
use crate::prompt::messages::Message;
use crate::prompt::template::{apply_system_prompt, ChatTemplate, RenderOptions};
use crate::prompt::Tokenizer;
use crate::store::WeightStore;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every architecture reel runs. A new one is a folder under `model/` and a line here.
pub static ARCHITECTURES: &[&Registration] = &[&qwen2_5_vl::REGISTRATION];

/// How config.json names an architecture, and how to open it.
pub struct Registration {
    /// config.json's `model_type`.
    pub model_type: &'static str,
    /// The transformers class config.json's `architectures` lists.
    pub hf_class: &'static str,
    /// The name people use, for messages.
    pub label: &'static str,
    /// Parses config.json's text (`origin` names it in errors) into the architecture.
    pub open: fn(&str, &Path) -> Result<Opened>,
    /// Role, tower and layer of one of its checkpoint tensors, by name.
    pub classify: fn(&str) -> TensorClass,
}

/// An architecture bound to a checkpoint's configuration.
pub struct Opened {
    pub config: Config,
    pub arch: Arc<dyn Architecture>,
    /// The configuration in a few lines, for `reel info`.
    pub summary: String,
}

/// The registration config.json names: by `model_type`, or by `architectures` when the file
/// has no model_type.
fn detect(text: &str, origin: &Path) -> Result<&'static Registration> {
    let obj = config::parse_json_object(text, origin)?;
    let top = Fields::new(origin, &obj, "");
    let supported = || {
        ARCHITECTURES
            .iter()
            .map(|r| format!("{} ({})", r.model_type, r.label))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(t) = top.str("model_type")? {
        return ARCHITECTURES
            .iter()
            .copied()
            .find(|r| r.model_type == t)
            .ok_or_else(|| {
                top.err(
                    "model_type",
                    format!(
                        "unsupported model type {t:?}; reel runs {} checkpoints",
                        supported()
                    ),
                )
            });
    }
    let classes: Vec<&str> = match top.raw("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect(),
        Some(v) => return Err(top.wrong("architectures", "an array of strings", v)),
        None => Vec::new(),
    };
    ARCHITECTURES
        .iter()
        .copied()
        .find(|r| classes.contains(&r.hf_class))
        .ok_or_else(|| {
            let names: Vec<&str> = ARCHITECTURES.iter().map(|r| r.hf_class).collect();
            top.err(
                "model_type",
                format!(
                    "missing, and `architectures` does not name {}",
                    names.join(" or ")
                ),
            )
        })
}

/// Role, tower and layer of a checkpoint tensor by name alone, for tools that see tensors
/// without opening a model (reel-quantize): the first architecture that lists the name
/// decides; a name none lists is [`Role::Other`].
pub fn classify_tensor(name: &str) -> TensorClass {
    let mut unlisted = None;
    for r in ARCHITECTURES {
        let c = (r.classify)(name);
        if c.role != Role::Other {
            return c;
        }
        unlisted.get_or_insert(c);
    }
    unlisted.expect("at least one architecture is registered")
}

/// A checkpoint opened from disk: configs, tokenizer, chat template, memory-mapped weights and
/// the architecture that runs them.
pub struct Model {
    pub dir: PathBuf,
    /// What every architecture reports: the language model's shape and the special tokens.
    pub config: Config,
    pub arch: Arc<dyn Architecture>,
    pub generation: GenerationConfig,
    pub preprocessor: PreprocessorConfig,
    pub store: Arc<dyn WeightStore>,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    kind: &'static Registration,
    summary: String,
}

impl Model {
    /// Opens a checkpoint directory (or a GGUF file written by reel-quantize).
    pub fn load(path: &Path) -> Result<Model> {
        let files = checkpoint::open_with(path, |text, origin| {
            let kind = detect(text, origin)?;
            Ok((kind, (kind.open)(text, origin)?))
        })?;
        let (kind, opened) = files.config;
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
            config: opened.config,
            arch: opened.arch,
            generation: files.generation,
            preprocessor: files.preprocessor,
            store: files.store,
            tokenizer,
            template,
            kind,
            summary: opened.summary,
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

    /// Loads the media of a conversation and tokenizes it, vision pads expanded.
    pub fn prepare(
        &self,
        messages: &[Message],
        system: Option<&str>,
        opts: &MediaOptions,
    ) -> Result<Prepared> {
        self.arch.prepare(self, messages, system, opts)
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
            "model: {} ({})\n{}\n{}\ntokenizer: {} ({} ids)\nchat template: {}\n{}\ntensors:\n{}",
            self.kind.model_type,
            self.kind.hf_class,
            self.store.describe(),
            self.summary,
            self.tokenizer.origin().display(),
            self.tokenizer.vocab_size(),
            self.template.origin(),
            checkpoint::store_summary(self.store.as_ref()),
            inventory.trim_end()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_err(json: &str) -> String {
        match detect(json, Path::new("cfg/config.json")) {
            Ok(r) => panic!("detected {}", r.model_type),
            Err(e) => e.to_string(),
        }
    }

    /// config.json picks the architecture by model_type, else by the transformers class; an
    /// unknown one is an error naming the file, the field and what reel runs.
    #[test]
    fn config_json_names_the_architecture() {
        let p = Path::new("config.json");
        assert_eq!(
            detect(r#"{"model_type": "qwen2_5_vl"}"#, p)
                .unwrap()
                .model_type,
            "qwen2_5_vl"
        );
        let by_class = r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"]}"#;
        assert_eq!(
            detect(by_class, p).unwrap().hf_class,
            "Qwen2_5_VLForConditionalGeneration"
        );
        let e = detect_err(r#"{"model_type": "llama"}"#);
        assert!(
            e.contains("cfg/config.json")
                && e.contains("`model_type`")
                && e.contains("\"llama\"")
                && e.contains("qwen2_5_vl (Qwen2.5-VL)"),
            "{e}"
        );
        let e = detect_err(r#"{"architectures": ["LlamaForCausalLM"]}"#);
        assert!(e.contains("Qwen2_5_VLForConditionalGeneration"), "{e}");
        assert!(detect_err(r#"{"architectures": "x"}"#).contains("array of strings"));
        assert!(detect_err("[1]").contains("top level"));
        // Tensor names classify through the registered inventories.
        let c = classify_tensor("model.layers.3.self_attn.v_proj.weight");
        assert_eq!((c.role, c.layer), (Role::AttnV, Some(3)));
        assert_eq!(classify_tensor("nothing.we.know").role, Role::Other);
    }
}
