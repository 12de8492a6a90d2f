//! Kill and resume: a run against an external mock is killed with SIGKILL at
//! random points and resumed each time. At the end every item has exactly
//! one final record, the output has each id once, and the mock saw no second
//! call for any item that had been recorded as succeeded.
//!
//! `ABL_KILL_ITEMS` (20,000) and `ABL_KILL_ROUNDS` (5) scale it;
//! `scripts/kill-resume.sh` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_batch_llm::store::{CheckpointStore, SqliteStore};
use common::Mock;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn prompt_counts(mock: &Mock) -> HashMap<String, u64> {
    serde_json::from_value(mock.get("/stats/prompts")).unwrap()
}

fn succeeded(checkpoint: &std::path::Path) -> HashSet<String> {
    let mut ok = HashSet::new();
    if !checkpoint.exists() {
        return ok;
    }
    let store = SqliteStore::open_read_only(checkpoint).unwrap();
    store
        .for_each(&mut |r| {
            if r.result.outcome.is_ok() {
                ok.insert(r.id);
            }
            Ok(())
        })
        .unwrap();
    ok
}

#[test]
fn killed_five_times_and_resumed_every_item_exactly_once() {
    let n = env_or("ABL_KILL_ITEMS", 20_000);
    let rounds = env_or("ABL_KILL_ROUNDS", 5);
    let mock = Mock::start(&["--latency-ms", "5", "--track-prompts"]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..n {
        writeln!(f, "{{\"id\": \"{i}\", \"prompt\": \"item {i}\"}}").unwrap();
    }
    drop(f);
    let checkpoint = dir.path().join("run.sqlite");
    let out = dir.path().join("out.jsonl");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_abl"))
            .args([
                "run",
                input.to_str().unwrap(),
                "--model",
                "openai:gpt-4o-mini",
                "--concurrency",
                "64",
            ])
            .args(["--base-url", &format!("{}/v1", mock.url)])
            .args([
                "--checkpoint",
                checkpoint.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--no-progress",
            ])
            .env("OPENAI_API_KEY", "test-key")
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("kill points seeded with {seed}");
    let mut rng = u64::from(seed) | 1;
    let mut snapshots: Vec<(HashSet<String>, HashMap<String, u64>)> = Vec::new();
    for round in 0..rounds {
        let mut child = run();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = Duration::from_millis(300 + rng % 1200);
        let t = Instant::now();
        while t.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Calls that were in flight at the kill may still arrive: let them land.
        std::thread::sleep(Duration::from_millis(100));
        let ok = succeeded(&checkpoint);
        eprintln!(
            "round {round}: killed after {wait:?}, {} recorded as succeeded",
            ok.len()
        );
        snapshots.push((ok, prompt_counts(&mock)));
    }
    let status = run().wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // Every item has exactly one final record, and it succeeded.
    let store = SqliteStore::open_read_only(&checkpoint).unwrap();
    assert_eq!(store.len().unwrap(), n as u64);
    assert_eq!(succeeded(&checkpoint).len(), n);
    // The output has each id once.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut ids = HashSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            ids.insert(v["id"].as_str().unwrap().to_owned()),
            "duplicate id {}",
            v["id"]
        );
        assert_eq!(v["ok"], true);
    }
    assert_eq!(ids.len(), n);
    // No item recorded as succeeded was called again afterwards.
    let end = prompt_counts(&mock);
    for (k, (ok, counts)) in snapshots.iter().enumerate() {
        for id in ok {
            let prompt = format!("item {id}");
            assert_eq!(
                end.get(&prompt),
                counts.get(&prompt),
                "item {id} was recorded at kill {k} and called again"
            );
        }
    }
    let repeated = end.values().filter(|c| **c > 1).count();
    eprintln!("{n} items; {repeated} were called more than once (all of them in flight at a kill)");
}
