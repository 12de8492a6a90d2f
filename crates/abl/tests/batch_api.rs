//! `abl run --via batch-api` against the mock's batch APIs of OpenAI,
//! Anthropic and Gemini: every item one record, failures resubmitted once
//! then failed with their category, SIGKILL at 20 points resumed with
//! nothing submitted or executed twice, `abl batch status` and `abl batch
//! cancel`, and the settings refused before anything runs.

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

/// A provider's batch API as a run reaches it on the mock.
#[derive(Clone, Copy)]
struct Via {
    model: &'static str,
    key_var: &'static str,
    /// The base URL's path after the mock's address.
    path: &'static str,
}

const OPENAI: Via = Via {
    model: "openai:gpt-4o-mini",
    key_var: "OPENAI_API_KEY",
    path: "/v1",
};
const ANTHROPIC: Via = Via {
    model: "anthropic:claude-3-5-haiku-latest",
    key_var: "ANTHROPIC_API_KEY",
    path: "",
};
const GEMINI: Via = Via {
    model: "gemini:gemini-2.5-flash",
    key_var: "GEMINI_API_KEY",
    path: "",
};

/// `abl run INPUT --model M --via batch-api` against `mock` with
/// `--checkpoint CP` and `extra` flags.
fn run_via(via: Via, mock: &Mock, input: &Path, out: &Path, cp: &Path, extra: &[&str]) -> Command {
    let mut c = abl();
    c.env(via.key_var, TEST_KEY)
        .args([
            "run",
            input.to_str().unwrap(),
            "--model",
            via.model,
            "--base-url",
            &format!("{}{}", mock.url, via.path),
            "-o",
            out.to_str().unwrap(),
            "--via",
            "batch-api",
            "--checkpoint",
            cp.to_str().unwrap(),
            "--batch-poll-secs",
            "0.1",
        ])
        .args(extra);
    c
}

fn batch_run(mock: &Mock, input: &Path, out: &Path, cp: &Path, extra: &[&str]) -> Command {
    run_via(OPENAI, mock, input, out, cp, extra)
}

