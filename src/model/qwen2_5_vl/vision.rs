//! The Qwen2.5-VL vision tower (ViT with windowed attention and a 2×2 patch merger) as a graph.
//!
//! Row orders: pixel rows arrive in processor order (per item, per temporal slice, merge units of
//! `merge²` consecutive patches). Before the first block, merge units are permuted into window
//! order (`window_index`) so that every attention window is a contiguous row range; the blocks
//! run in window order and the merger output is permuted back with the inverse permutation
//! (argsort of `window_index`, which is not `window_index` itself unless every grid is a whole
//! number of windows).
//!
//! The host computes the index tables ([`VisionLayout`]); the graph only gathers rows.

use super::config::VisionConfig;
use crate::backend::{Backend, TRef};
use crate::error::{Error, Result};
use crate::graph::{Executor, Graph, ValueId};
use crate::tensor::{DType, Shape};

pub use super::weights::VisionWeightRefs;

fn err(msg: impl Into<String>) -> Error {
    Error::Other(format!("vision: {}", msg.into()))
}

/// Checks a list of `(t, h, w)` grids (in patches) against the merge size.
fn check_grids(grids: &[[usize; 3]], merge: usize) -> Result<()> {
    if merge == 0 {
        return Err(err("spatial_merge_size is 0"));
    }
    if grids.is_empty() {
        return Err(err("no grids given"));
    }
    for (i, &[t, h, w]) in grids.iter().enumerate() {
        if t == 0 || h == 0 || w == 0 || h % merge != 0 || w % merge != 0 {
            return Err(err(format!(
                "grid {i} (t={t}, h={h}, w={w}) must be non-empty with h and w multiples of {merge}"
            )));
        }
    }
    let n: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
    if n > i32::MAX as usize / 2 {
        return Err(err(format!("{n} patches exceed the i32 index range")));
    }
    Ok(())
}

/// Total patch count `Σ t·h·w`.
pub fn n_patches(grids: &[[usize; 3]]) -> usize {
    grids.iter().map(|g| g[0] * g[1] * g[2]).sum()
}

/// The window permutation and window boundaries (`get_window_index` of the reference).
///
/// Returns `window_index` in merged units (entry `i` is the processor-order unit that goes to
/// window-order position `i`) and `cu_window_seqlens` in patches, starting at 0 and continued
/// across grids, with empty windows dropped. The padding rule is the reference's: each side is
/// padded by `vw - l % vw`, a whole extra (empty) window when `l` is already a multiple of `vw`.
pub fn window_index(
    grids: &[[usize; 3]],
    spatial_merge: usize,
    window_size: usize,
    patch_size: usize,
) -> Result<(Vec<i32>, Vec<i32>)> {
    check_grids(grids, spatial_merge)?;
    let vw = window_size / spatial_merge / patch_size.max(1);
    if vw == 0 || patch_size == 0 {
        return Err(err(format!(
            "window_size {window_size} is smaller than one merged unit ({spatial_merge}×{patch_size} px)"
        )));
    }
    let unit = (spatial_merge * spatial_merge) as i32;
    let mut index = Vec::with_capacity(n_patches(grids) / (spatial_merge * spatial_merge));
    let mut cu = vec![0i32];
    let mut base = 0usize;
    for &[t, h, w] in grids {
        let (lh, lw) = (h / spatial_merge, w / spatial_merge);
        let nwh = (lh + vw - lh % vw) / vw;
        let nww = (lw + vw - lw % vw) / vw;
        for ti in 0..t {
            for wh in 0..nwh {
                for ww in 0..nww {
                    let mut count = 0i32;
                    for r in wh * vw..((wh + 1) * vw).min(lh) {
                        for c in ww * vw..((ww + 1) * vw).min(lw) {
                            index.push((base + (ti * lh + r) * lw + c) as i32);
                            count += 1;
                        }
                    }
                    cu.push(cu.last().unwrap() + count * unit);
                }
            }
        }
        base += t * lh * lw;
    }
    // unique_consecutive: an empty window repeats the previous boundary.
    cu.dedup();
    Ok((index, cu))
}

/// Full-attention boundaries in patches: one segment per temporal slice of each grid.
pub fn cu_seqlens(grids: &[[usize; 3]]) -> Vec<i32> {
    let mut cu = vec![0i32];
    for &[t, h, w] in grids {
        for _ in 0..t {
            cu.push(cu.last().unwrap() + (h * w) as i32);
        }
    }
    cu
}

