//! The chat template: the checkpoint's own Jinja template rendered with minijinja, the way
//! transformers renders it (trim_blocks, lstrip_blocks, lenient undefined values), falling back
//! to the stock Qwen2-VL / Qwen2.5-VL template.

use std::path::Path;

use minijinja::value::{Kwargs, StringInput};
use minijinja::{Environment, ErrorKind};
use serde_json::{json, Map, Value};

use super::messages::{ContentItem, Message};
use crate::error::{Error, Result};
use crate::fence;

/// The stock Qwen2-VL / Qwen2.5-VL chat template (as shipped in the Qwen checkpoints'
/// chat_template.json and tokenizer_config.json; Apache-2.0).
pub const STOCK_CHAT_TEMPLATE: &str = concat!(
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}",
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
    "<|im_start|>{{ message['role'] }}\n",
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n",
    "{% else %}{% for content in message['content'] %}",
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}",
    "{% set image_count.value = image_count.value + 1 %}",
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}",
    "<|vision_start|><|image_pad|><|vision_end|>",
    "{% elif content['type'] == 'video' or 'video' in content %}",
    "{% set video_count.value = video_count.value + 1 %}",
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}",
    "<|vision_start|><|video_pad|><|vision_end|>",
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n",
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
);

/// The default system message the stock template inserts.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// End with `<|im_start|>assistant\n` (true for generation).
    pub add_generation_prompt: bool,
    /// Prefix vision items with "Picture k: " / "Video k: " (off in Video-R1 and by default).
    pub add_vision_id: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            add_generation_prompt: true,
            add_vision_id: false,
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    /// `bos_token`, `eos_token`, `pad_token`, `unk_token` from tokenizer_config.json, which
    /// transformers passes to the template as variables.
    special_tokens: Map<String, Value>,
}

const NAME: &str = "chat_template";

/// Bounds on what a template (a file from the checkpoint) may make the engine do. Fuel counts
/// template instructions, so no loop runs unbounded; the rendered prompt is capped; the
/// filters that take a width allocate at most what the caps allow.
const MAX_TEMPLATE_SOURCE: usize = 1 << 20;
const FUEL: u64 = 20_000_000;
const MAX_RENDERED: usize = 64 << 20;
const MAX_FILTER_WIDTH: usize = 1024;
const MAX_RECURSION: usize = 100;

impl ChatTemplate {
    /// The built-in stock template.
    pub fn stock() -> Self {
        Self::new(
            STOCK_CHAT_TEMPLATE.to_string(),
            "built-in Qwen2.5-VL template".into(),
        )
        .expect("the stock chat template compiles")
    }

    /// Compiles `source`; `origin` names it in errors.
    pub fn from_source(source: impl Into<String>, origin: impl Into<String>) -> Result<Self> {
        Self::new(source.into(), origin.into())
    }

    /// The checkpoint's template: `chat_template.jinja`, else `chat_template.json` (what the
    /// processor's `apply_chat_template` uses), else `chat_template` in tokenizer_config.json,
    /// else the stock template. A file that exists but cannot be read or parsed is an error.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let special_tokens = config.as_ref().map(special_tokens_of).unwrap_or_default();

