//! `reel eval` end to end on the fixture model and tests/fixtures/eval: prompts against the
//! reference chat template's token ids (expected.json, written by gen_eval.py), per-item
//! records and errors, the summary, --limit, shards merged, a killed run resumed, and one clear
//! error (non-zero exit, no output file) for bad flags and files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use reel::eval::data::{self, Entry, LoadOptions};
use reel::eval::resume::read_results;
use reel::eval::{score, ResultLine, Summary};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> String {
    root().join("tests/fixtures/model").display().to_string()
}

fn eval_dir() -> PathBuf {
    root().join("tests/fixtures/eval")
}

fn data_file() -> String {
    eval_dir().join("eval_fixture.json").display().to_string()
}

fn expected() -> Value {
    let text = std::fs::read_to_string(eval_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(args)
        .output()
        .expect("run reel")
}

/// `reel eval` on the CPU with `args` after the common flags; must succeed.
fn eval_ok(args: &[&str]) -> Output {
    let model = model();
    let mut all = vec!["eval", "--model", &model, "--device", "cpu"];
    all.extend_from_slice(args);
    let o = reel(&all);
    assert!(
        o.status.success(),
        "reel {all:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn lines_of(path: &Path) -> Vec<ResultLine> {
    let r = read_results(path).unwrap();
    assert!(
        !r.dropped_partial && !r.missing_newline,
        "{}",
        path.display()
    );
    r.lines
}

fn by_index(lines: &[ResultLine]) -> BTreeMap<usize, &ResultLine> {
    let m: BTreeMap<usize, &ResultLine> = lines.iter().map(|l| (l.index, l)).collect();
    assert_eq!(m.len(), lines.len(), "each item once");
    m
}

/// Runs of vision pads collapsed to one pad, as the reference's un-expanded prompt has them.
fn collapse_pads(ids: &[u32]) -> Vec<u64> {
    const PADS: [u32; 2] = [1012, 1013];
    let mut out: Vec<u64> = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if PADS.contains(&id) && i > 0 && ids[i - 1] == id {
            continue;
        }
        out.push(id as u64);
    }
    out
}

fn summary_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).expect("--json prints one JSON object")
}

