//! Tokenizer, chat template, Video-R1 prompt templates and <think>/<answer> parsing.
//!
//! Flow: [`messages::load_messages`] (or [`video_r1`]) gives a conversation;
//! [`template::ChatTemplate::render`] gives the prompt text with one pad per vision item;
//! [`tokenizer::Tokenizer::encode`] gives ids; [`expand_pads`] repeats each pad by the item's
//! merged-token count once the media are preprocessed.

pub mod messages;
pub mod parse;
pub mod template;
pub mod tokenizer;
pub mod video_r1;

pub use messages::{
    load_messages, parse_messages, vision_items, ContentItem, ImageItem, Message, VideoItem,
    VisionKind,
};
pub use parse::{parse_answer, parse_think};
pub use template::{apply_system_prompt, ChatTemplate, RenderOptions, DEFAULT_SYSTEM_PROMPT};
pub use tokenizer::{StreamDecoder, Tokenizer};
pub use video_r1::ProblemType;

use crate::error::{Error, Result};

/// Ids of the vision placeholder tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PadIds {
    pub image_pad: u32,
    pub video_pad: u32,
}

impl PadIds {
    /// Looks up `<|image_pad|>` and `<|video_pad|>` (151655 and 151656 in Qwen2.5-VL).
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        Ok(Self {
            image_pad: tok.token_id("<|image_pad|>")?,
            video_pad: tok.token_id("<|video_pad|>")?,
        })
    }
}

/// A rendered, tokenized conversation whose vision pads are not yet expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPrompt {
    /// The chat template's output.
    pub text: String,
    /// Its token ids, one pad per vision item.
    pub ids: Vec<u32>,
    /// The kind of each vision item, in prompt order (the order of the pads).
    pub vision: Vec<VisionKind>,
}

/// Renders `messages` with `template` and tokenizes the result, checking that the template
/// wrote exactly one pad of the right kind per vision item (a custom template might not).
pub fn encode_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    opts: &RenderOptions,
) -> Result<EncodedPrompt> {
    let text = template.render(messages, opts)?;
    let ids = tokenizer.encode(&text)?;
    let pads = PadIds::from_tokenizer(tokenizer)?;
    let vision: Vec<VisionKind> = vision_items(messages)
        .iter()
        .filter_map(|c| c.vision_kind())
        .collect();
    let found: Vec<VisionKind> = ids
        .iter()
        .filter_map(|&id| match id {
            _ if id == pads.image_pad => Some(VisionKind::Image),
            _ if id == pads.video_pad => Some(VisionKind::Video),
            _ => None,
        })
        .collect();
    if found != vision {
        return Err(Error::Prompt(format!(
            "chat template ({}) wrote pads {found:?} for vision items {vision:?}",
            template.origin()
        )));
    }
    Ok(EncodedPrompt { text, ids, vision })
}

/// Replaces the pad of each vision item with `count` copies, where `items` lists, in prompt
/// order, each item's kind and merged-token count (t·h·w/4 of its grid). The number and kinds of
/// the pads in `ids` must match `items` exactly.
pub fn expand_pads(ids: &[u32], pads: PadIds, items: &[(VisionKind, usize)]) -> Result<Vec<u32>> {
    let n_pads = ids
        .iter()
        .filter(|&&id| id == pads.image_pad || id == pads.video_pad)
        .count();
    if n_pads != items.len() {
        return Err(Error::Prompt(format!(
            "the prompt has {n_pads} image/video pad tokens but {} vision items were given",
            items.len()
        )));
    }
    let extra: usize = items.iter().map(|&(_, n)| n.saturating_sub(1)).sum();
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut next = items.iter().enumerate();
    for &id in ids {
        let kind = if id == pads.image_pad {
            VisionKind::Image
        } else if id == pads.video_pad {
            VisionKind::Video
        } else {
            out.push(id);
            continue;
        };
        let (i, &(want, count)) = next.next().expect("pad count was checked");
        if want != kind {
            return Err(Error::Prompt(format!(
                "vision item {i} is {want:?} but pad {i} in the prompt is {kind:?}"
            )));
        }
        if count == 0 {
            return Err(Error::Prompt(format!("vision item {i} has 0 tokens")));
        }
        out.extend(std::iter::repeat_n(id, count));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PADS: PadIds = PadIds {
        image_pad: 7,
        video_pad: 8,
    };

    #[test]
    fn expands_in_order() {
        let ids = [1, 2, 7, 3, 8, 4];
        let out = expand_pads(
            &ids,
            PADS,
            &[(VisionKind::Image, 3), (VisionKind::Video, 2)],
        )
        .unwrap();
        assert_eq!(out, vec![1, 2, 7, 7, 7, 3, 8, 8, 4]);
    }

    #[test]
    fn rejects_mismatches() {
        let ids = [1, 7, 8];
        assert!(expand_pads(&ids, PADS, &[(VisionKind::Image, 3)]).is_err());
        assert!(expand_pads(
            &ids,
            PADS,
            &[(VisionKind::Video, 1), (VisionKind::Image, 1)]
        )
        .is_err());
        assert!(expand_pads(
            &ids,
            PADS,
            &[(VisionKind::Image, 0), (VisionKind::Video, 1)]
        )
        .is_err());
        assert_eq!(expand_pads(&[1, 2], PADS, &[]).unwrap(), vec![1, 2]);
    }
}
