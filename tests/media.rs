//! Media pipeline against the Python references in tests/fixtures (qwen-vl-utils 0.0.14 and
//! the Video-R1 fork, Pillow, torchvision, decord, transformers 4.49), plus bad-media handling.

mod common;

use common::fixture;
use std::path::Path;
#[cfg(feature = "video")]
use std::process::Command;

use reel::media::sample::{self, FrameRequest, VideoPixelRequest};
#[cfg_attr(not(feature = "video"), allow(unused_imports))]
use reel::media::{
    self, pixels, resize_pil, resize_tv, size, Frames, ImageRequest, PatchParams, Preset,
    VideoRequest,
};
use serde_json::Value;

fn json(rel: &str) -> Value {
    let p = fixture(rel);
    serde_json::from_slice(&std::fs::read(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct St(Vec<u8>);

impl St {
    fn load(rel: &str) -> St {
        St(std::fs::read(fixture(rel)).unwrap())
    }
    fn get(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("tensor {name}: {e}"));
        (t.shape().to_vec(), t.data().to_vec())
    }
    fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        st.names().into_iter().map(|s| s.to_string()).collect()
    }
    fn f32s(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (s, d) = self.get(name);
        (
            s,
            d.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }
    fn i64s(&self, name: &str) -> Vec<i64> {
        let (_, d) = self.get(name);
        d.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

fn presets() -> [(&'static str, Preset); 2] {
    [
        ("video_r1_fork", Preset::video_r1()),
        ("upstream_0_0_14", Preset::upstream()),
    ]
}

/// (pixels that differ, largest difference).
fn diff_u8(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .fold((0, 0), |(n, m), (x, y)| (n + 1, m.max(x.abs_diff(*y))))
}

fn chw_to_hwc(c: usize, h: usize, w: usize, src: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; c * h * w];
    for ch in 0..c {
        for i in 0..h * w {
            out[i * c + ch] = src[ch * h * w + i];
        }
    }
    out
}

fn f64s(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

// ---------------------------------------------------------------------------------------
// Sizing and sampling tables
// ---------------------------------------------------------------------------------------

#[test]
fn table_smart_resize() {
    let t = json("golden/preprocess_tables.json");
    let rows = t["smart_resize"].as_array().unwrap();
    assert!(rows.len() > 600);
    let mut checked = 0;
    for r in rows {
        assert_eq!(r["factor"], 28);
        let (h, w) = (
            r["h"].as_u64().unwrap() as u32,
            r["w"].as_u64().unwrap() as u32,
        );
        for (key, p) in presets() {
            let got = size::smart_resize(h, w, f64s(&r["min_pixels"]), f64s(&r["max_pixels"]), &p);
            let want = &r[key];
            match (&got, want.get("ok")) {
                (Ok((gh, gw)), Some(ok)) => assert_eq!(
                    [*gh as u64, *gw as u64],
                    [ok[0].as_u64().unwrap(), ok[1].as_u64().unwrap()],
                    "{key} {r}"
                ),
                (Err(_), None) => {}
                _ => panic!("{key}: got {got:?}, want {want} for {r}"),
            }
            checked += 1;
        }
    }
    println!("smart_resize: {checked} cases match");
}

#[test]
fn table_default_image_limits() {
    let t = json("golden/preprocess_tables.json");
    for r in t["fetch_image_default_limits"].as_array().unwrap() {
        let (h, w) = (
            r["h"].as_u64().unwrap() as u32,
            r["w"].as_u64().unwrap() as u32,
        );
        for (key, p) in presets() {
            let got = media::image_target_size(h, w, &p, &ImageRequest::default());
            match (&got, r[key].get("ok")) {
                (Ok((gh, gw)), Some(ok)) => assert_eq!(
                    [*gh as u64, *gw as u64],
                    [ok[0].as_u64().unwrap(), ok[1].as_u64().unwrap()],
                    "{key} {r}"
                ),
                (Err(_), None) => {}
                _ => panic!("{key}: got {got:?} for {r}"),
            }
        }
    }
}

fn frame_request(ele: &Value) -> FrameRequest {
    let g = |k: &str| ele.get(k).map(f64s);
    FrameRequest {
        fps: g("fps"),
        nframes: g("nframes"),
        min_frames: g("min_frames"),
        max_frames: g("max_frames"),
    }
}

#[test]
fn table_smart_nframes() {
    let t = json("golden/preprocess_tables.json");
    let rows = t["smart_nframes"].as_array().unwrap();
    for r in rows {
        let total = r["total_frames"].as_u64().unwrap();
        let vfps = f64s(&r["video_fps"]);
        let req = frame_request(&r["ele"]);
        for (key, p) in presets() {
            let want = &r[key];
            let got = sample::smart_nframes(&req, total, vfps, &p);
            match (&got, want.get("ok")) {
                (Ok(n), Some(ok)) => {
                    assert_eq!(*n, ok.as_u64().unwrap(), "{key} {r}");
                    let sfps = sample::sample_fps(*n, total, vfps);
                    // serde_json (without float_roundtrip) may parse a decimal 1 ulp off.
                    let w = f64s(&want["sample_fps"]);
                    assert!(
                        sfps.to_bits().abs_diff(w.to_bits()) <= 1,
                        "{key} sample_fps {sfps} vs {w}: {r}"
                    );
                    let s = sample::second_per_grid_ts(2, sfps);
                    assert_eq!(
                        s,
                        f64s(&want["second_per_grid_ts_f32"]) as f32,
                        "{key} s {r}"
                    );
                }
                (Err(_), None) => {}
                _ => panic!("{key}: got {got:?}, want {want} for {r}"),
            }
        }
    }
    println!("smart_nframes: {} rows x 2 presets match", rows.len());
}

#[test]
fn table_frame_indices() {
    let t = json("golden/preprocess_tables.json");
    let rows = t["frame_indices"].as_array().unwrap();
    let mut mismatch_by_width = [
        (1usize, false, 0usize),
        (8, false, 0),
        (16, false, 0),
        (1, true, 0),
        (8, true, 0),
        (16, true, 0),
    ];
    let mut bad = Vec::new();
    for r in rows {
        let total = r["total_frames"].as_u64().unwrap();
        let n = r["n"].as_u64().unwrap();
        let want: Vec<u64> = r["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        for (w, fma, nbad) in mismatch_by_width.iter_mut() {
            if sample::linspace_indices_f32(total, n, *w, *fma) != want {
                *nbad += 1;
            }
        }
        if sample::frame_indices(total, n) != want {
            bad.push((total, n));
        }
    }
    println!(
        "frame_indices: {} rows; rows that differ per (vector width, fma): {mismatch_by_width:?}",
        rows.len()
    );
    assert!(bad.is_empty(), "(total, n) rows that differ: {bad:?}");
}

#[test]
fn table_video_max_pixels() {
    let t = json("golden/preprocess_tables.json");
    for r in t["video_max_pixels"].as_array().unwrap() {
        let n = r["nframes"].as_u64().unwrap();
        let ele = &r["ele"];
        let req = VideoPixelRequest {
            min_pixels: ele.get("min_pixels").map(f64s),
            max_pixels: ele.get("max_pixels").map(f64s),
            total_pixels: ele.get("total_pixels").map(f64s),
        };
        for (key, p) in presets() {
            let want = &r[key];
            let (mx, mn) = sample::video_frame_pixels(n, &req, &p);
            assert_eq!(mx, f64s(&want["max_pixels"]), "{key} {r}");
            assert_eq!(mn, f64s(&want["min_pixels"]), "{key} {r}");
            let vreq = VideoRequest {
                pixels: req.clone(),
                ..Default::default()
            };
            for (hw, res) in want["resized"].as_object().unwrap() {
                let (h, w) = hw.split_once('x').unwrap();
                let got =
                    media::video_target_size(h.parse().unwrap(), w.parse().unwrap(), n, &p, &vreq);
                match (&got, res.get("ok")) {
                    (Ok(((gh, gw), _)), Some(ok)) => {
                        assert_eq!(
                            [*gh as u64, *gw as u64],
                            [ok[0].as_u64().unwrap(), ok[1].as_u64().unwrap()],
                            "{key} {hw} {r}"
                        )
                    }
                    (Err(_), None) => {}
                    _ => panic!("{key}: got {got:?} for {hw} {r}"),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resize kernels
// ---------------------------------------------------------------------------------------

fn parse_hw(s: &str) -> (usize, usize) {
    let (h, w) = s.split_once('x').unwrap();
    (h.parse().unwrap(), w.parse().unwrap())
}

#[test]
fn resize_pil_matches_pillow_exactly() {
    let st = St::load("golden/resize.safetensors");
    let mut cases = 0;
    let mut bad = Vec::new();
    for name in st.names().into_iter().filter(|n| n.starts_with("pil.")) {
        let (src_key, dst) = name["pil.".len()..].split_once("_to_").unwrap();
        let (sh, sw) = parse_hw(src_key);
        let (dh, dw) = parse_hw(dst);
        let (_, src) = st.get(&format!("src.{src_key}"));
        let (shape, want) = st.get(&name);
        assert_eq!(shape, vec![dh, dw, 3]);
        let got = resize_pil::resize_bicubic(&src, sh, sw, 3, dh, dw);
        let (n, m) = diff_u8(&got, &want);
        println!("{name}: {n} of {} values differ (max {m})", want.len());
        if n != 0 {
            bad.push(format!("{name}: {n} values differ, max {m}"));
        }
        cases += 1;
    }
    assert!(cases >= 10, "only {cases} PIL cases found");
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn resize_tv_matches_torchvision_exactly() {
    let st = St::load("golden/resize.safetensors");
    let mut cases = 0;
    let mut bad = Vec::new();
    for name in st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("tv.") || n.starts_with("tvv."))
    {
        let video = name.starts_with("tvv.");
        let rest = name.split_once('.').unwrap().1;
        let (src_key, dst) = rest.split_once("_to_").unwrap();
        let (sh, sw) = parse_hw(src_key);
        let (dh, dw) = parse_hw(dst);
        let (shape, want) = st.get(&name);
        let t = shape[0];
        assert_eq!(shape, vec![t, 3, dh, dw]);
        // Sources: HWC for tv (permuted by the reference), TCHW for tvv.
        let src_frames: Vec<Vec<u8>> = if video {
            let (_, s) = st.get(&format!("srcv.{src_key}"));
            s.chunks_exact(3 * sh * sw)
                .map(|f| chw_to_hwc(3, sh, sw, f))
                .collect()
        } else {
            vec![st.get(&format!("src.{src_key}")).1]
        };
        assert_eq!(src_frames.len(), t);
        let mut total = (0, 0u8);
        for (i, src) in src_frames.iter().enumerate() {
            let got = resize_tv::resize_bicubic_aa(src, sh, sw, 3, dh, dw);
            let want_hwc = chw_to_hwc(3, dh, dw, &want[i * 3 * dh * dw..(i + 1) * 3 * dh * dw]);
            let (n, m) = diff_u8(&got, &want_hwc);
            total = (total.0 + n, total.1.max(m));
        }
        println!(
            "{name}: {} of {} values differ (max {})",
            total.0,
            want.len(),
            total.1
        );
        if total.0 != 0 {
            bad.push(format!(
                "{name}: {} values differ, max {}",
                total.0, total.1
            ));
        }
        cases += 1;
    }
    assert!(bad.is_empty(), "{bad:#?}");
    assert!(cases >= 12, "only {cases} torchvision cases found");
}

// ---------------------------------------------------------------------------------------
// Per-case goldens: images
// ---------------------------------------------------------------------------------------

fn cases() -> Vec<Value> {
    json("cases.json")["cases"].as_array().unwrap().clone()
}

fn f32_bits_diff(a: &[f32], b: &[f32]) -> (usize, u32) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .fold((0, 0), |(n, m), (x, y)| {
            (n + 1, m.max(x.to_bits().abs_diff(y.to_bits())))
        })
}

#[test]
fn images_match_qwen_vl_utils_and_processor() {
    let params = PatchParams::qwen2_vl();
    let mut n_cases = 0;
    for c in cases() {
        let items = c["vision_items"].as_array().unwrap();
        if items.len() != 1 || items[0]["type"] != "image" {
            continue;
        }
        let it = &items[0];
        let name = c["name"].as_str().unwrap();
        let st = St::load(&format!("golden/{name}.safetensors"));
        let req = ImageRequest {
            min_pixels: Some(f64s(&it["min_pixels"])),
            max_pixels: Some(f64s(&it["max_pixels"])),
            resized: None,
        };
        let img = media::load_image(
            &fixture(it["path"].as_str().unwrap()),
            &Preset::video_r1(),
            &req,
        )
        .unwrap();
        let (shape, want) = st.get("in.image_resized_uint8");
        assert_eq!(shape, vec![img.frames.h, img.frames.w, 3], "{name}");
        let (n, m) = diff_u8(&img.frames.data, &want);
        println!("{name}: resized image {n} values differ (max {m})");
        assert_eq!(
            n, 0,
            "{name}: resized image differs in {n} values (max {m})"
        );

        let rows = pixels::patchify(&img.frames, &params).unwrap();
        let grid = st.i64s("in.image_grid_thw");
        assert_eq!(
            grid,
            rows.grid_thw.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            "{name}"
        );
        let (pshape, pv) = st.f32s("in.pixel_values");
        assert_eq!(pshape, vec![rows.n_rows(), 1176]);
        let (n, ulp) = f32_bits_diff(&rows.rows, &pv);
        println!(
            "{name}: pixel_values {n} of {} differ (max {ulp} ulp)",
            pv.len()
        );
        assert_eq!(
            n, 0,
            "{name}: pixel_values differ in {n} values (max {ulp} ulp)"
        );
        n_cases += 1;
    }
    assert_eq!(n_cases, 3, "expected image_small, image_medium, image_wide");
}

// ---------------------------------------------------------------------------------------
// Per-case goldens: videos
// ---------------------------------------------------------------------------------------

#[cfg(feature = "video")]
fn video_cases() -> Vec<(String, Value)> {
    cases()
        .into_iter()
        .filter_map(|c| {
            let items = c["vision_items"].as_array().unwrap().clone();
            (items.len() == 1
                && items[0]["type"] == "video"
                && items[0]["inputs_from_case"] == c["name"])
                .then(|| (c["name"].as_str().unwrap().to_string(), items[0].clone()))
        })
        .collect()
}

#[cfg(feature = "video")]
fn video_request(it: &Value) -> VideoRequest {
    VideoRequest {
        frames: FrameRequest {
            fps: it.get("fps").map(f64s),
            nframes: it
                .get("nframes")
                .filter(|_| it.get("fps").is_none())
                .map(f64s),
            ..Default::default()
        },
        pixels: VideoPixelRequest {
            min_pixels: Some(f64s(&it["min_pixels"])),
            max_pixels: Some(f64s(&it["max_pixels"])),
            total_pixels: None,
        },
        resized: None,
    }
}

#[test]
#[cfg(feature = "video")]
fn video_probe_and_sampling_match_decord() {
    let vc = video_cases();
    assert_eq!(vc.len(), 2, "expected the video and video_odd_fps cases");
    for (name, it) in vc {
        let path = fixture(it["path"].as_str().unwrap());
        let info = media::decode::probe(&path).unwrap();
        assert_eq!(info.frames, it["total_frames"].as_u64().unwrap(), "{name}");
        assert_eq!(info.fps, f64s(&it["video_fps"]), "{name}");
        assert_eq!(
            [info.height as u64, info.width as u64],
            [
                it["orig_hw"][0].as_u64().unwrap(),
                it["orig_hw"][1].as_u64().unwrap()
            ]
        );
        assert_eq!(info.codec, "h264");
        let (idx, sfps) =
            media::plan_video(&info, &Preset::video_r1(), &video_request(&it)).unwrap();
        let want: Vec<u64> = it["frame_indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(idx, want, "{name}");
        assert_eq!(sfps, f64s(&it["sample_fps"]), "{name}");
    }
}

#[test]
#[cfg(feature = "video")]
fn video_decoded_frames_vs_decord() {
    for (name, it) in video_cases() {
        let st = St::load(&format!("golden/{name}.safetensors"));
        let (shape, want) = st.get("in.video_decoded_uint8");
        let idx: Vec<u64> = it["frame_indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let dec =
            media::decode::decode_indices(&fixture(it["path"].as_str().unwrap()), &idx).unwrap();
        assert_eq!(
            shape,
            vec![dec.frames.t, dec.frames.h, dec.frames.w, 3],
            "{name}"
        );
        let (n, m) = diff_u8(&dec.frames.data, &want);
        println!(
            "{name}: decoded frames: {n} of {} values differ from decord (max {m})",
            want.len()
        );
        assert_eq!(n, 0, "{name}: {n} values differ from decord (max {m})");
    }
}

#[test]
#[cfg(feature = "video")]
fn video_resize_and_rows_match_goldens() {
    let params = PatchParams::qwen2_vl();
    for (name, it) in video_cases() {
        let st = St::load(&format!("golden/{name}.safetensors"));
        let (dshape, decoded) = st.get("in.video_decoded_uint8");
        let (rshape, resized_tchw) = st.get("in.video_resized_uint8");
        let (t, h, w) = (dshape[0], dshape[1], dshape[2]);
        let (oh, ow) = (rshape[2], rshape[3]);
        let src = Frames {
            t,
            h,
            w,
            data: decoded,
        };
        // From decord's frames: the torchvision kernel alone.
        let resized = resize_tv::resize_frames(&src, oh, ow);
        let want: Vec<u8> = resized_tchw
            .chunks_exact(3 * oh * ow)
            .flat_map(|f| chw_to_hwc(3, oh, ow, f))
            .collect();
        let (n, m) = diff_u8(&resized.data, &want);
        println!("{name}: resized frames {n} values differ (max {m})");
        assert_eq!(
            n, 0,
            "{name}: resized frames differ in {n} values (max {m})"
        );
        // Rows from the golden resized frames: rescale, normalize, patchify.
        let golden = Frames {
            t,
            h: oh,
            w: ow,
            data: want.clone(),
        };
        let rows = pixels::patchify(&golden, &params).unwrap();
        let grid = st.i64s("in.video_grid_thw");
        assert_eq!(
            grid,
            rows.grid_thw.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            "{name}"
        );
        let (_, pv) = st.f32s("in.pixel_values_videos");
        let (n, ulp) = f32_bits_diff(&rows.rows, &pv);
        println!(
            "{name}: pixel_values_videos {n} of {} differ (max {ulp} ulp)",
            pv.len()
        );
        assert_eq!(
            n, 0,
            "{name}: pixel_values_videos differ in {n} values (max {ulp} ulp)"
        );
        // End to end from the file.
        let v = media::load_video(
            &fixture(it["path"].as_str().unwrap()),
            &Preset::video_r1(),
            &video_request(&it),
        )
        .unwrap();
        assert_eq!((v.frames.h, v.frames.w), (oh, ow), "{name}");
        assert_eq!(v.sample_fps, f64s(&it["sample_fps"]));
        assert_eq!(v.max_pixels, f64s(&it["effective_max_pixels"]));
        let (n, m) = diff_u8(&v.frames.data, &want);
        println!("{name}: end-to-end resized frames {n} values differ (max {m})");
        assert_eq!(
            n, 0,
            "{name}: end-to-end frames differ in {n} values (max {m})"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Containers and codecs (generated with the ffmpeg CLI)
// ---------------------------------------------------------------------------------------

#[cfg(feature = "video")]
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

#[cfg(feature = "video")]
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

#[cfg(feature = "video")]
/// All frames as the ffmpeg CLI converts them to rgb24 (same libswscale).
fn cli_frames(path: &Path, w: usize, h: usize) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-sws_flags",
            "bilinear",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len() % (w * h * 3), 0);
    out.stdout
}

#[test]
#[cfg(feature = "video")]
fn containers_and_codecs_decode() {
    if !have_ffmpeg_cli() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = "testsrc2=duration=2:size=96x64:rate=10";
    let cases: &[(&str, &[&str], &str)] = &[
        ("a.mp4", &["-c:v", "libx264", "-pix_fmt", "yuv420p"], "h264"),
        ("b.mkv", &["-c:v", "libx264", "-pix_fmt", "yuv420p"], "h264"),
        (
            "c.webm",
            &[
                "-c:v",
                "libvpx-vp9",
                "-pix_fmt",
                "yuv420p",
                "-deadline",
                "realtime",
            ],
            "vp9",
        ),
        ("d.avi", &["-c:v", "mjpeg", "-pix_fmt", "yuvj420p"], "mjpeg"),
        ("e.gif", &[], "gif"),
    ];
    for (file, args, codec) in cases {
        let path = dir.path().join(file);
        let mut a = vec!["-f", "lavfi", "-i", src];
        a.extend_from_slice(args);
        a.push(path.to_str().unwrap());
        ffmpeg(&a);
        let info = media::decode::probe(&path).unwrap();
        assert_eq!(info.codec, *codec, "{file}");
        assert_eq!((info.width, info.height), (96, 64), "{file}");
        assert_eq!(info.frames, 20, "{file}: {info:?}");
        let idx = sample::frame_indices(info.frames, 6);
        let dec = media::decode::decode_indices(&path, &idx).unwrap();
        assert_eq!(dec.frames.t, 6);
        let all = cli_frames(&path, 96, 64);
        let fsz = 96 * 64 * 3;
        assert_eq!(all.len() / fsz, 20, "{file}: CLI frame count");
        let mut worst = (0, 0u8);
        for (k, &i) in idx.iter().enumerate() {
            let (n, m) = diff_u8(
                dec.frames.frame(k),
                &all[i as usize * fsz..(i as usize + 1) * fsz],
            );
            worst = (worst.0 + n, worst.1.max(m));
        }
        println!(
            "{file} ({codec}): {info:?}; vs ffmpeg CLI rgb24: {} values differ (max {})",
            worst.0, worst.1
        );
        assert!(
            worst.1 <= 2,
            "{file}: decoded frames differ from the CLI by up to {}",
            worst.1
        );
    }
    // Display rotation (phone videos): frames come out upright, as decord and the CLI give them.
    let a = dir.path().join("a.mp4");
    for deg in [90u32, 180, 270] {
        let r = dir.path().join(format!("rot{deg}.mp4"));
        let tag = format!("rotate={deg}");
        ffmpeg(&[
            "-i",
            a.to_str().unwrap(),
            "-c",
            "copy",
            "-metadata:s:v:0",
            &tag,
            r.to_str().unwrap(),
        ]);
        let info = media::decode::probe(&r).unwrap();
        let upright = if deg == 180 { (96, 64) } else { (64, 96) };
        assert_eq!((info.width, info.height), upright, "{deg}: {info:?}");
        let idx: Vec<u64> = (0..info.frames).collect();
        let dec = media::decode::decode_indices(&r, &idx).unwrap();
        let all = cli_frames(&r, upright.0 as usize, upright.1 as usize);
        let (n, m) = diff_u8(&dec.frames.data, &all);
        println!(
            "{tag}: rotation {} -> {}x{}; vs CLI: {n} values differ (max {m})",
            info.rotation, info.width, info.height
        );
        assert_eq!(n, 0, "{tag}");
    }
}

// ---------------------------------------------------------------------------------------
// Bad media
// ---------------------------------------------------------------------------------------

fn media_err(r: reel::Result<impl std::fmt::Debug>, path: &Path, what: &str) -> String {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(reel::Error::Media { path: p, msg }) => {
            assert_eq!(p, path, "{what}: error names the wrong file");
            println!("{what}: {msg}");
            msg
        }
        Err(e) => panic!("{what}: expected Error::Media, got {e}"),
    }
}

#[test]
#[cfg(feature = "video")]
fn bad_videos_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = Preset::video_r1();
    let req = VideoRequest::default();

    let missing = dir.path().join("missing.mp4");
    media_err(
        media::load_video(&missing, &p, &req),
        &missing,
        "missing file",
    );

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is a text file, not a video\n").unwrap();
    media_err(
        media::load_video(&text, &p, &req),
        &text,
        "text file named .mp4",
    );

    let noise = dir.path().join("noise.mp4");
    let bytes: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&noise, bytes).unwrap();
    media_err(media::load_video(&noise, &p, &req), &noise, "random bytes");

    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    media_err(media::load_video(&empty, &p, &req), &empty, "empty file");

    // Truncated copies of the fixture video: cut inside the header, and halfway.
    let good = std::fs::read(fixture("inputs/video_24f_6fps_60x80.mp4")).unwrap();
    for (label, keep) in [("truncated header", 64), ("truncated half", good.len() / 2)] {
        let t = dir.path().join(format!("trunc_{keep}.mp4"));
        std::fs::write(&t, &good[..keep]).unwrap();
        media_err(media::load_video(&t, &p, &req), &t, label);
    }
    // Corrupted payload: the container parses, frames do not all decode the same; either an
    // error or frames, never a panic.
    let mut corrupt = good.clone();
    for b in corrupt[good.len() / 3..good.len() / 3 + 2000].iter_mut() {
        *b ^= 0x5a;
    }
    let c = dir.path().join("corrupt.mp4");
    std::fs::write(&c, &corrupt).unwrap();
    match media::load_video(&c, &p, &req) {
        Ok(v) => println!(
            "corrupt payload: decoded {} frames (FFmpeg concealed the damage)",
            v.frames.t
        ),
        Err(e) => {
            assert!(
                matches!(&e, reel::Error::Media { path, .. } if path == &c),
                "{e}"
            );
            println!("corrupt payload: {e}");
        }
    }
    let dir_path = dir.path().to_path_buf();
    media_err(
        media::load_video(&dir_path, &p, &req),
        &dir_path,
        "a directory",
    );

    if !have_ffmpeg_cli() {
        return;
    }
    let audio = dir.path().join("audio.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=1",
        "-c:a",
        "aac",
        audio.to_str().unwrap(),
    ]);
    let m = media_err(
        media::load_video(&audio, &p, &req),
        &audio,
        "audio-only file",
    );
    assert!(m.contains("no video stream"), "{m}");

    // A container whose video stream has no frames.
    let zero = dir.path().join("zero.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x64:rate=10",
        "-frames:v",
        "0",
        "-c:v",
        "libx264",
        zero.to_str().unwrap(),
    ]);
    media_err(
        media::load_video(&zero, &p, &req),
        &zero,
        "zero-frame video",
    );

    // Absurd aspect ratio: 8 x 2000 frames.
    let thin = dir.path().join("thin.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=c=red:size=2000x8:rate=5:duration=2",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        thin.to_str().unwrap(),
    ]);
    let m = media_err(
        media::load_video(&thin, &p, &req),
        &thin,
        "aspect ratio 250",
    );
    assert!(m.contains("aspect ratio"), "{m}");

    // Asking for more frames than the video has.
    let few = VideoRequest {
        frames: FrameRequest {
            nframes: Some(64.0),
            ..Default::default()
        },
        ..Default::default()
    };
    let v = fixture("inputs/video_24f_6fps_60x80.mp4");
    media_err(media::load_video(&v, &p, &few), &v, "nframes > total");
}

#[test]
fn bad_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = Preset::video_r1();
    let req = ImageRequest::default();

    let missing = dir.path().join("missing.png");
    media_err(
        media::load_image(&missing, &p, &req),
        &missing,
        "missing image",
    );

    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    media_err(
        media::load_image(&text, &p, &req),
        &text,
        "text file named .png",
    );

    let good = std::fs::read(fixture("inputs/image_130x145.png")).unwrap();
    let t = dir.path().join("trunc.png");
    std::fs::write(&t, &good[..good.len() / 2]).unwrap();
    media_err(media::load_image(&t, &p, &req), &t, "truncated PNG");

    // Decompression bomb: a valid PNG header claiming 100000 x 100000 pixels.
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, png_header(100_000, 100_000)).unwrap();
    let m = media_err(
        media::load_image(&bomb, &p, &req),
        &bomb,
        "decompression bomb",
    );
    assert!(m.contains("limit"), "{m}");

    // Absurd aspect ratio.
    let thin = dir.path().join("thin.png");
    ::image::RgbImage::new(1000, 2).save(&thin).unwrap();
    let m = media_err(
        media::load_image(&thin, &p, &req),
        &thin,
        "aspect ratio 500",
    );
    assert!(m.contains("aspect ratio"), "{m}");
}

/// A PNG whose IHDR (RGB, 8-bit) claims `w`×`h`, followed by a tiny IDAT and IEND.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    for (tag, data) in [
        (&b"IHDR"[..], &ihdr[..]),
        (b"IDAT", &[0x78, 0x9c, 0x03, 0x00][..]),
        (b"IEND", &[][..]),
    ] {
        out.extend((data.len() as u32).to_be_bytes());
        let mut chunk = tag.to_vec();
        chunk.extend(data);
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn image_formats_and_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let p = Preset::video_r1();
    let req = ImageRequest {
        resized: Some((56, 56)),
        ..Default::default()
    };
    // The same RGB content through every lossless format gives the same pixels.
    let rgb = ::image::RgbImage::from_fn(64, 48, |x, y| {
        ::image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8])
    });
    let mut outs = Vec::new();
    for ext in ["png", "bmp", "webp"] {
        let f = dir.path().join(format!("img.{ext}"));
        rgb.save(&f).unwrap();
        let img = media::load_image(&f, &p, &req).unwrap();
        assert_eq!(img.original, (48, 64));
        assert_eq!((img.frames.h, img.frames.w), (56, 56));
        outs.push(img.frames.data);
    }
    assert!(outs.windows(2).all(|w| w[0] == w[1]));
    // JPEG decodes (lossy; compare loosely with the source).
    let f = dir.path().join("img.jpg");
    rgb.save(&f).unwrap();
    let j = reel::media::image::read_rgb(&f, &Default::default()).unwrap();
    let (_, m) = diff_u8(&j.data, rgb.as_raw());
    assert!(m < 40, "JPEG differs from its source by {m}");
}