/// The summary without what depends on the clock.
fn untimed(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("wall_s");
                m.remove("tokens_per_s");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

#[test]
fn fixture_end_to_end_matches_the_reference_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.jsonl");
    let o = eval_ok(&[
        "--data",
        &data_file(),
        "--out",
        out.to_str().unwrap(),
        "--prompt-ids",
        "--max-new-tokens",
        "24",
        "--json",
    ]);
    let lines = lines_of(&out);
    let exp = expected();
    let exp_items = exp["items"].as_array().unwrap();
    assert_eq!(lines.len(), exp_items.len());
    let ds = data::load(
        eval_dir().join("eval_fixture.json"),
        &LoadOptions::default(),
    )
    .unwrap();
    let got = by_index(&lines);
    for x in exp_items {
        let i = x["index"].as_u64().unwrap() as usize;
        let l = got[&i];
        assert_eq!(l.problem_id, x["problem_id"], "item {i}");
        assert_eq!(l.dataset, "eval_fixture.json");
        if let Some(field) = x.get("load_error_field") {
            let err = l.error.as_deref().expect("a malformed item is recorded");
            assert!(err.contains(field.as_str().unwrap()), "item {i}: {err}");
            assert_eq!((l.prompt_tokens, l.generated_tokens, l.score), (0, 0, 0.0));
            continue;
        }
        if x.get("runtime_error").is_some() {
            let err = l.error.as_deref().expect("the broken clip is recorded");
            assert!(err.contains("broken.mp4"), "item {i}: {err}");
            assert!(l.timings.is_some());
            continue;
        }
        assert_eq!(l.error, None, "item {i}");
        // The prompt: the reference's token ids, each vision pad expanded.
        let ids = l.prompt_ids.as_ref().expect("--prompt-ids");
        let want: Vec<u64> = x["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(collapse_pads(ids), want, "item {i}");
        assert_eq!(l.prompt_tokens, ids.len());
        assert!(ids.len() > want.len(), "item {i}: the media add tokens");
        assert!((1..=24).contains(&l.generated_tokens), "item {i}");
        // The record: ground truth as the reference extracts it, the score of the text.
        let canned = &x["canned"][0];
        assert_eq!(l.ground_truth, canned["ground_truth"].as_str().unwrap());
        let Entry::Item(item) = &ds.entries[i] else {
            panic!("item {i} loads")
        };
        let s = score::score_item(item, &l.text);
        assert_eq!(
            (l.score, &l.answer, &l.think),
            (s.reward, &s.prediction, &s.think)
        );
        assert_eq!((l.wer, l.rouge_l), (s.wer, s.rouge_l));
        assert_eq!(l.data_type.as_deref(), Some(item.data_type.as_str()));
        let t = l.timings.unwrap();
        assert!(t.end >= t.start && t.prefill_s.is_some() && t.decode_s.is_some());
    }
    // Extra fields are copied.
    assert_eq!(got[&0].extra["duration"], 2.0);
    assert_eq!(got[&4].extra["meta"]["split"], "test");
    // Questions about the shared clip went into the engine one after another (items finish
    // in any order when several run at once; they start in the run's order).
    let mut by_start: Vec<&ResultLine> = lines.iter().collect();
    by_start.sort_by(|a, b| {
        let t = |l: &ResultLine| l.timings.map_or(f64::MAX, |t| t.start);
        t(a).total_cmp(&t(b))
    });
    let order: Vec<usize> = by_start.iter().map(|l| l.index).collect();
    let shared: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, &i)| {
            got[&i]
                .path
                .as_deref()
                .is_some_and(|p| p.ends_with("clip_shared.mp4"))
        })
        .map(|(pos, _)| pos)
        .collect();
    assert_eq!(shared.len(), 3);
    assert_eq!(shared[2] - shared[0], 2, "{order:?}");

    // The summary: the reference's item counts per data source, our errors and tokens.
    let s = summary_json(&o);
    assert_eq!(s["total"]["count"], 13);
    assert_eq!(s["total"]["errors"], 3);
    let gen: usize = lines.iter().map(|l| l.generated_tokens).sum();
    assert_eq!(s["total"]["generated_tokens"], gen);
    let want = exp["summary_first_canned"].as_object().unwrap();
    let sources = s["sources"].as_array().unwrap();
    assert_eq!(sources.len(), want.len());
    for src in sources {
        let w = &want[src["data_source"].as_str().unwrap()];
        assert_eq!(src["acc_count"], w["acc_count"], "{src}");
        assert_eq!(src["mra_count"], w["mra_count"], "{src}");
    }
    // Timings read back from JSON may differ in the last bit (serde_json's float parsing).
    assert_eq!(untimed(s), untimed(Summary::from_lines(&lines).to_json()));
}

