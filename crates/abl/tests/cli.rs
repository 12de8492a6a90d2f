//! `abl` as a user runs it: the built binary, the keyless mock, real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::Write as _;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{abl, contents, examples, records, run, run_mock, stderr};

#[test]
fn jsonl_end_to_end_item_by_item() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let input = examples().join("prompts.jsonl");
    let o = run_mock(&input, &out, &["--preserve-order"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let inputs: Vec<Value> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outs = records(&out);
    assert_eq!(outs.len(), inputs.len());
    for (i, o) in inputs.iter().zip(&outs) {
        assert_eq!(o["id"], i["id"]);
        assert_eq!(o["ok"], true);
        assert_eq!(o["output"], i["prompt"]);
        assert_eq!(o["context"]["lang"], i["lang"]);
        assert_eq!(o["replayed"], false);
        assert!(o["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }
    assert!(
        stderr(&o).contains("Batch completed: 200 items, 200 succeeded, 0 failed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn csv_with_a_template_and_text_and_chat() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("csv.jsonl");
    let o = run(&[
        "run",
        examples().join("tickets.csv").to_str().unwrap(),
        "--template",
        "Classify: {text}",
        "--model",
        "mock:upper",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let outs = records(&out);
    assert_eq!(outs.len(), 50);
    let row7 = outs.iter().find(|r| r["id"] == "row-7").unwrap();
    assert_eq!(
        row7["output"],
        "CLASSIFY: MY ORDER 7 HAS NOT ARRIVED, \"URGENT\", PLEASE HELP"
    );
    assert!(row7["context"]["lang"].is_string());

    let out = dir.path().join("txt.jsonl");
    let o = run_mock(&examples().join("prompts.txt"), &out, &[]);
    assert_eq!(o.status.code(), Some(0));
    let outs = records(&out);
    assert_eq!(outs.len(), 20);
    let third = outs.iter().find(|r| r["id"] == "3").unwrap();
    assert_eq!(
        third["output"],
        "Translate to French: good morning number 3"
    );

    let out = dir.path().join("chat.jsonl");
    let o = run_mock(&examples().join("chat.jsonl"), &out, &[]);
    assert_eq!(o.status.code(), Some(0));
    let outs = records(&out);
    assert_eq!(outs.len(), 10);
    let first = outs.iter().find(|r| r["id"] == "1").unwrap();
    assert_eq!(first["output"], "What colour is item 1?");
}

#[test]
fn stdin_to_stdout_and_schema_output_is_json() {
    let mut child = abl()
        .args([
            "run",
            "-",
            "--model",
            "mock:echo",
            "--schema",
            examples().join("ticket.schema.json").to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..5 {
        writeln!(stdin, "{{\"id\": \"s{i}\", \"prompt\": \"ticket {i}\"}}").unwrap();
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(l["output"]["category"], "billing");
        assert_eq!(l["output"]["urgent"], true);
    }
}

/// With `--schema` a reply that does not match the schema is a validation
/// error: retried, and recorded as one when it never matches.
#[test]
fn replies_that_do_not_match_the_schema_are_retried_then_failed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"good\", \"prompt\": \"ticket\"}\n",
            "{\"id\": \"once\", \"prompt\": \"ticket [[mock:invalid-output*1]]\"}\n",
            "{\"id\": \"never\", \"prompt\": \"ticket [[mock:invalid-output]]\"}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let o = run_mock(
        &input,
        &out,
        &[
            "--schema",
            examples().join("ticket.schema.json").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let outs = records(&out);
    let by = |id: &str| outs.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(by("good")["tries"], 1);
    assert_eq!(by("once")["tries"], 2);
    assert_eq!(by("once")["output"]["category"], "billing");
    let never = by("never");
    assert_eq!(never["ok"], false);
    assert_eq!(never["error"]["category"], "validation_error");
    assert!(
        never["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match the schema"),
        "{never}"
    );
}

#[test]
fn a_schema_that_is_not_a_json_schema_is_a_usage_error_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("bad.schema.json");
    std::fs::write(&schema, r#"{"type": 5}"#).unwrap();
    let o = run_mock(
        &examples().join("prompts.jsonl"),
        &dir.path().join("out.jsonl"),
        &["--schema", schema.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a valid JSON schema"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn scripted_permanent_failures_exit_1_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    let mut failing = HashSet::new();
    for i in 0..300 {
        let marker = if i % 33 == 5 {
            failing.insert(format!("{i}"));
            " [[mock:400]]"
        } else {
            ""
        };
        writeln!(f, "{{\"id\": \"{i}\", \"prompt\": \"p{i}{marker}\"}}").unwrap();
    }
    drop(f);
    let out = dir.path().join("out.jsonl");
    let o = run_mock(&input, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let outs = records(&out);
    assert_eq!(outs.len(), 300);
    assert_eq!(failing.len(), 9, "3 % of 300");
    for r in &outs {
        let id = r["id"].as_str().unwrap();
        if failing.contains(id) {
            assert_eq!(
                (r["ok"].clone(), r["error"]["category"].clone()),
                (Value::Bool(false), Value::from("client_error"))
            );
            assert_eq!(r["tries"], 1);
        } else {
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    assert!(
        stderr(&o).contains(" 9  client error (e.g."),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_input_exits_2_with_a_message_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let malformed = p(
        "bad.jsonl",
        "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 2, \"prompt\": \n",
    );
    let missing = p(
        "missing.jsonl",
        "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 2, \"text\": \"b\"}\n",
    );
    let csv = examples().join("tickets.csv");
    let csv = csv.to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let out = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["run", &malformed, "--model", "mock:echo", "-o", out],
            format!("{malformed}:2: malformed JSON"),
        ),
        (
            vec!["run", &missing, "--model", "mock:echo", "-o", out],
            format!("{missing}:2: field 'prompt': is missing"),
        ),
        (
            vec![
                "run",
                csv,
                "--template",
                "Classify: {txt}",
                "--model",
                "mock:echo",
                "-o",
                out,
            ],
            format!("{csv}:2: field 'txt': is missing"),
        ),
        (
            vec![
                "run",
                csv,
                "--template",
                "Classify: {text",
                "--model",
                "mock:echo",
            ],
            "--template: template: '{' at character 11 is never closed".into(),
        ),
        (
            vec!["run", "/no/such/file.jsonl", "--model", "mock:echo"],
            "/no/such/file.jsonl: cannot open".into(),
        ),
        (
            vec!["run", csv, "--template", "{text}", "--model", "nope:x"],
            "unknown provider \"nope\"".into(),
        ),
        (
            vec!["run", &malformed, "--model", "openai:gpt-4o-mini"],
            String::new(),
        ),
        (
            vec![
                "run",
                csv,
                "--template",
                "{text}",
                "--model",
                "openai:gpt-4o-mini",
            ],
            "no API key for openai: set OPENAI_API_KEY".into(),
        ),
        (
            vec!["run", csv, "--template", "{text}"],
            "--model is required".into(),
        ),
    ];
    for (args, want) in cases {
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&want), "{args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("abl: error")).count(),
            1,
            "{err}"
        );
    }
    // Nothing was called or written for a file with a bad line.
    assert!(std::fs::read_to_string(out).map_or(true, |s| s.is_empty()));
}

#[test]
fn a_batch_deadline_exits_3_with_every_item_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let o = run_mock(
        &examples().join("prompts.jsonl"),
        &out,
        &[
            "--mock-latency-ms",
            "200",
            "--concurrency",
            "10",
            "--batch-deadline",
            "0.5",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let outs = records(&out);
    let ids: HashSet<&str> = outs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), outs.len(), "each id once");
    assert!(
        outs.iter()
            .any(|r| r["error"]["category"] == "batch_deadline")
    );
    assert!(
        stderr(&o).contains("Batch stopped (batch deadline)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sigint_with_200_calls_in_flight_exits_130_with_an_intact_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..2000 {
        writeln!(f, "{{\"id\": \"{i}\", \"prompt\": \"p{i}\"}}").unwrap();
    }
    drop(f);
    let out = dir.path().join("out.jsonl");
    let child = abl()
        .args([
            "run",
            input.to_str().unwrap(),
            "--model",
            "mock:echo",
            "--mock-latency-ms",
            "200",
            "--concurrency",
            "200",
            "-o",
            out.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The whole run takes ~2 s; at 1 s calls are surely in flight.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(5), "drained promptly");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with('\n'), "no torn last line");
    let outs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: HashSet<&str> = outs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), outs.len());
    // The calls in flight finished (drain); nothing else started.
    assert!(outs.len() >= 200 && outs.len() < 2000, "{}", outs.len());
    // Calls in flight finish; items accepted but not yet started end cleanly
    // as aborted, with no call made.
    for r in &outs {
        let finished = r["ok"] == true;
        let not_started = r["error"]["category"] == "aborted" && r["tries"] == 0;
        assert!(finished || not_started, "{r}");
    }
    assert!(
        outs.iter().filter(|r| r["ok"] == true).count() >= 200,
        "the calls in flight finished"
    );
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
}

#[test]
fn plain_progress_lines_without_escape_codes_when_not_a_terminal() {
    let o = run(&[
        "run",
        examples().join("prompts.jsonl").to_str().unwrap(),
        "--model",
        "mock:echo",
        "--mock-latency-ms",
        "50",
        "--concurrency",
        "8",
        "--progress-interval",
        "0.2",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.lines()
            .filter(|l| l.starts_with("abl: ") && l.contains("/200 done"))
            .count()
            >= 2,
        "{err}"
    );
    assert!(!err.contains('\x1b'), "escape codes in non-terminal output");
}

#[test]
fn the_progress_bar_renders_in_a_pseudo_terminal_and_shows_a_cooldown() {
    // util-linux `script` runs abl under a pty and records what it drew.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..60 {
        let marker = if i == 3 { " [[mock:429:2*1]]" } else { "" };
        writeln!(f, "{{\"id\": \"{i}\", \"prompt\": \"p{i}{marker}\"}}").unwrap();
    }
    drop(f);
    // An 80-column terminal, whatever the host's: the bar cuts its line there.
    let cmd = format!(
        "stty cols 80; {} run {} --model mock:echo --mock-latency-ms 100 --concurrency 4 -o {}",
        env!("CARGO_BIN_EXE_abl"),
        input.display(),
        dir.path().join("out.jsonl").display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    assert!(
        screen.contains('\x1b'),
        "a bar is drawn with terminal control codes"
    );
    assert!(screen.contains("/60"), "{screen}");
    assert!(
        screen.contains("COOLDOWN"),
        "the cooldown is visible: {screen}"
    );
    assert!(screen.contains("Batch completed: 60 items"), "{screen}");
}

/// What a terminal of `cols` columns shows of `abl ARGS` run under a pty
/// (util-linux `script`): the raw stream.
fn in_a_terminal(cols: u16, args: &str) -> String {
    let cmd = format!("stty cols {cols}; {} {args}", env!("CARGO_BIN_EXE_abl"));
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{screen}");
    screen
}

/// The lines a terminal stream draws: colours removed, and each carriage
/// return, newline, cursor move or erase starting a new one.
fn drawn_lines(screen: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut chars = screen.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; `m` (colour) draws nothing.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    let end = chars.by_ref().find(|f| ('@'..='~').contains(f));
                    if end != Some('m') {
                        lines.push(String::new());
                    }
                }
            }
            '\r' | '\n' => lines.push(String::new()),
            c => lines.last_mut().unwrap().push(c),
        }
    }
    lines.retain(|l| !l.trim().is_empty());
    lines
}

#[test]
fn the_progress_line_fits_80_and_120_columns_and_counts_work_held_for_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    // The first item fails twice (backoff 1 s, then 2 s): with
    // --preserve-order everything after it is held back meanwhile.
    for i in 0..60 {
        let marker = if i == 0 { " [[mock:500*2]]" } else { "" };
        writeln!(f, "{{\"id\": \"{i}\", \"prompt\": \"p{i}{marker}\"}}").unwrap();
    }
    drop(f);
    for cols in [80usize, 120] {
        let out = dir.path().join(format!("out{cols}.jsonl"));
        let screen = in_a_terminal(
            cols as u16,
            &format!(
                "run {} --model mock:echo --mock-latency-ms 50 --concurrency 4 --preserve-order -o {}",
                input.display(),
                out.display()
            ),
        );
        let lines = drawn_lines(&screen);
        let bar: Vec<&String> = lines.iter().filter(|l| l.contains("/60")).collect();
        assert!(!bar.is_empty(), "{screen}");
        for l in &bar {
            assert!(
                l.chars().count() <= cols,
                "{} columns: {l:?}",
                l.chars().count()
            );
        }
        // Finished work counts while the first item holds the output back.
        assert!(
            bar.iter().any(|l| l.contains("held for order")),
            "{lines:#?}"
        );
        assert!(screen.contains("Batch completed: 60 items"), "{screen}");
    }
}

#[test]
fn summary_of_an_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    run_mock(&examples().join("prompts.txt"), &out, &[]);
    let o = run(&["summary", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("20 items, 20 succeeded"));
    let o = run(&["summary", examples().join("prompts.txt").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("prompts.txt:1: not a result record"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn budgets_and_fail_fast_exit_3_and_unknown_categories_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let input = examples().join("prompts.jsonl");
    let o = run_mock(
        &input,
        &out,
        &[
            "--mock-latency-ms",
            "20",
            "--concurrency",
            "4",
            "--max-tokens",
            "500",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Batch stopped (budget exceeded)"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("token budget of 500 reached"),
        "{}",
        stderr(&o)
    );
    let outs = records(&out);
    let ids: HashSet<&str> = outs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), outs.len());
    assert!(outs.len() < 200);
    assert!(
        stderr(&o).contains(&format!(
            "; {} not started (no record: the run stopped first)",
            200 - outs.len()
        )),
        "{}",
        stderr(&o)
    );

    let bad = dir.path().join("bad.jsonl");
    let mut f = std::fs::File::create(&bad).unwrap();
    for i in 0..50 {
        let marker = if i == 3 { " [[mock:401]]" } else { "" };
        writeln!(f, "{{\"id\": {i}, \"prompt\": \"p{i}{marker}\"}}").unwrap();
    }
    drop(f);
    let o = run_mock(
        &bad,
        &out,
        &[
            "--mock-latency-ms",
            "20",
            "--concurrency",
            "2",
            "--fail-fast",
            "authentication",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Stopped by item 3 (authentication)"),
        "{}",
        stderr(&o)
    );
    assert!(records(&out).len() < 50);

    let o = run(&[
        "run",
        bad.to_str().unwrap(),
        "--model",
        "mock:echo",
        "--fail-fast",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--fail-fast: unknown category \"nope\""),
        "{}",
        stderr(&o)
    );
}

/// `--schema` retries a reply that breaks the schema with the reply and
/// the error shown to the model (structured output's feedback retry).
#[test]
fn a_schema_retry_shows_the_model_its_reply_and_the_error() {
    let mock = common::Mock::start(&["--record-requests"]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"t\", \"prompt\": \"ticket [[mock:invalid-output*1]]\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let o = abl()
        .args([
            "run",
            input.to_str().unwrap(),
            "--model",
            "openai:gpt-4o-mini",
        ])
        .args(["--base-url", &format!("{}/v1", mock.url)])
        .args(["-o", out.to_str().unwrap(), "--schema"])
        .arg(examples().join("ticket.schema.json"))
        .env("OPENAI_API_KEY", "test-key")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(records(&out)[0]["attempts"], 2);
    let requests = mock.get("/requests");
    let requests = requests.as_array().unwrap();
    assert_eq!(requests.len(), 2);
    let retry = requests[1]["body"].to_string();
    assert!(retry.contains("does not match the schema"), "{retry}");
    assert!(
        retry.contains("unexpected"),
        "the failed reply is shown: {retry}"
    );
    assert!(!requests[0]["body"].to_string().contains("rejected"));
}

#[test]
fn a_dry_run_estimates_without_a_key_and_close_to_what_the_run_then_uses() {
    let dir = tempfile::tempdir().unwrap();
    let input = examples().join("prompts.jsonl");
    let (real, real_json) = (dir.path().join("real.jsonl"), dir.path().join("real.json"));
    let o = run_mock(
        &input,
        &real,
        &["--summary-json", real_json.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let real: Value = serde_json::from_str(&std::fs::read_to_string(&real_json).unwrap()).unwrap();
    let real_tokens = real["stats"]["usage"]["total_tokens"].as_u64().unwrap();
    // No key in the environment (the helper removes them), a limit that
    // would take minutes to honour, and the output the mock's echoes use.
    let (dry, dry_json) = (dir.path().join("dry.jsonl"), dir.path().join("dry.json"));
    let started = Instant::now();
    let o = run(&[
        "run",
        input.to_str().unwrap(),
        "--model",
        "openai:gpt-4o-mini",
        "--dry-run",
        "--rpm",
        "60",
        "--expected-output-tokens",
        "21",
        "-o",
        dry.to_str().unwrap(),
        "--summary-json",
        dry_json.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "a dry run is not paced by the limits"
    );
    let err = stderr(&o);
    assert!(
        err.contains("Estimate (no call made): 200 calls")
            && err.contains("at least 3m20s at the rpm limit"),
        "{err}"
    );
    // Priced from the built-in list: 4,129 × $0.15 + 4,200 × $0.60 per million.
    assert!(err.contains("Cost       0.0031"), "{err}");
    assert!(
        err.contains("Prices: list prices of gpt-4o-mini as of"),
        "{err}"
    );
    let dry: Value = serde_json::from_str(&std::fs::read_to_string(&dry_json).unwrap()).unwrap();
    assert_eq!(dry["stats"]["dry_run"], true);
    assert_eq!(dry["estimate"]["least_time_ms"], 200_000.0);
    let e = &dry["estimate"];
    let estimated = e["input_tokens"].as_u64().unwrap() + e["output_tokens"].as_u64().unwrap();
    let off = (estimated as f64 - real_tokens as f64).abs() / real_tokens as f64;
    assert!(off <= 0.10, "estimated {estimated}, used {real_tokens}");
}

#[test]
fn shards_split_a_job_and_merge_checks_every_input_id_is_in_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = examples().join("prompts.jsonl");
    let outs: Vec<_> = (0..3)
        .map(|k| dir.path().join(format!("shard-{k}.jsonl")))
        .collect();
    let mut sizes = Vec::new();
    for (k, out) in outs.iter().enumerate() {
        let shard = format!("{k}/3");
        let o = run_mock(&input, out, &["--shard", &shard]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("shard {shard}: ")),
            "{}",
            stderr(&o)
        );
        sizes.push(records(out).len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 200, "{sizes:?}");
    assert!(sizes.iter().all(|n| *n > 40), "uneven shards {sizes:?}");
    // The same shard again takes the same items.
    let again = dir.path().join("again.jsonl");
    let o = run_mock(&input, &again, &["--shard", "1/3"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ids = |p: &std::path::Path| {
        let mut v: Vec<String> = records(p)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(&again), ids(&outs[1]));

    let merged = dir.path().join("merged.jsonl");
    let mut args = vec![
        "merge",
        "-o",
        merged.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ];
    args.extend(outs.iter().map(|p| p.to_str().unwrap()));
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("every input id exactly once"),
        "{}",
        stderr(&o)
    );
    assert_eq!(records(&merged).len(), 200);

    // A shard missing, or one given twice: refused, and the merged output
    // of before is left as it was.
    let before = contents(&merged);
    for files in [
        vec![&outs[0], &outs[1]],
        vec![&outs[0], &outs[1], &outs[1], &outs[2]],
    ] {
        let mut args = vec![
            "merge",
            "-o",
            merged.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ];
        args.extend(files.iter().map(|p| p.to_str().unwrap()));
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("are in no shard's output")
                || err.contains("already in an earlier record"),
            "{err}"
        );
        assert_eq!(contents(&merged), before);
        assert!(!dir.path().join("merged.jsonl.abl-partial").exists());
    }
    let o = run_mock(&input, &dir.path().join("x.jsonl"), &["--shard", "3/3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("numbered 0 to 2"), "{}", stderr(&o));
}

#[test]
fn abl_embed_packs_items_and_a_rerun_embeds_only_what_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let input = examples().join("prompts.jsonl");
    let first_half = dir.path().join("half.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .take(100)
        .map(str::to_owned)
        .collect();
    std::fs::write(&first_half, lines.join("\n") + "\n").unwrap();
    let checkpoint = dir.path().join("emb.sqlite");
    let embed = |input: &std::path::Path, out: &std::path::Path| {
        run(&[
            "embed",
            input.to_str().unwrap(),
            "--model",
            "mock:embed",
            "--text-field",
            "prompt",
            "--pack-inputs",
            "16",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let half_out = dir.path().join("half-out.jsonl");
    let o = embed(&first_half, &half_out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // 100 items in requests of 16: 7 requests.
    assert!(stderr(&o).contains("Calls           7"), "{}", stderr(&o));
    let out = dir.path().join("out.jsonl");
    let o = embed(&input, &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 200);
    let prompts: std::collections::HashMap<String, String> = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_owned(),
                v["prompt"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut replayed = 0;
    for r in &recs {
        let id = r["id"].as_str().unwrap();
        let want = abl_mock::embedding_of(&prompts[id], abl_mock::DEFAULT_DIMENSIONS);
        let got: Vec<f32> = serde_json::from_value(r["output"].clone()).unwrap();
        assert_eq!(got, want, "{id}");
        replayed += usize::from(r["replayed"] == true);
    }
    assert_eq!(replayed, 100, "the first half came from the checkpoint");
    // The second half only was sent: 100 items, 7 requests.
    assert!(stderr(&o).contains("Calls           7"), "{}", stderr(&o));
    // The output may not be the checkpoint (nor the input): refused, and
    // the checkpoint is left as it was.
    let before = contents(&checkpoint);
    let o = embed(&input, &checkpoint);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("same file"), "{}", stderr(&o));
    assert_eq!(contents(&checkpoint), before);
    let o = embed(&input, &input);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn abl_embed_speaks_gemini_in_requests_of_100() {
    let mock = common::Mock::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vec.jsonl");
    let o = abl()
        .env("GEMINI_API_KEY", "gemini-embed-test-key")
        .args([
            "embed",
            examples().join("prompts.jsonl").to_str().unwrap(),
            "--model",
            "gemini:gemini-embedding-001",
            "--base-url",
            &mock.url,
            "--text-field",
            "prompt",
            "--dimensions",
            "4",
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 200);
    assert!(
        recs.iter()
            .all(|r| r["output"].as_array().map(Vec::len) == Some(4))
    );
    let stats = mock.get("/stats");
    assert_eq!(stats["requests"], 2, "200 texts at 100 a request: {stats}");
    assert_eq!(stats["embedded_inputs"], 200);
}
