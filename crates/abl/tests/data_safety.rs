//! Never lose a user's data: each way a run could damage a file it was not
//! asked to change, tried as a user would, with the file's bytes compared
//! before and after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Mock, abl, contents, records, run, run_mock, stderr};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A small input of `n` items `i0`… .
fn input(dir: &Path, n: usize) -> std::path::PathBuf {
    let p = dir.join("in.jsonl");
    let mut text = String::new();
    for i in 0..n {
        let _ = writeln!(text, "{{\"id\": \"i{i}\", \"prompt\": \"item {i}\"}}");
    }
    write(&p, &text);
    p
}

/// Runs `args` and checks it exits 2 with a message holding each of
/// `want`, and that `untouched` files are byte for byte as before.
fn refused(args: &[&str], want: &[&str], untouched: &[&Path]) {
    let before: Vec<_> = untouched.iter().map(|p| contents(p)).collect();
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: wanted {w:?} in {err}");
    }
    for (p, b) in untouched.iter().zip(before) {
        assert_eq!(contents(p), b, "{} changed", p.display());
    }
}

#[test]
fn an_output_equal_to_the_input_is_refused_and_the_input_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let same = input(dir.path(), 3);
    let s = same.to_str().unwrap();
    refused(
        &["run", s, "--model", "mock:echo", "-o", s],
        &["INPUT and -o/--output are the same file"],
        &[&same],
    );
    // Through a symlink and a hard link too.
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&same, &link).unwrap();
    let hard = dir.path().join("hard.jsonl");
    std::fs::hard_link(&same, &hard).unwrap();
    for other in [&link, &hard] {
        refused(
            &[
                "run",
                s,
                "--model",
                "mock:echo",
                "-o",
                other.to_str().unwrap(),
            ],
            &["same file"],
            &[&same],
        );
    }
}

#[test]
fn a_summary_json_equal_to_the_input_or_the_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 3);
    let out = dir.path().join("out.jsonl");
    write(&out, "earlier results\n");
    let (i, o) = (inp.to_str().unwrap(), out.to_str().unwrap());
    for target in [i, o] {
        refused(
            &[
                "run",
                i,
                "--model",
                "mock:echo",
                "-o",
                o,
                "--summary-json",
                target,
            ],
            &["--summary-json", "same file"],
            &[&inp, &out],
        );
    }
}

#[test]
fn an_output_equal_to_the_checkpoint_or_its_sidecars_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 3);
    let i = inp.to_str().unwrap();
    for name in ["x.jsonl", "x.sqlite"] {
        let cp = dir.path().join(name);
        let c = cp.to_str().unwrap();
        assert_eq!(
            run_mock(&inp, &dir.path().join("first.jsonl"), &["--checkpoint", c])
                .status
                .code(),
            Some(0)
        );
        refused(
            &["run", i, "--model", "mock:echo", "-o", c, "--checkpoint", c],
            &["--checkpoint", "same file"],
            &[&cp],
        );
    }
    let cp = dir.path().join("x.sqlite");
    let wal = format!("{}-wal", cp.display());
    refused(
        &[
            "run",
            i,
            "--model",
            "mock:echo",
            "-o",
            &wal,
            "--checkpoint",
            cp.to_str().unwrap(),
        ],
        &["-wal file", "same file"],
        &[&cp],
    );
}

#[test]
fn a_bad_checkpoint_leaves_the_earlier_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 3);
    let out = dir.path().join("out.jsonl");
    write(&out, "{\"my\": \"earlier results\"}\n");
    let notes = dir.path().join("notes.jsonl");
    write(&notes, "my notes, not a checkpoint\n");
    let broken = dir.path().join("broken.sqlite");
    write(&broken, "SQLite format 3\0 but nothing after the header");
    let corrupted = dir.path().join("corrupted.sqlite");
    assert_eq!(
        run_mock(
            &inp,
            &dir.path().join("o.jsonl"),
            &["--checkpoint", corrupted.to_str().unwrap()]
        )
        .status
        .code(),
        Some(0)
    );
    let mut bytes = std::fs::read(&corrupted).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(&corrupted, &bytes).unwrap();
    for (cp, want) in [
        (dir.path().join("no/such/dir/run.sqlite"), "does not exist"),
        (notes.clone(), "not an abl checkpoint"),
        (broken.clone(), "--checkpoint"),
        (corrupted.clone(), "--checkpoint"),
    ] {
        let o = run_mock(&inp, &out, &["--checkpoint", cp.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}: {}", cp.display(), stderr(&o));
        assert!(
            stderr(&o).contains(want),
            "{}: {}",
            cp.display(),
            stderr(&o)
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"my\": \"earlier results\"}\n",
            "{}",
            cp.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "my notes, not a checkpoint\n"
    );
}

#[test]
fn files_that_are_not_checkpoints_are_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 3);
    let out = dir.path().join("out.jsonl");
    // A plain text file as a JSONL checkpoint (was "repaired" and adopted).
    let notes = dir.path().join("notes.jsonl");
    write(&notes, "line one\nline two without an end");
    // Another application's database (got our tables added).
    let app = dir.path().join("app.db");
    foreign_database(&app);
    for (cp, want) in [
        (&notes, "not an abl checkpoint"),
        (&app, "not an abl checkpoint"),
    ] {
        refused(
            &[
                "run",
                inp.to_str().unwrap(),
                "--model",
                "mock:echo",
                "-o",
                out.to_str().unwrap(),
                "--checkpoint",
                cp.to_str().unwrap(),
            ],
            &[want],
            &[cp],
        );
    }
    assert!(!out.exists(), "no output was created");
}

