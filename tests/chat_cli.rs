//! `reel chat` with scripted stdin on the fixture model: each answer equals, token for token, a
//! fresh greedy `reel run` of the whole conversation so far, although follow-up questions are
//! decoded from the cached KV of the conversation (the vision tower does not run again). Ctrl-C
//! stops an answer (a SIGINT to the process, or the key at a pseudo-terminal) and leaves the
//! conversation as consistent as a finished answer does; at the prompt it does not end the
//! program. At a terminal the line editor keeps a history.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> String {
    root().join("tests/fixtures/model").display().to_string()
}

fn media(name: &str) -> String {
    root()
        .join("tests/fixtures/eval/media")
        .join(name)
        .display()
        .to_string()
}

const GREEDY: [&str; 4] = ["--device", "cpu", "--temperature", "0"];

/// The answer budget of the short conversations.
const SHORT: &str = "8";

/// The budget of an answer meant to be interrupted: its text (about 12 KB) is well over what
/// fits in a small pipe (see [`Collected::start_held`]).
const LONG: &str = "4000";

fn chat_args(args: &[&str]) -> Vec<String> {
    let mut all = vec!["chat".to_string(), "--model".into(), model()];
    all.extend(GREEDY.iter().map(|s| s.to_string()));
    all.extend(args.iter().map(|s| s.to_string()));
    if !args.contains(&"--max-new-tokens") {
        all.extend(["--max-new-tokens".into(), SHORT.into()]);
    }
    all
}

