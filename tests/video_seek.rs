//! The seeking decode against the forward decode: byte-identical frames and identical frame
//! numbering on clips with B-frames, open GOPs, short and long GOPs, variable frame rates, and
//! several codecs and containers (all generated with the ffmpeg CLI), at sampling densities
//! where seeking pays and where it must not happen; the same on one thread and on several.
#![cfg(feature = "video")]

use std::path::{Path, PathBuf};
use std::process::Command;

use reel::media::decode::{self, DecodeMode, DecodeOptions, DecodedVideo};
use reel::media::{sample, seek::StreamIndex};

fn have_ffmpeg_cli() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!("NOTE: ffmpeg CLI not found; skipping the cases that generate media with it");
    }
    ok
}

fn have_encoder(name: &str) -> bool {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {name} ")))
        .unwrap_or(false)
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const FORWARD: DecodeOptions = DecodeOptions {
    seek: false,
    threads: 1,
};

fn seeking(threads: usize) -> DecodeOptions {
    DecodeOptions {
        seek: true,
        threads,
    }
}

struct Clip {
    name: &'static str,
    /// ffmpeg arguments after `-y`, output path appended.
    args: Vec<&'static str>,
    file: &'static str,
    codec: &'static str,
}

/// Generates the test clips (small frames, a few seconds each).
fn clips(dir: &Path) -> Vec<(Clip, PathBuf)> {
    // 8 s at 25 fps = 200 frames of a moving pattern.
    const SRC: &str = "testsrc2=duration=8:size=64x48:rate=25";
    let h264 = |extra: &[&'static str]| {
        let mut a = vec![
            "-f", "lavfi", "-i", SRC, "-c:v", "libx264", "-pix_fmt", "yuv420p",
        ];
        a.extend_from_slice(extra);
        a
    };
    let h264_12s = |extra: &[&'static str]| {
        let mut a = vec![
            "-f",
            "lavfi",
            "-i",
            "testsrc2=duration=12:size=64x48:rate=25",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ];
        a.extend_from_slice(extra);
        a
    };
    let mut v = vec![
        Clip {
            name: "h264 B-frames, closed GOP 12",
            args: h264(&["-bf", "3", "-g", "12", "-keyint_min", "12"]),
            file: "closed12.mp4",
            codec: "h264",
        },
        Clip {
            name: "h264 B-frames, open GOP 12",
            args: h264(&[
                "-bf",
                "3",
                "-g",
                "12",
                "-keyint_min",
                "12",
                "-flags",
                "-cgop",
                "-x264-params",
                "open-gop=1",
            ]),
            file: "open12.mp4",
            codec: "h264",
        },
        Clip {
            name: "h264 B-frames, GOP 250 (300 frames: keyframes at 0 and 250)",
            args: h264_12s(&["-bf", "3", "-g", "250"]),
            file: "long250.mp4",
            codec: "h264",
        },
        Clip {
            name: "h264 open GOP 30 in Matroska (pts-indexed, no dts)",
            args: h264(&["-bf", "2", "-g", "30", "-x264-params", "open-gop=1"]),
            file: "open30.mkv",
            codec: "h264",
        },
        Clip {
            // Keeps 4 of every 7 source frames: irregular pts gaps throughout.
            name: "h264 variable frame rate (dropped frames)",
            args: h264(&[
                "-vf",
                "select='lt(mod(n\\,7)\\,4)'",
                "-fps_mode",
                "vfr",
                "-bf",
                "3",
                "-g",
                "10",
            ]),
            file: "vfr_select.mp4",
            codec: "h264",
        },
        Clip {
            // 3 s at 10 fps then 5 s at 30 fps.
            name: "h264 variable frame rate (10 fps then 30 fps segments)",
            args: vec![
                "-filter_complex",
                "testsrc2=d=3:s=64x48:r=10[a];testsrc2=d=5:s=64x48:r=30[b];[a][b]concat=n=2:v=1",
                "-fps_mode",
                "vfr",
                "-c:v",
                "libx264",
                "-pix_fmt",
                "yuv420p",
                "-bf",
                "3",
                "-g",
                "16",
                "-x264-params",
                "open-gop=1",
            ],
            file: "vfr_concat.mkv",
            codec: "h264",
        },
        Clip {
            name: "vp9 with hidden alt-ref frames, GOP 20",
            args: vec![
                "-f",
                "lavfi",
                "-i",
                SRC,
                "-c:v",
                "libvpx-vp9",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "20",
                "-deadline",
                "good",
                "-cpu-used",
                "8",
                "-auto-alt-ref",
                "1",
                "-lag-in-frames",
                "16",
            ],
            file: "vp9.webm",
            codec: "vp9",
        },
        Clip {
            name: "mjpeg (every frame a keyframe) in AVI",
            args: vec![
                "-f", "lavfi", "-i", SRC, "-c:v", "mjpeg", "-pix_fmt", "yuvj420p",
            ],
            file: "mjpeg.avi",
            codec: "mjpeg",
        },
    ];
    if have_encoder("libx265") {
        v.push(Clip {
            name: "hevc B-frames, open GOP 12 (CRA keyframes)",
            args: vec![
                "-f",
                "lavfi",
                "-i",
                SRC,
                "-c:v",
                "libx265",
                "-pix_fmt",
                "yuv420p",
                "-tag:v",
                "hvc1",
                "-x265-params",
                "log-level=error:keyint=12:min-keyint=12:open-gop=1:bframes=3:scenecut=0",
            ],
            file: "hevc_open12.mp4",
            codec: "hevc",
        });
    } else {
        println!("NOTE: this ffmpeg has no libx265; skipping the HEVC clip");
    }
    v.into_iter()
        .map(|c| {
            let p = dir.join(c.file);
            let mut a = c.args.clone();
            a.push(p.to_str().unwrap());
            ffmpeg(&a);
            (c, p)
        })
        .collect()
}

/// Presentation indices of the frames just before each keyframe: the leading pictures of an
/// open GOP, which a seek to that keyframe cannot reproduce.
fn before_keyframes(ix: &StreamIndex) -> Vec<u64> {
    ix.packets
        .iter()
        .filter(|p| p.key)
        .filter_map(|p| ix.frame_pts.binary_search(&p.pts).ok())
        .filter(|&r| r > 0)
        .map(|r| r as u64 - 1)
        .collect()
}

fn check_same(name: &str, what: &str, got: &DecodedVideo, all: &DecodedVideo, idx: &[u64]) {
    assert_eq!(got.frames.t, idx.len(), "{name} {what}");
    for (k, &i) in idx.iter().enumerate() {
        assert!(
            got.frames.frame(k) == all.frames.frame(i as usize),
            "{name} {what}: frame {i} (slot {k}) differs from the forward decode ({})",
            got.stats.describe()
        );
    }
}

#[test]
fn seeking_decode_is_byte_identical() {
    if !have_ffmpeg_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (clip, path) in clips(dir.path()) {
        let name = clip.name;
        let info = decode::probe(&path).unwrap();
        assert_eq!(info.codec, clip.codec, "{name}");
        let ix = decode::index(&path).unwrap();
        let n = ix.frame_count() as u64;
        // The reference: every frame, forward.
        let every: Vec<u64> = (0..n).collect();
        let all = decode::decode_indices_with(&path, &every, &FORWARD).unwrap();
        // The index counts exactly the frames the forward decode returns (and no more: asking
        // for one past them is an error).
        assert_eq!(
            all.stats.frames_decoded, n,
            "{name}: index vs forward count"
        );
        assert!(decode::decode_indices_with(&path, &[n], &FORWARD).is_err());
        assert_eq!(info.frames, n, "{name}: probe vs index");
        let keys = ix.start_count();
        println!(
            "{name}: {n} frames, {} packets, {keys} seek points, {} fps",
            ix.packets.len(),
            info.fps
        );
        assert!(keys >= 2, "{name}: the clip should have several keyframes");

        // (what, indices, whether the plan must seek: Some(true) yes, Some(false) one run
        // from the start, None either).
        let mut cases: Vec<(String, Vec<u64>, Option<bool>)> = Vec::new();
        for m in [2u64, 4, 6] {
            // qwen-vl-utils' linspace sampling; few frames from many: seeking pays.
            cases.push((
                format!("{m} sampled"),
                sample::frame_indices(n, m),
                Some(true),
            ));
        }
        // The last frame alone: one run that does not start at the top.
        cases.push(("last frame".into(), vec![n - 1], Some(true)));
        // Open-GOP leading pictures (and plain GOP ends), unsorted with a repeat: each one
        // alone from the middle of the clip (a seek to the keyframe before), then all at once.
        let mut lead = before_keyframes(&ix);
        let mid = lead[lead.len() / 2];
        // With two keyframes the one before is the file start: no seek.
        let seeks = Some(keys > 2);
        cases.push((format!("frame {mid} (before a keyframe)"), vec![mid], seeks));
        cases.push((
            format!("frames {mid}..={} around a keyframe", mid + 2),
            vec![mid + 2, mid, mid + 1],
            seeks,
        ));
        lead.reverse();
        lead.push(lead[0]);
        cases.push(("frames before keyframes".into(), lead, None));
        // Dense: every frame and every other frame decode in one run from the start.
        cases.push(("every frame".into(), every.clone(), Some(false)));
        cases.push((
            "every other frame".into(),
            (0..n).step_by(2).collect(),
            Some(false),
        ));
        for (what, idx, seeks) in cases {
            let one = decode::decode_indices_with(&path, &idx, &seeking(1)).unwrap();
            let st = &one.stats;
            println!("  {what}: {}", st.describe());
            assert_eq!(
                st.mode,
                DecodeMode::Indexed,
                "{name} {what}: {}",
                st.describe()
            );
            assert_eq!(st.note, None, "{name} {what}: {}", st.describe());
            match seeks {
                Some(true) => {
                    assert!(st.seeks > 0, "{name} {what}: {}", st.describe());
                    assert!(
                        st.frames_decoded < n,
                        "{name} {what}: seeking decoded every frame"
                    );
                }
                Some(false) => assert_eq!(
                    (st.runs, st.seeks),
                    (1, 0),
                    "{name} {what}: {}",
                    st.describe()
                ),
                None => {}
            }
            check_same(name, &what, &one, &all, &idx);
            // Several threads: the runs spread over separate decoders, same bytes.
            let three = decode::decode_indices_with(&path, &idx, &seeking(3)).unwrap();
            assert_eq!(three.stats.note, None, "{name} {what}");
            assert_eq!(three.stats.runs, st.runs, "{name} {what}");
            if three.stats.runs > 1 {
                assert!(three.stats.workers > 1, "{name} {what}");
            }
            check_same(name, &format!("{what}, 3 threads"), &three, &all, &idx);
        }
    }
}

/// Streams cut with `-c copy` from the middle of an open-GOP stream.
#[test]
fn cut_streams() {
    if !have_ffmpeg_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("open.ts");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=duration=8:size=64x48:rate=25",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-bf",
        "3",
        "-g",
        "12",
        "-keyint_min",
        "12",
        "-flags",
        "-cgop",
        "-x264-params",
        "open-gop=1",
        src.to_str().unwrap(),
    ]);
    // MPEG-TS keeps the leading pictures of the first keyframe, whose references were cut
    // off: the decoder drops them, so the packet index cannot number frames. Forward decode.
    let ts = dir.path().join("cut.ts");
    // MP4 keeps the GOP before the cut point as decode-only packets (an edit list): the
    // index leaves them out and numbers the rest as the decoder returns them.
    let mp4 = dir.path().join("cut.mp4");
    for out in [&ts, &mp4] {
        ffmpeg(&[
            "-ss",
            "2.1",
            "-i",
            src.to_str().unwrap(),
            "-c",
            "copy",
            out.to_str().unwrap(),
        ]);
    }
    for (path, indexed) in [(&ts, false), (&mp4, true)] {
        let ix = decode::index(path).unwrap();
        let n = ix.frame_count() as u64;
        // Everything the forward decode returns.
        let all = decode::decode_indices_with(path, &[u64::MAX - 1], &FORWARD).unwrap_err();
        let got = all.to_string();
        let count: u64 = got
            .split("only ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{}: {got}", path.display()));
        let every: Vec<u64> = (0..count).collect();
        let all = decode::decode_indices_with(path, &every, &FORWARD).unwrap();
        let idx = sample::frame_indices(count, 4);
        let sk = decode::decode_indices_with(path, &idx, &seeking(2)).unwrap();
        println!(
            "{}: {} packets, {n} indexed frames, {count} decoded forward; {}",
            path.display(),
            ix.packets.len(),
            sk.stats.describe()
        );
        if indexed {
            assert_eq!(n, count, "{}", path.display());
            assert_eq!(
                sk.stats.mode,
                DecodeMode::Indexed,
                "{}",
                sk.stats.describe()
            );
            assert_eq!(sk.stats.note, None);
            assert!(sk.stats.seeks > 0, "{}", sk.stats.describe());
        } else {
            assert!(ix.unseekable.as_deref().unwrap().contains("leading"));
            assert_eq!(sk.stats.mode, DecodeMode::Forward);
        }
        check_same("cut", &path.display().to_string(), &sk, &all, &idx);
    }
}

