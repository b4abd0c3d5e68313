//! Results files: appending one line per item as it completes, and reading them back for
//! `--resume` and `--merge`.
//!
//! Each line is written with a single `write` of the whole line and its newline, so a killed
//! run leaves complete lines plus at most one cut-off last line. Reading tolerates exactly
//! that: a last line without a newline that does not parse is dropped (and appending first
//! cuts the file back to the last complete line). Anything else that does not parse is an
//! error naming the file and line.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::data::Entry;
use super::report::ResultLine;
use crate::error::{Error, Result};

/// The contents of a results file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Existing {
    pub lines: Vec<ResultLine>,
    /// Bytes up to the end of the last complete line.
    pub valid_len: u64,
    /// A cut-off last line was found (and is not in `lines`).
    pub dropped_partial: bool,
    /// The last line parsed but has no newline after it.
    pub missing_newline: bool,
}

/// Reads a results file (see the module notes for what is tolerated).
pub fn read_results(path: impl AsRef<Path>) -> Result<Existing> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Existing {
        lines: Vec::new(),
        valid_len: 0,
        dropped_partial: false,
        missing_newline: false,
    };
    let mut pos = 0usize;
    let mut line_no = 0usize;
    while pos < bytes.len() {
        line_no += 1;
        let (end, next, complete) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (pos + i, pos + i + 1, true),
            None => (bytes.len(), bytes.len(), false),
        };
        let raw = &bytes[pos..end];
        let parsed = std::str::from_utf8(raw)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                if s.trim().is_empty() {
                    Ok(None)
                } else {
                    serde_json::from_str::<ResultLine>(s)
                        .map(Some)
                        .map_err(|e| e.to_string())
                }
            });
        match parsed {
            Ok(line) => {
                out.missing_newline = !complete && line.is_some();
                out.lines.extend(line);
                out.valid_len = next as u64;
            }
            Err(_) if !complete => {
                out.dropped_partial = true;
                break;
            }
            Err(e) => {
                return Err(Error::file(
                    path,
                    format!("line {line_no}: not a result line: {e}"),
                ))
            }
        }
        pos = next;
    }
    Ok(out)
}

/// The key of an entry of `dataset` in a results file (what [`ResultLine::key`] gives for
/// its line).
pub fn entry_key(dataset: &str, entry: &Entry) -> (String, String) {
    (dataset.to_string(), entry.key())
}

/// Keys ([`ResultLine::key`]) of the items already in a results file; empty when the file does
/// not exist.
pub fn done_ids(path: impl AsRef<Path>) -> Result<HashSet<(String, String)>> {
    let path = path.as_ref();
    if !path.exists() {
        return Ok(HashSet::new());
    }
    Ok(read_results(path)?
        .lines
        .iter()
        .map(ResultLine::key)
        .collect())
}

/// Appends result lines to a file, one write and flush per line.
#[derive(Debug)]
pub struct ResultWriter {
    file: File,
    path: PathBuf,
}

impl ResultWriter {
    /// A new, empty results file (an existing one is replaced).
    pub fn create(path: impl AsRef<Path>) -> Result<ResultWriter> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(ResultWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens a results file to continue it: reads what is there, cuts a partial last line off,
    /// and appends after the last complete one. A missing file is created.
    pub fn resume(path: impl AsRef<Path>) -> Result<(ResultWriter, Existing)> {
        let path = path.as_ref();
        if !path.exists() {
            let w = Self::create(path)?;
            let empty = Existing {
                lines: Vec::new(),
                valid_len: 0,
                dropped_partial: false,
                missing_newline: false,
            };
            return Ok((w, empty));
        }
        let existing = read_results(path)?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(existing.valid_len)
            .map_err(|e| Error::io(path, e))?;
        drop(file);
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if existing.missing_newline {
            file.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
        Ok((
            ResultWriter {
                file,
                path: path.to_path_buf(),
            },
            existing,
        ))
    }

    /// Writes one line and flushes it to the operating system.
    pub fn write(&mut self, line: &ResultLine) -> Result<()> {
        let text = line.to_json_line();
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
