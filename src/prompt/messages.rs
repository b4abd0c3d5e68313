//! Conversations in the qwen-vl-utils message format, as Video-R1's scripts build them:
//! a list of `{"role": ..., "content": ...}` where content is a string or a list of
//! `{"type": "text"|"image"|"video", ...}` items with per-item preprocessing settings.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: Vec<ContentItem>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContentItem {
    Text(String),
    Image(ImageItem),
    Video(VideoItem),
}

/// An image and its qwen-vl-utils settings (unset fields take the preprocessing defaults).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageItem {
    /// Resolved: relative paths are taken from the messages file's directory.
    pub path: PathBuf,
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    pub resized_height: Option<u64>,
    pub resized_width: Option<u64>,
}

/// A video file and its qwen-vl-utils settings (unset fields take the preprocessing defaults).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VideoItem {
    /// Resolved: relative paths are taken from the messages file's directory.
    pub path: PathBuf,
    pub fps: Option<f64>,
    pub nframes: Option<u64>,
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    /// Python scripts often compute this as a float (e.g. `128000*28*28*0.9`).
    pub total_pixels: Option<f64>,
    pub min_frames: Option<u64>,
    pub max_frames: Option<u64>,
    pub resized_height: Option<u64>,
    pub resized_width: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionKind {
    Image,
    Video,
}

impl Message {
    pub fn new(role: impl Into<String>, content: Vec<ContentItem>) -> Self {
        Self {
            role: role.into(),
            content,
        }
    }

    /// A message whose content is one text item.
    pub fn text(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self::new(role, vec![ContentItem::Text(text.into())])
    }
}

impl ContentItem {
    pub fn vision_kind(&self) -> Option<VisionKind> {
        match self {
            ContentItem::Text(_) => None,
            ContentItem::Image(_) => Some(VisionKind::Image),
            ContentItem::Video(_) => Some(VisionKind::Video),
        }
    }
}

/// The vision items of a conversation in prompt order: the order of their pads in the rendered
/// prompt, and so the order in which their token counts go to [`super::expand_pads`].
pub fn vision_items(messages: &[Message]) -> Vec<&ContentItem> {
    messages
        .iter()
        .flat_map(|m| m.content.iter())
        .filter(|c| c.vision_kind().is_some())
        .collect()
}

/// Largest messages file read.
const MAX_MESSAGES_FILE: u64 = 64 << 20;
/// Sane maxima of the per-item media settings (pixels per frame, a side, sampled frames,
/// frame rate, pixels over all frames); larger values are refused rather than sized by.
const MAX_ITEM_PIXELS: u64 = 1 << 28;
const MAX_ITEM_SIDE: u64 = 1 << 16;
const MAX_ITEM_FRAMES: u64 = 1 << 14;
const MAX_ITEM_FPS: f64 = 1000.0;
const MAX_ITEM_TOTAL_PIXELS: f64 = (1u64 << 36) as f64;

/// Reads a messages file (`--messages FILE`): a JSON list of messages, or an object with a
/// `"messages"` list. Relative media paths are resolved against the file's directory.
pub fn load_messages(path: impl AsRef<Path>) -> Result<Vec<Message>> {
    let path = path.as_ref();
    let text = crate::fence::read_text_bounded(path, MAX_MESSAGES_FILE, "a messages file")?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse_messages(&text, base).map_err(|e| match e {
        Error::Prompt(msg) => Error::file(path, msg),
        other => other,
    })
}

/// Parses messages JSON; relative media paths are joined to `base_dir`.
/// Errors are [`Error::Prompt`] with the location of the culprit.
pub fn parse_messages(json: &str, base_dir: &Path) -> Result<Vec<Message>> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| Error::Prompt(format!("invalid JSON: {e}")))?;
    messages_from_value(&value, base_dir).map_err(Error::Prompt)
}

/// Converts already-parsed JSON (see [`parse_messages`]).
pub fn messages_from_value(value: &Value, base_dir: &Path) -> Result<Vec<Message>, String> {
    let list = match value {
        Value::Array(list) => list,
        Value::Object(obj) => match obj.get("messages") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(
                    "expected a list of messages (or an object with a \"messages\" list)".into(),
                )
            }
        },
        other => return Err(format!("expected a list of messages, got {}", kind(other))),
    };
    if list.is_empty() {
        return Err("the list of messages is empty".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| parse_message(m, base_dir).map_err(|e| format!("message {i}: {e}")))
        .collect()
}

fn parse_message(v: &Value, base: &Path) -> Result<Message, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected an object, got {}", kind(v)))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "role" | "content"))
    {
        return Err(format!(
            "unknown field {k:?} (a message has \"role\" and \"content\")"
        ));
    }
    let role = match obj.get("role") {
        Some(Value::String(r)) => r.clone(),
        Some(other) => return Err(format!("\"role\" must be a string, got {}", kind(other))),
        None => return Err("missing \"role\"".into()),
    };
    if !matches!(role.as_str(), "system" | "user" | "assistant") {
        return Err(format!(
            "unknown role {role:?} (expected system, user or assistant)"
        ));
    }
    let content = match obj.get("content") {
        Some(Value::String(s)) => vec![ContentItem::Text(s.clone())],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, it)| parse_item(it, base).map_err(|e| format!("content item {j}: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!(
                "\"content\" must be a string or a list, got {}",
                kind(other)
            ))
        }
        None => return Err("missing \"content\"".into()),
    };
    Ok(Message { role, content })
}

