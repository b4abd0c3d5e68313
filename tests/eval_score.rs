//! `reel::eval` against the reference: tests/fixtures/gen_eval.py re-implements Video-R1's
//! evaluation (prompt and `reward_fn`) in Python with torch, jiwer, rouge_score and the
//! transformers chat template, and wrote the goldens read here.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use reel::eval::data::{self, Entry, LoadOptions};
use reel::eval::report::{union_length, Generation, ResultLine, Summary, Timings};
use reel::eval::resume::{done_ids, entry_key, read_results, ResultWriter};
use reel::eval::{metrics, prompt, score, shard, Shard};
use reel::prompt::video_r1::ProblemType;
use reel::prompt::{ChatTemplate, RenderOptions, Tokenizer};
use serde_json::Value;

fn eval_dir() -> PathBuf {
    common::fixtures().join("eval")
}

fn read_json(name: &str) -> Value {
    let p = eval_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn f64_of(bits: &Value) -> f64 {
    f64::from_bits(bits.as_u64().expect("f64 bits"))
}

fn kind(name: &str) -> ProblemType {
    *ProblemType::ALL
        .iter()
        .find(|t| t.as_str() == name)
        .unwrap()
}

/// f64 equality that treats nan as equal to nan and tells -0.0 from 0.0.
fn same_bits(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn python_float_matches_cpython() {
    let cases = read_json("score_cases.json");
    let rows = cases["py_float"].as_array().unwrap();
    assert!(rows.len() > 100);
    for r in rows {
        let s = r["s"].as_str().unwrap();
        let want = (!r["bits"].is_null()).then(|| f64_of(&r["bits"]));
        let got = score::py_float(s);
        match (got, want) {
            (Some(g), Some(w)) => assert!(same_bits(g, w), "{s:?}: {g:e} vs {w:e}"),
            (None, None) => {}
            _ => panic!("{s:?}: got {got:?}, Python gives {want:?}"),
        }
    }
    for r in cases["normalize_number"].as_array().unwrap() {
        let s = r["s"].as_str().unwrap();
        let want = (!r["bits"].is_null()).then(|| f64_of(&r["bits"]));
        assert_eq!(score::normalize_number(s), want, "{s:?}");
    }
}

#[test]
fn round2_matches_python_round() {
    let cases = read_json("score_cases.json");
    let rows = cases["round2"].as_array().unwrap();
    assert!(rows.len() > 300);
    for r in rows {
        let (x, want) = (f64_of(&r["x"]), f64_of(&r["r"]));
        let got = score::py_round2(x);
        assert!(same_bits(got, want), "round({x:e}, 2): {got:e} vs {want:e}");
    }
}

#[test]
fn mra_matches_torch_float32() {
    let cases = read_json("score_cases.json");
    let thr: Vec<u32> = cases["mra_thresholds_f32_bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let mine: Vec<u32> = score::mra_thresholds()
        .iter()
        .map(|t| t.to_bits())
        .collect();
    assert_eq!(mine, thr);
    let rows = cases["mra"].as_array().unwrap();
    assert!(rows.len() > 300);
    let mut partial = 0;
    for r in rows {
        let (p, g) = (f64_of(&r["pred"]), f64_of(&r["target"]));
        let want = r["mra"].as_f64().unwrap();
        assert_eq!(
            score::mean_relative_accuracy(p, g),
            want,
            "pred {p:e} target {g:e}"
        );
        partial += usize::from(want > 0.0 && want < 1.0);
    }
    // The random cases sit near the thresholds, so most of them pass only some.
    assert!(partial > 100, "{partial}");
}

#[test]
fn reward_fn_table_matches_reference() {
    let cases = read_json("score_cases.json");
    for r in cases["reward"].as_array().unwrap() {
        let k = kind(r["problem_type"].as_str().unwrap());
        let (sol, out) = (
            r["solution"].as_str().unwrap(),
            r["output"].as_str().unwrap(),
        );
        let why = r["why"].as_str().unwrap();
        let s = score::score(k, sol, out);
        assert_eq!(s.prediction, r["prediction"].as_str().unwrap(), "{why}");
        assert_eq!(s.ground_truth, r["ground_truth"].as_str().unwrap(), "{why}");
        assert_eq!(s.think, r["think"].as_str().unwrap(), "{why}");
        assert_eq!(s.reward, r["reward"].as_f64().unwrap(), "{why}: {out:?}");
        assert_eq!(s.wer, r.get("wer").and_then(Value::as_f64), "{why}");
        assert_eq!(s.rouge_l, r.get("rouge_l").and_then(Value::as_f64), "{why}");
    }
}

#[test]
fn wer_and_rouge_match_jiwer_and_rouge_score() {
    let cases = read_json("score_cases.json");
    for r in cases["wer"].as_array().unwrap() {
        let (rf, hy) = (
            r["reference"].as_str().unwrap(),
            r["hypothesis"].as_str().unwrap(),
        );
        assert_eq!(
            metrics::wer(rf, hy),
            r["wer"].as_f64().unwrap(),
            "{rf:?} / {hy:?}"
        );
    }
    for r in cases["rouge_l"].as_array().unwrap() {
        let (t, p) = (
            r["target"].as_str().unwrap(),
            r["prediction"].as_str().unwrap(),
        );
        assert_eq!(
            metrics::rouge_l_f1(t, p),
            r["f1"].as_f64().unwrap(),
            "{t:?} / {p:?}"
        );
    }
}

fn fixture() -> data::Dataset {
    data::load(
        eval_dir().join("eval_fixture.json"),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn expected_items() -> Vec<Value> {
    read_json("expected.json")["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn fixture_loads_with_the_expected_errors() {
    let ds = fixture();
    let exp = expected_items();
    assert_eq!(ds.entries.len(), exp.len());
    let types: HashSet<&str> = ds.items().map(|it| it.problem_type.as_str()).collect();
    assert_eq!(types.len(), ProblemType::ALL.len(), "every problem type");
    for (e, x) in ds.entries.iter().zip(&exp) {
        assert_eq!(e.index(), x["index"].as_u64().unwrap() as usize);
        assert_eq!(e.problem_id(), &x["problem_id"]);
        match (e, x.get("load_error_field")) {
            (Entry::Error(err), Some(field)) => {
                let field = field.as_str().unwrap();
                assert!(err.error.contains(field), "{}: {}", field, err.error);
            }
            (Entry::Item(it), None) => assert!(it.media.is_file(), "{}", it.media.display()),
            _ => panic!("item {}: {e:?} vs {x}", e.index()),
        }
    }
    // The shared clip is used by three questions, and unknown fields are kept.
    let shared = ds
        .items()
        .filter(|it| it.path.ends_with("clip_shared.mp4"))
        .count();
    assert_eq!(shared, 3);
    let first = ds.items().next().unwrap();
    assert_eq!(first.extra.get("duration"), Some(&Value::from(2.0)));
}

#[test]
fn prompts_match_the_reference_chat_template() {
    let ds = fixture();
    let exp = expected_items();
    let template = ChatTemplate::from_model_dir(common::model_dir()).unwrap();
    let tok = Tokenizer::from_model_dir(common::model_dir()).unwrap();
    let mut checked = 0;
    for it in ds.items() {
        let x = &exp[it.index];
        assert_eq!(
            prompt::user_text(it).unwrap(),
            x["user_text"].as_str().unwrap()
        );
        let msgs = prompt::build(it, &prompt::PromptOptions::default()).unwrap();
        let text = template.render(&msgs, &RenderOptions::default()).unwrap();
        assert_eq!(
            text,
            x["prompt_text"].as_str().unwrap(),
            "item {}",
            it.index
        );
        let ids: Vec<u64> = tok
            .encode(&text)
            .unwrap()
            .iter()
            .map(|&i| i as u64)
            .collect();
        let want: Vec<u64> = x["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "item {}", it.index);
        checked += 1;
    }
    assert_eq!(checked, 11);
}

#[test]
fn canned_outputs_score_as_the_reference() {
    let ds = fixture();
    let exp = expected_items();
    let mut n = 0;
    for it in ds.items() {
        for c in exp[it.index]["canned"].as_array().unwrap() {
            let s = score::score_item(it, c["output"].as_str().unwrap());
            assert_eq!(s.reward, c["reward"].as_f64().unwrap(), "{c}");
            assert_eq!(s.prediction, c["prediction"].as_str().unwrap());
            assert_eq!(s.ground_truth, c["ground_truth"].as_str().unwrap());
            assert_eq!(s.wer, c.get("wer").and_then(Value::as_f64));
            assert_eq!(s.rouge_l, c.get("rouge_l").and_then(Value::as_f64));
            n += 1;
        }
    }
    assert_eq!(n, 33);
}

#[test]
fn shards_keep_the_shared_clip_together() {
    let ds = fixture();
    for n in 1..=5 {
        let mut seen = Vec::new();
        for i in 0..n {
            let sel = shard::select(&ds.entries, Shard { index: i, count: n });
            let with_shared = sel
                .iter()
                .filter(|e| e.path().is_some_and(|p| p.ends_with("clip_shared.mp4")))
                .count();
            assert!(
                with_shared == 0 || with_shared == 3,
                "{i}/{n}: {with_shared}"
            );
            seen.extend(sel.iter().map(|e| e.index()));
        }
        seen.sort();
        assert_eq!(seen, (0..ds.entries.len()).collect::<Vec<_>>(), "N = {n}");
    }
}

/// Result lines for the fixture as a run would write them: each runnable item answers its
/// first canned output, the unreadable clip fails in the engine, malformed items are recorded.
fn fixture_lines(ds: &data::Dataset) -> Vec<ResultLine> {
    let exp = expected_items();
    ds.entries
        .iter()
        .map(|e| match e {
            Entry::Item(it) if exp[it.index].get("runtime_error").is_some() => ResultLine::failed(
                &ds.name,
                e,
                "media: cannot decode",
                Some(Timings {
                    start: 101.0,
                    end: 101.5,
                    ..Timings::default()
                }),
            ),
            Entry::Item(it) => {
                let text = exp[it.index]["canned"][0]["output"]
                    .as_str()
                    .unwrap()
                    .to_string();
                ResultLine::scored(
                    &ds.name,
                    it,
                    Generation {
                        text,
                        prompt_tokens: 100,
                        generated_tokens: 10,
                        // Items overlap in pairs: 1 s each, started every 0.5 s.
                        timings: Timings {
                            start: 100.0 + it.index as f64 * 0.5,
                            end: 101.0 + it.index as f64 * 0.5,
                            ..Timings::default()
                        },
                    },
                )
            }
            Entry::Error(_) => ResultLine::from_entry_error(&ds.name, e).unwrap(),
        })
        .collect()
}

#[test]
fn summary_matches_reference_final_acc() {
    let ds = fixture();
    let lines = fixture_lines(&ds);
    let summary = Summary::from_lines(&lines);
    let want = read_json("expected.json")["summary_first_canned"].clone();
    let want = want.as_object().unwrap();
    assert_eq!(summary.sources.len(), want.len());
    for s in &summary.sources {
        let w = &want[&s.data_source];
        let close = |a: Option<f64>, b: &Value| match (a, b.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            (None, None) => true,
            _ => false,
        };
        assert!(
            close(s.mean_acc, &w["mean_acc"]),
            "{}: {:?} vs {}",
            s.data_source,
            s.mean_acc,
            w
        );
        assert!(
            close(s.mean_mra, &w["mean_mra"]),
            "{}: {:?} vs {}",
            s.data_source,
            s.mean_mra,
            w
        );
        assert_eq!(s.acc_count as u64, w["acc_count"].as_u64().unwrap());
        assert_eq!(s.mra_count as u64, w["mra_count"].as_u64().unwrap());
    }
    assert_eq!(summary.total.count, 13);
    assert_eq!(summary.total.errors, 3);
    assert_eq!(summary.total.generated_tokens, 10 * 10);
    // Scored items 0..=9 cover [100, 100 + 0.5*9 + 1] without gaps; the failed one lies inside.
    let scored_span = 0.5 * 9.0 + 1.0;
    assert!(
        (summary.total.wall_s - scored_span).abs() < 1e-9,
        "{}",
        summary.total.wall_s
    );
    let t = summary.render_table();
    assert!(
        t.lines()
            .any(|l| l.starts_with("fixture-video") && l.contains("regression")),
        "{t}"
    );
    let j = summary.to_json();
    assert_eq!(j["total"]["errors"], 3);
}

#[test]
fn killed_run_resumes_and_shards_merge() {
    let ds = fixture();
    let lines = fixture_lines(&ds);
    let dir = tempfile::tempdir().unwrap();

    // A run of shard 0/2 killed mid-write: two lines, then half of the third.
    let sel = shard::select(&ds.entries, "0/2".parse().unwrap());
    let shard0: Vec<&ResultLine> = sel.iter().map(|e| &lines[e.index()]).collect();
    let out0 = dir.path().join("results-0.jsonl");
    let mut w = ResultWriter::create(&out0).unwrap();
    w.write(shard0[0]).unwrap();
    w.write(shard0[1]).unwrap();
    drop(w);
    let third = shard0[2].to_json_line();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&out0)
        .unwrap();
    f.write_all(&third.as_bytes()[..third.len() / 2]).unwrap();
    drop(f);

    let done = done_ids(&out0).unwrap();
    assert_eq!(done.len(), 2);
    assert!(done.contains(&shard0[1].key()));
    assert!(read_results(&out0).unwrap().dropped_partial);

    // Resume: the partial line is cut, the rest of the shard is appended.
    let (mut w, existing) = ResultWriter::resume(&out0).unwrap();
    assert_eq!(existing.lines.len(), 2);
    let todo: Vec<&&Entry> = sel
        .iter()
        .filter(|e| !done.contains(&entry_key(&ds.name, e)))
        .collect();
    assert_eq!(todo.len(), sel.len() - 2);
    for e in todo {
        w.write(&lines[e.index()]).unwrap();
    }
    drop(w);
    let back = read_results(&out0).unwrap();
    assert!(!back.dropped_partial);
    assert_eq!(back.lines.len(), shard0.len());
    assert_eq!(back.lines[2], *shard0[2]);

    let out1 = dir.path().join("results-1.jsonl");
    let mut w = ResultWriter::create(&out1).unwrap();
    for e in shard::select(&ds.entries, "1/2".parse().unwrap()) {
        w.write(&lines[e.index()]).unwrap();
    }
    drop(w);

    let merged = reel::eval::merge(&[&out1, &out0]).unwrap();
    assert_eq!(
        merged.lines, lines,
        "merge gives every line once, in file order"
    );
    assert!(merged.cut_off.is_empty());
    assert_eq!(
        Summary::from_lines(&merged.lines),
        Summary::from_lines(&lines)
    );

    // A shard killed mid-line merges without its cut-off line, and says so.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&out1)
        .unwrap();
    f.write_all(b"{\"dataset\": \"eval_fi").unwrap();
    drop(f);
    let merged = reel::eval::merge(&[&out0, &out1]).unwrap();
    assert_eq!(merged.lines.len(), lines.len());
    assert_eq!(merged.cut_off, vec![out1]);

    // Merging a shard twice is an error naming the file.
    let err = reel::eval::merge(&[&out0, &out0]).unwrap_err().to_string();
    assert!(
        err.contains("results-0.jsonl") && err.contains("repeats"),
        "{err}"
    );
}

#[test]
fn result_lines_round_trip_and_keep_extras() {
    let ds = fixture();
    let lines = fixture_lines(&ds);
    for l in &lines {
        let back: ResultLine = serde_json::from_str(l.to_json_line().trim_end()).unwrap();
        assert_eq!(&back, l);
    }
    let by_id: BTreeMap<String, &ResultLine> = lines
        .iter()
        .map(|l| (l.problem_id.to_string(), l))
        .collect();
    let first = by_id["1"];
    assert_eq!(first.extra["duration"], 2.0);
    assert_eq!(
        (
            first.answer.as_str(),
            first.ground_truth.as_str(),
            first.score
        ),
        ("B", "B", 1.0)
    );
    assert!(first.correct);
    assert_eq!(first.think, "Let me think.");
    let broken = by_id["11"];
    assert!(broken.error.as_deref().unwrap().contains("solution"));
    assert_eq!(broken.score, 0.0);
}

#[test]
fn results_file_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.jsonl");
    let ds = fixture();
    let good = fixture_lines(&ds)[0].to_json_line();
    std::fs::write(&p, format!("{good}{{\"oops\": 1}}\n{good}")).unwrap();
    let err = read_results(&p).unwrap_err().to_string();
    assert!(err.contains("r.jsonl") && err.contains("line 2"), "{err}");
    assert!(done_ids(dir.path().join("absent.jsonl"))
        .unwrap()
        .is_empty());
}

#[test]
fn wall_time_is_the_union_of_intervals() {
    assert_eq!(
        union_length([(0.0, 1.0), (0.5, 2.0), (5.0, 6.0)].into_iter()),
        3.0
    );
    assert_eq!(union_length([(3.0, 1.0)].into_iter()), 0.0);
    assert_eq!(union_length(std::iter::empty()), 0.0);
}
