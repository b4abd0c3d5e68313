//! 3-D M-RoPE position ids (Qwen2.5-VL's `get_rope_index`) and the decode-time `rope_delta`.
//!
//! Rule of transformers 4.49 and vLLM: the prompt is cut into runs (text, then one vision
//! item's pad tokens, ...); each run starts at `max(all previous positions) + 1`. Text gets
//! `start + i` on all three rows; a vision item's merged grid `(t, h/merge, w/merge)`,
//! enumerated frame-major, then row, then column, gets
//! `T = start + trunc(f32(k) * f32(s) * f32(tokens_per_second))`, `H = start + row`,
//! `W = start + col`, where k is the frame and `s` is seconds per temporal patch (0 for images).
//! `<|vision_start|>` and `<|vision_end|>` are ordinary text.

use crate::error::{Error, Result};
use crate::model::inputs::VisionInput;

pub use crate::prompt::VisionKind;

/// One image or video of the prompt, in order of appearance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VisionSpan {
    pub kind: VisionKind,
    /// Patch grid (t, h, w) before merging, as the vision tower sees it.
    pub grid_thw: [usize; 3],
    /// Seconds per temporal patch (`temporal_patch_size / sample_fps`); ignored for images,
    /// whose temporal offset is always 0.
    pub second_per_grid_t: f32,
}

impl VisionSpan {
    /// Pad tokens this item occupies in the prompt.
    pub fn n_tokens(&self, merge: usize) -> usize {
        let [t, h, w] = self.grid_thw;
        t * (h / merge.max(1)) * (w / merge.max(1))
    }
}

/// The spans of preprocessed media, in prompt order.
pub fn spans(media: &[VisionInput]) -> Vec<VisionSpan> {
    media
        .iter()
        .map(|v| VisionSpan {
            kind: v.kind,
            grid_thw: v.rows.grid_thw,
            second_per_grid_t: v.second_per_grid_t,
        })
        .collect()
}

fn prompt_err(msg: String) -> Error {
    Error::Prompt(format!("position ids: {msg}"))
}