/// Another application's SQLite database.
fn foreign_database(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
        .unwrap();
}

#[test]
fn every_identity_is_kept_and_summary_lists_them_with_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 5);
    let out = dir.path().join("out.jsonl");
    for name in ["run.sqlite", "run.jsonl"] {
        let cp = dir.path().join(name);
        let c = cp.to_str().unwrap();
        let first = run_mock(&inp, &out, &["--checkpoint", c]);
        assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
        let second = run(&[
            "run",
            inp.to_str().unwrap(),
            "--model",
            "mock:upper",
            "-o",
            out.to_str().unwrap(),
            "--checkpoint",
            c,
            "--prompt-version",
            "v2",
        ]);
        assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
        assert!(
            stderr(&second).contains("5 succeeded"),
            "{}",
            stderr(&second)
        );
        // The first identity replays its own records again, untouched.
        let again = run_mock(&inp, &out, &["--checkpoint", c]);
        assert!(stderr(&again).contains("5 replayed"), "{}", stderr(&again));
        assert!(
            records(&out)
                .iter()
                .all(|r| r["output"].as_str().unwrap().starts_with("item"))
        );
        let s = run(&["summary", c]);
        let text = String::from_utf8_lossy(&s.stdout);
        assert!(text.contains("holds 2 identities"), "{text}");
        assert!(
            text.contains("1. mock:echo: 5 records, 5 succeeded"),
            "{text}"
        );
        assert!(
            text.contains("2. mock:upper, prompt version \"v2\": 5 records, 5 succeeded"),
            "{text}"
        );
        assert!(text.contains("10 items"), "{text}");
    }
}

