//! The language model against transformers 4.49 goldens (tests/fixtures): prompt ids, every
//! layer's hidden state, last-position logits and 8 greedy tokens, in f32 and bf16.

mod common;

use common::*;
use reel::engine::sampling::SamplingParams;
use reel::engine::{Device, Engine, EngineOptions, Request};
use reel::model::Model;
use reel::DType;

fn engine(act: DType) -> Engine {
    let model = Model::load(&model_dir()).unwrap();
    let device = match std::env::var("REEL_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    Engine::new(
        model,
        EngineOptions {
            device,
            act,
            ctx: 256,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

fn prompt_ids(e: &Engine, case_name: &str) -> Vec<u32> {
    let c = case(case_name);
    let user = c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap();
    let text = user["content"][0]["text"].as_str().unwrap();
    let system = c["system_prompt"].as_str();
    e.model.text_prompt(text, system).unwrap()
}

fn greedy(e: &mut Engine, ids: Vec<u32>) -> reel::engine::Output {
    let req = Request {
        prompt_tokens: ids,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_new_tokens: 8,
        stop_tokens: vec![],
        record_logits: true,
        vision: vec![],
        media_decode_s: 0.0,
        preprocess_s: 0.0,
    };
    e.generate(&req, &mut |_| {}).unwrap()
}

/// f32 activations reproduce the f32 reference to rounding noise, layer by layer.
#[test]
fn text_f32_matches_transformers() {
    for case_name in ["text_only", "text_system"] {
        let g = load_golden(&format!("golden/{case_name}.safetensors"));
        let mut e = engine(DType::F32);
        let ids = prompt_ids(&e, case_name);
        let want_ids: Vec<u32> = g["in.input_ids"].i64().iter().map(|&x| x as u32).collect();
        assert_eq!(ids, want_ids, "{case_name}: prompt ids");

        let l = ids.len();
        let pos: Vec<i32> = g["position_ids"].i64().iter().map(|&x| x as i32).collect();
        let n_layers = e.model.config.text.num_hidden_layers;
        let taps: Vec<String> = (0..n_layers)
            .map(|i| format!("llm.layer.{i}"))
            .chain([
                "llm.inputs_embeds".to_string(),
                "llm.final_norm".to_string(),
            ])
            .collect();
        let tap_refs: Vec<&str> = taps.iter().map(|s| s.as_str()).collect();
        e.text.reset(e.be.as_mut()).unwrap();
        let outs = e
            .text
            .forward_taps(e.be.as_mut(), &ids, &pos, None, &tap_refs)
            .unwrap();
        for (name, got) in tap_refs.iter().zip(&outs[1..]) {
            let want = g[*name].f32();
            assert_eq!(got.len(), want.len(), "{name}");
            let (d, m) = max_diff(got, &want);
            println!("{case_name} {name}: max |diff| {d:.2e} (max |ref| {m:.2})");
            assert!(d <= 1e-4 * m.max(1.0), "{case_name} {name}: max diff {d}");
        }
        let (d, m) = max_diff(&outs[0], &g["logits_last"].f32());
        println!("{case_name} logits_last: max |diff| {d:.2e} (max |ref| {m:.2}), L = {l}");
        assert!(
            d <= 1e-4 * m.max(1.0),
            "{case_name} logits_last: max diff {d}"
        );

        let out = greedy(&mut e, ids);
        let want: Vec<u32> = g["greedy.tokens"].i64().iter().map(|&x| x as u32).collect();
        assert_eq!(out.generated_tokens, want, "{case_name}: greedy tokens");
        let steps = &g["greedy.step_logits"];
        let vocab = steps.shape[1];
        for (i, got) in out.step_logits.iter().enumerate() {
            let want = &steps.f32()[i * vocab..(i + 1) * vocab];
            let (d, m) = max_diff(got, want);
            assert!(d <= 1e-4 * m.max(1.0), "{case_name} step {i}: max diff {d}");
        }
    }
}

/// bf16 activations against transformers run in bf16 on the CPU: rounding differs in the last
/// bit here and there (accumulation order), so logits agree to a bf16-sized tolerance and the
/// greedy tokens are identical.
#[test]
fn text_bf16_matches_transformers_bf16() {
    let g = load_golden("golden/text_only_bf16.safetensors");
    let mut e = engine(DType::BF16);
    let ids = prompt_ids(&e, "text_only");
    let out = greedy(&mut e, ids);
    let (d, m) = max_diff(&out.logits_last, &g["logits_last"].f32());
    println!("bf16 logits_last: max |diff| {d:.3e} (max |ref| {m:.2})");
    assert!(d <= 0.05 * m.max(1.0), "bf16 logits_last: max diff {d}");
    let want: Vec<u32> = g["greedy.tokens"].i64().iter().map(|&x| x as u32).collect();
    assert_eq!(out.generated_tokens, want, "bf16 greedy tokens");
}

/// The decode step of the fixture model replayed from its captured graph gives the same
/// logits and tokens, bit for bit, as eager execution over several steps.
#[test]
fn decode_graph_replay_matches_eager() {
    use reel::backend::SampleArgs;
    use reel::model::text;
    if let Err(e) = reel::backend::cuda::open(0) {
        if std::env::var("REEL_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
            panic!("REEL_REQUIRE_CUDA=1 but the CUDA backend did not open: {e}");
        }
        println!("cuda: skipped ({e})");
        return;
    }
    let dir = model_dir();
    let run = |graphs: bool| -> (Vec<i32>, Vec<Vec<f32>>, usize) {
        let model = Model::load(&dir).unwrap();
        let mut e = Engine::new(
            model,
            EngineOptions {
                device: Device::Cuda(0),
                act: DType::BF16,
                ctx: 64,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let ids = e.model.text_prompt("Hello, who are you?", None).unwrap();
        let n = ids.len();
        let pos: Vec<i32> = (0..3).flat_map(|_| 0..n as i32).collect();
        let be = e.be.as_mut();
        let logits = e.text.forward(be, &ids, &pos, None).unwrap();
        let first = reel::engine::sampling::argmax(&logits).unwrap();
        e.text.decode_executor(be).unwrap().set_graphs(graphs);
        let (mut toks, mut all) = (Vec::new(), Vec::new());
        for step in 0..6 {
            let p = [(n + step) as i32; 3];
            let input = (step == 0).then_some(first);
            let pend = e
                .text
                .decode_start(be, input, &p, &SampleArgs::greedy())
                .unwrap();
            toks.push(be.read_token_wait(pend).unwrap());
            let exec = e.text.decode_executor(be).unwrap();
            all.push(exec.read_f32(be, text::OUT_LOGITS).unwrap());
        }
        let captures = e.text.decode_executor(be).unwrap().captures();
        (toks, all, captures)
    };
    let (tg, lg, cg) = run(true);
    let (te, le, ce) = run(false);
    assert_eq!(
        (cg, ce),
        (1, 0),
        "one capture with graphs on, none with them off"
    );
    assert_eq!(tg, te);
    assert_eq!(lg, le);
    assert!(tg.iter().all(|&t| t >= 0), "{tg:?}");
}