const IMAGE_FIELDS: &[&str] = &[
    "type",
    "image",
    "image_url",
    "min_pixels",
    "max_pixels",
    "resized_height",
    "resized_width",
];
const VIDEO_FIELDS: &[&str] = &[
    "type",
    "video",
    "fps",
    "nframes",
    "min_pixels",
    "max_pixels",
    "total_pixels",
    "min_frames",
    "max_frames",
    "resized_height",
    "resized_width",
];

fn parse_item(v: &Value, base: &Path) -> Result<ContentItem, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected an object, got {}", kind(v)))?;
    let ty = match obj.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(other) => return Err(format!("\"type\" must be a string, got {}", kind(other))),
    };
    // Without "type", the keys decide, in the chat template's order: image, video, text.
    let ty = match ty {
        Some(t) => t,
        None if obj.contains_key("image") || obj.contains_key("image_url") => "image",
        None if obj.contains_key("video") => "video",
        None if obj.contains_key("text") => "text",
        None => return Err("no \"type\" and none of \"text\", \"image\", \"video\"".into()),
    };
    match ty {
        "text" => {
            check_fields(obj, &["type", "text"], "text")?;
            match obj.get("text") {
                Some(Value::String(s)) => Ok(ContentItem::Text(s.clone())),
                Some(other) => Err(format!("\"text\" must be a string, got {}", kind(other))),
                None => Err("text item without a \"text\" field".into()),
            }
        }
        "image" | "image_url" => {
            check_fields(obj, IMAGE_FIELDS, "image")?;
            let (key, raw) = match (obj.get("image"), obj.get("image_url")) {
                (Some(v), _) => ("image", v),
                (None, Some(v)) => ("image_url", v),
                (None, None) => return Err("image item without an \"image\" path".into()),
            };
            let raw = match raw {
                Value::Object(o) if key == "image_url" => o.get("url").unwrap_or(raw),
                _ => raw,
            };
            Ok(ContentItem::Image(ImageItem {
                path: media_path(key, raw, base)?,
                min_pixels: bounded(obj, "min_pixels", MAX_ITEM_PIXELS)?,
                max_pixels: bounded(obj, "max_pixels", MAX_ITEM_PIXELS)?,
                resized_height: bounded(obj, "resized_height", MAX_ITEM_SIDE)?,
                resized_width: bounded(obj, "resized_width", MAX_ITEM_SIDE)?,
            }))
        }
        "video" => {
            check_fields(obj, VIDEO_FIELDS, "video")?;
            let raw = obj
                .get("video")
                .ok_or("video item without a \"video\" path")?;
            if raw.is_array() {
                return Err(
                    "\"video\" as a list of frame images is not supported; give a video file"
                        .into(),
                );
            }
            let fps = positive_float(obj, "fps", MAX_ITEM_FPS)?;
            let total_pixels = positive_float(obj, "total_pixels", MAX_ITEM_TOTAL_PIXELS)?;
            Ok(ContentItem::Video(VideoItem {
                path: media_path("video", raw, base)?,
                fps,
                nframes: bounded(obj, "nframes", MAX_ITEM_FRAMES)?,
                min_pixels: bounded(obj, "min_pixels", MAX_ITEM_PIXELS)?,
                max_pixels: bounded(obj, "max_pixels", MAX_ITEM_PIXELS)?,
                total_pixels,
                min_frames: bounded(obj, "min_frames", MAX_ITEM_FRAMES)?,
                max_frames: bounded(obj, "max_frames", MAX_ITEM_FRAMES)?,
                resized_height: bounded(obj, "resized_height", MAX_ITEM_SIDE)?,
                resized_width: bounded(obj, "resized_width", MAX_ITEM_SIDE)?,
            }))
        }
        other => Err(format!(
            "unknown content type {other:?} (expected text, image or video)"
        )),
    }
}

fn check_fields(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown field {k:?} in a {what} item (allowed: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

fn media_path(key: &str, v: &Value, base: &Path) -> Result<PathBuf, String> {
    let s = match v {
        Value::String(s) => s.as_str(),
        other => {
            return Err(format!(
                "{key:?} must be a path string, got {}",
                kind(other)
            ))
        }
    };
    let s = s.strip_prefix("file://").unwrap_or(s);
    if s.is_empty() {
        return Err(format!("{key:?} is an empty path"));
    }
    if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("data:") {
        return Err(format!(
            "{key:?} is a URL ({s}); only local files are supported"
        ));
    }
    let p = Path::new(s);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

/// A non-negative integer field; integral floats such as `3136.0` are accepted as Python does.
fn uint(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    if let Some(u) = v.as_u64() {
        return Ok(Some(u));
    }
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Ok(Some(f as u64)),
        _ => Err(format!(
            "{key:?} must be a non-negative integer, got {}",
            show(v)
        )),
    }
}

/// [`uint`], at most `max`.
fn bounded(obj: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, String> {
    match uint(obj, key)? {
        Some(v) if v > max => Err(format!("{key:?} is {v}, over the limit of {max}")),
        v => Ok(v),
    }
}

fn positive_float(obj: &Map<String, Value>, key: &str, max: f64) -> Result<Option<f64>, String> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    match v.as_f64() {
        Some(f) if f > 0.0 && f <= max => Ok(Some(f)),
        _ => Err(format!(
            "{key:?} must be a positive number up to {max}, got {}",
            show(v)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        s.chars().take(40).chain(std::iter::once('…')).collect()
    } else {
        s
    }
}