#[test]
fn duplicate_ids_are_input_errors_naming_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let dup = dir.path().join("dup.jsonl");
    write(
        &dup,
        "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"b\", \"prompt\": \"y\"}\n{\"id\": \"a\", \"prompt\": \"z\"}\n",
    );
    refused(
        &[
            "run",
            dup.to_str().unwrap(),
            "--model",
            "mock:echo",
            "-o",
            out.to_str().unwrap(),
        ],
        &["dup.jsonl:3", "\"a\"", "line 1"],
        &[&out],
    );
    // A line without an id is numbered by its line: 2 clashes with an
    // explicit "2".
    let numbered = dir.path().join("numbered.jsonl");
    write(
        &numbered,
        "{\"id\": \"2\", \"prompt\": \"x\"}\n{\"prompt\": \"y\"}\n",
    );
    refused(
        &[
            "run",
            numbered.to_str().unwrap(),
            "--model",
            "mock:echo",
            "-o",
            out.to_str().unwrap(),
        ],
        &["numbered.jsonl:2", "\"2\"", "line 1"],
        &[&out],
    );
    assert!(!out.exists());
    // On stdin: the second one gets a failure record and no call.
    let mut child = abl()
        .args([
            "run",
            "-",
            "--model",
            "mock:echo",
            "-o",
            out.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"a\", \"prompt\": \"again\"}\n{\"id\": \"b\", \"prompt\": \"y\"}\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 3);
    let second: Vec<_> = recs.iter().filter(|r| r["id"] == "a").collect();
    assert_eq!(second.len(), 2);
    let failed = second.iter().find(|r| r["ok"] == false).unwrap();
    assert_eq!(failed["error"]["category"], "input_error");
    assert_eq!(failed["tries"], 0);
    assert_eq!(failed["context"], serde_json::Value::Null);
}

#[test]
fn a_second_run_on_a_checkpoint_exits_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 400);
    for name in ["run.sqlite", "run.jsonl"] {
        let cp = dir.path().join(name);
        let mut first = abl()
            .args([
                "run",
                inp.to_str().unwrap(),
                "--model",
                "mock:echo",
                "--mock-latency-ms",
                "200",
                "--concurrency",
                "4",
                "-o",
                dir.path().join("a.jsonl").to_str().unwrap(),
                "--checkpoint",
                cp.to_str().unwrap(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the lock to be taken.
        let lock = dir.path().join(format!("{name}.lock"));
        let t = Instant::now();
        while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("PID")) {
            assert!(t.elapsed() < Duration::from_secs(20), "no lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = Instant::now();
        let second = run_mock(
            &inp,
            &dir.path().join("b.jsonl"),
            &["--checkpoint", cp.to_str().unwrap()],
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
        let err = stderr(&second);
        assert!(
            err.contains("in use by another run") && err.contains(&format!("PID {}", first.id())),
            "{err}"
        );
        assert!(!dir.path().join("b.jsonl").exists());
        // Killed with SIGKILL, the holder leaves no lock behind: the next
        // run starts at once and completes.
        first.kill().unwrap();
        first.wait().unwrap();
        let third = run_mock(
            &inp,
            &dir.path().join("c.jsonl"),
            &["--checkpoint", cp.to_str().unwrap()],
        );
        assert_eq!(third.status.code(), Some(0), "{}", stderr(&third));
        assert_eq!(records(&dir.path().join("c.jsonl")).len(), 400);
    }
}

#[test]
fn absurd_numbers_exit_2_naming_the_flag_not_101() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 2);
    let out = dir.path().join("out.jsonl");
    for (flag, value) in [
        ("--attempt-timeout", "1e308"),
        ("--cooldown", "1e308"),
        ("--item-deadline", "1e308"),
        ("--batch-deadline", "1e308"),
        ("--initial-backoff", "1e308"),
        ("--rpm", "1e-300"),
        ("--concurrency", "18446744073709551615"),
        ("--temperature", "nan"),
        ("--max-output-tokens", "0"),
    ] {
        let o = run_mock(&inp, &out, &[flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{flag}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    assert!(!out.exists());
}

#[test]
fn a_closed_stderr_or_stdout_is_a_clean_exit() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 50);
    let out = dir.path().join("out.jsonl");
    // `abl run … 2>&1 | head -2`: stderr closed after two lines.
    let mut child = abl()
        .args([
            "run",
            inp.to_str().unwrap(),
            "--model",
            "mock:echo",
            "-o",
            out.to_str().unwrap(),
        ])
        .args([
            "--no-progress",
            "--progress-interval",
            "0.001",
            "--mock-latency-ms",
            "20",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        err.read_line(&mut line).unwrap();
    }
    drop(err);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(records(&out).len(), 50);
    // `abl run … | head -1`: stdout (the output) closed.
    let mut child = abl()
        .args([
            "run",
            inp.to_str().unwrap(),
            "--model",
            "mock:echo",
            "--mock-latency-ms",
            "20",
        ])
        .args(["--concurrency", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut o = std::io::BufReader::new(child.stdout.take().unwrap());
    o.read_line(&mut line).unwrap();
    drop(o);
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(141), "{}", stderr(&done));
    assert!(!stderr(&done).contains("panicked"));
}

#[test]
fn every_option_works_from_the_environment_and_toml_values_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 20);
    let out = dir.path().join("out.jsonl");
    let o = abl()
        .args(["run", inp.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .env("ABL_MODEL", "mock:echo")
        .env("ABL_DRY_RUN", "true")
        .env("ABL_PRESERVE_ORDER", "true")
        .env("ABL_FORMAT", "jsonl")
        .env("ABL_MOCK_FAULT_500", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let recs = records(&out);
    assert!(stderr(&o).contains("DRY RUN"), "{}", stderr(&o));
    assert!(
        recs.iter()
            .all(|r| r["output"].as_str().unwrap().starts_with("[DRY-RUN]"))
    );
    let ids: Vec<_> = recs
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<_> = (0..20).map(|i| format!("i{i}")).collect();
    assert_eq!(ids, want, "in input order");
    for (key, value) in [
        ("stop-mode", "\"bogus\""),
        ("token-estimator", "\"nope\""),
        ("concurrency", "0"),
    ] {
        let cfg = dir.path().join("abl.toml");
        write(&cfg, &format!("{key} = {value}\n"));
        let o = run_mock(&inp, &out, &["--config", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{key}: {}", stderr(&o));
        assert!(stderr(&o).contains(key), "{key}: {}", stderr(&o));
    }
}

#[test]
fn mistakes_found_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 3);
    let out = dir.path().join("out.jsonl");
    let i = inp.to_str().unwrap();
    let o = out.to_str().unwrap();
    let open_schema = dir.path().join("open.schema.json");
    write(&open_schema, "{}");
    let empty = dir.path().join("empty.jsonl");
    write(
        &empty,
        "{\"id\": \"a\", \"prompt\": \"x\"}\n{\"id\": \"b\", \"prompt\": \"\"}\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--id-field", "nosuch"], "field 'nosuch': is missing"),
        (
            vec!["--schema", open_schema.to_str().unwrap()],
            "cannot take this schema",
        ),
        (
            vec!["--summary-json", "/no/such/dir/s.json"],
            "does not exist",
        ),
        (vec!["--temperature", "nan"], "--temperature"),
        (vec!["--max-output-tokens", "0"], "--max-output-tokens"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["run", i, "--model", "mock:echo", "-o", o];
        args.extend(extra.iter().copied());
        refused(&args, &[want], &[&inp]);
    }
    refused(
        &[
            "run",
            empty.to_str().unwrap(),
            "--model",
            "mock:echo",
            "-o",
            o,
        ],
        &["empty.jsonl:2", "the prompt is empty"],
        &[],
    );
    assert!(!out.exists());
}

#[test]
fn an_echoed_api_key_never_reaches_output_checkpoint_or_messages() {
    let mock = Mock::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 3);
    let out = dir.path().join("out.jsonl");
    let cp = dir.path().join("run.jsonl");
    let key = "invalid-sk-proj-Zq81xK7mWvT0aBcDeFgHiJ";
    let o = abl()
        .args([
            "run",
            inp.to_str().unwrap(),
            "--model",
            "openai:gpt-4o-mini",
        ])
        .args([
            "--base-url",
            &format!("{}/v1", mock.url),
            "-o",
            out.to_str().unwrap(),
        ])
        .args([
            "--checkpoint",
            cp.to_str().unwrap(),
            "--fail-fast",
            "authentication",
        ])
        .env("OPENAI_API_KEY", key)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs[0]["error"]["category"], "authentication");
    let message = recs[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Incorrect API key provided: [redacted]"),
        "{message}"
    );
    for (what, text) in [
        ("output", std::fs::read_to_string(&out).unwrap()),
        ("checkpoint", std::fs::read_to_string(&cp).unwrap()),
        ("stderr", stderr(&o)),
    ] {
        for n in [8, 12, key.len()] {
            assert!(
                !text.contains(&key[..n]),
                "{what} holds {n} chars of the key: {text}"
            );
        }
    }
}

#[test]
fn the_output_is_replaced_only_when_the_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 200);
    let out = dir.path().join("out.jsonl");
    write(&out, "old\n");
    let partial = dir.path().join("out.jsonl.abl-partial");
    let mut child = abl()
        .args([
            "run",
            inp.to_str().unwrap(),
            "--model",
            "mock:echo",
            "-o",
            out.to_str().unwrap(),
        ])
        .args(["--mock-latency-ms", "50", "--concurrency", "4"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !partial.exists() {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    // While it runs, and after a crash, the earlier output is intact.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    assert!(partial.exists());
    // A run that ends puts its output in place and leaves no partial file.
    let o = run_mock(&inp, &out, &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(records(&out).len(), 200);
    assert!(!partial.exists());
    // Stopped by its deadline: a clean stop, the output is what was done.
    let o = run_mock(
        &inp,
        &out,
        &[
            "--mock-latency-ms",
            "100",
            "--concurrency",
            "2",
            "--batch-deadline",
            "0.5",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let done = records(&out).len();
    assert!(done > 0 && done < 200, "{done}");
    assert!(
        stderr(&o).contains(&format!("; {} not started", 200 - done)),
        "{}",
        stderr(&o)
    );
    assert!(!partial.exists());
}

#[test]
fn devices_and_pipes_are_written_directly_never_replaced() {
    use std::os::unix::fs::FileTypeExt as _;
    // As root, renaming a finished file over /dev/null would turn the
    // device into a regular file for every program on the machine.
    let dir = tempfile::tempdir().unwrap();
    let inp = input(dir.path(), 20);
    let o = run_mock(
        &inp,
        Path::new("/dev/null"),
        &["--summary-json", "/dev/null"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = std::fs::metadata("/dev/null").unwrap();
    assert!(
        m.file_type().is_char_device(),
        "/dev/null is still a device"
    );
    // A pipe: the records arrive on it.
    let o = abl()
        .args([
            "run",
            inp.to_str().unwrap(),
            "--model",
            "mock:echo",
            "-o",
            "/dev/stdout",
        ])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 20);
}
