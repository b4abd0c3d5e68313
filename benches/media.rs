//! The media path on a 60 s 1280x720 30 fps H.264 clip (made with the ffmpeg CLI): decode,
//! frame sampling, resize and patchify per preset, each stage's seconds and the whole beside
//! real time (the clip's 60 s). `cargo bench --bench media` (needs the `video` feature and the
//! ffmpeg CLI; `reel bench --media` times the same clip through the CLI).

use reel::media::{bench::bench_720p_minute, Preset};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let ffmpeg = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ffmpeg {
        eprintln!("media: the ffmpeg CLI is needed to make the clip; not found");
        return ExitCode::FAILURE;
    }
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("media: temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, preset) in [
        ("video_r1_fork", Preset::video_r1()),
        ("upstream_0_0_14", Preset::upstream()),
    ] {
        match bench_720p_minute(dir.path(), &preset) {
            Ok(t) => println!(
                "{name}: {t:?}; total {:.2} s = {:.1}x real time",
                t.total_s(),
                60.0 / t.total_s()
            ),
            Err(e) => {
                eprintln!("media: {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
