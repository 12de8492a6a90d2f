//! `abl run --via batch-api` against the mock's OpenAI Batch API: every
//! item one record, failures resubmitted once then failed with their
//! category, SIGKILL at random points resumed with nothing submitted or
//! executed twice, `abl batch status` and `abl batch cancel`, and the
//! settings refused before anything runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mock, TEST_KEY, abl, records, stderr};

fn input(path: &Path, n: usize, marked: &[(usize, &str)]) {
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let mark = marked.iter().find(|(k, _)| *k == i).map_or("", |(_, m)| *m);
        lines.push(format!(
            "{{\"id\":\"q{i:05}\",\"prompt\":\"question {i}{mark}\"}}"
        ));
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// `abl run INPUT --model openai:gpt-4o-mini --via batch-api` against
/// `mock` with `--checkpoint CP` and `extra` flags.
fn batch_run(mock: &Mock, input: &Path, out: &Path, cp: &Path, extra: &[&str]) -> Command {
    let cp = cp.to_str().unwrap();
    let mut c = common::run_against(
        mock,
        input,
        out,
        &[
            "--via",
            "batch-api",
            "--checkpoint",
            cp,
            "--batch-poll-secs",
            "0.1",
        ],
    );
    c.args(extra);
    c
}

#[test]
fn every_item_gets_one_record_and_what_could_not_run_is_resubmitted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "200"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(
        &inp,
        1_200,
        &[
            (5, " [[mock:500]]"),
            (7, " [[mock:expire]]"),
            (9, " [[mock:400]]"),
        ],
    );
    let o = batch_run(&mock, &inp, &out, &cp, &["--batch-job-items", "500"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "three items fail: {}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 1_200);
    let mut ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1_200, "every id once");
    let by_id = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(by_id("q00000")["output"], "question 0");
    assert_eq!(by_id("q00000")["usage"]["input_tokens"], 3);
    assert_eq!(by_id("q00005")["error"]["category"], "server_error");
    assert_eq!(by_id("q00005")["attempts"], 2, "resubmitted once");
    assert_eq!(by_id("q00007")["error"]["category"], "batch_expired");
    assert_eq!(by_id("q00009")["error"]["category"], "client_error");
    assert_eq!(
        by_id("q00009")["attempts"],
        1,
        "not retryable: not resubmitted"
    );
    let stats = mock.get("/stats");
    // 1,200 in jobs of 500 (3 jobs), then one job for the two retryable failures.
    assert_eq!(stats["batches_created"], 4, "{}", stderr(&o));
    assert_eq!(stats["batch_files_uploaded"], 4);
    assert_eq!(
        stats["batch_items_executed"],
        1_200 - 1 + 1,
        "the expired line never ran; the 500 ran twice"
    );
    assert_eq!(stats["batch_items_repeated"], 1);
    let err = stderr(&o);
    assert!(
        err.contains("Prices: batch-API rate (half the list price)"),
        "{err}"
    );
    assert!(
        !dir.path()
            .join("run.sqlite.jobs")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "job files removed"
    );
    // Run again with --resume all: everything is replayed, nothing
    // submitted (by default the three failures would be tried again).
    let again = batch_run(
        &mock,
        &inp,
        &dir.path().join("again.jsonl"),
        &cp,
        &["--resume", "all"],
    )
    .output()
    .unwrap();
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert_eq!(mock.get("/stats")["batches_created"], 4);
}

#[test]
fn sigkill_at_random_points_then_resume_submits_and_executes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "400"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(&inp, 2_000, &[]);
    // Kill points spread over upload, submission, polling and download.
    for (k, ms) in [40u64, 150, 300, 520, 700, 90, 1_100, 260]
        .into_iter()
        .enumerate()
    {
        let mut child = batch_run(&mock, &inp, &out, &cp, &["--batch-job-items", "250"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            eprintln!("run {k} finished before its kill");
        }
    }
    let o = batch_run(&mock, &inp, &out, &cp, &["--batch-job-items", "250"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 2_000);
    let mut ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2_000);
    assert!(recs.iter().all(|r| r["ok"] == true));
    let stats = mock.get("/stats");
    assert_eq!(
        stats["batch_items_executed"], 2_000,
        "each item executed once"
    );
    assert_eq!(stats["batch_items_repeated"], 0);
    assert_eq!(
        stats["batch_lines_submitted"], 2_000,
        "no request submitted twice"
    );
    assert_eq!(
        stats["batches_created"], 8,
        "2,000 in jobs of 250, none submitted twice"
    );
}

#[test]
fn status_lists_the_jobs_and_cancel_cancels_them() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "600000"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(&inp, 30, &[]);
    let mut child = batch_run(&mock, &inp, &out, &cp, &["--batch-job-items", "10"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the three jobs are submitted, then stop the run.
    for _ in 0..200 {
        if mock.get("/stats")["batches_created"] == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let url = format!("{}/v1", mock.url);
    let o = abl()
        .env("OPENAI_API_KEY", TEST_KEY)
        .args(["batch", "status", cp.to_str().unwrap(), "--base-url", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("submitted") && l.contains("in_progress 0/10"))
            .count(),
        3,
        "{text}"
    );
    let o = abl()
        .env("OPENAI_API_KEY", TEST_KEY)
        .args(["batch", "cancel", cp.to_str().unwrap(), "--base-url", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches(": cancelled")
            .count(),
        3
    );
    // The rerun collects the cancelled jobs: their requests go into one more
    // job (the window of a cancelled job never ran them), not lost.
    assert_eq!(mock.get("/stats")["batch_items_executed"], 0);
}

#[test]
fn settings_that_cannot_work_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.jsonl");
    input(&inp, 3, &[]);
    let cases: [(&[&str], &str); 4] = [
        (&["--via", "batch-api"], "needs --checkpoint FILE.sqlite"),
        (
            &["--via", "batch-api", "--checkpoint", "c.jsonl"],
            "needs --checkpoint FILE.sqlite",
        ),
        (
            &["--batch-poll-secs", "1"],
            "--batch-poll-secs needs --via batch-api",
        ),
        (
            &[
                "--via",
                "batch-api",
                "--checkpoint",
                "c.sqlite",
                "--batch-job-items",
                "60000",
            ],
            "--batch-job-items must be from 1 to 50000",
        ),
    ];
    for (extra, says) in cases {
        let o = abl()
            .current_dir(dir.path())
            .args([
                "run",
                inp.to_str().unwrap(),
                "--model",
                "openai:gpt-4o-mini",
                "-o",
                "out.jsonl",
            ])
            .args(extra)
            .env("OPENAI_API_KEY", TEST_KEY)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
        assert!(!dir.path().join("out.jsonl").exists());
    }
    let o = abl()
        .current_dir(dir.path())
        .env("DEEPSEEK_API_KEY", TEST_KEY)
        .args([
            "run",
            inp.to_str().unwrap(),
            "--model",
            "deepseek:deepseek-chat",
            "--via",
            "batch-api",
            "--checkpoint",
            "c.sqlite",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("deepseek: has no batch API"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn with_fallback_online_what_a_job_could_not_run_finishes_online() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "100"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(&inp, 50, &[(7, " [[mock:expire]]"), (9, " [[mock:400]]")]);
    let o = batch_run(&mock, &inp, &out, &cp, &["--batch-fallback", "online"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("finishing 1 request(s) online"),
        "{}",
        stderr(&o)
    );
    let recs = records(&out);
    assert_eq!(recs.len(), 50);
    let by_id = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap();
    // The expired request ran online (the marker only means something to a job).
    assert_eq!(by_id("q00007")["output"], "question 7 [[mock:expire]]");
    assert_eq!(
        by_id("q00007")["attempts"],
        2,
        "one job, then one online attempt"
    );
    // A 400 is not something another way of calling fixes: it fails at once.
    assert_eq!(by_id("q00009")["error"]["category"], "client_error");
    let stats = mock.get("/stats");
    assert_eq!(stats["batches_created"], 1, "no second job");
    assert_eq!(stats["by_route"]["responses"]["ok"], 1, "one online call");
}