/// Position ids as three rows (T, H, W) of `input_ids.len()` each, and `rope_delta`
/// (`max + 1 - len`), so that decode step at cache position p uses `p + rope_delta`.
///
/// `int_truncate_s` mirrors later transformers releases, which cast `second_per_grid_t` to an
/// integer before multiplying (0.5 -> 0, 1.25 -> 1); 4.49 and vLLM multiply in f32 and
/// truncate the product.
pub fn rope_index(
    input_ids: &[u32],
    spans: &[VisionSpan],
    image_pad: u32,
    video_pad: u32,
    merge: usize,
    tokens_per_second: f32,
    int_truncate_s: bool,
) -> Result<([Vec<i32>; 3], i32)> {
    let len = input_ids.len();
    if len == 0 {
        return Err(prompt_err("the prompt is empty".into()));
    }
    if merge == 0 {
        return Err(prompt_err("spatial merge size must be at least 1".into()));
    }
    if !(tokens_per_second.is_finite() && tokens_per_second >= 0.0) {
        return Err(prompt_err(format!(
            "tokens_per_second must be >= 0, got {tokens_per_second}"
        )));
    }
    // Positions never exceed the token count plus small per-frame offsets; refuse prompts that
    // could leave the i32 range rather than wrap.
    if len > i32::MAX as usize / 4 {
        return Err(prompt_err(format!(
            "{len} tokens exceed the supported length"
        )));
    }
    let is_pad = |id: u32| id == image_pad || id == video_pad;
    let mut rows: [Vec<i32>; 3] = std::array::from_fn(|_| Vec::with_capacity(len));
    // Start of the next run: max position so far + 1.
    let mut next: i64 = 0;
    let mut st = 0usize;

    let push_text = |rows: &mut [Vec<i32>; 3], next: &mut i64, n: usize| {
        for i in 0..n as i64 {
            for r in rows.iter_mut() {
                r.push((*next + i) as i32);
            }
        }
        *next += n as i64;
    };

    for (i, span) in spans.iter().enumerate() {
        let (kind_name, pad) = match span.kind {
            VisionKind::Image => ("image", image_pad),
            VisionKind::Video => ("video", video_pad),
        };
        let [t, h, w] = span.grid_thw;
        if t == 0 || h == 0 || w == 0 || h % merge != 0 || w % merge != 0 {
            return Err(prompt_err(format!(
                "{kind_name} {i}: grid {:?} must be positive with h and w divisible by {merge}",
                span.grid_thw
            )));
        }
        let Some(ed) = input_ids[st..]
            .iter()
            .position(|&id| is_pad(id))
            .map(|p| st + p)
        else {
            return Err(prompt_err(format!(
                "{} vision items were given but the prompt has pad tokens for only {i}",
                spans.len()
            )));
        };
        if input_ids[ed] != pad {
            return Err(prompt_err(format!(
                "vision item {i} is {kind_name}, but the pad run at token {ed} is of the other kind"
            )));
        }
        let (lh, lw) = (h / merge, w / merge);
        let n = t
            .checked_mul(lh)
            .and_then(|x| x.checked_mul(lw))
            .ok_or_else(|| {
                prompt_err(format!(
                    "{kind_name} {i}: grid {:?} too large",
                    span.grid_thw
                ))
            })?;
        let run = input_ids[ed..].iter().take_while(|&&id| id == pad).count();
        if run != n {
            return Err(prompt_err(format!(
                "{kind_name} {i} with grid {:?} needs {n} pad tokens but the run at token {ed} has {run}",
                span.grid_thw
            )));
        }

        push_text(&mut rows, &mut next, ed - st);
        let s = match span.kind {
            VisionKind::Image => 0.0,
            VisionKind::Video => span.second_per_grid_t,
        };
        if !(s.is_finite() && s >= 0.0) {
            return Err(prompt_err(format!(
                "video {i}: second_per_grid_t must be >= 0, got {s}"
            )));
        }
        let base = next;
        let mut max = base + lh.max(lw) as i64 - 1;
        for k in 0..t {
            let dt = if int_truncate_s {
                // Integer product after truncating s, as the later code's int64 cast does.
                (k as f64 * (s as i64) as f64 * tokens_per_second as f64) as i64
            } else {
                // f32 arithmetic, left to right: (k * s) * tps, then truncation toward zero.
                (k as f32 * s * tokens_per_second) as i64
            };
            if dt > i32::MAX as i64 / 2 {
                return Err(prompt_err(format!(
                    "video {i}: temporal position {dt} out of range"
                )));
            }
            max = max.max(base + dt);
            for row in 0..lh as i64 {
                for col in 0..lw as i64 {
                    rows[0].push((base + dt) as i32);
                    rows[1].push((base + row) as i32);
                    rows[2].push((base + col) as i32);
                }
            }
        }
        if max > i32::MAX as i64 / 2 {
            return Err(prompt_err("positions out of the i32 range".into()));
        }
        next = max + 1;
        st = ed + n;
    }
    if let Some(p) = input_ids[st..].iter().position(|&id| is_pad(id)) {
        return Err(prompt_err(format!(
            "the prompt has a pad token at {} beyond the {} vision items given",
            st + p,
            spans.len()
        )));
    }
    push_text(&mut rows, &mut next, len - st);
    // The last run holds the maximum: every run starts above all earlier ones.
    let rope_delta = next - len as i64;
    Ok((rows, rope_delta as i32))
}

/// The three rows concatenated: the `[3, L]` row-major array the graph reads.
pub fn to_row_major(rows: &[Vec<i32>; 3]) -> Vec<i32> {
    rows.concat()
}