        let found = if let Some(src) = read_text(&dir.join("chat_template.jinja"))? {
            Some((src, dir.join("chat_template.jinja")))
        } else if let Some(v) = read_json(&dir.join("chat_template.json"))? {
            let path = dir.join("chat_template.json");
            let src = template_field(&v)
                .map_err(|msg| Error::file(&path, msg))?
                .ok_or_else(|| Error::file(&path, "no \"chat_template\" string"))?;
            Some((src, path))
        } else if let Some(v) = &config {
            template_field(v)
                .map_err(|msg| Error::file(&config_path, msg))?
                .map(|s| (s, config_path.clone()))
        } else {
            None
        };
        let mut t = match found {
            Some((src, path)) => Self::new(src, path.display().to_string())?,
            None => Self::stock(),
        };
        t.special_tokens = special_tokens;
        Ok(t)
    }

    fn new(source: String, origin: String) -> Result<Self> {
        if source.len() > MAX_TEMPLATE_SOURCE {
            return Err(Error::Prompt(format!(
                "chat template ({origin}) is {} bytes, over the limit of {MAX_TEMPLATE_SOURCE}",
                source.len()
            )));
        }
        let mut env = Environment::new();
        // transformers renders with these settings; templates are written for them.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(MAX_RECURSION);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        add_bounded_filters(&mut env);
        fence::guard(|| env.add_template_owned(NAME, source.clone()))
            .map_err(|p| {
                Error::Prompt(format!(
                    "chat template ({origin}): the template engine panicked while compiling it: {p}"
                ))
            })?
            .map_err(|e| {
                Error::Prompt(format!(
                    "chat template ({origin}) does not compile: {}",
                    jinja_msg(&e)
                ))
            })?;
        Ok(Self {
            env,
            source,
            origin,
            special_tokens: Map::new(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from (a file, or the built-in one).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders a conversation. Vision items become one pad each
    /// (`<|vision_start|><|image_pad|><|vision_end|>`); [`super::expand_pads`] expands them
    /// after tokenization.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let mut ctx = self.special_tokens.clone();
        ctx.insert(
            "messages".into(),
            Value::Array(messages.iter().map(message_json).collect()),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(opts.add_generation_prompt),
        );
        ctx.insert("add_vision_id".into(), Value::Bool(opts.add_vision_id));
        let tmpl = self
            .env
            .get_template(NAME)
            .expect("template was added in new()");
        let mut out = CappedWriter(Vec::new());
        let rendered = fence::guard(|| tmpl.render_captured_to(Value::Object(ctx), &mut out));
        let fail = |msg: String| Error::Prompt(format!("chat template ({}): {msg}", self.origin));
        match rendered {
            Err(p) => return Err(fail(format!("the template engine panicked: {p}"))),
            Ok(Err(e)) if out.0.len() >= MAX_RENDERED => {
                return Err(fail(format!(
                    "renders more than {MAX_RENDERED} bytes ({})",
                    jinja_msg(&e)
                )))
            }
            Ok(Err(e)) => return Err(fail(jinja_msg(&e))),
            Ok(Ok(_)) => {}
        }
        String::from_utf8(out.0).map_err(|_| fail("rendered invalid UTF-8".into()))
    }
}

/// Collects rendered output, refusing to grow past [`MAX_RENDERED`] bytes.
struct CappedWriter(Vec<u8>);

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED {
            self.0.resize(MAX_RENDERED, 0);
            return Err(std::io::Error::other("rendered prompt too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn too_wide(what: &str, width: usize) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{what} width {width} is over the limit of {MAX_FILTER_WIDTH}"),
    )
}

/// The first width or precision in a format string (`%-08.3f`, `{:>12}`) over
/// [`MAX_FILTER_WIDTH`], if any.
fn widest_field(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if !matches!(c, b'%' | b':' | b'.') {
            continue;
        }
        let mut j = i + 1;
        while j < b.len() && j < i + 4 && b"-+ #0<>^=".contains(&b[j]) {
            j += 1;
        }
        let digits = b[j..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let w = s[j..j + digits].parse::<usize>().unwrap_or(usize::MAX);
        if w > MAX_FILTER_WIDTH {
            return Some(w);
        }
    }
    None
}

/// Replaces the built-in filters whose arguments size an allocation (`indent`, `tojson`'s
/// indent, `format`'s field widths) with versions that check those arguments first.
fn add_bounded_filters(env: &mut Environment<'static>) {
    env.add_filter(
        "indent",
        |value: StringInput<'_>,
         width: Option<usize>,
         first: Option<bool>,
         blank: Option<bool>,
         kwargs: Kwargs|
         -> Result<minijinja::Value, minijinja::Error> {
            let w = match width {
                Some(w) => w,
                None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
            };
            let lines = value.as_str().bytes().filter(|&b| b == b'\n').count() + 1;
            if w > MAX_FILTER_WIDTH || lines.saturating_mul(w) > MAX_RENDERED {
                return Err(too_wide("indent", w));
            }
            minijinja::filters::indent(value, width, first, blank, kwargs)
        },
    );
    env.add_filter(
        "tojson",
        |value: &minijinja::Value,
         indent: Option<minijinja::Value>,
         kwargs: Kwargs|
         -> Result<minijinja::Value, minijinja::Error> {
            let given = match &indent {
                Some(v) => Some(v.clone()),
                None => kwargs.get::<Option<minijinja::Value>>("indent")?,
            };
            if let Some(w) = given.and_then(|v| usize::try_from(v).ok()) {
                if w > MAX_FILTER_WIDTH {
                    return Err(too_wide("tojson indent", w));
                }
            }
            minijinja::filters::tojson(value, indent, kwargs)
        },
    );
    env.add_filter(
        "format",
        |state: &minijinja::State<'_, '_>,
         format_str: &minijinja::Value,
         args: minijinja::value::Rest<minijinja::Value>|
         -> Result<minijinja::Value, minijinja::Error> {
            if let Some(s) = format_str.as_str() {
                if let Some(w) = widest_field(s) {
                    return Err(too_wide("format field", w));
                }
            }
            minijinja::filters::format(state, format_str, args)
        },
    );
}

/// Puts `system` first as a system message. It is an error to combine it with a conversation
/// that already starts with one.
pub fn apply_system_prompt(
    mut messages: Vec<Message>,
    system: Option<&str>,
) -> Result<Vec<Message>> {
    let Some(system) = system else {
        return Ok(messages);
    };
    if messages.first().is_some_and(|m| m.role == "system") {
        return Err(Error::Prompt(
            "a system prompt was given, but the conversation already starts with a system message"
                .into(),
        ));
    }
    messages.insert(0, Message::text("system", system));
    Ok(messages)
}

/// How a message looks to the template: qwen-vl-utils items. A content of exactly one text
/// item is passed as a plain string, which renders identically in the stock template and also
/// suits templates written for text-only chat.
fn message_json(m: &Message) -> Value {
    let content = match m.content.as_slice() {
        [ContentItem::Text(t)] => Value::String(t.clone()),
        items => Value::Array(
            items
                .iter()
                .map(|it| match it {
                    ContentItem::Text(t) => json!({"type": "text", "text": t}),
                    ContentItem::Image(i) => {
                        json!({"type": "image", "image": i.path.to_string_lossy()})
                    }
                    ContentItem::Video(v) => {
                        json!({"type": "video", "video": v.path.to_string_lossy()})
                    }
                })
                .collect(),
        ),
    };
    json!({"role": m.role, "content": content})
}

fn jinja_msg(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        if !s.contains("line") {
            s.push_str(&format!(" (template line {line})"));
        }
    }
    s
}

fn read_text(path: &Path) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Ok(_) => {
            fence::read_text_bounded(path, fence::MAX_JSON_FILE, "a chat template file").map(Some)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// `chat_template` as a string, or (older tokenizer configs) a list of named templates of
/// which "default" is used.
fn template_field(v: &Value) -> Result<Option<String>, String> {
    match v.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| {
                "\"chat_template\" is a list without a \"default\" template".to_string()
            }),
        Some(_) => Err("\"chat_template\" must be a string".into()),
    }
}

fn special_tokens_of(config: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        let s = match config.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        };
        if let Some(s) = s {
            out.insert(key.into(), Value::String(s));
        }
    }
    out
}
