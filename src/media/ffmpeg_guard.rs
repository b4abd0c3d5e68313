//! A time budget for FFmpeg, per file: a pathological stream (a demuxer that loops, a
//! container that claims endless packets) must not hang the process.
//!
//! [`Budget::start`] sets a deadline for the current thread while one file is probed or
//! decoded. FFmpeg polls the format context's interrupt callback ([`format_context`] installs
//! it) during every blocking read and in its probing loops, and aborts the call once the
//! deadline has passed; the decode loop calls [`check`] between packets. The budget is
//! `REEL_MEDIA_TIMEOUT` seconds (default [`DEFAULT_BUDGET_S`]).

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use ffmpeg_sys_next as ff;

/// Seconds one media file may take in FFmpeg, probe and decode together, by default.
pub const DEFAULT_BUDGET_S: f64 = 300.0;

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The budget that applies on this thread (None: the environment's or the default).
    static BUDGET: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// The per-file budget: this thread's override, else `REEL_MEDIA_TIMEOUT` seconds, else the
/// default. An unusable `REEL_MEDIA_TIMEOUT` is ignored.
pub fn budget() -> Duration {
    if let Some(b) = BUDGET.with(Cell::get) {
        return b;
    }
    let secs = std::env::var("REEL_MEDIA_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .unwrap_or(DEFAULT_BUDGET_S);
    Duration::from_secs_f64(secs)
}

/// Sets (or with `None` clears) the budget for files opened on this thread from now on.
pub fn set_thread_budget(b: Option<Duration>) {
    BUDGET.with(|c| c.set(b));
}

/// The deadline of one file; dropping it restores the previous one.
pub struct Budget {
    previous: Option<Instant>,
}

impl Budget {
    /// Starts the clock for one file (an enclosing budget that ends sooner still wins).
    pub fn start() -> Budget {
        let previous = DEADLINE.with(Cell::get);
        let mine = Instant::now() + budget();
        let d = previous.map_or(mine, |p| p.min(mine));
        DEADLINE.with(|c| c.set(Some(d)));
        Budget { previous }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        DEADLINE.with(|c| c.set(self.previous));
    }
}

fn expired() -> bool {
    DEADLINE
        .with(Cell::get)
        .is_some_and(|d| Instant::now() >= d)
}

/// The error for a file that ran out of time.
fn over_budget() -> String {
    format!(
        "FFmpeg took longer than the {:.0} s allowed per file (a pathological stream? \
         REEL_MEDIA_TIMEOUT sets the budget)",
        budget().as_secs_f64()
    )
}

/// An error once this file's deadline has passed.
pub fn check() -> Result<(), String> {
    if expired() {
        Err(over_budget())
    } else {
        Ok(())
    }
}

/// `msg` (an FFmpeg failure), or the budget error when the failure came from the deadline.
pub fn explain(msg: String) -> String {
    if expired() {
        over_budget()
    } else {
        msg
    }
}

unsafe extern "C" fn interrupt(_opaque: *mut c_void) -> c_int {
    c_int::from(expired())
}

/// A fresh format context whose blocking calls give up at this thread's deadline and which
/// reads local files only; hand it to `avformat_open_input` (which frees it if opening fails).
pub fn format_context() -> Result<*mut ff::AVFormatContext, String> {
    // SAFETY: plain allocation; the callback needs no opaque state (the deadline is
    // thread-local and FFmpeg polls it from the thread that called into it).
    unsafe {
        let fmt = ff::avformat_alloc_context();
        if fmt.is_null() {
            return Err("out of memory (format context)".into());
        }
        (*fmt).interrupt_callback = ff::AVIOInterruptCB {
            callback: Some(interrupt),
            opaque: std::ptr::null_mut(),
        };
        // Local files only: a playlist-like container must not make FFmpeg open URLs.
        (*fmt).protocol_whitelist = ff::av_strdup(c"file".as_ptr());
        Ok(fmt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_nest_and_expire() {
        set_thread_budget(Some(Duration::from_secs(3600)));
        {
            let _outer = Budget::start();
            assert!(check().is_ok());
            set_thread_budget(Some(Duration::ZERO));
            {
                let _inner = Budget::start();
                let e = check().unwrap_err();
                assert!(e.contains("REEL_MEDIA_TIMEOUT"), "{e}");
                assert_eq!(explain("x".into()), e);
            }
            // The outer deadline is back.
            assert!(check().is_ok());
            assert_eq!(explain("x".into()), "x");
        }
        set_thread_budget(None);
        assert!(check().is_ok());
    }
}