/// (row, col) of every patch in processor order: per temporal slice, merge units in raster
/// order, and the `merge×merge` patches of a unit in raster order inside it.
pub fn rot_pos_ids(grids: &[[usize; 3]], spatial_merge: usize) -> Result<Vec<[i32; 2]>> {
    check_grids(grids, spatial_merge)?;
    let m = spatial_merge;
    let mut out = Vec::with_capacity(n_patches(grids));
    for &[t, h, w] in grids {
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for ih in 0..m {
                        for iw in 0..m {
                            out.push([(bh * m + ih) as i32, (bw * m + iw) as i32]);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The inverse of a permutation of `0..n` (argsort of a permutation).
pub fn inverse_permutation(perm: &[i32]) -> Result<Vec<i32>> {
    let mut inv = vec![-1i32; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        let slot = usize::try_from(p)
            .ok()
            .and_then(|p| inv.get_mut(p))
            .ok_or_else(|| {
                err(format!(
                    "permutation entry {i} = {p} is out of range 0..{}",
                    perm.len()
                ))
            })?;
        if *slot >= 0 {
            return Err(err(format!("permutation repeats entry {p}")));
        }
        *slot = i as i32;
    }
    Ok(inv)
}

/// Host-side index tables for one vision call over `grids` (every item of the call, in order).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionLayout {
    pub grids: Vec<[usize; 3]>,
    pub n_patches: usize,
    /// Merged units in window order: `window_index[i]` is the processor-order unit at position i.
    pub window_index: Vec<i32>,
    /// argsort(window_index): un-permutes the merger output back to processor order.
    pub inverse_index: Vec<i32>,
    pub cu_seqlens: Vec<i32>,
    pub cu_window_seqlens: Vec<i32>,
    /// Rotary (row, col) per patch in window order, flattened `[N, 2]`.
    pub positions: Vec<i32>,
    pub spatial_merge: usize,
}

impl VisionLayout {
    pub fn new(cfg: &VisionConfig, grids: &[[usize; 3]]) -> Result<VisionLayout> {
        let m = cfg.spatial_merge_size;
        let (window_index, cu_window_seqlens) =
            window_index(grids, m, cfg.window_size, cfg.patch_size)?;
        let inverse_index = inverse_permutation(&window_index)?;
        let pos = rot_pos_ids(grids, m)?;
        let unit = m * m;
        let mut positions = Vec::with_capacity(pos.len() * 2);
        for &u in &window_index {
            for p in &pos[u as usize * unit..(u as usize + 1) * unit] {
                positions.extend_from_slice(p);
            }
        }
        Ok(VisionLayout {
            grids: grids.to_vec(),
            n_patches: pos.len(),
            window_index,
            inverse_index,
            cu_seqlens: cu_seqlens(grids),
            cu_window_seqlens,
            positions,
            spatial_merge: m,
        })
    }

    /// Merged tokens produced: `n_patches / merge²`.
    pub fn n_merged(&self) -> usize {
        self.window_index.len()
    }

    /// Output rows per item, in grid order; each item's rows are contiguous in the output, so
    /// item k fills the k-th run of image/video pad tokens.
    pub fn tokens_per_item(&self) -> Vec<usize> {
        let unit = self.spatial_merge * self.spatial_merge;
        self.grids
            .iter()
            .map(|g| g[0] * g[1] * g[2] / unit)
            .collect()
    }
}

/// The value ids of a vision tower inside a graph: inputs to fill before each run, and the
/// output `[N/merge², out_hidden]` in processor order.
#[derive(Clone, Copy, Debug)]
pub struct VisionGraph {
    /// Pixel rows `[N, C·T·P·P]` in the activation type, processor order.
    pub pixels: ValueId,
    /// Rotary (row, col) `[N, 2]` I32, window order.
    pub positions: ValueId,
    /// `[N/merge²]` I32.
    pub window_index: ValueId,
    /// `[N/merge²]` I32.
    pub inverse_index: ValueId,
    pub cu_seqlens: ValueId,
    pub cu_window_seqlens: ValueId,
    pub out: ValueId,
}

/// Tap names kept when `taps` is set (the golden fixture's names).
pub fn tap_names(cfg: &VisionConfig) -> Vec<String> {
    let mut v = vec!["vision.patch_embed".to_string()];
    v.extend((0..cfg.depth).map(|i| format!("vision.block.{i}")));
    v.push("vision.merger_windowed".to_string());
    v.push("vision.merger_out".to_string());
    v
}

/// Adds the vision tower for `layout` to `g`. With `taps`, keeps `vision.patch_embed`
/// (processor order), `vision.block.{i}` (window order), `vision.merger_windowed` and
/// `vision.merger_out` for reading after the run.
pub fn build_vision_graph(
    g: &mut Graph,
    w: &VisionWeightRefs,
    cfg: &VisionConfig,
    layout: &VisionLayout,
    taps: bool,
) -> Result<VisionGraph> {
    build(g, w, cfg, layout, taps, None)
}

/// The tower; with `into`, the un-permuted merger output is written into that tensor (owned by
/// the caller, `[N/merge², out_hidden]` in the activation type) instead of the arena, so it
/// outlives the graph: `out[window_index[i]] = windowed[i]` is the same row copy as
/// `out[i] = windowed[inverse_index[i]]`.
fn build(
    g: &mut Graph,
    w: &VisionWeightRefs,
    cfg: &VisionConfig,
    layout: &VisionLayout,
    taps: bool,
    into: Option<TRef>,
) -> Result<VisionGraph> {
    let d = cfg.hidden_size;
    let heads = cfg.num_heads;
    if heads == 0 || !d.is_multiple_of(heads) || !(d / heads).is_multiple_of(4) {
        return Err(err(format!(
            "hidden_size {d} / num_heads {heads} must give a head_dim divisible by 4"
        )));
    }
    if w.blocks.len() != cfg.depth {
        return Err(err(format!(
            "{} blocks of weights for depth {}",
            w.blocks.len(),
            cfg.depth
        )));
    }
    if let Some(&b) = cfg.fullatt_block_indexes.iter().find(|&&b| b >= cfg.depth) {
        return Err(err(format!(
            "fullatt_block_indexes entry {b} is not below depth {}",
            cfg.depth
        )));
    }
    let hd = d / heads;
    let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
    let row_len = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size;
    let n = layout.n_patches;
    let nu = layout.n_merged();
    if w.patch_embed.shape.dims() != [d, row_len] {
        return Err(err(format!(
            "patch embedding {:?} does not match [{d}, {row_len}]",
            w.patch_embed.shape
        )));
    }

    let pixels = g.input("vision.pixels", &[n, row_len], g.act);
    let positions = g.input("vision.positions", &[n, 2], DType::I32);
    let window_index = g.input("vision.window_index", &[nu], DType::I32);
    let inverse_index = g.input("vision.inverse_index", &[nu], DType::I32);
    let cu_full = g.input("vision.cu_seqlens", &[layout.cu_seqlens.len()], DType::I32);
    let cu_win = g.input(
        "vision.cu_window_seqlens",
        &[layout.cu_window_seqlens.len()],
        DType::I32,
    );

    let ext = |g: &mut Graph, t: TRef| g.external(t);
    let pw = ext(g, w.patch_embed);
    let x = g.matmul(pixels, pw, None);
    if taps {
        g.keep(x, "vision.patch_embed");
    }
    // Window order: permute whole merge units.
    let units = g.reshape(x, &[nu, unit * d]);
    let units = g.gather_rows(units, window_index);
    let mut x = g.reshape(units, &[n, d]);

    let scale = (hd as f32).powf(-0.5);
    let eps = cfg.rms_norm_eps;
    for (i, b) in w.blocks.iter().enumerate() {
        let cu = if cfg.fullatt_block_indexes.contains(&i) {
            cu_full
        } else {
            cu_win
        };
        let h = {
            let nw = ext(g, b.norm1);
            g.rms_norm(x, nw, eps)
        };
        let (qw, qb) = (ext(g, b.qkv), ext(g, b.qkv_bias));
        let qkv = g.matmul(h, qw, Some(qb));
        let q = g.cols(qkv, 0, d);
        let k = g.cols(qkv, d, d);
        let v = g.cols(qkv, 2 * d, d);
        let q = g.reshape(q, &[n, heads, hd]);
        let k = g.reshape(k, &[n, heads, hd]);
        let v = g.reshape(v, &[n, heads, hd]);
        let q = g.rope_vision(q, positions, cfg.rope_theta);
        let k = g.rope_vision(k, positions, cfg.rope_theta);
        let a = g.attention_varlen(q, k, v, cu, scale);
        let a = g.reshape(a, &[n, d]);
        let (pw, pb) = (ext(g, b.proj), ext(g, b.proj_bias));
        x = g.matmul_add(a, pw, Some(pb), x);

        let nw = ext(g, b.norm2);
        let h = g.rms_norm(x, nw, eps);
        let (gw, gb) = (ext(g, b.gate), ext(g, b.gate_bias));
        let (uw, ub) = (ext(g, b.up), ext(g, b.up_bias));
        let (dw, db) = (ext(g, b.down), ext(g, b.down_bias));
        let gate = g.matmul(h, gw, Some(gb));
        let up = g.matmul(h, uw, Some(ub));
        let s = g.swiglu(gate, up);
        x = g.matmul_add(s, dw, Some(db), x);
        if taps {
            g.keep(x, &format!("vision.block.{i}"));
        }
    }

    let lnw = ext(g, w.merger_ln);
    let h = g.rms_norm(x, lnw, eps);
    let h = g.reshape(h, &[nu, unit * d]);
    let (w1, b1) = (ext(g, w.merger_fc1), ext(g, w.merger_fc1_bias));
    let (w2, b2) = (ext(g, w.merger_fc2), ext(g, w.merger_fc2_bias));
    let h = g.matmul_gelu(h, w1, Some(b1));
    let h = g.matmul(h, w2, Some(b2));
    if taps {
        g.keep(h, "vision.merger_windowed");
    }
    let out = match into {
        Some(t) => {
            if t.shape.dims() != [nu, cfg.out_hidden_size] || t.dtype != g.act {
                return Err(err(format!(
                    "output tensor {:?} {} does not hold [{nu}, {}] {}",
                    t.shape, t.dtype, cfg.out_hidden_size, g.act
                )));
            }
            let out = g.external(t);
            g.scatter_rows(h, window_index, out);
            out
        }
        None => {
            let out = g.gather_rows(h, inverse_index);
            if taps {
                g.keep(out, "vision.merger_out");
            }
            out
        }
    };
    Ok(VisionGraph {
        pixels,
        positions,
        window_index,
        inverse_index,
        cu_seqlens: cu_full,
        cu_window_seqlens: cu_win,
        out,
    })
}

/// Converts f32 values to the bytes of an activation type (bf16 rounds to nearest even, as
/// `tensor.to(torch.bfloat16)` does).
fn act_bytes(data: &[f32], act: DType) -> Result<Vec<u8>> {
    Ok(match act {
        DType::F32 => bytemuck::cast_slice(data).to_vec(),
        DType::BF16 => data
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        DType::F16 => data
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
            .collect(),
        d => return Err(err(format!("activation type {d} is not a float type"))),
    })
}

impl VisionGraph {
    /// Writes the pixel rows (f32, processor order, rounded to the graph's activation type as
    /// the reference casts them to the model dtype) and the index tables.
    pub fn write_inputs(
        &self,
        exec: &Executor,
        be: &mut dyn Backend,
        layout: &VisionLayout,
        pixel_rows: &[f32],
    ) -> Result<()> {
        let pt = exec.tref(self.pixels);
        if pixel_rows.len() != pt.shape.numel() {
            return Err(err(format!(
                "{} pixel values given; grids {:?} need {} rows of {} = {}",
                pixel_rows.len(),
                layout.grids,
                pt.shape.rows(),
                pt.shape.row_len(),
                pt.shape.numel()
            )));
        }
        be.write(pt.buf, pt.offset, &act_bytes(pixel_rows, pt.dtype)?)?;
        let tables: [(ValueId, &[i32]); 5] = [
            (self.positions, &layout.positions),
            (self.window_index, &layout.window_index),
            (self.inverse_index, &layout.inverse_index),
            (self.cu_seqlens, &layout.cu_seqlens),
            (self.cu_window_seqlens, &layout.cu_window_seqlens),
        ];
        for (v, data) in tables {
            let t = exec.tref(v);
            if t.shape.numel() != data.len() {
                return Err(err(format!(
                    "index table of {} entries for a graph input of {}",
                    data.len(),
                    t.shape.numel()
                )));
            }
            be.write(t.buf, t.offset, bytemuck::cast_slice(data))?;
        }
        Ok(())
    }
}

/// The result of [`run_vision`]: merged embeddings in processor order, and the taps if asked.
#[derive(Clone, Debug)]
pub struct VisionOutput {
    /// `[N/merge², out_hidden]`, row-major, ready to scatter into the LLM's pad-token rows
    /// (items in the order of `grids`, each `t·h·w/merge²` rows).
    pub embeds: Vec<f32>,
    pub n_tokens: usize,
    /// `(name, values)` per tap, in [`tap_names`] order; empty unless taps were asked for.
    pub taps: Vec<(String, Vec<f32>)>,
}

/// Runs the tower once on `be`: plans a graph for `grids`, writes the inputs, runs, reads the
/// output and releases the arena.
pub fn run_vision(
    be: &mut dyn Backend,
    weights: &VisionWeightRefs,
    cfg: &VisionConfig,
    pixel_rows: &[f32],
    grids: &[[usize; 3]],
    act: DType,
    taps: bool,
) -> Result<VisionOutput> {
    if !matches!(act, DType::F32 | DType::BF16) {
        return Err(err(format!("activation type {act} is not f32 or bf16")));
    }
    let layout = VisionLayout::new(cfg, grids)?;
    let mut g = Graph::new(act);
    let vg = build_vision_graph(&mut g, weights, cfg, &layout, taps)?;
    if !taps {
        g.keep(vg.out, "vision.merger_out");
    }
    let exec = Executor::new(be, g)?;
    let result = (|| {
        vg.write_inputs(&exec, be, &layout, pixel_rows)?;
        exec.run(be, None)?;
        let embeds = exec.read_f32(be, "vision.merger_out")?;
        let mut tv = Vec::new();
        if taps {
            for name in tap_names(cfg) {
                let v = exec.read_f32(be, &name)?;
                tv.push((name, v));
            }
        }
        Ok(VisionOutput {
            embeds,
            n_tokens: layout.n_merged(),
            taps: tv,
        })
    })();
    exec.free(be);
    result
}

/// Runs the tower and leaves the merged embeddings `[N/merge², out_hidden]` (processor order,
/// in `act`) in a buffer of their own on `be`, ready to be the prefill graph's external input;
/// nothing crosses to the host. The caller frees the buffer.
pub fn encode(
    be: &mut dyn Backend,
    weights: &VisionWeightRefs,
    cfg: &VisionConfig,
    pixel_rows: &[f32],
    grids: &[[usize; 3]],
    act: DType,
) -> Result<TRef> {
    if !matches!(act, DType::F32 | DType::BF16) {
        return Err(err(format!("activation type {act} is not f32 or bf16")));
    }
    let layout = VisionLayout::new(cfg, grids)?;
    let shape = Shape::new(&[layout.n_merged(), cfg.out_hidden_size]);
    let buf = be.alloc(act.bytes_for(shape.numel()))?;
    let out = TRef::new(buf, 0, act, shape);
    let res = (|| {
        let mut g = Graph::new(act);
        let vg = build(&mut g, weights, cfg, &layout, false, Some(out))?;
        let exec = Executor::new(be, g)?;
        let ran = vg
            .write_inputs(&exec, be, &layout, pixel_rows)
            .and_then(|_| exec.run(be, None));
        exec.free(be);
        ran
    })();
    match res {
        Ok(()) => Ok(out),
        Err(e) => {
            be.free(buf);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::qwen2_5_vl::ModelConfig;
    use crate::store::SafetensorsStore;

    fn fixture() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
    }

    /// The device-resident output (scattered into its own buffer) holds exactly the bytes of
    /// the graph's un-permuted merger output, in f32 and in bf16, for grids whose window
    /// permutation is not an involution; the buffer outlives the graph's arena.
    #[test]
    fn encode_on_device_matches_the_graph_output_bit_for_bit() {
        let cfg = ModelConfig::from_file(&fixture().join("config.json")).unwrap();
        let store = SafetensorsStore::open_dir(&fixture()).unwrap();
        let mut be = CpuBackend::new();
        let w = VisionWeightRefs::load(&mut be, &store, &cfg).unwrap();
        let v = &cfg.vision;
        let grids = [[2, 4, 12], [1, 10, 6]];
        let row = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
        let pixels: Vec<f32> = (0..n_patches(&grids) * row)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 400.0)
            .collect();
        for act in [DType::F32, DType::BF16] {
            let want = run_vision(&mut be, &w, v, &pixels, &grids, act, false).unwrap();
            let t = encode(&mut be, &w, v, &pixels, &grids, act).unwrap();
            assert_eq!(t.dtype, act);
            assert_eq!(t.shape.dims(), [want.n_tokens, v.out_hidden_size]);
            let mut got = vec![0u8; t.span_bytes()];
            be.read(t.buf, t.offset, &mut got).unwrap();
            // The graph's output converted back from f32 is exact (bf16 widens losslessly).
            assert!(got == act_bytes(&want.embeds, act).unwrap(), "{act}");
            be.free(t.buf);
        }
        // A bad pixel count is an error.
        let e = encode(&mut be, &w, v, &pixels[1..], &grids, DType::F32).unwrap_err();
        assert!(e.to_string().contains("pixel values"), "{e}");
    }
}
