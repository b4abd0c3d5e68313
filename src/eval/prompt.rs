//! The request for one item, as Video-R1's evaluation builds it: one user message with the
//! media first and then the question text (the `--template video-r1` prompt of
//! [`crate::prompt::video_r1`]), no system message (the chat template adds the default one).
//!
//! Media settings are explicit on each item: videos at 2 fps, at most `max_frames` frames
//! (default 32), at most 256·28·28 pixels per frame; images at most 256·28·28 pixels. They are
//! Video-R1's inference settings (its README raises qwen-vl-utils' frame limits to these), so
//! the media preset must allow 256·28·28 video pixels (`VIDEO_MAX_PIXELS`), or qwen-vl-utils'
//! clamp lowers the frame budget; `engine::inputs::MediaOptions::default()` does.
//!
//! Decoding is greedy with at most [`MAX_NEW_TOKENS`] new tokens, stopping at [`STOP`].
//! The reference samples at temperature 0.1 with top_p 0.001, which keeps only the most likely
//! token and so is greedy as well.

use crate::error::Result;
use crate::prompt::messages::{ContentItem, ImageItem, Message, VideoItem};
use crate::prompt::video_r1::{self, ProblemType};

use super::data::{DataType, EvalItem};

/// Most pixels per image and per video frame (256·28·28).
pub const MAX_PIXELS: u64 = 256 * 28 * 28;
/// Video sampling rate.
pub const FPS: f64 = 2.0;
/// Default `--max-frames`.
pub const DEFAULT_MAX_FRAMES: u64 = 32;
/// Most generated tokens per item.
pub const MAX_NEW_TOKENS: usize = 1024;
/// Generation stops at this token (Qwen2.5-VL's end of turn).
pub const STOP: &str = "<|im_end|>";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptOptions {
    /// Most frames sampled from a video (`--max-frames`).
    pub max_frames: u64,
}

impl Default for PromptOptions {
    fn default() -> Self {
        Self {
            max_frames: DEFAULT_MAX_FRAMES,
        }
    }
}

/// The user text: Video-R1's question template around the question, then the instruction for
/// the item's problem type. A multiple-choice question is the problem followed directly by
/// `"Options:\n"` and one option per line; other types use the problem alone (their
/// `options` are ignored, as in the reference).
pub fn user_text(item: &EvalItem) -> Result<String> {
    let options: &[String] = match item.problem_type {
        ProblemType::MultipleChoice => &item.options,
        _ => &[],
    };
    video_r1::render_question(&item.problem, item.problem_type, options)
}

/// The media element of the request.
pub fn media_item(item: &EvalItem, opts: &PromptOptions) -> ContentItem {
    match item.data_type {
        DataType::Video => ContentItem::Video(VideoItem {
            path: item.media.clone(),
            fps: Some(FPS),
            max_frames: Some(opts.max_frames),
            max_pixels: Some(MAX_PIXELS),
            ..VideoItem::default()
        }),
        DataType::Image => ContentItem::Image(ImageItem {
            path: item.media.clone(),
            max_pixels: Some(MAX_PIXELS),
            ..ImageItem::default()
        }),
    }
}

/// The conversation for one item: `[user: [media, text]]`.
pub fn build(item: &EvalItem, opts: &PromptOptions) -> Result<Vec<Message>> {
    Ok(video_r1::eval_messages(
        media_item(item, opts),
        user_text(item)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use std::path::PathBuf;

    fn item(kind: ProblemType, data_type: DataType, options: &[&str]) -> EvalItem {
        EvalItem {
            index: 0,
            problem_id: Value::from(1),
            problem: "Why?".into(),
            problem_type: kind,
            options: options.iter().map(|s| s.to_string()).collect(),
            solution: "<answer>A</answer>".into(),
            data_type,
            path: "./v.mp4".into(),
            media: PathBuf::from("/d/./v.mp4"),
            data_source: None,
            extra: Map::new(),
        }
    }

    #[test]
    fn media_first_with_eval_settings() {
        let it = item(
            ProblemType::MultipleChoice,
            DataType::Video,
            &["A. x", "B. y"],
        );
        let msgs = build(&it, &PromptOptions { max_frames: 16 }).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].role, "user");
        let ContentItem::Video(v) = &msgs[0].content[0] else {
            panic!("media first")
        };
        assert_eq!(v.path, PathBuf::from("/d/./v.mp4"));
        assert_eq!(
            (v.fps, v.max_frames, v.max_pixels),
            (Some(2.0), Some(16), Some(200704))
        );
        assert_eq!(
            (v.nframes, v.min_pixels, v.total_pixels),
            (None, None, None)
        );
        let ContentItem::Text(t) = &msgs[0].content[1] else {
            panic!("text second")
        };
        assert!(
            t.starts_with("Why?Options:\nA. x\nB. y\n\nPlease think"),
            "{t}"
        );
        assert!(t.ends_with("(e.g., A, B, C, D, etc.) within the <answer> </answer> tags."));

        let it = item(ProblemType::Numerical, DataType::Image, &[]);
        let msgs = build(&it, &PromptOptions::default()).unwrap();
        let ContentItem::Image(im) = &msgs[0].content[0] else {
            panic!("image first")
        };
        assert_eq!((im.max_pixels, im.min_pixels), (Some(200704), None));
        let ContentItem::Text(t) = &msgs[0].content[1] else {
            panic!("text second")
        };
        assert!(t.starts_with("Why?\nPlease think"), "{t}");
    }

    #[test]
    fn options_of_other_types_are_ignored() {
        let mut it = item(ProblemType::FreeForm, DataType::Image, &["A. x"]);
        let with = user_text(&it).unwrap();
        it.options.clear();
        assert_eq!(with, user_text(&it).unwrap());
    }
}
