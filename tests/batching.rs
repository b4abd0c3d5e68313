//! The multi-sequence engine on the fixture model, CPU, f32: a sequence's tokens and logits
//! are bit-identical whether it runs alone, in a batch of 8 or 64, joins while others decode,
//! is prefilled in chunks, or reuses a cached prefix; the pool's limits and cancellation; and
//! the CPU matmul's batch invariance that all of this rests on. On CUDA (bf16), greedy tokens
//! of a batch equal those of each request alone.

mod common;

use common::*;
use reel::backend::cpu::CpuBackend;
use reel::backend::{Backend, HostBytes, TRef};
use reel::engine::sampling::SamplingParams;
use reel::engine::{Device, Engine, EngineOptions, Event, Output, Request, RequestId, StopReason};
use reel::model::inputs::MediaOptions;
use reel::model::Model;
use reel::prompt::messages::{ContentItem, ImageItem, Message, VideoItem};
use reel::{DType, Shape};
use std::collections::HashMap;

fn engine(max_batch: usize, chunk: usize, prefix_cache: bool, ctx: usize) -> Engine {
    let model = Model::load(&model_dir()).unwrap();
    Engine::new(
        model,
        EngineOptions {
            device: Device::Cpu,
            act: DType::F32,
            ctx,
            max_batch,
            prefill_chunk: chunk,
            prefix_cache,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

fn image(name: &str) -> ContentItem {
    ContentItem::Image(ImageItem {
        path: fixtures().join("inputs").join(name),
        ..ImageItem::default()
    })
}

fn video() -> ContentItem {
    ContentItem::Video(VideoItem {
        path: fixtures().join("inputs/video_24f_6fps_60x80.mp4"),
        nframes: Some(8),
        ..VideoItem::default()
    })
}

/// A request from a conversation (media decoded and preprocessed by the model).
fn request(
    e: &Engine,
    system: Option<&str>,
    content: Vec<ContentItem>,
    sampling: SamplingParams,
    max_new: usize,
    record: bool,
) -> Request {
    let p = e
        .model
        .prepare(
            &[Message::new("user", content)],
            system,
            &MediaOptions::default(),
        )
        .unwrap();
    Request {
        prompt_tokens: p.prompt_tokens,
        sampling,
        max_new_tokens: max_new,
        stop_tokens: vec![],
        record_logits: record,
        vision: p.vision,
        ..Request::default()
    }
}

fn text(s: &str) -> ContentItem {
    ContentItem::Text(s.to_string())
}

fn seeded(seed: u64, t: f32, k: Option<usize>, p: f32, pen: f32) -> SamplingParams {
    SamplingParams {
        temperature: t,
        top_k: k,
        top_p: p,
        seed,
        repetition_penalty: pen,
    }
}

/// A mix of 8 requests: text of different lengths, images, a video; greedy, seeded top-k /
/// top-p, a repetition penalty (sampled on the host); some record their logits. `salt`
/// varies questions and seeds.
fn mix(e: &Engine, salt: usize) -> Vec<Request> {
    let q = |s: &str| format!("{s} (variant {salt})");
    let samplers = [
        SamplingParams::default(),
        seeded(7 + salt as u64, 0.8, Some(20), 0.9, 1.0),
        seeded(11 + salt as u64, 1.0, None, 0.95, 1.0),
        seeded(3 + salt as u64, 0.7, Some(5), 1.0, 1.2),
    ];
    let mut v = vec![
        request(
            e,
            None,
            vec![text(&q("Hello, who are you?"))],
            samplers[0],
            10,
            true,
        ),
        request(
            e,
            Some("You are terse."),
            vec![text(&q("Count to ten, then say more words."))],
            samplers[1],
            12,
            false,
        ),
        request(
            e,
            None,
            vec![
                image("image_56x84.png"),
                text(&q("What is in the picture?")),
            ],
            samplers[2],
            9,
            true,
        ),
        request(
            e,
            None,
            vec![text(&q("Tell me a story."))],
            samplers[3],
            11,
            true,
        ),
        request(
            e,
            None,
            vec![video(), text(&q("What happens in the video?"))],
            samplers[salt % 4],
            8,
            salt.is_multiple_of(2),
        ),
        request(
            e,
            None,
            vec![image("image_130x145.png"), text(&q("Describe it."))],
            samplers[1],
            7,
            false,
        ),
        request(e, None, vec![text(&q("A"))], samplers[0], 6, false),
        request(
            e,
            Some("Answer in French."),
            vec![text(&q("Where is the station? Please be precise."))],
            samplers[(salt + 2) % 4],
            10,
            true,
        ),
    ];
    // One request stops at its own third greedy token (a stop mid-batch).
    v[6].stop_tokens = vec![e.model.eos_tokens()[0]];
    v
}

fn alone(reqs: &[Request]) -> Vec<Output> {
    let mut e = engine(1, 0, false, 4096);
    reqs.iter()
        .map(|r| e.generate(r, &mut |_| {}).unwrap())
        .collect()
}

/// Drives the engine until every listed request finished; returns outputs and streamed tokens.
fn drive(
    e: &mut Engine,
    ids: &[RequestId],
    out: &mut HashMap<RequestId, Output>,
    streamed: &mut HashMap<RequestId, Vec<u32>>,
) {
    while ids.iter().any(|id| !out.contains_key(id)) {
        for ev in e.step().unwrap() {
            match ev {
                Event::Token { id, token } => streamed.entry(id).or_default().push(token),
                Event::Finished { id, output } => {
                    out.insert(id, *output);
                }
                Event::Failed { id, error } => panic!("request {id} failed: {error}"),
            }
        }
    }
}

fn batched(e: &mut Engine, reqs: &[Request]) -> Vec<Output> {
    let ids: Vec<RequestId> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    let (mut out, mut streamed) = (HashMap::new(), HashMap::<RequestId, Vec<u32>>::new());
    drive(e, &ids, &mut out, &mut streamed);
    ids.iter()
        .map(|id| {
            let o = out.remove(id).unwrap();
            assert_eq!(streamed.remove(id).unwrap_or_default(), o.generated_tokens);
            o
        })
        .collect()
}

/// Tokens, stop reason and every recorded logit, bit for bit.
fn same(a: &Output, b: &Output, what: &str) {
    assert_eq!(a.prompt_tokens, b.prompt_tokens, "{what}: prompt");
    assert_eq!(a.generated_tokens, b.generated_tokens, "{what}: tokens");
    assert_eq!(a.stop, b.stop, "{what}: stop");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    assert_eq!(
        bits(&a.logits_last),
        bits(&b.logits_last),
        "{what}: logits_last"
    );
    assert_eq!(a.step_logits.len(), b.step_logits.len(), "{what}: steps");
    for (i, (x, y)) in a.step_logits.iter().zip(&b.step_logits).enumerate() {
        assert_eq!(bits(x), bits(y), "{what}: step {i} logits");
    }
}

#[test]
fn batch_of_8_and_64_equal_alone() {
    let e0 = engine(1, 0, false, 4096);
    let reqs8 = mix(&e0, 0);
    let want8 = alone(&reqs8);
    // The stop id shows up in at least one output, so a stop mid-batch is exercised.
    assert!(
        want8.iter().any(|o| o.stop == StopReason::Eos) || want8[6].generated_tokens.len() == 6
    );
    let mut e = engine(8, 64, false, 4096);
    for (i, (got, want)) in batched(&mut e, &reqs8).iter().zip(&want8).enumerate() {
        same(got, want, &format!("batch 8, request {i}"));
        assert!(!got.generated_tokens.is_empty());
    }
    let reqs64: Vec<Request> = (0..8).flat_map(|salt| mix(&e0, salt)).collect();
    let mut want64 = want8.clone();
    want64.extend(alone(&reqs64[8..]));
    let mut e = engine(64, 48, false, 16384);
    for (i, (got, want)) in batched(&mut e, &reqs64).iter().zip(&want64).enumerate() {
        same(got, want, &format!("batch 64, request {i}"));
    }
}

#[test]
fn joining_midway_and_chunked_prefill_equal_alone() {
    let e0 = engine(1, 0, false, 4096);
    let reqs = mix(&e0, 3);
    let want = alone(&reqs);
    for chunk in [1usize, 7, 64] {
        let mut e = engine(8, chunk, false, 4096);
        let (mut out, mut streamed) = (HashMap::new(), HashMap::<RequestId, Vec<u32>>::new());
        let mut ids = Vec::new();
        // Three start; each of the rest joins after a few more steps, while others decode.
        for r in &reqs[..3] {
            ids.push(e.submit(r.clone()).unwrap());
        }
        for r in &reqs[3..] {
            for _ in 0..3 {
                for ev in e.step().unwrap() {
                    match ev {
                        Event::Token { id, token } => streamed.entry(id).or_default().push(token),
                        Event::Finished { id, output } => {
                            out.insert(id, *output);
                        }
                        Event::Failed { id, error } => panic!("{id}: {error}"),
                    }
                }
            }
            ids.push(e.submit(r.clone()).unwrap());
        }
        drive(&mut e, &ids, &mut out, &mut streamed);
        for (i, id) in ids.iter().enumerate() {
            same(&out[id], &want[i], &format!("chunk {chunk}, request {i}"));
            assert_eq!(streamed[id], out[id].generated_tokens);
        }
    }
}

/// Same system prompt and video, different questions: the follow-ups reuse the KV of the
/// shared pages and skip the vision tower, and still give exactly the cold run's tokens and
/// logits. A question placed before the video shares less KV but still skips the tower.
#[test]
fn prefix_and_vision_reuse_equal_cold_runs() {
    let sys = Some("You are a careful video analyst. Think step by step before answering.");
    let e0 = engine(1, 0, false, 4096);
    let greedy = SamplingParams::default();
    let reqs = vec![
        request(
            &e0,
            sys,
            vec![video(), text("What moves first?")],
            greedy,
            8,
            true,
        ),
        request(
            &e0,
            sys,
            vec![video(), text("How many objects are there?")],
            greedy,
            8,
            true,
        ),
        request(
            &e0,
            sys,
            vec![video(), text("What colour is the background?")],
            seeded(5, 0.9, Some(30), 0.9, 1.0),
            8,
            false,
        ),
        request(
            &e0,
            sys,
            vec![text("First a question, then the video:"), video()],
            greedy,
            8,
            true,
        ),
    ];
    let cold = alone(&reqs);
    let mut e = engine(4, 64, true, 4096);
    let first = e.generate(&reqs[0], &mut |_| {}).unwrap();
    same(&first, &cold[0], "first request");
    assert_eq!(first.timings.cached_tokens, 0);
    assert!(first.timings.vision_s > 0.0);
    let n = reqs[1].prompt_tokens.len();
    for (i, r) in reqs.iter().enumerate().skip(1) {
        let o = e.generate(r, &mut |_| {}).unwrap();
        same(&o, &cold[i], &format!("request {i} with cache"));
        let t = &o.timings;
        assert_eq!(t.media_items, 1);
        assert_eq!(t.media_reused, 1, "request {i}: the tower is skipped");
        assert_eq!(t.vision_s, 0.0, "request {i}");
        assert_eq!(t.cached_tokens + t.prefilled_tokens, r.prompt_tokens.len());
        if i < 3 {
            // System prompt, video and the template around it: every full page before the
            // question.
            let common = reqs[0]
                .prompt_tokens
                .iter()
                .zip(&r.prompt_tokens)
                .take_while(|(a, b)| a == b)
                .count();
            assert_eq!(t.cached_tokens, common / 16 * 16, "request {i}");
            assert!(t.cached_tokens > n / 2, "request {i}: {t:?}");
        } else {
            assert!(t.cached_tokens < 40, "request {i}: {t:?}");
        }
    }
    // The same in a batch: submitted together, the later ones share pages as soon as the
    // first one's prefill wrote them.
    let mut e = engine(4, 16, true, 4096);
    for (i, (got, want)) in batched(&mut e, &reqs).iter().zip(&cold).enumerate() {
        same(got, want, &format!("batched request {i} with cache"));
    }
}

/// A request the pool can never hold fails alone at submission; requests that fit one by one
/// but not together wait for room and then give their alone results.
#[test]
fn pool_limits() {
    let e0 = engine(1, 0, false, 4096);
    let reqs: Vec<Request> = mix(&e0, 1).into_iter().take(4).collect();
    let want = alone(&reqs);
    let longest = reqs
        .iter()
        .map(|r| r.prompt_tokens.len() + r.max_new_tokens)
        .max()
        .unwrap();
    let mut e = engine(4, 32, false, longest + 20);
    let mut big = reqs[0].clone();
    big.prompt_tokens = vec![1; longest + 40];
    let err = e.submit(big).unwrap_err().to_string();
    assert!(err.contains("raise --ctx"), "{err}");
    let ids: Vec<RequestId> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    let (mut out, mut streamed) = (HashMap::new(), HashMap::<RequestId, Vec<u32>>::new());
    let mut max_waiting = 0;
    while ids.iter().any(|id| !out.contains_key(id)) {
        for ev in e.step().unwrap() {
            match ev {
                Event::Token { id, token } => streamed.entry(id).or_default().push(token),
                Event::Finished { id, output } => {
                    out.insert(id, *output);
                }
                Event::Failed { id, error } => panic!("{id}: {error}"),
            }
        }
        max_waiting = max_waiting.max(e.load().0);
        assert!(e.load().1 <= 2, "the pool holds at most two of them");
    }
    assert!(max_waiting > 0, "some requests had to wait");
    for (i, id) in ids.iter().enumerate() {
        same(&out[id], &want[i], &format!("request {i}"));
    }
    assert!(ids.iter().any(|id| out[id].timings.queue_s > 0.0));
}

/// Cancelling a decoding request ends it with what it has and frees its pages; the others
/// are unaffected.
#[test]
fn cancel_frees_pages() {
    let e0 = engine(1, 0, false, 4096);
    let reqs: Vec<Request> = mix(&e0, 2).into_iter().take(3).collect();
    let want = alone(&reqs);
    let mut e = engine(4, 0, false, 1024);
    let (free0, _) = {
        // The pool exists after the first submission's admission.
        let id = e.submit(reqs[0].clone()).unwrap();
        let ids = [
            id,
            e.submit(reqs[1].clone()).unwrap(),
            e.submit(reqs[2].clone()).unwrap(),
        ];
        let mut toks: HashMap<RequestId, Vec<u32>> = HashMap::new();
        for _ in 0..3 {
            for ev in e.step().unwrap() {
                if let Event::Token { id, token } = ev {
                    toks.entry(id).or_default().push(token);
                }
            }
        }
        e.cancel(ids[1]);
        let mut out = HashMap::new();
        let mut streamed = toks;
        drive(&mut e, &ids, &mut out, &mut streamed);
        let c = &out[&ids[1]];
        assert_eq!(c.stop, StopReason::Cancelled);
        assert!(!c.generated_tokens.is_empty() && c.generated_tokens.len() < 12);
        assert_eq!(
            c.generated_tokens,
            want[1].generated_tokens[..c.generated_tokens.len()]
        );
        same(&out[&ids[0]], &want[0], "request 0");
        same(&out[&ids[2]], &want[2], "request 2");
        e.kv_usage()
    };
    // Every page is free again (no prefix cache here).
    assert_eq!(free0 * 16, e.capacity_tokens());
    assert!(!e.has_work());
    // Cancelling an unknown or finished id is harmless.
    e.cancel(12345);
    assert!(e.step().unwrap().is_empty());
}

/// The CPU matmul gives every output row the same bits whatever the number of rows M, on every
/// instruction set this CPU runs: for every weight type with f32 activations (the reference
/// mode, what makes batched decoding exact), and for the quantized types (exact integer dots)
/// with bf16 activations too. bf16 activations with float weights may take a faster kernel per
/// M (a different summation order), so they are not held to it.
#[test]
fn matmul_rows_do_not_depend_on_m() {
    for isa in reel::backend::cpu::Isa::available() {
        let mut be = CpuBackend::new();
        be.set_isa(isa).unwrap();
        matmul_rows_on(&mut be, &isa.to_string());
    }
}

fn matmul_rows_on(be: &mut CpuBackend, isa: &str) {
    let (n, k) = (48usize, 3584usize);
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let wvals: Vec<f32> = (0..n * k).map(|_| rnd() * 0.05).collect();
    let xvals: Vec<f32> = (0..64 * k).map(|_| rnd()).collect();
    let mut broken = Vec::new();
    for wdt in [
        DType::BF16,
        DType::F16,
        DType::F32,
        DType::Q8_0,
        DType::Q4K,
        DType::Q6K,
    ] {
        let rb = reel::quant::row_bytes(wdt, k).unwrap();
        let mut wb = vec![0u8; rb * n];
        for (src, dst) in wvals.chunks_exact(k).zip(wb.chunks_exact_mut(rb)) {
            match wdt {
                DType::BF16 => dst.copy_from_slice(
                    &src.iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                DType::F16 => dst.copy_from_slice(
                    &src.iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                DType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
                q => reel::quant::quantize_row(q, src, dst).unwrap(),
            }
        }
        let w = be.load_weight(HostBytes::from_vec(wb)).unwrap();
        let wt = TRef::new(w, 0, wdt, Shape::new(&[n, k]));
        for xdt in [DType::F32, DType::BF16] {
            let xb: Vec<u8> = match xdt {
                DType::F32 => bytemuck::cast_slice(&xvals).to_vec(),
                _ => xvals
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            let xbuf = be.alloc(xb.len()).unwrap();
            be.write(xbuf, 0, &xb).unwrap();
            let run = |be: &mut CpuBackend, r0: usize, m: usize| -> Vec<u32> {
                let x = TRef::new(xbuf, xdt.bytes_for(r0 * k), xdt, Shape::new(&[m, k]));
                let ob = be.alloc(m * n * 4).unwrap();
                let o = TRef::new(ob, 0, DType::F32, Shape::new(&[m, n]));
                be.matmul(x, wt, None, o).unwrap();
                let mut raw = vec![0u8; m * n * 4];
                be.read(ob, 0, &mut raw).unwrap();
                be.free(ob);
                bytemuck::cast_slice::<u8, u32>(&raw).to_vec()
            };
            let all = run(be, 0, 64);
            let seven = run(be, 0, 7);
            let mut bad = Vec::new();
            if seven[..] != all[..7 * n] {
                bad.push("M=7 vs M=64");
            }
            for r in [0usize, 5, 63] {
                if run(be, r, 1)[..] != all[r * n..(r + 1) * n] {
                    bad.push("M=1 vs M=64");
                    break;
                }
            }
            let held = xdt == DType::F32 || wdt.is_quantized();
            if held && !bad.is_empty() {
                broken.push(format!("{isa}: {wdt} weights, {xdt} x: {}", bad.join(", ")));
            }
            be.free(xbuf);
        }
    }
    assert!(
        broken.is_empty(),
        "batch-variant matmul paths:\n{}",
        broken.join("\n")
    );
}

/// On CUDA in bf16, greedy tokens of a batch of eight (chunked prefill joined with decoding
/// rows, the batched GEMM, paged attention over eight page tables, on-device sampling, a graph
/// per batch size) equal each request run alone on the same backend. The batched kernels may
/// round differently from the single-row ones; the fixture's greedy choices are not near ties.
/// Skipped, saying so, without a device (REEL_REQUIRE_CUDA=1 makes that a failure).
#[test]
fn cuda_bf16_batch_greedy_equals_alone() {
    // Text and images only: the GPU run's test build may leave FFmpeg out.
    let e0 = engine(1, 0, false, 4096);
    let greedy = SamplingParams::default();
    let reqs: Vec<Request> = [
        (None, vec![text("Hello, who are you?")], 10),
        (Some("You are terse."), vec![text("Count to ten.")], 12),
        (
            None,
            vec![image("image_56x84.png"), text("What is in the picture?")],
            9,
        ),
        (None, vec![text("Tell me a story.")], 11),
        (
            None,
            vec![image("image_130x145.png"), text("Describe it.")],
            7,
        ),
        (None, vec![text("A")], 6),
        (
            None,
            vec![image("image_90x200.png"), text("And this one?")],
            8,
        ),
        (
            Some("Answer in French."),
            vec![text("Where is the station?")],
            10,
        ),
    ]
    .into_iter()
    .map(|(sys, content, n)| request(&e0, sys, content, greedy, n, false))
    .collect();
    if let Err(e) = reel::backend::cuda::open(0) {
        if std::env::var("REEL_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("REEL_REQUIRE_CUDA=1 but the CUDA backend did not open: {e}");
        }
        println!("cuda: skipped: no CUDA device ({e})");
        return;
    }
    let cuda = |max_batch: usize, chunk: usize| {
        Engine::new(
            Model::load(&model_dir()).unwrap(),
            EngineOptions {
                device: Device::Cuda(0),
                act: DType::BF16,
                ctx: 4096,
                max_batch,
                prefill_chunk: chunk,
                prefix_cache: false,
                ..EngineOptions::default()
            },
        )
        .unwrap()
    };
    let mut one = cuda(1, 0);
    let want: Vec<Output> = reqs
        .iter()
        .map(|r| one.generate(r, &mut |_| {}).unwrap())
        .collect();
    drop(one);
    let mut e = cuda(8, 32);
    for (i, (got, want)) in batched(&mut e, &reqs).iter().zip(&want).enumerate() {
        assert_eq!(got.prompt_tokens, want.prompt_tokens, "request {i}");
        assert_eq!(
            got.generated_tokens, want.generated_tokens,
            "request {i}: batched greedy tokens"
        );
    }
}
