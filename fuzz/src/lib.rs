//! What every fuzz target shares: one [`reel::fuzz::Context`] per process, built from the
//! fixture checkpoint beside this crate.

use reel::fuzz::{Context, Target};
use std::path::PathBuf;

thread_local! {
    static CX: Context = Context::new(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model"),
    )
    .expect("the fixture checkpoint opens");
}

/// Runs one input; errors are the expected outcome for most inputs and are dropped, panics
/// and aborts reach libFuzzer.
pub fn run(target: Target, data: &[u8]) {
    CX.with(|cx| {
        let _ = reel::fuzz::run(target, cx, data);
    });
}
