use super::*;

fn engine() -> Engine {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model");
    let model = Model::load(&dir).unwrap();
    Engine::new(
        model,
        EngineOptions {
            device: Device::Cpu,
            act: DType::F32,
            ctx: 96,
            ..EngineOptions::default()
        },
    )
    .unwrap()
}

fn request(ids: &[u32], sampling: SamplingParams, host: bool, stops: &[u32]) -> Request {
    Request {
        prompt_tokens: ids.to_vec(),
        sampling,
        max_new_tokens: 8,
        stop_tokens: stops.to_vec(),
        record_logits: host,
        ..Request::default()
    }
}

/// `record_logits` keeps the host sampler on the read-back logits; without it the backend
/// samples with the row's arguments. Both follow one definition, so greedy and seeded runs
/// give the same tokens; a stop token ends both at the same place, and every page goes back
/// to the pool or the prefix cache.
#[test]
fn backend_sampling_matches_host_sampling() {
    let mut e = engine();
    let ids = e.model.text_prompt("Hello, who are you?", None).unwrap();
    let seeded = SamplingParams {
        temperature: 0.8,
        top_k: Some(20),
        top_p: 0.9,
        seed: 7,
        repetition_penalty: 1.0,
    };
    let mut greedy_tokens = Vec::new();
    for sampling in [SamplingParams::default(), seeded] {
        let mut streamed = Vec::new();
        let host = e
            .generate(&request(&ids, sampling, true, &[]), &mut |_| {})
            .unwrap();
        let dev = e
            .generate(&request(&ids, sampling, false, &[]), &mut |t| {
                streamed.push(t)
            })
            .unwrap();
        assert_eq!(dev.generated_tokens.len(), 8);
        assert_eq!(host.generated_tokens, dev.generated_tokens, "{sampling:?}");
        assert_eq!(streamed, dev.generated_tokens);
        assert!(dev.step_logits.is_empty());
        assert_eq!(host.step_logits.len(), 8);
        assert_eq!(dev.logits_last, host.logits_last);
        if sampling.is_greedy() {
            greedy_tokens = dev.generated_tokens.clone();
        }
    }
    let stop = greedy_tokens[2];
    let first = greedy_tokens.iter().position(|&t| t == stop).unwrap();
    for host in [true, false] {
        let o = e
            .generate(
                &request(&ids, SamplingParams::default(), host, &[stop]),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(o.stop, StopReason::Eos);
        assert_eq!(o.generated_tokens, greedy_tokens[..=first]);
    }
    let (free, cached) = e.kv_usage();
    assert_eq!((free + cached) * e.opts.page_size, e.capacity_tokens());
    assert!(
        cached > 0,
        "the prompt's full pages stay in the prefix cache"
    );
}

/// Bad requests are refused at submission, alone.
#[test]
fn submit_refuses_bad_requests() {
    let mut e = engine();
    let e1 = e.submit(Request::default()).unwrap_err().to_string();
    assert!(e1.contains("empty"), "{e1}");
    let long = request(&[5; 97], SamplingParams::default(), false, &[]);
    let e2 = e.submit(long).unwrap_err().to_string();
    assert!(e2.contains("97 tokens") && e2.contains("--ctx"), "{e2}");
    let bad = SamplingParams {
        temperature: -1.0,
        ..SamplingParams::default()
    };
    let e3 = e.submit(request(&[5; 4], bad, false, &[])).unwrap_err();
    // The library names the setting; the CLI reports it under its flag.
    assert!(
        matches!(
            e3,
            Error::Setting {
                name: "temperature",
                ..
            }
        ),
        "{e3}"
    );
    assert!(!e.has_work());
}
