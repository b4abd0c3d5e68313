//! The vision tower against the transformers 4.49 goldens in tests/fixtures/golden: the host index
//! tables (window permutation, window and full-attention boundaries, rotary positions) for every
//! case with vision input, and the graph end to end on the CPU backend stage by stage.

mod common;

use common::fixtures;
use reel::backend::cpu::CpuBackend;
use reel::backend::Backend;
use reel::model::qwen2_5_vl::vision::{
    cu_seqlens, inverse_permutation, rot_pos_ids, run_vision, tap_names, window_index,
    VisionLayout, VisionWeightRefs,
};
use reel::model::qwen2_5_vl::{ModelConfig, VisionConfig};
use reel::store::SafetensorsStore;
use reel::DType;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

fn model_cfg() -> ModelConfig {
    ModelConfig::from_file(&fixtures().join("model/config.json")).unwrap()
}

/// The fixture model's vision config, read from its config.json (4.49 style: only the fields
/// that differ from the class defaults), checked against the values the fixture documents.
fn tiny_cfg() -> VisionConfig {
    let file = ModelConfig::from_file(&fixtures().join("model/config.json"))
        .unwrap()
        .vision;
    let want = VisionConfig {
        depth: 4,
        hidden_size: 32,
        num_heads: 2,
        intermediate_size: 48,
        out_hidden_size: 64,
        fullatt_block_indexes: vec![1, 3],
        tokens_per_second: 2.0,
        ..VisionConfig::default()
    };
    assert_eq!(file, want);
    file
}

