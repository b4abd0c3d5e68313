//! The checkpoint's own `tokenizer.json`, through the `tokenizers` crate, plus a streaming
//! detokenizer for printing tokens as they are generated.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fence;

/// A loaded tokenizer. Cloning is cheap (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    origin: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `DIR/tokenizer.json`.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = fence::read_bounded(path, fence::MAX_TOKENIZER_FILE, "a tokenizer.json")?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the contents of a `tokenizer.json` (e.g. one embedded in a GGUF file);
    /// `origin` names it in errors.
    ///
    /// The text is checked to be well-formed JSON (an object) first: the `tokenizers` crate
    /// panics on some syntax errors (e.g. inside `decoder`) instead of returning them. Its
    /// construction runs behind [`fence::guard`] for whatever else it panics on.
    pub fn from_bytes(bytes: &[u8], origin: impl Into<PathBuf>) -> Result<Self> {
        let origin = origin.into();
        let bad = |msg: String| Error::file(&origin, format!("not a valid tokenizer.json: {msg}"));
        match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes) {
            Ok(top) if !top.get("model").is_some_and(serde_json::Value::is_object) => {
                return Err(bad("no `model` object".into()))
            }
            Ok(_) => {}
            Err(e) if e.is_data() => return Err(bad("expected a JSON object".into())),
            Err(e) => return Err(bad(format!("malformed JSON: {e}"))),
        }
        let inner = fence::guard(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|p| bad(format!("the tokenizers library panicked: {p}")))?
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(inner),
            origin,
        })
    }

    /// The file (or other source) the tokenizer came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Token ids of `text`. Nothing is prepended or appended (Qwen adds no BOS), but added
    /// tokens written in the text, such as `<|im_start|>` or `<|video_pad|>`, become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = fence::guard(|| self.inner.encode(text, false))
            .map_err(|p| self.panicked("encoding", p))?
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens included (`<|im_end|>` prints as itself).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, false)
    }

    /// Text of `ids` with special tokens dropped, as vLLM and `batch_decode(...,
    /// skip_special_tokens=True)` return generated text.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, true)
    }

    /// Ids outside the vocabulary (the model's embedding rows beyond the tokenizer's, e.g.
    /// 151665..152063 in Qwen2.5-VL) decode to nothing, as in transformers.
    fn decode_with(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        fence::guard(|| self.inner.decode(ids, skip_special))
            .map_err(|p| self.panicked("decoding", p))?
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    fn panicked(&self, what: &str, msg: String) -> Error {
        Error::Tokenizer(format!(
            "{}: {what} failed: the tokenizers library panicked: {msg}",
            self.origin.display()
        ))
    }

    /// The id of a token written exactly (e.g. `"<|video_pad|>"`), or an error naming it.
    pub fn token_id(&self, token: &str) -> Result<u32> {
        self.inner.token_to_id(token).ok_or_else(|| {
            Error::Tokenizer(format!("{}: no token {token:?}", self.origin.display()))
        })
    }

    /// The id of a token written exactly, if the vocabulary has it.
    pub fn try_token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string form of one id (byte-level form for ordinary tokens).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included (the highest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special)
    }
}

/// Turns ids arriving one at a time into text pieces whose concatenation equals the decoding of
/// all ids. One token may end in the middle of a UTF-8 character (byte-level BPE), so text is
/// held back while the decoded window ends in U+FFFD; each step decodes only the ids since the
/// last emitted piece plus the piece before it, so the cost per token stays constant.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// Ids from the start of the previously emitted piece on.
    window: Vec<u32>,
    /// `window[..read]` has been emitted; `window[..read]` decodes to the context prefix.
    read: usize,
}

impl StreamDecoder {
    pub fn new(tokenizer: Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer,
            skip_special,
            window: Vec::new(),
            read: 0,
        }
    }

    /// Adds one id and returns the text it completes (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.window.push(id);
        let prefix = self
            .tokenizer
            .decode_with(&self.window[..self.read], self.skip_special)?;
        let full = self
            .tokenizer
            .decode_with(&self.window, self.skip_special)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let piece = match full.get(prefix.len()..) {
            Some(p) if full.starts_with(&prefix) => p.to_string(),
            // A decoder that rewrites earlier text (not the case for byte-level BPE): wait.
            _ => return Ok(String::new()),
        };
        // Keep the ids just emitted as the next call's context.
        self.window.drain(..self.read);
        self.read = self.window.len();
        Ok(piece)
    }

    /// Returns whatever is still held back (e.g. an incomplete character at the end of a
    /// generation, printed as U+FFFD) and resets the decoder.
    pub fn flush(&mut self) -> Result<String> {
        let prefix = self
            .tokenizer
            .decode_with(&self.window[..self.read], self.skip_special)?;
        let full = self
            .tokenizer
            .decode_with(&self.window, self.skip_special)?;
        let piece = match full.get(prefix.len()..) {
            Some(p) if full.starts_with(&prefix) => p.to_string(),
            _ => String::new(),
        };
        self.window.clear();
        self.read = 0;
        Ok(piece)
    }
}
