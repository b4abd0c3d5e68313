//! 3-D position ids and rope_delta against transformers 4.49's get_rope_index, for every
//! golden case of the fixture (text, images, videos at s = 1.0 and 1.25, image + video).

mod common;

use reel::model::qwen2_5_vl::positions::{rope_index, VisionKind, VisionSpan};
use safetensors::{Dtype, SafeTensors};

/// spatial_merge_size: the fixture's config leaves it at transformers' default.
const MERGE: usize = 2;

fn i64s(st: &SafeTensors, name: &str) -> Option<(Vec<i64>, Vec<usize>)> {
    let t = st.tensor(name).ok()?;
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let v = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Some((v, t.shape().to_vec()))
}

fn f32s(st: &SafeTensors, name: &str) -> Option<Vec<f32>> {
    let t = st.tensor(name).ok()?;
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    Some(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

struct Case {
    name: String,
    ids: Vec<u32>,
    spans: Vec<VisionSpan>,
    want: Vec<i64>,
    want_delta: i64,
}

fn load_cases() -> (Vec<Case>, u32, u32, f32) {
    let root = common::fixtures();
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("cases.json")).unwrap()).unwrap();
    let tok = &cases["token_ids"];
    let image_pad = tok["image_pad"].as_u64().unwrap() as u32;
    let video_pad = tok["video_pad"].as_u64().unwrap() as u32;
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("model/config.json")).unwrap()).unwrap();
    let tps = config["vision_config"]["tokens_per_second"]
        .as_f64()
        .unwrap() as f32;

    let mut out = Vec::new();
    for c in cases["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let bytes = std::fs::read(root.join(c["golden"].as_str().unwrap())).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (ids, _) = i64s(&st, "in.input_ids").unwrap();
        let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
        let (want, shape) = i64s(&st, "position_ids").unwrap();
        assert_eq!(shape, [3, ids.len()], "{name}");
        let want_delta = i64s(&st, "rope_deltas").unwrap().0[0];
        let grids = |key: &str| {
            i64s(&st, key)
                .map(|(v, _)| {
                    v.chunks(3)
                        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
                        .collect()
                })
                .unwrap_or_default()
        };
        let images: Vec<[usize; 3]> = grids("in.image_grid_thw");
        let videos: Vec<[usize; 3]> = grids("in.video_grid_thw");
        let secs = f32s(&st, "in.second_per_grid_ts").unwrap_or_default();
        assert_eq!(secs.len(), videos.len(), "{name}");

        // Items in order of appearance: a pad run of either kind starts the next item.
        let (mut ni, mut nv) = (0, 0);
        let mut spans = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            let id = ids[i];
            if id == image_pad || id == video_pad {
                let span = if id == image_pad {
                    ni += 1;
                    VisionSpan {
                        kind: VisionKind::Image,
                        grid_thw: images[ni - 1],
                        second_per_grid_t: 0.0,
                    }
                } else {
                    nv += 1;
                    VisionSpan {
                        kind: VisionKind::Video,
                        grid_thw: videos[nv - 1],
                        second_per_grid_t: secs[nv - 1],
                    }
                };
                i += span.n_tokens(MERGE);
                spans.push(span);
            } else {
                i += 1;
            }
        }
        assert_eq!((ni, nv), (images.len(), videos.len()), "{name}");
        assert_eq!(want_delta, c["rope_deltas"].as_i64().unwrap(), "{name}");
        out.push(Case {
            name,
            ids,
            spans,
            want,
            want_delta,
        });
    }
    (out, image_pad, video_pad, tps)
}

#[test]
fn position_ids_match_transformers_goldens() {
    let (cases, image_pad, video_pad, tps) = load_cases();
    let mut kinds = Vec::new();
    for c in &cases {
        let (rows, delta) = rope_index(&c.ids, &c.spans, image_pad, video_pad, MERGE, tps, false)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let got: Vec<i64> = rows.concat().iter().map(|&x| x as i64).collect();
        assert_eq!(got, c.want, "{}: position_ids", c.name);
        assert_eq!(delta as i64, c.want_delta, "{}: rope_deltas", c.name);
        kinds.extend(c.spans.iter().map(|s| (s.kind, s.second_per_grid_t)));
    }
    // The goldens exercise what they are meant to: text only, images, several items, and
    // videos with an integral and a fractional s.
    assert!(cases.len() >= 8, "{} cases", cases.len());
    assert!(cases.iter().any(|c| c.spans.is_empty()));
    assert!(cases.iter().any(|c| c.spans.len() == 2));
    assert!(kinds.contains(&(VisionKind::Video, 1.0)));
    assert!(kinds.contains(&(VisionKind::Video, 1.25)));
    assert!(kinds.iter().any(|k| k.0 == VisionKind::Image));
}

/// The int-truncate-s variant (later transformers) agrees wherever s is integral and departs
/// from 4.49 on the s = 1.25 video, whose temporal offsets become 0, 2, 4, 6 instead of
/// 0, 2, 5, 7.
#[test]
fn int_truncate_s_differs_only_for_fractional_s() {
    let (cases, image_pad, video_pad, tps) = load_cases();
    let mut saw_fractional = false;
    for c in &cases {
        let (rows, _) =
            rope_index(&c.ids, &c.spans, image_pad, video_pad, MERGE, tps, true).unwrap();
        let got: Vec<i64> = rows.concat().iter().map(|&x| x as i64).collect();
        let fractional = c
            .spans
            .iter()
            .any(|s| s.kind == VisionKind::Video && s.second_per_grid_t.fract() != 0.0);
        if fractional {
            saw_fractional = true;
            assert_ne!(got, c.want, "{}", c.name);
            let (exact, _) =
                rope_index(&c.ids, &c.spans, image_pad, video_pad, MERGE, tps, false).unwrap();
            let frames: Vec<(i32, i32)> = (0..c.ids.len())
                .filter(|&i| c.ids[i] == video_pad)
                .map(|i| (exact[0][i], rows[0][i]))
                .collect();
            let start = frames[0].0;
            let mut f: Vec<(i32, i32)> = frames
                .iter()
                .map(|&(a, b)| (a - start, b - start))
                .collect();
            f.dedup();
            assert_eq!(f, [(0, 0), (2, 2), (5, 4), (7, 6)], "{}", c.name);
        } else {
            assert_eq!(got, c.want, "{}", c.name);
        }
    }
    assert!(saw_fractional);
}