/// One golden file's tensors as f32 or i64 vectors.
struct Golden {
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    i64s: HashMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Golden {
    fn load(case: &str) -> Golden {
        let bytes = std::fs::read(fixtures().join(format!("golden/{case}.safetensors"))).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (mut f32s, mut i64s) = (HashMap::new(), HashMap::new());
        for (name, t) in st.tensors() {
            let shape = t.shape().to_vec();
            match t.dtype() {
                Dtype::F32 => {
                    let v = t
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    f32s.insert(name, (shape, v));
                }
                Dtype::I64 => {
                    let v = t
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    i64s.insert(name, (shape, v));
                }
                _ => {}
            }
        }
        Golden { f32s, i64s }
    }

    fn f(&self, name: &str) -> &[f32] {
        &self
            .f32s
            .get(name)
            .unwrap_or_else(|| panic!("golden has no f32 {name}"))
            .1
    }

    fn i(&self, name: &str) -> Vec<i32> {
        let v = &self
            .i64s
            .get(name)
            .unwrap_or_else(|| panic!("golden has no i64 {name}"))
            .1;
        v.iter().map(|&x| i32::try_from(x).unwrap()).collect()
    }

    fn grids(&self) -> Vec<[usize; 3]> {
        self.i("vision.grid_thw")
            .chunks_exact(3)
            .map(|c| [c[0] as usize, c[1] as usize, c[2] as usize])
            .collect()
    }

    fn pixels(&self) -> &[f32] {
        self.f32s
            .get("in.pixel_values")
            .or_else(|| self.f32s.get("in.pixel_values_videos"))
            .map(|t| t.1.as_slice())
            .expect("golden has no pixel values")
    }
}

const TABLE_CASES: [&str; 8] = [
    "image_small",
    "image_medium",
    "image_wide",
    "video",
    "video_odd_fps",
    "two_images",
    "image_video",
    "video_r1_prompt",
];

#[test]
fn index_tables_match_goldens() {
    let cfg = tiny_cfg();
    for case in TABLE_CASES {
        let g = Golden::load(case);
        let grids = g.grids();
        let (wi, cuw) = window_index(&grids, 2, 112, 14).unwrap();
        assert_eq!(wi, g.i("vision.window_index"), "{case}: window_index");
        assert_eq!(
            cuw,
            g.i("vision.cu_window_seqlens"),
            "{case}: cu_window_seqlens"
        );
        assert_eq!(
            cu_seqlens(&grids),
            g.i("vision.cu_seqlens"),
            "{case}: cu_seqlens"
        );
        let pos: Vec<i32> = rot_pos_ids(&grids, 2)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(pos, g.i("vision.rot_pos_ids"), "{case}: rot_pos_ids");

        // The inverse permutation maps the windowed merger output onto the golden output.
        let inv = inverse_permutation(&wi).unwrap();
        let (windowed, out) = (g.f("vision.merger_windowed"), g.f("vision.merger_out"));
        let w = cfg.out_hidden_size;
        for (r, &src) in inv.iter().enumerate() {
            assert_eq!(
                &out[r * w..(r + 1) * w],
                &windowed[src as usize * w..(src as usize + 1) * w],
                "{case}: row {r}"
            );
        }

        // Positions in window order are the processor-order positions of each permuted unit.
        let layout = VisionLayout::new(&cfg, &grids).unwrap();
        assert_eq!(layout.n_patches, pos.len() / 2);
        let per_item = layout.tokens_per_item();
        assert_eq!(per_item.iter().sum::<usize>(), windowed.len() / w, "{case}");
        for (i, &u) in wi.iter().enumerate() {
            let u = u as usize;
            assert_eq!(
                layout.positions[i * 8..(i + 1) * 8],
                pos[u * 8..(u + 1) * 8],
                "{case}: unit {i}"
            );
        }
    }
}

/// The worked example of the spec: lh=6, lw=10 pads to 8×12, six windows of 16,16,8,8,8,4 units.
#[test]
fn window_index_pads_partial_windows() {
    let (wi, cu) = window_index(&[[2, 12, 20]], 2, 112, 14).unwrap();
    assert_eq!(
        cu,
        [0, 64, 128, 160, 192, 224, 240, 304, 368, 400, 432, 464, 480]
    );
    // First window: units of rows 0..4, cols 0..4 of a 6×10 unit grid.
    assert_eq!(wi[..6], [0, 1, 2, 3, 10, 11]);
    // The second temporal slice starts after all 60 units of the first.
    assert_eq!(wi[60], 60);
    let mut sorted = wi.clone();
    sorted.sort();
    assert_eq!(sorted, (0..120).collect::<Vec<i32>>());
}

/// A side that is already a multiple of the window gets a whole empty window, which
/// unique_consecutive drops.
#[test]
fn window_index_drops_empty_windows() {
    let (wi, cu) = window_index(&[[1, 8, 8]], 2, 112, 14).unwrap();
    assert_eq!(cu, [0, 64]);
    assert_eq!(wi, (0..16).collect::<Vec<i32>>());
    // Non-involution: for a 6-unit-wide grid, applying window_index twice is not the identity.
    let (wi, _) = window_index(&[[1, 4, 12]], 2, 112, 14).unwrap();
    let inv = inverse_permutation(&wi).unwrap();
    assert_ne!(inv, wi);
    for (i, &p) in wi.iter().enumerate() {
        assert_eq!(inv[p as usize], i as i32);
    }
}

#[test]
fn bad_grids_and_permutations_are_errors() {
    let e = window_index(&[[1, 5, 6]], 2, 112, 14)
        .unwrap_err()
        .to_string();
    assert!(e.contains("grid 0") && e.contains("h=5"), "{e}");
    assert!(window_index(&[], 2, 112, 14).is_err());
    assert!(window_index(&[[0, 4, 4]], 2, 112, 14).is_err());
    assert!(window_index(&[[1, 4, 4]], 2, 20, 14)
        .unwrap_err()
        .to_string()
        .contains("window_size"));
    assert!(rot_pos_ids(&[[1, 4, 3]], 2).is_err());
    assert!(inverse_permutation(&[0, 2])
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    assert!(inverse_permutation(&[1, 1])
        .unwrap_err()
        .to_string()
        .contains("repeats"));
}

/// Loads `visual.*` from the fixture checkpoint into `be` through the safetensors store.
fn load_weights(be: &mut dyn Backend, cfg: &ModelConfig) -> reel::Result<VisionWeightRefs> {
    let store = SafetensorsStore::open_dir(&fixtures().join("model"))?;
    VisionWeightRefs::load(be, &store, cfg)
}

/// Max |a-b| and max |a-b| / max|b| over a stage.
fn errors(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let maxabs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = want.iter().map(|b| b.abs()).fold(0f32, f32::max);
    (maxabs, maxabs / scale)
}

/// Pixel rows of a case's single vision call: each item's rows come from the golden of the
/// single-item case named by `inputs_from_case` in cases.json, concatenated in prompt order.
fn case_pixels(case: &str) -> Vec<f32> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap();
    let mut rows = Vec::new();
    for item in entry["vision_items"].as_array().unwrap() {
        let src = item["inputs_from_case"].as_str().unwrap();
        rows.extend_from_slice(Golden::load(src).pixels());
    }
    rows
}

/// Runs every case and returns, per case and tap, (max abs error, error relative to the stage's
/// max magnitude).
fn run_cases(act: DType) -> Vec<(String, String, f32, f32)> {
    let cfg = tiny_cfg();
    let mut be = CpuBackend::new();
    let w = load_weights(&mut be, &model_cfg()).unwrap();
    let mut rows = Vec::new();
    for case in TABLE_CASES {
        let g = Golden::load(case);
        let out = run_vision(&mut be, &w, &cfg, &case_pixels(case), &g.grids(), act, true).unwrap();
        assert_eq!(out.taps.len(), tap_names(&cfg).len());
        assert_eq!(out.embeds, out.taps.last().unwrap().1);
        assert_eq!(out.n_tokens * cfg.out_hidden_size, out.embeds.len());
        for (name, got) in &out.taps {
            let (abs, rel) = errors(got, g.f(name));
            eprintln!("{act} {case:14} {name:24} max|Δ| {abs:.3e}  rel {rel:.3e}");
            rows.push((case.to_string(), name.clone(), abs, rel));
        }
    }
    rows
}

/// f32 activations follow the f32 reference to float rounding at every stage.
#[test]
fn tower_f32_matches_goldens() {
    for (case, name, _abs, rel) in run_cases(DType::F32) {
        assert!(rel < 1e-5, "{case} {name}: relative error {rel:.3e}");
    }
}

/// bf16 activations (the model dtype of the real checkpoints) against the f32 reference: bf16
/// keeps 8 bits of mantissa, so each stage drifts by a few bf16 ulps of its magnitude.
#[test]
fn tower_bf16_tracks_f32_goldens() {
    for (case, name, _abs, rel) in run_cases(DType::BF16) {
        assert!(rel < 3e-2, "{case} {name}: relative error {rel:.3e}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cfg = tiny_cfg();
    let mut be = CpuBackend::new();
    let w = load_weights(&mut be, &model_cfg()).unwrap();
    // Pixel count not matching the grid.
    let e = run_vision(
        &mut be,
        &w,
        &cfg,
        &[0.0; 1176 * 8],
        &[[1, 4, 4]],
        DType::F32,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("pixel values"), "{e}");
    // Grid not a multiple of the merge size.
    let e = run_vision(
        &mut be,
        &w,
        &cfg,
        &[0.0; 1176 * 6],
        &[[1, 2, 3]],
        DType::F32,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("grid 0"), "{e}");
    // Weights of another config.
    let mut big = model_cfg();
    big.vision.hidden_size = 64;
    let e = load_weights(&mut be, &big).unwrap_err().to_string();
    assert!(e.contains("visual.patch_embed.proj.weight"), "{e}");
    // A checkpoint without the vision tower (only the language-model shard).
    let dir = fixtures().join("model");
    let text_only =
        SafetensorsStore::open_files(&dir, &[dir.join("model-00002-of-00002.safetensors")])
            .unwrap();
    let e = VisionWeightRefs::load(&mut be, &text_only, &model_cfg())
        .unwrap_err()
        .to_string();
    assert!(e.contains("visual.patch_embed.proj.weight"), "{e}");
}

/// Blocks listed in fullatt_block_indexes attend over whole temporal slices, the others over
/// windows; the merger output comes back un-permuted, in processor order.
#[test]
fn graph_selects_full_attention_blocks() {
    use reel::graph::Graph;
    use reel::Shape;
    let cfg = tiny_cfg();
    let mut be = CpuBackend::new();
    let w = load_weights(&mut be, &model_cfg()).unwrap();
    assert_eq!(w.patch_embed.shape, Shape::new(&[32, 1176]));
    let layout = VisionLayout::new(&cfg, &[[2, 4, 6], [1, 10, 10]]).unwrap();
    assert_eq!(layout.tokens_per_item(), [12, 25]);
    let mut g = Graph::new(DType::F32);
    let vg = reel::model::qwen2_5_vl::vision::build_vision_graph(&mut g, &w, &cfg, &layout, false)
        .unwrap();
    let cus: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| n.op == "attention_varlen")
        .map(|n| n.inputs[3])
        .collect();
    let full = vg.cu_seqlens;
    let win = vg.cu_window_seqlens;
    assert_eq!(cus, [win, full, win, full]);
    assert_eq!(g.value(vg.out).shape, Shape::new(&[(48 + 100) / 4, 64]));
    let last = g.nodes.last().unwrap();
    assert_eq!((last.op, last.inputs[1]), ("gather_rows", vg.inverse_index));
    // A fullatt index beyond the depth is a config error, not a silent window block.
    let bad = VisionConfig {
        fullatt_block_indexes: vec![1, 4],
        ..tiny_cfg()
    };
    let mut g = Graph::new(DType::F32);
    let e = reel::model::qwen2_5_vl::vision::build_vision_graph(&mut g, &w, &bad, &layout, false)
        .unwrap_err();
    assert!(e.to_string().contains("fullatt_block_indexes"), "{e}");
}