/// `reel eval` and `reel run --template video-r1` build the same prompt for an item and, greedy,
/// generate the same tokens.
#[test]
fn an_item_runs_as_reel_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.jsonl");
    let data = dir.path().join("one.json");
    let ds: Value = serde_json::from_str(
        &std::fs::read_to_string(eval_dir().join("eval_fixture.json")).unwrap(),
    )
    .unwrap();
    // Item 5: multiple choice about an image.
    let item = ds[5].clone();
    assert_eq!(item["problem_type"], "multiple choice");
    std::fs::write(
        &data,
        serde_json::to_string(std::slice::from_ref(&item)).unwrap(),
    )
    .unwrap();
    let media_root = eval_dir().display().to_string();
    eval_ok(&[
        "--data",
        data.to_str().unwrap(),
        "--media-root",
        &media_root,
        "--out",
        out.to_str().unwrap(),
        "--prompt-ids",
        "--max-new-tokens",
        "12",
    ]);
    let l = &lines_of(&out)[0];
    let image = eval_dir().join(item["path"].as_str().unwrap());
    let mut args = vec![
        "run".to_string(),
        "--model".into(),
        model(),
        "--device".into(),
        "cpu".into(),
        "--temperature".into(),
        "0".into(),
        "--max-new-tokens".into(),
        "12".into(),
        "--json".into(),
        "--template".into(),
        "video-r1".into(),
        "--problem-type".into(),
        "multiple choice".into(),
        "--image".into(),
        image.display().to_string(),
    ];
    for o in item["options"].as_array().unwrap() {
        args.push("--options".into());
        args.push(o.as_str().unwrap().into());
    }
    args.push(item["problem"].as_str().unwrap().into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = reel(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u32> = run["prompt_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(l.prompt_ids.as_ref().unwrap(), &ids);
    assert_eq!(l.text, run["text"].as_str().unwrap());
    assert_eq!(
        l.generated_tokens,
        run["generated_tokens"].as_array().unwrap().len()
    );
}

#[test]
fn limit_and_shards_merge_to_the_unsharded_summary() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let common = ["--data", &data_file(), "--max-new-tokens", "6", "--json"];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend_from_slice(extra);
        eval_ok(&a)
    };
    let limited = p("limited.jsonl");
    run(&["--out", &limited, "--limit", "4"]);
    let l = lines_of(Path::new(&limited));
    let mut idx: Vec<usize> = l.iter().map(|l| l.index).collect();
    idx.sort();
    assert_eq!(idx, [0, 1, 2, 3], "the first four items of the file");

    let all = p("all.jsonl");
    let whole = summary_json(&run(&["--out", &all]));
    let (s0, s1) = (p("results-0.jsonl"), p("results-1.jsonl"));
    run(&["--out", &s0, "--shard", "0/2"]);
    // Batches of requests give the same records as single ones.
    run(&["--out", &s1, "--shard", "1/2", "--max-batch", "3"]);
    let (l0, l1) = (lines_of(Path::new(&s0)), lines_of(Path::new(&s1)));
    assert_eq!(l0.len() + l1.len(), 13);
    assert!(!l0.is_empty() && !l1.is_empty());
    // The shared clip's questions are in one shard.
    let shared = |ls: &[ResultLine]| {
        ls.iter()
            .filter(|l| {
                l.path
                    .as_deref()
                    .is_some_and(|p| p.ends_with("clip_shared.mp4"))
            })
            .count()
    };
    assert!(matches!((shared(&l0), shared(&l1)), (3, 0) | (0, 3)));
    let o = reel(&["eval", "--merge", &s0, &s1, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(untimed(summary_json(&o)), untimed(whole.clone()));
    // Greedy items give the same records however the file is split.
    let strip = |l: &ResultLine| (l.index, l.text.clone(), l.score, l.error.clone());
    let mut merged: Vec<_> = l0.iter().chain(&l1).map(strip).collect();
    merged.sort_by_key(|m| m.0);
    let mut whole_lines: Vec<_> = lines_of(Path::new(&all)).iter().map(strip).collect();
    whole_lines.sort_by_key(|m| m.0);
    assert_eq!(merged, whole_lines);
    // The text table of a merge.
    let o = reel(&["eval", "--merge", &s0, &s1]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("fixture-video") && l.contains("regression")),
        "{table}"
    );
    assert!(table.lines().last().unwrap().starts_with("all"), "{table}");
}

/// A data file long enough to kill mid-run: the fixture's image items, repeated under new ids.
fn long_data(dir: &Path, copies: usize) -> PathBuf {
    let ds: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(eval_dir().join("eval_fixture.json")).unwrap(),
    )
    .unwrap();
    let mut items = Vec::new();
    for c in 0..copies {
        for it in ds.iter().filter(|it| it["data_type"] == "image") {
            let mut it = it.clone();
            it["problem_id"] = Value::from(format!("{c}-{}", it["problem_id"]));
            items.push(it);
        }
    }
    let p = dir.join("long.jsonl");
    let text: Vec<String> = items.iter().map(|v| v.to_string()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p
}

#[test]
fn killed_run_resumes_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let data = long_data(dir.path(), 6);
    let n_items = 6 * 6;
    let media_root = eval_dir().display().to_string();
    let out = dir.path().join("killed.jsonl");
    let args = |out: &Path| -> Vec<String> {
        [
            "eval",
            "--model",
            &model(),
            "--device",
            "cpu",
            "--data",
            data.to_str().unwrap(),
            "--media-root",
            &media_root,
            "--max-new-tokens",
            "48",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(args(&out))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains('\n') {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no line written");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before the end");
    let before = read_results(&out).unwrap().lines;
    assert!(
        !before.is_empty() && before.len() < n_items,
        "{} of {n_items} lines before the kill",
        before.len()
    );

    let mut resume = args(&out);
    resume.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&resume)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = lines_of(&out);
    assert_eq!(after.len(), n_items);
    // The lines written before the kill are kept as they were.
    assert_eq!(after[..before.len()], before[..]);

    let fresh = dir.path().join("fresh.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(args(&fresh))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = |l: &ResultLine| (l.index, l.text.clone(), l.score, l.prompt_tokens);
    let mut a: Vec<_> = after.iter().map(key).collect();
    let mut b: Vec<_> = lines_of(&fresh).iter().map(key).collect();
    a.sort_by_key(|k| k.0);
    b.sort_by_key(|k| k.0);
    assert_eq!(a, b);

    // Resuming a finished run runs nothing and prints the same summary.
    let mut again = args(&out);
    again.extend(["--resume".to_string(), "--json".to_string()]);
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&again)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(lines_of(&out).len(), n_items);
    let s = summary_json(&o);
    assert_eq!(untimed(s), untimed(Summary::from_lines(&after).to_json()));
}

#[test]
fn bad_flags_and_files_give_one_error_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let out = p("out.jsonl");
    let out_s = out.display().to_string();
    std::fs::write(p("bad.json"), "[{\"problem_id\": 1},").unwrap();
    std::fs::write(p("dup.jsonl"), "{\"problem_id\": 1}\n{\"problem_id\": 1}\n").unwrap();
    std::fs::write(p("corrupt.jsonl"), "{\"dataset\": 1}\n{}\n").unwrap();
    let model = model();
    let data = data_file();
    let bad = p("bad.json").display().to_string();
    let dup = p("dup.jsonl").display().to_string();
    let corrupt = p("corrupt.jsonl").display().to_string();
    let missing_dir = p("nope/out.jsonl").display().to_string();
    let m = ["eval", "--model", &model, "--device", "cpu"];
    let with = |extra: &[&'static str], owned: &[&str]| -> Vec<String> {
        m.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .chain(owned.iter().map(|s| s.to_string()))
            .collect()
    };
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            with(&[], &["--data", &bad, "--out", &out_s]),
            "bad.json",
            "invalid JSON",
        ),
        (
            with(&[], &["--data", &dup, "--out", &out_s]),
            "dup.jsonl",
            "same problem_id",
        ),
        (
            with(
                &[],
                &[
                    "--data",
                    &p("none.json").display().to_string(),
                    "--out",
                    &out_s,
                ],
            ),
            "none.json",
            "",
        ),
        (with(&[], &["--out", &out_s]), "--data", "required"),
        (with(&[], &["--data", &data]), "--out", "required"),
        (
            with(&["--shard", "2/2"], &["--data", &data, "--out", &out_s]),
            "--shard",
            "0..N",
        ),
        (
            with(&["--max-batch", "0"], &["--data", &data, "--out", &out_s]),
            "--max-batch",
            "at least 1",
        ),
        (
            with(&["--max-frames", "1"], &["--data", &data, "--out", &out_s]),
            "--max-frames",
            "at least 2",
        ),
        (
            with(&["--limit", "0"], &["--data", &data, "--out", &out_s]),
            "--limit",
            "at least 1",
        ),
        (
            with(&[], &["--data", &data, "--out", &missing_dir]),
            "--out",
            "does not exist",
        ),
        (
            with(
                &[],
                &[
                    "--data",
                    &data,
                    "--out",
                    &out_s,
                    "--media-root",
                    &missing_dir,
                ],
            ),
            "--media-root",
            "not a directory",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                p("no-model").display().to_string(),
                "--data".into(),
                data.clone(),
                "--out".into(),
                out_s.clone(),
            ],
            "no-model",
            "",
        ),
        (
            vec!["eval".into(), "--merge".into(), corrupt.clone()],
            "corrupt.jsonl",
            "line 1",
        ),
        (
            vec![
                "eval".into(),
                "--merge".into(),
                corrupt.clone(),
                "--model".into(),
                model.clone(),
            ],
            "--model",
            "not used with --merge",
        ),
    ];
    for (args, culprit, diagnosis) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = reel(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains(culprit) && err.contains(diagnosis),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left {out_s}");
    }
    // An existing results file is not overwritten without --resume.
    std::fs::write(&out, "keep\n").unwrap();
    let o = reel(&[
        "eval", "--model", &model, "--device", "cpu", "--data", &data, "--out", &out_s,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("already exists"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep\n");
    // ... and with --resume, a file that is not a results file is an error naming its line.
    let o = reel(&[
        "eval", "--model", &model, "--device", "cpu", "--data", &data, "--out", &out_s, "--resume",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line 1"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep\n");
}
