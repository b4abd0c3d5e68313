//! Prompt construction against transformers' references: the real Qwen2.5-VL tokenizer's ids,
//! the chat template's output, the fixture cases' full `input_ids`, Video-R1's question text,
//! answer parsing, and clear errors on bad input.

mod common;

use common::fixtures;
use std::path::{Path, PathBuf};

use reel::prompt::messages::messages_from_value;
use reel::prompt::video_r1::{self, ProblemType};
use reel::prompt::{
    apply_system_prompt, encode_prompt, expand_pads, load_messages, parse_answer, parse_think,
    vision_items, ChatTemplate, ContentItem, ImageItem, Message, PadIds, RenderOptions, Tokenizer,
    VideoItem, VisionKind,
};
use serde_json::Value;

fn real_tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("real_tokenizer/tokenizer.json")).unwrap()
}

fn tiny_tokenizer() -> Tokenizer {
    Tokenizer::from_model_dir(fixtures().join("model")).unwrap()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("missing fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `tokenizer_cases.json`: a list of cases, or an object whose "cases" is that list.
fn tokenizer_cases() -> Vec<Value> {
    let v = read_json(&fixtures().join("real_tokenizer/tokenizer_cases.json"));
    let list = match v {
        Value::Array(list) => list,
        Value::Object(mut o) => match o.remove("cases") {
            Some(Value::Array(list)) => list,
            _ => panic!("tokenizer_cases.json has no \"cases\" list"),
        },
        _ => panic!("tokenizer_cases.json is neither a list nor an object"),
    };
    assert!(
        list.len() >= 10,
        "expected at least 10 tokenizer cases, got {}",
        list.len()
    );
    list
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn render_stock(messages: &[Message]) -> String {
    ChatTemplate::stock()
        .render(messages, &RenderOptions::default())
        .unwrap()
}

fn err_string<T: std::fmt::Debug>(r: reel::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------------------------------------
// (a) tokenizer

#[test]
fn real_tokenizer_matches_transformers_ids() {
    let tok = real_tokenizer();
    for case in tokenizer_cases() {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        assert_eq!(tok.encode(text).unwrap(), want, "encode({text:?})");
        let decoded = case.get("decoded").and_then(Value::as_str).unwrap_or(text);
        assert_eq!(tok.decode(&want).unwrap(), decoded, "decode of {text:?}");
        if let Some(skip) = case.get("decoded_skip_special").and_then(Value::as_str) {
            assert_eq!(
                tok.decode_skip_special(&want).unwrap(),
                skip,
                "decode_skip_special of {text:?}"
            );
        }
    }
}

#[test]
fn tiny_tokenizer_matches_transformers_ids() {
    let tok = tiny_tokenizer();
    let mut n = 0;
    for case in tokenizer_cases() {
        let (Some(ids), Some(text)) = (case.get("tiny_ids"), case["text"].as_str()) else {
            continue;
        };
        let want = ids_of(ids);
        assert_eq!(tok.encode(text).unwrap(), want, "tiny encode({text:?})");
        if let Some(d) = case.get("tiny_decoded").and_then(Value::as_str) {
            assert_eq!(tok.decode(&want).unwrap(), d);
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} cases carry tiny_ids");
}

#[test]
fn real_tokenizer_known_ids() {
    let tok = real_tokenizer();
    // Qwen2.5 has no <think> token: Video-R1 writes it as text.
    assert_eq!(tok.encode("<think>").unwrap(), vec![13708, 766, 29]);
    // Digits are split one per digit ("0" is 15 ... "9" is 24).
    assert_eq!(
        tok.encode("1234567890").unwrap(),
        vec![16, 17, 18, 19, 20, 21, 22, 23, 24, 15]
    );
    for (s, id) in [
        ("<|endoftext|>", 151643),
        ("<|im_start|>", 151644),
        ("<|im_end|>", 151645),
        ("<|vision_start|>", 151652),
        ("<|vision_end|>", 151653),
        ("<|image_pad|>", 151655),
        ("<|video_pad|>", 151656),
    ] {
        assert_eq!(tok.token_id(s).unwrap(), id, "{s}");
        assert_eq!(tok.encode(s).unwrap(), vec![id], "inline {s}");
    }
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>").unwrap();
    assert_eq!(ids, vec![151644, 872, 198, 6023, 151645]);
    // No BOS or EOS is added.
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(tok.vocab_size(), 151665);
    assert_eq!(
        PadIds::from_tokenizer(&tok).unwrap(),
        PadIds {
            image_pad: 151655,
            video_pad: 151656
        }
    );
    let e = err_string(tok.token_id("<|no_such_token|>"));
    assert!(
        e.contains("<|no_such_token|>") && e.contains("tokenizer.json"),
        "{e}"
    );
    // Ids past the tokenizer's vocabulary (the model has 152064 rows) decode to nothing.
    assert_eq!(tok.decode(&[9707, 151665, 152063]).unwrap(), "Hello");
}

/// Streaming pieces concatenate to the full decoding and never show a half character.
#[test]
fn stream_decoder_reassembles_text() {
    let tok = real_tokenizer();
    for skip in [false, true] {
        for case in tokenizer_cases() {
            let ids = ids_of(&case["ids"]);
            let mut sd = tok.stream_decoder(skip);
            let mut out = String::new();
            for &id in &ids {
                let piece = sd.push(id).unwrap();
                assert!(!piece.contains('\u{FFFD}'), "half character in {piece:?}");
                out.push_str(&piece);
            }
            out.push_str(&sd.flush().unwrap());
            let want = if skip {
                tok.decode_skip_special(&ids)
            } else {
                tok.decode(&ids)
            }
            .unwrap();
            assert_eq!(out, want, "skip_special={skip}");
        }
    }
}

#[test]
fn stream_decoder_holds_incomplete_characters() {
    let tok = real_tokenizer();
    // 😀 (4 UTF-8 bytes) is one token; its bytes as single-byte tokens arrive one at a time.
    let bytes = "😀".as_bytes();
    let byte_ids: Vec<u32> = bytes
        .iter()
        .map(|&b| tok.token_id(&byte_level_char(b).to_string()).unwrap())
        .collect();
    let mut sd = tok.stream_decoder(false);
    for &id in &byte_ids[..3] {
        assert_eq!(sd.push(id).unwrap(), "", "emitted a partial character");
    }
    assert_eq!(sd.push(byte_ids[3]).unwrap(), "😀");
    // An unfinished character at the end comes out on flush.
    assert_eq!(sd.push(byte_ids[0]).unwrap(), "");
    assert_eq!(sd.flush().unwrap(), "\u{FFFD}");
}

/// GPT-2 byte-level alphabet: printable Latin-1 bytes map to themselves, the rest to U+0100+n.
fn byte_level_char(b: u8) -> char {
    let keep = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if keep(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !keep(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

#[test]
fn tokenizer_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_string(Tokenizer::from_model_dir(dir.path()));
    assert!(
        e.contains(&dir.path().join("tokenizer.json").display().to_string()),
        "{e}"
    );
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    let e = err_string(Tokenizer::from_file(&bad));
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("not a valid tokenizer.json"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) chat template

const VIDEO_PROMPT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n";

fn video(path: &str) -> ContentItem {
    ContentItem::Video(VideoItem {
        path: path.into(),
        ..Default::default()
    })
}

fn image(path: &str) -> ContentItem {
    ContentItem::Image(ImageItem {
        path: path.into(),
        ..Default::default()
    })
}

#[test]
fn template_video_and_text() {
    let msgs = vec![Message::new(
        "user",
        vec![video("v.mp4"), ContentItem::Text("What happens?".into())],
    )];
    assert_eq!(render_stock(&msgs), VIDEO_PROMPT);
    // The fixture checkpoint's own template renders the same.
    let own = ChatTemplate::from_model_dir(fixtures().join("model")).unwrap();
    assert!(
        own.origin().ends_with("chat_template.json"),
        "{}",
        own.origin()
    );
    assert_eq!(
        own.render(&msgs, &RenderOptions::default()).unwrap(),
        VIDEO_PROMPT
    );
    // A plain-string content renders like a one-text-item list.
    let plain = vec![Message::text("user", "hi")];
    assert_eq!(
        render_stock(&plain),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn template_custom_system_prompt() {
    let msgs = vec![Message::new(
        "user",
        vec![video("v.mp4"), ContentItem::Text("What happens?".into())],
    )];
    let msgs = apply_system_prompt(msgs, Some("Answer briefly.")).unwrap();
    assert_eq!(
        render_stock(&msgs),
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
    );
    let e = err_string(apply_system_prompt(msgs, Some("again")));
    assert!(e.contains("system"), "{e}");
}

#[test]
fn template_two_images_with_and_without_ids() {
    let msgs = vec![Message::new(
        "user",
        vec![
            image("a.png"),
            image("b.png"),
            ContentItem::Text("Compare.".into()),
        ],
    )];
    assert_eq!(
        render_stock(&msgs),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>Compare.<|im_end|>\n<|im_start|>assistant\n"
    );
    let opts = RenderOptions {
        add_vision_id: true,
        ..Default::default()
    };
    let msgs2 = vec![Message::new(
        "user",
        vec![image("a.png"), video("v.mp4"), image("b.png")],
    )];
    assert_eq!(
        ChatTemplate::stock().render(&msgs2, &opts).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Video 1: <|vision_start|><|video_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn template_multi_turn() {
    let msgs = vec![
        Message::new(
            "user",
            vec![image("a.png"), ContentItem::Text("What is this?".into())],
        ),
        Message::text("assistant", "<think>fur</think><answer>A cat.</answer>"),
        Message::text("user", "What color?"),
    ];
    assert_eq!(
        render_stock(&msgs),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n<think>fur</think><answer>A cat.</answer><|im_end|>\n<|im_start|>user\nWhat color?<|im_end|>\n<|im_start|>assistant\n"
    );
    let opts = RenderOptions {
        add_generation_prompt: false,
        ..Default::default()
    };
    assert!(ChatTemplate::stock()
        .render(&msgs, &opts)
        .unwrap()
        .ends_with("What color?<|im_end|>\n"));
}

/// Every fixture case: messages -> template -> tiny tokenizer -> pad expansion equals the
/// `input_ids` transformers fed the model.
#[test]
fn fixture_cases_prompt_and_input_ids() {
    let cases = read_json(&fixtures().join("cases.json"));
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let tmpl = ChatTemplate::from_model_dir(fixtures().join("model")).unwrap();
    let tok = tiny_tokenizer();
    let pads = PadIds::from_tokenizer(&tok).unwrap();
    assert_eq!(
        pads,
        PadIds {
            image_pad: 1012,
            video_pad: 1013
        }
    );
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let msgs = messages_from_value(&case["messages"], &fixtures()).unwrap();
        let msgs = apply_system_prompt(msgs, None).unwrap();
        let prompt = tmpl.render(&msgs, &RenderOptions::default()).unwrap();
        assert_eq!(prompt, case["prompt"].as_str().unwrap(), "{name}");
        assert_eq!(render_stock(&msgs), prompt, "{name} (stock template)");

        let items: Vec<(VisionKind, usize)> = case["vision_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| {
                let kind = match it["type"].as_str().unwrap() {
                    "image" => VisionKind::Image,
                    "video" => VisionKind::Video,
                    t => panic!("{t}"),
                };
                (kind, it["n_tokens"].as_u64().unwrap() as usize)
            })
            .collect();
        let ours: Vec<VisionKind> = vision_items(&msgs)
            .iter()
            .map(|c| c.vision_kind().unwrap())
            .collect();
        assert_eq!(
            ours,
            items.iter().map(|i| i.0).collect::<Vec<_>>(),
            "{name}"
        );
        for (item, json) in vision_items(&msgs)
            .iter()
            .zip(case["vision_items"].as_array().unwrap())
        {
            let path = match item {
                ContentItem::Image(i) => &i.path,
                ContentItem::Video(v) => &v.path,
                ContentItem::Text(_) => unreachable!(),
            };
            assert_eq!(
                *path,
                fixtures().join(json["path"].as_str().unwrap()),
                "{name}"
            );
        }

        let enc = encode_prompt(&tok, &tmpl, &msgs, &RenderOptions::default()).unwrap();
        assert_eq!(enc.text, prompt);
        assert_eq!(enc.ids, tok.encode(&prompt).unwrap());
        let counts: Vec<(VisionKind, usize)> = enc
            .vision
            .iter()
            .zip(&items)
            .map(|(&k, &(_, n))| (k, n))
            .collect();
        let ids = expand_pads(&enc.ids, pads, &counts).unwrap();
        let golden = golden_input_ids(case["golden"].as_str().unwrap());
        assert_eq!(
            ids.len(),
            case["seq_len"].as_u64().unwrap() as usize,
            "{name}"
        );
        assert_eq!(ids, golden, "{name}");
    }
}

fn golden_input_ids(file: &str) -> Vec<u32> {
    let path = fixtures().join(file);
    let path = if path.exists() {
        path
    } else {
        fixtures().join("golden").join(file)
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("in.input_ids").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

#[test]
fn template_source_priority_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing there: the stock template.
    assert_eq!(
        ChatTemplate::from_model_dir(d).unwrap().source(),
        reel::prompt::template::STOCK_CHAT_TEMPLATE
    );
    // tokenizer_config.json's template, with its special tokens as variables.
    std::fs::write(
        d.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}"}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(d).unwrap();
    assert_eq!(
        t.render(&[Message::text("user", "x")], &RenderOptions::default())
            .unwrap(),
        "[x]<|im_end|>"
    );
    // chat_template.json (the processor's) wins over tokenizer_config.json.
    std::fs::write(
        d.join("chat_template.json"),
        r#"{"chat_template": "P{{ messages|length }}"}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(d).unwrap();
    assert_eq!(
        t.render(&[Message::text("user", "x")], &RenderOptions::default())
            .unwrap(),
        "P1"
    );
    // Malformed files are errors that name them.
    std::fs::write(d.join("chat_template.json"), "{not json").unwrap();
    let e = err_string(ChatTemplate::from_model_dir(d));
    assert!(
        e.contains("chat_template.json") && e.contains("invalid JSON"),
        "{e}"
    );
    std::fs::write(
        d.join("chat_template.json"),
        r#"{"chat_template": "{% for %}"}"#,
    )
    .unwrap();
    let e = err_string(ChatTemplate::from_model_dir(d));
    assert!(
        e.contains("chat_template.json") && e.contains("does not compile"),
        "{e}"
    );
    // A template that drops vision items is caught before the pads are expanded.
    let t = ChatTemplate::from_source(
        "{% for m in messages %}{{ m.role }}{% endfor %}",
        "textonly",
    )
    .unwrap();
    let msgs = vec![Message::new(
        "user",
        vec![video("v.mp4"), ContentItem::Text("hi".into())],
    )];
    let e = err_string(encode_prompt(
        &tiny_tokenizer(),
        &t,
        &msgs,
        &RenderOptions::default(),
    ));
    assert!(e.contains("textonly") && e.contains("Video"), "{e}");
    // raise_exception in a template becomes an error.
    let t = ChatTemplate::from_source("{{ raise_exception('no tools here') }}", "test").unwrap();
    let e = err_string(t.render(&[Message::text("user", "x")], &RenderOptions::default()));
    assert!(e.contains("no tools here"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// (c) Video-R1 questions

const R1_BODY: &str = "\nPlease think about this question as if you were a human pondering deeply. Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other natural language thought expressions It's encouraged to include self-reflection or verification in the reasoning process. Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer between the <answer> and </answer> tags.";

#[test]
fn video_r1_question_per_type() {
    let opts: Vec<String> = ["A. a ball", "B. a car", "C. nothing", "D. a cat"]
        .map(String::from)
        .to_vec();
    let mc = video_r1::render_question(
        "What is moving in the video?",
        ProblemType::MultipleChoice,
        &opts,
    )
    .unwrap();
    assert_eq!(
        mc,
        format!("What is moving in the video?Options:\nA. a ball\nB. a car\nC. nothing\nD. a cat\n{R1_BODY} Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.")
    );
    let num = " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.";
    let expect = [
        (ProblemType::Numerical, num),
        (ProblemType::Regression, num),
        (ProblemType::Ocr, " Please transcribe text from the image/video clearly and provide your text answer within the <answer> </answer> tags."),
        (ProblemType::FreeForm, " Please provide your text answer within the <answer> </answer> tags."),
    ];
    for (kind, tail) in expect {
        let q = video_r1::render_question("How many cups?", kind, &[]).unwrap();
        assert_eq!(q, format!("How many cups?{R1_BODY}{tail}"), "{kind}");
    }
    // The fixture's Video-R1 case was built by the Python template.
    let cases = read_json(&fixtures().join("cases.json"));
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "video_r1_prompt")
        .unwrap();
    assert_eq!(
        case["messages"][0]["content"][1]["text"].as_str().unwrap(),
        mc
    );
    let msgs = video_r1::eval_messages(video("v.mp4"), mc);
    assert_eq!(msgs.len(), 1);
    assert!(matches!(msgs[0].content[0], ContentItem::Video(_)));

    assert!(video_r1::render_question("q", ProblemType::MultipleChoice, &[]).is_err());
    let e = err_string(video_r1::render_question(
        "q",
        ProblemType::Numerical,
        &opts,
    ));
    assert!(e.contains("options"), "{e}");
}

#[test]
fn problem_type_names() {
    for (s, k) in [
        ("multiple choice", ProblemType::MultipleChoice),
        ("multiple-choice", ProblemType::MultipleChoice),
        ("numerical", ProblemType::Numerical),
        ("regression", ProblemType::Regression),
        ("OCR", ProblemType::Ocr),
        ("free-form", ProblemType::FreeForm),
        ("free_form", ProblemType::FreeForm),
    ] {
        assert_eq!(s.parse::<ProblemType>().unwrap(), k, "{s}");
    }
    for k in ProblemType::ALL {
        assert_eq!(k.as_str().parse::<ProblemType>().unwrap(), k);
    }
    assert!("essay"
        .parse::<ProblemType>()
        .unwrap_err()
        .to_string()
        .contains("essay"));
}

// ---------------------------------------------------------------------------------------------
// (d) parsing

#[test]
fn answer_and_think_parsing() {
    let out = "<think>Let me think.\nThe ball rolls.</think>\n<answer> B </answer>";
    assert_eq!(parse_answer(out).as_deref(), Some("B"));
    assert_eq!(
        parse_think(out).as_deref(),
        Some("Let me think.\nThe ball rolls.")
    );
    // Dot matches newline; inner whitespace is kept, outer stripped.
    assert_eq!(
        parse_answer("<answer>\n 3.14\n\nmore \n</answer>").as_deref(),
        Some("3.14\n\nmore")
    );
    // First match wins.
    assert_eq!(
        parse_answer("<answer>A</answer><answer>C</answer>").as_deref(),
        Some("A")
    );
    // Lazy: ends at the first closing tag.
    assert_eq!(
        parse_answer("<answer>A</answer> x </answer>").as_deref(),
        Some("A")
    );
    // A second opening tag inside is part of the text, as the regex gives.
    assert_eq!(
        parse_answer("<answer>x <answer>y</answer>").as_deref(),
        Some("x <answer>y")
    );
    assert_eq!(parse_answer("<answer></answer>").as_deref(), Some(""));
    assert_eq!(parse_answer("<answer> \t\n</answer>").as_deref(), Some(""));
    // Unterminated or missing tags.
    assert_eq!(parse_answer("<answer>B"), None);
    assert_eq!(parse_answer("B</answer>"), None);
    assert_eq!(parse_answer("</answer><answer>"), None);
    assert_eq!(parse_answer("no tags"), None);
    assert_eq!(parse_think("<think>still going"), None);
    // Unicode whitespace is stripped as Python's strip() does.
    assert_eq!(
        parse_answer("<answer>\u{3000}猫\u{a0}</answer>").as_deref(),
        Some("猫")
    );
}

// ---------------------------------------------------------------------------------------------
// (e) messages files and bad input

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn messages_file_parses_all_item_forms() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "msgs.json",
        r#"[
          {"role": "system", "content": "Be brief."},
          {"role": "user", "content": [
            {"type": "video", "video": "clips/a.mp4", "fps": 2, "nframes": 16, "min_pixels": 3136.0,
             "max_pixels": 200704, "total_pixels": 90316800.0, "min_frames": 4, "max_frames": 64,
             "resized_height": 280, "resized_width": 420},
            {"image": "/abs/b.png", "max_pixels": 12845056},
            {"type": "image_url", "image_url": {"url": "file:///abs/c.jpg"}},
            {"video": "file://d.mp4"},
            {"text": "What?"}
          ]}
        ]"#,
    );
    let msgs = load_messages(&p).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0], Message::text("system", "Be brief."));
    let c = &msgs[1].content;
    assert_eq!(
        c[0],
        ContentItem::Video(VideoItem {
            path: dir.path().join("clips/a.mp4"),
            fps: Some(2.0),
            nframes: Some(16),
            min_pixels: Some(3136),
            max_pixels: Some(200704),
            total_pixels: Some(90316800.0),
            min_frames: Some(4),
            max_frames: Some(64),
            resized_height: Some(280),
            resized_width: Some(420),
        })
    );
    assert_eq!(
        c[1],
        ContentItem::Image(ImageItem {
            path: "/abs/b.png".into(),
            max_pixels: Some(12845056),
            ..Default::default()
        })
    );
    assert_eq!(c[2], image("/abs/c.jpg"));
    assert_eq!(
        c[3],
        ContentItem::Video(VideoItem {
            path: dir.path().join("d.mp4"),
            ..Default::default()
        })
    );
    assert_eq!(c[4], ContentItem::Text("What?".into()));
    assert_eq!(
        render_stock(&msgs),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n"
    );
    // {"messages": [...]} is accepted too.
    let p2 = write(
        dir.path(),
        "obj.json",
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
    );
    assert_eq!(
        load_messages(&p2).unwrap(),
        vec![Message::text("user", "hi")]
    );
}

#[test]
fn bad_messages_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("[{\"role\": \"user\", \"content\": ", &["invalid JSON"]),
        ("{\"role\": \"user\"}", &["list of messages"]),
        ("[]", &["empty"]),
        (
            r#"[{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}]"#,
            &[
                "message 0",
                "content item 0",
                "unknown content type \"audio\"",
            ],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "video", "fps": 2}]}]"#,
            &["content item 1", "without a \"video\" path"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "image"}]}]"#,
            &["without an \"image\" path"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "image", "image": "a.png", "max_pixels": "big"}]}]"#,
            &["\"max_pixels\"", "integer", "\"big\""],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "image", "image": "a.png", "min_pixels": 3.5}]}]"#,
            &["\"min_pixels\"", "3.5"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "video", "video": "a.mp4", "fps": -1}]}]"#,
            &["\"fps\"", "positive"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "video", "video": 5}]}]"#,
            &["\"video\" must be a path string"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "video", "video": ["f1.jpg", "f2.jpg"]}]}]"#,
            &["list of frame images"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "image", "image": "https://x/a.png"}]}]"#,
            &["URL"],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "image", "image": "a.png", "max_pixel": 5}]}]"#,
            &["unknown field \"max_pixel\""],
        ),
        (
            r#"[{"role": "user", "content": [{"type": "text", "text": 3}]}]"#,
            &["\"text\" must be a string"],
        ),
        (
            r#"[{"role": "user", "content": [{"foo": 1}]}]"#,
            &["no \"type\""],
        ),
        (
            r#"[{"role": "usr", "content": "x"}]"#,
            &["unknown role \"usr\""],
        ),
        (r#"[{"content": "x"}]"#, &["missing \"role\""]),
        (r#"[{"role": "user"}]"#, &["missing \"content\""]),
        (
            r#"[{"role": "user", "content": 3}]"#,
            &["\"content\" must be a string or a list"],
        ),
    ];
    for (i, (json, needles)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("bad{i}.json"), json);
        let e = err_string(load_messages(&p));
        assert!(
            e.contains(&p.display().to_string()),
            "error does not name the file: {e}"
        );
        for n in *needles {
            assert!(e.contains(n), "case {i}: {e:?} lacks {n:?}");
        }
    }
    let missing = dir.path().join("nope.json");
    let e = err_string(load_messages(&missing));
    assert!(e.contains("nope.json"), "{e}");
}