fn chat(args: &[&str], stdin: &str) -> Output {
    let all = chat_args(args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reel chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn tokens(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// The tokens a fresh `reel run` generates for the first `n` messages of a transcript.
fn fresh_run(dir: &Path, transcript: &Value, n: usize) -> Vec<u64> {
    fresh_run_max(dir, transcript, n, SHORT)
}

/// [`fresh_run`] with an answer budget.
fn fresh_run_max(dir: &Path, transcript: &Value, n: usize, max_new: &str) -> Vec<u64> {
    let msgs = &transcript["messages"].as_array().unwrap()[..n];
    let p = dir.join(format!("conv-{n}-{max_new}.json"));
    std::fs::write(&p, serde_json::to_string(msgs).unwrap()).unwrap();
    let model = model();
    let mut args = vec!["run", "--model", &model, "--json", "--messages"];
    args.push(p.to_str().unwrap());
    args.extend_from_slice(&GREEDY);
    args.extend_from_slice(&["--max-new-tokens", max_new]);
    let o = Command::new(env!("CARGO_BIN_EXE_reel"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    tokens(&v["generated_tokens"])
}

#[test]
fn follow_ups_decode_from_the_cache_and_match_a_fresh_run() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2) = (dir.path().join("t1.json"), dir.path().join("t2.json"));
    let script = format!(
        "What is in the video?\n/stats\nAnd what colour is it?\n/stats\n/image {}\nDescribe the picture too.\n/save {}\n/reset\nWhat is in the video?\n/save {}\n",
        media("scene.png"),
        t1.display(),
        t2.display()
    );
    let o = chat(&["--video", &media("clip_shared.mp4")], &script);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("error"), "{err}");
    // /stats after each of the first two answers.
    let stats: Vec<&str> = err.lines().filter(|l| l.starts_with("prompt ")).collect();
    assert_eq!(stats.len(), 2, "{err}");
    assert!(stats[0].contains("vision tower ran"), "{}", stats[0]);
    assert!(stats[1].contains("vision tower not run"), "{}", stats[1]);

    let t = read_json(&t1);
    let msgs = t["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    let answers = t["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3);
    // clip_shared.mp4: 4 frames of 392x280, grid 2x20x28, 280 merged tokens.
    let video_tokens = 280;
    // The first question prefills everything and runs the vision tower.
    assert_eq!(answers[0]["vision_run"], true);
    assert_eq!(answers[0]["reused_tokens"], 0);
    // The follow-up reuses the cached video and first turn.
    let a1 = &answers[1];
    assert_eq!(a1["vision_run"], false);
    let reused = a1["reused_tokens"].as_u64().unwrap();
    let prompt = a1["prompt_tokens"].as_u64().unwrap();
    assert!(reused > video_tokens, "{a1}");
    assert_eq!(a1["prefilled_tokens"].as_u64().unwrap(), prompt - reused);
    assert!(prompt > answers[0]["prompt_tokens"].as_u64().unwrap() + 8);
    // A new image runs the vision tower for itself; the conversation before it (the video
    // included) still comes from the prefix cache.
    assert_eq!(answers[2]["vision_run"], true);
    assert!(answers[2]["reused_tokens"].as_u64().unwrap() > video_tokens);

    // Each answer equals a fresh run of the conversation up to its question.
    for (k, a) in answers.iter().enumerate() {
        assert_eq!(
            tokens(&a["tokens"]),
            fresh_run(dir.path(), &t, 2 * k + 1),
            "answer {k}"
        );
    }
    // The stdout holds the three answers, then the fourth after /reset.
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 4, "{out}");

    // /reset keeps the media of the command line and starts afresh.
    let t2 = read_json(&t2);
    let a = &t2["answers"][0];
    assert_eq!(t2["messages"].as_array().unwrap().len(), 2);
    // The engine's prefix cache outlives the conversation: the same first question is served
    // from it, with the same tokens.
    assert_eq!(a["vision_run"], false);
    assert!(a["reused_tokens"].as_u64().unwrap() > video_tokens);
    assert_eq!(a["tokens"], answers[0]["tokens"]);
    assert_eq!(t2["messages"][0], msgs[0]);
}

#[test]
fn bad_input_is_reported_and_the_loop_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let script = format!(
        "/frobnicate\n/image {}\n/video\nHello?\n/save {}\n",
        dir.path().join("missing.png").display(),
        t.display()
    );
    let o = chat(&[], &script);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("unknown command /frobnicate"), "{err}");
    assert!(err.contains("missing.png"), "{err}");
    assert!(err.contains("/video needs a file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let v = read_json(&t);
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert_eq!(v["messages"][0]["content"][0]["text"], "Hello?");

    // A missing file on the command line stops before the model loads.
    let o = chat(&["--video", "/nonexistent/v.mp4"], "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--video") && err.contains("/nonexistent/v.mp4"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Generous: the tests share a small, loaded machine.
const WAIT: Duration = Duration::from_secs(300);

/// The bytes of a stream, collected by a thread as they come.
#[derive(Default)]
struct Collected {
    /// The bytes so far, and whether the stream has ended.
    state: Mutex<(Vec<u8>, bool)>,
    grew: Condvar,
    /// Whether the reader stops after the first byte until [`Collected::release`].
    held: Mutex<bool>,
    released: Condvar,
}

impl Collected {
    fn start(r: impl Read + Send + 'static) -> Arc<Collected> {
        Self::start_held(r, false)
    }

    /// With `hold`, the reader takes one byte and then reads nothing until released: a writer
    /// on a small pipe (see [`small_pipe`]) blocks after a few KiB, so an answer cannot run to
    /// its end however slowly the test gets to interrupt it.
    fn start_held(mut r: impl Read + Send + 'static, hold: bool) -> Arc<Collected> {
        let c = Arc::new(Collected {
            held: Mutex::new(hold),
            ..Collected::default()
        });
        let c2 = c.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let want = if *c2.held.lock().unwrap() {
                    1
                } else {
                    buf.len()
                };
                // A pseudo-terminal's master reads EIO once the child is gone.
                let n = r.read(&mut buf[..want]).unwrap_or(0);
                let mut st = c2.state.lock().unwrap();
                if n == 0 {
                    st.1 = true;
                } else {
                    st.0.extend_from_slice(&buf[..n]);
                }
                c2.grew.notify_all();
                drop(st);
                if n == 0 {
                    return;
                }
                let mut held = c2.held.lock().unwrap();
                while *held {
                    held = c2.released.wait(held).unwrap();
                }
            }
        });
        c
    }

    /// The whole text, once the stream has ended (at most [`WAIT`]).
    fn all(&self) -> String {
        let end = Instant::now() + WAIT;
        let mut st = self.state.lock().unwrap();
        while !st.1 {
            let now = Instant::now();
            assert!(now < end, "the stream did not end after {WAIT:?}");
            st = self.grew.wait_timeout(st, end - now).unwrap().0;
        }
        String::from_utf8_lossy(&st.0).into_owned()
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().unwrap().0).into_owned()
    }

    /// Waits until `ok` holds for the text so far; panics (showing `what` and the text) when the
    /// stream ends first or after [`WAIT`].
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + WAIT;
        let mut st = self.state.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&st.0).into_owned();
            if ok(&text) {
                return text;
            }
            let now = Instant::now();
            assert!(!st.1, "the stream ended before {what}:\n{text}");
            assert!(now < end, "no {what} after {WAIT:?}:\n{text}");
            st = self.grew.wait_timeout(st, end - now).unwrap().0;
        }
    }
}

