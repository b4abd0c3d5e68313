//! Untrusted files: third-party parsers behind a panic fence, and reads bounded by size.
//!
//! reel opens files downloaded from anywhere. Its own parsers check every size a file gives
//! before allocating; the libraries it hands file contents to (tokenizers, minijinja, the image
//! decoders) are validated around where possible, and [`guard`] is the last line: a panic
//! inside one becomes an error message instead of unwinding through the engine. The panic's
//! message is captured rather than printed, so the user sees one error line naming the file.

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use crate::error::{Error, Result};

thread_local! {
    /// Depth of [`guard`] calls on this thread; a panic here is captured, not printed.
    static FENCED: Cell<usize> = const { Cell::new(0) };
    /// The message of the last captured panic.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that stays silent for panics inside [`guard`] and hands every
/// other panic to the hook that was there before.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if FENCED.with(Cell::get) > 0 {
                let msg = payload_text(info.payload());
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message (and where it
/// was raised). Use it around calls into third-party parsers that are handed file contents;
/// callers turn the message into an error naming the file.
pub fn guard<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    install_hook();
    FENCED.with(|d| d.set(d.get() + 1));
    let out = panic::catch_unwind(AssertUnwindSafe(f));
    FENCED.with(|d| d.set(d.get() - 1));
    out.map_err(|p| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| payload_text(p.as_ref()))
    })
}

/// Reads a whole file of at most `max` bytes; a larger one is an error naming the file and
/// both sizes, raised before anything is allocated for it. `what` says what the file is
/// (e.g. "a messages file").
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(Error::file(
            path,
            format!("{len} bytes is too large for {what} (the limit is {max} bytes)"),
        ));
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len as usize)
        .map_err(|_| Error::file(path, format!("cannot allocate {len} bytes to read {what}")))?;
    // `take` bounds the read even if the file grows after the size check.
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::file(
            path,
            format!("{what} grew past the limit of {max} bytes while being read"),
        ));
    }
    Ok(buf)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_text_bounded(path: &Path, max: u64, what: &str) -> Result<String> {
    let bytes = read_bounded(path, max, what)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::file(
            path,
            format!(
                "{what} is not UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Largest JSON side file (config.json, tokenizer_config.json, ...) read whole.
pub const MAX_JSON_FILE: u64 = 64 << 20;
/// Largest tokenizer.json read whole (real ones are 5–30 MB).
pub const MAX_TOKENIZER_FILE: u64 = 512 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        let r: std::result::Result<(), String> = guard(|| panic!("boom {}", 7));
        let msg = r.unwrap_err();
        assert!(msg.starts_with("boom 7 at "), "{msg}");
        assert!(msg.contains("fence.rs"), "{msg}");
        assert_eq!(guard(|| 5), Ok(5));
        // Nested guards: the inner one catches.
        let outer = guard(|| guard(|| panic!("inner")).unwrap_err());
        assert!(outer.unwrap().starts_with("inner"));
    }

    #[test]
    fn bounded_reads_refuse_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_bounded(&p, 10, "a test file").unwrap().len(), 10);
        let e = read_bounded(&p, 9, "a test file").unwrap_err().to_string();
        assert!(
            e.contains("f.json") && e.contains("10 bytes") && e.contains("limit is 9"),
            "{e}"
        );
        std::fs::write(&p, b"ok\xff").unwrap();
        let e = read_text_bounded(&p, 10, "a test file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not UTF-8") && e.contains("offset 2"), "{e}");
    }
}
