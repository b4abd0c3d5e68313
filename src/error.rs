//! The library's error type: every failure a user can cause names its culprit.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("config {path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prompt: {0}")]
    Prompt(String),
    #[error("media {path}: {msg}")]
    Media { path: PathBuf, msg: String },
    #[error("{flag}: {msg}")]
    Flag { flag: String, msg: String },
    /// A library setting outside its range, by its field name (`top_p`, `ctx`); the CLI
    /// reports it under the flag that sets it.
    #[error("{name}: {msg}")]
    Setting { name: &'static str, msg: String },
    #[error("KV cache: {0}")]
    Cache(String),
    #[error("backend {backend}: {msg}")]
    Backend { backend: String, msg: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn flag(flag: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Flag {
            flag: flag.into(),
            msg: msg.into(),
        }
    }
    pub fn setting(name: &'static str, msg: impl Into<String>) -> Error {
        Error::Setting {
            name,
            msg: msg.into(),
        }
    }
    pub fn backend(backend: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Backend {
            backend: backend.into(),
            msg: msg.into(),
        }
    }
    pub fn media(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Media {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