/// Position ids of the token at cache position `cache_pos` during decode (same on all rows).
pub fn decode_positions(cache_pos: usize, rope_delta: i32) -> [i32; 3] {
    let p = (cache_pos as i64 + rope_delta as i64).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
    [p; 3]
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: u32 = 9; // vision_start
    const VE: u32 = 10; // vision_end
    const IMG: u32 = 12;
    const VID: u32 = 13;

    fn image(h: usize, w: usize) -> VisionSpan {
        VisionSpan {
            kind: VisionKind::Image,
            grid_thw: [1, h, w],
            second_per_grid_t: 0.0,
        }
    }

    fn video(t: usize, h: usize, w: usize, s: f32) -> VisionSpan {
        VisionSpan {
            kind: VisionKind::Video,
            grid_thw: [t, h, w],
            second_per_grid_t: s,
        }
    }

    /// `pre` text tokens, then each item as vision_start, pads, vision_end, then `post` tokens.
    fn prompt(pre: usize, items: &[VisionSpan], post: usize) -> Vec<u32> {
        let mut ids = vec![1; pre];
        for it in items {
            let pad = if it.kind == VisionKind::Image {
                IMG
            } else {
                VID
            };
            ids.push(VS);
            ids.extend(std::iter::repeat_n(pad, it.n_tokens(2)));
            ids.push(VE);
        }
        ids.extend(std::iter::repeat_n(2, post));
        ids
    }

    fn run(ids: &[u32], spans: &[VisionSpan], int_s: bool) -> Result<([Vec<i32>; 3], i32)> {
        rope_index(ids, spans, IMG, VID, 2, 2.0, int_s)
    }

    fn range(a: i32, n: usize) -> Vec<i32> {
        (a..a + n as i32).collect()
    }

    #[test]
    fn text_only_is_arange() {
        let ids = prompt(7, &[], 0);
        let (rows, delta) = run(&ids, &[], false).unwrap();
        for r in &rows {
            assert_eq!(*r, range(0, 7));
        }
        assert_eq!(delta, 0);
        assert_eq!(to_row_major(&rows).len(), 21);
        assert_eq!(decode_positions(7, delta), [7; 3]);
    }

    #[test]
    fn single_image() {
        // 3 text, vision_start at 3, 6 pads (grid 1x4x6 -> 2x3), vision_end, 2 text.
        let sp = image(4, 6);
        let ids = prompt(3, &[sp], 2);
        let (rows, delta) = run(&ids, &[sp], false).unwrap();
        let mut t = range(0, 4);
        let mut h = range(0, 4);
        let mut w = range(0, 4);
        t.extend([4; 6]);
        h.extend([4, 4, 4, 5, 5, 5]);
        w.extend([4, 5, 6, 4, 5, 6]);
        // Text resumes at max(6) + 1.
        for v in [&mut t, &mut h, &mut w] {
            v.extend(range(7, 3));
        }
        assert_eq!(rows, [t, h, w]);
        assert_eq!(ids.len(), 13);
        assert_eq!(delta, 10 - 13);
        assert_eq!(decode_positions(13, delta), [10; 3]);
    }

    /// The layout of the fixture's video case: 66 tokens, pads from token 24, grid (4, 4, 6),
    /// s = 1.0. Temporal offsets are 2k, so the block's maximum is 24 + 6 and the text after
    /// the video (vision_end first) starts at 31; rope_delta is -17 as in the golden.
    #[test]
    fn video_grid_4_4_6() {
        let sp = video(4, 4, 6, 1.0);
        let ids = prompt(23, &[sp], 17);
        assert_eq!(ids.len(), 66);
        let (rows, delta) = run(&ids, &[sp], false).unwrap();
        let (t, h, w) = (&rows[0], &rows[1], &rows[2]);
        for k in 0..4 {
            for r in 0..2 {
                for c in 0..3 {
                    let i = 24 + k * 6 + r * 3 + c;
                    let want = [24 + 2 * k as i32, 24 + r as i32, 24 + c as i32];
                    assert_eq!([t[i], h[i], w[i]], want);
                }
            }
        }
        assert_eq!(ids[48], VE);
        assert_eq!([t[48], h[48], w[48]], [31; 3]);
        assert_eq!(t[65], 48);
        assert_eq!(delta, -17);
    }

    #[test]
    fn video_temporal_offsets_by_s() {
        let cases: [(f32, bool, [i32; 4]); 6] = [
            (0.5, false, [0, 1, 2, 3]),
            (0.5, true, [0, 0, 0, 0]),
            (1.25, false, [0, 2, 5, 7]),
            (1.25, true, [0, 2, 4, 6]),
            (37.5, false, [0, 75, 150, 225]),
            (37.5, true, [0, 74, 148, 222]),
        ];
        for (s, int_s, want) in cases {
            let sp = video(4, 2, 2, s);
            let ids = prompt(1, &[sp], 1);
            let (rows, delta) = run(&ids, &[sp], int_s).unwrap();
            let got: Vec<i32> = (0..4).map(|k| rows[0][2 + k] - 2).collect();
            assert_eq!(got, want, "s = {s}, int = {int_s}");
            // Trailing vision_end starts above the largest temporal id.
            assert_eq!(rows[0][6], 2 + want[3] + 1);
            assert_eq!(delta, 2 + want[3] + 3 - ids.len() as i32);
        }
        // Products truncate toward zero: 0.7 * 2 = 1.4 -> 1, 2.8 -> 2, 4.2 -> 4 (pads from 1).
        let sp = video(4, 2, 2, 0.7);
        let ids = prompt(0, &[sp], 0);
        let (rows, _) = run(&ids, &[sp], false).unwrap();
        assert_eq!(rows[0][1..5], [1, 2, 3, 5]);
    }

    #[test]
    fn image_then_video_and_two_images() {
        let a = image(4, 4); // 4 tokens, 2x2
        let v = video(2, 2, 4, 1.0); // 4 tokens, 2 frames of 1x2
        let ids = prompt(2, &[a, v], 3);
        let (rows, delta) = run(&ids, &[a, v], false).unwrap();
        // text 0,1 | vs 2 | img base 3: T 3, H 3..4, W 3..4 | ve 5 | vs 6 | vid base 7:
        // T 7,7,9,9, H 7, W 7,8 | ve 10 | text 11..13
        let want_t = [0, 1, 2, 3, 3, 3, 3, 5, 6, 7, 7, 9, 9, 10, 11, 12, 13];
        let want_h = [0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 7, 7, 7, 10, 11, 12, 13];
        let want_w = [0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 8, 7, 8, 10, 11, 12, 13];
        assert_eq!(rows, [want_t.to_vec(), want_h.to_vec(), want_w.to_vec()]);
        assert_eq!(delta, 14 - 17);

        let (a, b) = (image(2, 4), image(4, 2));
        let ids = prompt(1, &[a, b], 1);
        let (rows, delta) = run(&ids, &[a, b], false).unwrap();
        // t | vs 1 | a: (2,2,2),(2,2,3) | ve 4 | vs 5 | b: (6,6,6),(6,7,6) | ve 8 | t 9
        assert_eq!(rows[0], [0, 1, 2, 2, 4, 5, 6, 6, 8, 9]);
        assert_eq!(rows[1], [0, 1, 2, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(rows[2], [0, 1, 2, 3, 4, 5, 6, 6, 8, 9]);
        assert_eq!(delta, 0);
    }

    #[test]
    fn mismatched_pads_are_errors() {
        let sp = image(4, 6);
        let ids = prompt(3, &[sp], 2);
        let err =
            |ids: &[u32], spans: &[VisionSpan]| run(ids, spans, false).unwrap_err().to_string();

        let e = err(&ids, &[image(4, 4)]);
        assert!(
            e.contains(
                "image 0 with grid [1, 4, 4] needs 4 pad tokens but the run at token 4 has 6"
            ),
            "{e}"
        );
        let e = err(&ids, &[]);
        assert!(
            e.contains("pad token at 4 beyond the 0 vision items"),
            "{e}"
        );
        let e = err(&ids, &[sp, sp]);
        assert!(
            e.contains("2 vision items were given but the prompt has pad tokens for only 1"),
            "{e}"
        );
        let e = err(&ids, &[video(1, 4, 6, 1.0)]);
        assert!(
            e.contains("vision item 0 is video, but the pad run at token 4"),
            "{e}"
        );
        let e = err(&ids, &[image(4, 5)]);
        assert!(e.contains("divisible by 2"), "{e}");
        let e = err(&[], &[]);
        assert!(e.contains("empty"), "{e}");
        let v = video(2, 2, 2, f32::NAN);
        let e = err(&prompt(0, &[v], 0), &[v]);
        assert!(e.contains("second_per_grid_t"), "{e}");
        assert!(e.starts_with("prompt: position ids:"), "{e}");
        assert!(rope_index(&ids, &[sp], IMG, VID, 0, 2.0, false).is_err());
    }

    #[test]
    fn decode_positions_add_delta() {
        assert_eq!(decode_positions(66, -17), [49; 3]);
        assert_eq!(decode_positions(0, 0), [0; 3]);
    }
}