/// Each id once, and how many there are.
fn distinct_ids(recs: &[serde_json::Value]) -> usize {
    let mut ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

#[test]
fn every_item_gets_one_record_and_what_could_not_run_is_resubmitted_once() {
    one_record_each_and_one_resubmission(OPENAI, 4);
}

#[test]
fn anthropic_batches_give_one_record_each_and_resubmit_once() {
    one_record_each_and_one_resubmission(ANTHROPIC, 0);
}

#[test]
fn gemini_batches_give_one_record_each_and_resubmit_once() {
    one_record_each_and_one_resubmission(GEMINI, 0);
}

/// 1,200 items in jobs of 500 with a server error, an expired request and
/// a 400 among them; `uploads` is how many files the provider's API takes.
fn one_record_each_and_one_resubmission(via: Via, uploads: u64) {
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
    let o = run_via(via, &mock, &inp, &out, &cp, &["--batch-job-items", "500"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "three items fail: {}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 1_200);
    assert_eq!(distinct_ids(&recs), 1_200, "every id once");
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
    assert_eq!(stats["batch_files_uploaded"], uploads);
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
    let again = run_via(
        via,
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
    kills_then_resume(OPENAI);
}

#[test]
fn anthropic_sigkill_at_20_points_then_resume_submits_and_executes_nothing_twice() {
    kills_then_resume(ANTHROPIC);
}

#[test]
fn gemini_sigkill_at_20_points_then_resume_submits_and_executes_nothing_twice() {
    kills_then_resume(GEMINI);
}

/// 2,000 items in jobs of 250; the run is killed 20 times at points
/// spread over submission, polling and download, then resumed.
fn kills_then_resume(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "400"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(&inp, 2_000, &[]);
    // Kill points spread from 30 ms to 1.2 s (every 173 ms, wrapped).
    for (k, ms) in (0..20u64).map(|k| 30 + (k * 173) % 1_170).enumerate() {
        let mut child = run_via(via, &mock, &inp, &out, &cp, &["--batch-job-items", "250"])
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
    let o = run_via(via, &mock, &inp, &out, &cp, &["--batch-job-items", "250"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 2_000);
    assert_eq!(distinct_ids(&recs), 2_000);
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
    status_and_cancel(OPENAI, "in_progress", "cancelled");
}

#[test]
fn anthropic_status_lists_the_jobs_and_cancel_cancels_them() {
    status_and_cancel(ANTHROPIC, "in_progress", "ended");
}

#[test]
fn gemini_status_lists_the_jobs_and_cancel_cancels_them() {
    status_and_cancel(GEMINI, "pending", "cancelled");
}

/// Three jobs submitted and left running: `abl batch status` shows each
/// as `running` says, `abl batch cancel` leaves each as `cancelled` says.
fn status_and_cancel(via: Via, running: &str, cancelled: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "600000"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(&inp, 30, &[]);
    let mut child = run_via(via, &mock, &inp, &out, &cp, &["--batch-job-items", "10"])
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
    let url = format!("{}{}", mock.url, via.path);
    let o = abl()
        .env(via.key_var, TEST_KEY)
        .args(["batch", "status", cp.to_str().unwrap(), "--base-url", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("submitted") && l.contains(&format!("{running} 0/10")))
            .count(),
        3,
        "{text}"
    );
    let o = abl()
        .env(via.key_var, TEST_KEY)
        .args(["batch", "cancel", cp.to_str().unwrap(), "--base-url", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches(&format!(": {cancelled}"))
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

#[test]
fn a_gemini_job_above_the_inline_size_is_uploaded_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "100"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    // 40 prompts of 60 KB: one job of 2.4 MB, above the 2 MB sent inline.
    let filler = "x".repeat(60_000);
    let lines: Vec<String> = (0..40)
        .map(|i| format!("{{\"id\":\"big{i}\",\"prompt\":\"q{i} {filler}\"}}"))
        .collect();
    std::fs::write(&inp, lines.join("\n") + "\n").unwrap();
    let o = run_via(GEMINI, &mock, &inp, &out, &cp, &[])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&out);
    assert_eq!(recs.len(), 40);
    assert!(recs.iter().all(|r| r["ok"] == true), "{:?}", recs[0]);
    let first = recs.iter().find(|r| r["id"] == "big0").unwrap();
    assert!(first["output"].as_str().unwrap().starts_with("q0 xxx"));
    let stats = mock.get("/stats");
    assert_eq!(stats["batch_files_uploaded"], 1, "sent as a file");
    assert_eq!(stats["batches_created"], 1);
    assert_eq!(stats["batch_items_executed"], 40);
}

#[test]
fn ctrl_c_detaches_and_the_rerun_reattaches_without_submitting_again() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "2000"]);
    let (inp, out, cp) = (
        dir.path().join("in.jsonl"),
        dir.path().join("out.jsonl"),
        dir.path().join("run.sqlite"),
    );
    input(&inp, 40, &[]);
    let child = run_via(
        ANTHROPIC,
        &mock,
        &inp,
        &out,
        &cp,
        &["--batch-job-items", "20"],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    for _ in 0..200 {
        if mock.get("/stats")["batches_created"] == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("abl: detaching"), "{err}");
    assert!(err.contains("rerun the same command to reattach"), "{err}");
    assert!(err.contains("Stop: detached"), "{err}");
    // The jobs keep running; the rerun reattaches and collects them.
    let o = run_via(
        ANTHROPIC,
        &mock,
        &inp,
        &out,
        &cp,
        &["--batch-job-items", "20"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("reattached to 2 job(s)"),
        "{}",
        stderr(&o)
    );
    let recs = records(&out);
    assert_eq!(recs.len(), 40);
    assert_eq!(distinct_ids(&recs), 40);
    let stats = mock.get("/stats");
    assert_eq!(stats["batches_created"], 2, "nothing submitted again");
    assert_eq!(stats["batch_items_executed"], 40);
}

#[test]
fn schema_and_system_carry_over_to_every_providers_batch_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "50"]);
    let inp = dir.path().join("in.jsonl");
    input(&inp, 6, &[]);
    let schema = dir.path().join("s.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"summary":{"type":"string"}},"required":["summary"]}"#,
    )
    .unwrap();
    for via in [OPENAI, ANTHROPIC, GEMINI] {
        let name = via.model.split(':').next().unwrap();
        let (out, cp) = (
            dir.path().join(format!("{name}.jsonl")),
            dir.path().join(format!("{name}.sqlite")),
        );
        let o = run_via(
            via,
            &mock,
            &inp,
            &out,
            &cp,
            &[
                "--schema",
                schema.to_str().unwrap(),
                "--system",
                "Answer in one word, please.",
            ],
        )
        .output()
        .unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let recs = records(&out);
        assert_eq!(recs.len(), 6);
        for r in &recs {
            assert!(r["output"]["summary"].is_string(), "{name}: {r}");
            // "question N" is 3 tokens; the system text adds 7.
            assert!(
                r["usage"]["input_tokens"].as_u64().unwrap() >= 10,
                "{name}: {r}"
            );
        }
    }
}

#[test]
fn images_and_pdfs_reach_every_providers_batch_and_a_refused_part_fails_first() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/attachments");
    let hash = |p: &str| {
        let d = sha2::Sha256::digest(std::fs::read(examples.join(p)).unwrap());
        d.iter().fold(String::new(), |mut h, b| {
            use std::fmt::Write as _;
            let _ = write!(h, "{b:02x}");
            h
        })
    };
    let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x80\x3e\0\0\0\x7d\0\0".to_vec();
    wav.resize(2_000, 0);
    std::fs::write(dir.path().join("n.wav"), &wav).unwrap();
    let inp = dir.path().join("in.csv");
    std::fs::write(
        &inp,
        format!(
            "id,file\ninvoice,{}\nphoto,{}\naudio,n.wav\n",
            examples.join("scans/0001.pdf").display(),
            examples.join("photos/red.png").display()
        ),
    )
    .unwrap();
    let mock = Mock::start(&["--batch-processing-ms", "50"]);
    for via in [OPENAI, ANTHROPIC, GEMINI] {
        let name = via.model.split(':').next().unwrap();
        let (out, cp) = (
            dir.path().join(format!("{name}.jsonl")),
            dir.path().join(format!("{name}.sqlite")),
        );
        let before = mock.get("/stats")["batch_lines_submitted"]
            .as_u64()
            .unwrap();
        let o = run_via(
            via,
            &mock,
            &inp,
            &out,
            &cp,
            &["--template", "What is it?", "--attach", "file"],
        )
        .output()
        .unwrap();
        let recs = records(&out);
        assert_eq!(recs.len(), 3, "{name}: {}", stderr(&o));
        let by = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap();
        let said = |id: &str| by(id)["output"].as_str().unwrap_or_default().to_owned();
        assert!(
            said("invoice").contains(&format!(
                "application/pdf sha256:{}",
                hash("scans/0001.pdf")
            )),
            "{name}: {}",
            by("invoice")
        );
        assert!(
            said("photo").contains(&format!("image/png sha256:{}", hash("photos/red.png"))),
            "{name}: {}",
            by("photo")
        );
        let submitted = mock.get("/stats")["batch_lines_submitted"]
            .as_u64()
            .unwrap()
            - before;
        if name == "gemini" {
            // Gemini takes audio.
            assert_eq!(by("audio")["ok"], true, "{name}: {}", by("audio"));
            assert_eq!(submitted, 3);
        } else {
            // Neither OpenAI's Responses nor Anthropic takes a WAV: refused
            // before the job, which holds the two others only.
            assert_eq!(by("audio")["error"]["category"], "client_error", "{name}");
            assert!(
                by("audio")["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("item audio"),
                "{name}: {}",
                by("audio")
            );
            assert_eq!(submitted, 2, "{name}");
            assert_eq!(o.status.code(), Some(1), "{name}: {}", stderr(&o));
        }
    }
}

#[test]
fn a_submission_whose_answer_was_lost_is_found_not_sent_again_and_failed_checks_are_retried() {
    for via in [OPENAI, ANTHROPIC, GEMINI] {
        // The mock's first four job-route requests answer 500: the create
        // (after making the job), then status checks.
        let mock = Mock::start(&["--batch-processing-ms", "50", "--batch-api-errors", "4"]);
        let dir = tempfile::tempdir().unwrap();
        let (inp, out, cp) = (
            dir.path().join("in.jsonl"),
            dir.path().join("out.jsonl"),
            dir.path().join("run.sqlite"),
        );
        input(&inp, 30, &[]);
        let before = mock.get("/stats");
        let o = run_via(via, &mock, &inp, &out, &cp, &[]).output().unwrap();
        assert!(o.status.success(), "{}: {}", via.model, stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("submitting job"), "{err}");
        assert!(err.contains("checking job"), "{err}");
        let recs = records(&out);
        assert_eq!(recs.len(), 30);
        assert!(recs.iter().all(|r| r["ok"] == true), "{}", via.model);
        let after = mock.get("/stats");
        let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        assert_eq!(
            delta("batches_created"),
            1,
            "{}: found, not sent again",
            via.model
        );
        assert_eq!(delta("batch_items_executed"), 30, "{}", via.model);
    }
}