#[test]
fn forward_decode_threads_agree() {
    if !have_ffmpeg_cli() {
        return;
    }
    // Frame-threaded and single-threaded forward decodes, and the seeking path on all cores.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=duration=4:size=96x64:rate=30",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-bf",
        "3",
        "-g",
        "15",
        p.to_str().unwrap(),
    ]);
    let idx = sample::frame_indices(120, 8);
    let a = decode::decode_indices_with(&p, &idx, &FORWARD).unwrap();
    let b = decode::decode_indices_with(
        &p,
        &idx,
        &DecodeOptions {
            seek: false,
            threads: 4,
        },
    )
    .unwrap();
    let c = decode::decode_indices(&p, &idx).unwrap();
    assert_eq!(a.frames, b.frames);
    assert_eq!(a.frames, c.frames);
    assert_eq!(c.stats.mode, DecodeMode::Indexed, "{}", c.stats.describe());
    assert!(c.stats.seeks > 0, "{}", c.stats.describe());
}

#[test]
fn bad_input_errors_match_the_forward_decode() {
    if !have_ffmpeg_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // moov first, so a cut file still lists every sample: the index sees the packets that are
    // there, and asking for a frame past them is the forward decode's error.
    let p = dir.path().join("fast.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=duration=4:size=64x48:rate=25",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "10",
        "-movflags",
        "+faststart",
        p.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let idx = [2u64, 95];
    let fwd = decode::decode_indices_with(&cut, &idx, &FORWARD).unwrap_err();
    let sk = decode::decode_indices_with(&cut, &idx, &seeking(2)).unwrap_err();
    println!("cut file: forward: {fwd}\n          seeking: {sk}");
    assert_eq!(fwd.to_string(), sk.to_string());
    assert!(matches!(&sk, reel::Error::Media { path, .. } if path == &cut));
    // Frames before the cut still decode, identically.
    let idx = [1u64, 30];
    let a = decode::decode_indices_with(&cut, &idx, &FORWARD).unwrap();
    let b = decode::decode_indices_with(&cut, &idx, &seeking(2)).unwrap();
    assert_eq!(a.frames, b.frames);
}