fn count(text: &str, pat: &str) -> usize {
    text.matches(pat).count()
}

/// `reel chat` running with its output collected; standard input stays open until [`Live::eof`].
struct Live {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Collected>,
    err: Arc<Collected>,
}

impl Live {
    fn spawn(args: &[&str]) -> Live {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reel"))
            .args(chat_args(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run reel chat");
        let stdout = child.stdout.take().unwrap();
        small_pipe(&stdout);
        let out = Collected::start_held(stdout, true);
        let err = Collected::start(child.stderr.take().unwrap());
        Live {
            stdin: child.stdin.take(),
            child,
            out,
            err,
        }
    }

    fn send(&mut self, text: &str) {
        let w = self.stdin.as_mut().expect("stdin is open");
        w.write_all(text.as_bytes()).unwrap();
        w.flush().unwrap();
    }

    fn sigint(&self) {
        sigint(&self.child);
    }

    fn eof(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit (at most [`WAIT`]) and returns the status.
    /// Closes stdin and waits: the program must exit 0 without an error; its stderr.
    fn finish_cleanly(&mut self) -> String {
        self.eof();
        let status = self.wait();
        let err = self.err.all();
        assert!(status.success(), "{status}\n{err}");
        assert!(!err.contains("error"), "{err}");
        err
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        wait_exit(&mut self.child, &self.err)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shrinks a pipe to one page (4 KiB): a few hundred tokens of text fill it.
fn small_pipe(p: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor the caller owns.
    let rc = unsafe { libc::fcntl(p.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        rc >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
}

fn sigint(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

fn wait_exit(child: &mut Child, err: &Collected) -> std::process::ExitStatus {
    let end = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < end,
            "no exit after {WAIT:?}:\n{}",
            err.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `[...]` line that ends each answer on standard error.
const ANSWER_END: &str = "first token ";
const INTERRUPTED: &str = "[interrupted | first token ";

/// The lines written to the end (a line may come in several writes).
fn whole_lines(s: &str) -> std::str::Lines<'_> {
    s[..s.rfind('\n').map_or(0, |i| i + 1)].lines()
}

fn answer_ends(err: &str) -> usize {
    whole_lines(err)
        .filter(|l| l.starts_with('[') && l.contains(ANSWER_END))
        .count()
}

#[test]
fn sigint_stops_the_answer_and_the_conversation_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let mut live = Live::spawn(&["--max-new-tokens", LONG]);
    live.send("Tell me everything about the world.\n");
    // The answer has begun: its first piece of text is on standard output.
    live.out.wait_for("the first token", |s| !s.is_empty());
    live.sigint();
    live.out.release();
    let err = live
        .err
        .wait_for("the interrupted answer's end", |s| s.contains(INTERRUPTED));
    assert!(!err.contains("error"), "{err}");
    // It goes on: another question, the statistics, the transcript; EOF ends it normally.
    live.send(&format!(
        "/stats\nAnd what else?\n/stats\n/save {}\n",
        t.display()
    ));
    let err = live.finish_cleanly();
    let stats: Vec<&str> = err.lines().filter(|l| l.starts_with("prompt ")).collect();
    assert_eq!(stats.len(), 2, "{err}");
    assert!(stats[0].ends_with("| interrupted"), "{}", stats[0]);
    assert!(!stats[1].contains("interrupted"), "{}", stats[1]);
    assert_eq!(count(&err, INTERRUPTED), 1, "{err}");
    assert_eq!(answer_ends(&err), 2, "{err}");

    let v = read_json(&t);
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4, "{v}");
    let answers = v["answers"].as_array().unwrap();
    assert_eq!(answers[0]["stop"], "cancelled");
    assert_ne!(answers[1]["stop"], "cancelled");
    let partial = tokens(&answers[0]["tokens"]);
    let long: usize = LONG.parse().unwrap();
    assert!(
        !partial.is_empty() && partial.len() < long,
        "{}",
        partial.len()
    );
    // The partial answer is the start of what a fresh run answers the same question; it stays
    // in the conversation as its text, and the next answer equals a fresh run of the
    // conversation with that text.
    let n = partial.len().to_string();
    assert_eq!(partial, fresh_run_max(dir.path(), &v, 1, &n));
    assert!(!msgs[1]["content"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(
        tokens(&answers[1]["tokens"]),
        fresh_run_max(dir.path(), &v, 3, LONG)
    );
    // The follow-up reused the cached KV of the first question at least (whole 16-token pages).
    let q1 = answers[0]["prompt_tokens"].as_u64().unwrap();
    assert!(
        answers[1]["reused_tokens"].as_u64().unwrap() >= q1 / 16 * 16,
        "{v}"
    );
}

#[test]
fn sigint_at_the_prompt_does_not_end_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.json");
    let mut live = Live::spawn(&[]);
    live.out.release();
    live.send("Hello?\n");
    live.err
        .wait_for("the first answer", |s| answer_ends(s) == 1);
    // Idle, waiting for a line.
    live.sigint();
    // Empty lines, a CRLF line and a last line without a newline are read as before.
    live.send(&format!(
        "\n   \n/stats\r\nHello again?\n\n/save {}",
        t.display()
    ));
    let err = live.finish_cleanly();
    assert!(!err.contains("interrupted"), "{err}");
    assert_eq!(answer_ends(&err), 2, "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("prompt ")).count(),
        1,
        "{err}"
    );
    let v = read_json(&t);
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4, "{v}");
    assert_eq!(msgs[2]["content"][0]["text"], "Hello again?");
    // The Ctrl-C before the second question did not cut its answer short.
    assert_ne!(v["answers"][1]["stop"], "cancelled");
    assert_eq!(
        tokens(&v["answers"][1]["tokens"]),
        fresh_run(dir.path(), &v, 3)
    );
    assert_eq!(live.out.all().lines().count(), 2);
}

/// Kills the child if the test fails before it exits.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pseudo-terminal: the master side (what a terminal emulator holds) and the slave's path.
struct Pty {
    master: std::fs::File,
    slave: PathBuf,
}

fn open_pty() -> Pty {
    use std::ffi::CStr;
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor this function owns; ptsname_r writes into buf.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = std::fs::File::from_raw_fd(fd);
        assert_eq!(libc::grantpt(fd), 0, "grantpt");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
        let mut buf = [0 as libc::c_char; 256];
        assert_eq!(
            libc::ptsname_r(fd, buf.as_mut_ptr(), buf.len()),
            0,
            "ptsname_r"
        );
        let ws = libc::winsize {
            ws_row: 24,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(libc::ioctl(fd, libc::TIOCSWINSZ, &ws), 0, "TIOCSWINSZ");
        let slave = PathBuf::from(CStr::from_ptr(buf.as_ptr()).to_str().unwrap());
        Pty { master, slave }
    }
}

#[test]
fn at_a_terminal_the_line_editor_keeps_history_and_ctrl_c_stops_answers() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let pty = open_pty();
    let tty = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pty.slave)
            .unwrap()
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reel"));
    cmd.args(chat_args(&["--max-new-tokens", LONG]))
        // The history file goes here, not into the user's.
        .env("XDG_DATA_HOME", dir.path())
        .env("TERM", "xterm")
        .stdin(tty())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own with the terminal as its controlling terminal, so the
            // Ctrl-C key sends it SIGINT, as a shell's foreground job.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Reap(cmd.spawn().expect("run reel chat"));
    drop(cmd);
    let stdout = child.0.stdout.take().unwrap();
    small_pipe(&stdout);
    let out = Collected::start_held(stdout, true);
    let err = Collected::start(child.0.stderr.take().unwrap());
    let term = Collected::start(pty.master.try_clone().unwrap());
    let mut keys = pty.master.try_clone().unwrap();
    let mut type_keys = |k: &str| {
        keys.write_all(k.as_bytes()).unwrap();
        keys.flush().unwrap();
    };
    // The editor switches the terminal to raw mode, turns bracketed paste on and shows its
    // prompt, once per line it reads: keys typed after that are its to read.
    const EDITING: &str = "\x1b[?2004h";
    let mut lines = 0;
    let mut next_prompt = |what: &str| {
        lines += 1;
        let n = lines;
        term.wait_for(what, |s| {
            s.match_indices(EDITING)
                .nth(n - 1)
                .is_some_and(|(at, _)| s[at..].contains("> "))
        });
    };

    next_prompt("the first prompt");
    type_keys("/stats\r");
    err.wait_for("the reply to /stats", |s| count(s, "no answer yet") == 1);
    // Ctrl-C drops the line being typed and gives a fresh prompt.
    next_prompt("the second prompt");
    type_keys("/nonsense");
    type_keys("\x03");
    next_prompt("the prompt after Ctrl-C");
    type_keys("/stats\r");
    err.wait_for("the second reply to /stats", |s| {
        count(s, "no answer yet") == 2
    });
    // Ctrl-C while it answers (the terminal is back in its normal mode) stops the answer.
    next_prompt("the prompt for a question");
    type_keys("Tell me everything about the world.\r");
    out.wait_for("the first token", |s| !s.is_empty());
    let echoed = count(&term.text(), "^C");
    type_keys("\x03");
    // The terminal echoes ^C after it has sent the signal.
    term.wait_for("the echo of Ctrl-C", |s| count(s, "^C") > echoed);
    out.release();
    err.wait_for("the interrupted answer's end", |s| s.contains(INTERRUPTED));
    // Up twice recalls the /stats before the question (the repeated /stats is stored once).
    next_prompt("the prompt after the interrupted answer");
    type_keys("\x1b[A\x1b[A\r");
    let e = err.wait_for("/stats from the history", |s| {
        whole_lines(s).any(|l| l.starts_with("prompt "))
    });
    let stats = whole_lines(&e).find(|l| l.starts_with("prompt ")).unwrap();
    assert!(stats.ends_with("| interrupted"), "{stats}");
    // Ctrl-D at an empty line quits.
    next_prompt("the last prompt");
    type_keys("\x04");
    let status = wait_exit(&mut child.0, &err);
    let e = err.all();
    assert!(status.success(), "{status}\n{e}");
    assert!(!e.contains("unknown command"), "{e}");
    assert!(!e.contains("error"), "{e}");
    // The answer alone is on standard output; the prompts went to the terminal.
    let answer = out.all();
    assert!(!answer.contains("> /stats"), "{answer}");
    let history = std::fs::read_to_string(dir.path().join("reel/chat_history")).unwrap();
    let entries: Vec<&str> = history.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        ["/stats", "Tell me everything about the world.", "/stats"],
        "{history}"
    );
}
