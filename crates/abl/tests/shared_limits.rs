//! Several `abl` processes on one quota, sharing it through a real
//! `redis-server` (`--shared-limits`), each a shard of one job: together
//! within the quota, paused together by a 429, surviving a killed process
//! and a Redis that goes away. Each claim is checked beside the same run
//! without shared limits where that shows the difference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use async_batch_llm::testing::RedisServer;
use common::{Mock, run, run_against, stderr, write_input};
use serde_json::Value;

/// `abl run` of shard `k/n` against `mock`, with `extra` flags.
fn shard(mock: &Mock, input: &Path, out: &Path, k: usize, n: usize, extra: &[String]) -> Child {
    let shard = format!("{k}/{n}");
    let mut flags = vec![
        "--shard",
        &shard,
        "-c",
        "16",
        "--no-progress",
        "--progress-interval",
        "1",
    ];
    flags.extend(extra.iter().map(String::as_str));
    run_against(mock, input, out, &flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A mock with a quota of 60 requests in any 5 s, reported in headers.
fn small_quota(latency_ms: &str) -> Mock {
    Mock::start(&[
        "--rpm",
        "60",
        "--tpm",
        "1000000",
        "--quota-window-secs",
        "5",
        "--latency-ms",
        latency_ms,
    ])
}

/// `n` input items and the outputs of `shards` shards, in `dir`.
fn job(dir: &Path, n: usize, shards: usize) -> (PathBuf, Vec<PathBuf>) {
    let input = dir.join("in.jsonl");
    write_input(&input, n);
    let outs = (0..shards)
        .map(|k| dir.join(format!("out{k}.jsonl")))
        .collect();
    (input, outs)
}

/// Requests the mock has received.
fn requests(mock: &Mock) -> u64 {
    mock.get("/stats")["requests"].as_u64().unwrap()
}

/// Waits for a process; its exit code and stderr.
fn finish(child: Child) -> (Option<i32>, String) {
    let o = child.wait_with_output().unwrap();
    (o.status.code(), stderr(&o))
}

/// `abl merge --input`: every input id in exactly one output.
fn merged_exactly_once(dir: &Path, input: &Path, outs: &[PathBuf]) {
    let merged = dir.join("merged.jsonl");
    let mut args = vec![
        "merge".to_owned(),
        "-o".into(),
        merged.display().to_string(),
        "--input".into(),
        input.display().to_string(),
    ];
    args.extend(outs.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Four shards of `n` items against a mock with `mock_flags`; the mock's
/// stats when they are done.
fn four_shards(dir: &Path, n: usize, mock_flags: &[&str], extra: &[String]) -> Value {
    let mock = Mock::start(mock_flags);
    let (input, outs) = job(dir, n, 4);
    let children: Vec<Child> = outs
        .iter()
        .enumerate()
        .map(|(k, out)| shard(&mock, &input, out, k, 4, extra))
        .collect();
    for c in children {
        let (code, err) = finish(c);
        assert_eq!(code, Some(0), "{err}");
    }
    merged_exactly_once(dir, &input, &outs);
    mock.get("/stats")
}

#[test]
fn four_processes_stay_within_one_quota_only_when_they_share_it() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 100 requests in any 5 s (1,200 a minute), reported in headers.
    let quota = [
        "--rpm",
        "100",
        "--tpm",
        "1000000",
        "--quota-window-secs",
        "5",
        "--latency-ms",
        "30",
    ];
    let dir = tempfile::tempdir().unwrap();
    let shared = four_shards(
        dir.path(),
        300,
        &quota,
        &["--shared-limits".into(), redis.url()],
    );
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = four_shards(alone_dir.path(), 300, &quota, &[]);
    let share =
        |s: &Value| s["rate_limited"].as_f64().unwrap() / s["requests"].as_f64().unwrap().max(1.0);
    // The mock's per-second counts: no 5 s window holds more than the quota.
    let busiest = |s: &Value| {
        let per: Vec<u64> = serde_json::from_value(s["accepted_per_second"].clone()).unwrap();
        (0..per.len())
            .map(|i| per.iter().skip(i).take(5).sum::<u64>())
            .max()
            .unwrap_or(0)
    };
    assert!(busiest(&shared) <= 100, "{} in 5 s", busiest(&shared));
    assert!(
        share(&shared) <= 0.005,
        "shared: {} of {} calls answered 429",
        shared["rate_limited"],
        shared["requests"]
    );
    assert!(
        alone["rate_limited"].as_u64().unwrap() > 0,
        "without shared limits four processes should overrun the quota: {alone}"
    );
}

#[test]
fn a_429_with_retry_after_seen_by_one_process_pauses_them_all() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let faults = [
        "--fault-429",
        "0.005",
        "--hint-429",
        "retry-after:1",
        "--latency-ms",
        "100",
        "--seed",
        "11",
    ];
    let dir = tempfile::tempdir().unwrap();
    let shared = four_shards(
        dir.path(),
        1600,
        &faults,
        &["--shared-limits".into(), redis.url()],
    );
    assert!(shared["rate_limited"].as_u64().unwrap() > 0, "{shared}");
    assert_eq!(
        shared["during_cooldown"], 0,
        "calls arrived during a cooldown another process had been told of: {shared}"
    );
    let alone_dir = tempfile::tempdir().unwrap();
    let alone = four_shards(alone_dir.path(), 1600, &faults, &[]);
    assert!(
        alone["during_cooldown"].as_u64().unwrap() > 0,
        "without shared limits the other processes keep sending: {alone}"
    );
}

#[test]
fn a_killed_shard_resumed_completes_exactly_once_within_the_quota() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mock = small_quota("40");
    let dir = tempfile::tempdir().unwrap();
    let (input, outs) = job(dir.path(), 240, 2);
    let with = |k: usize| {
        vec![
            "--shared-limits".to_owned(),
            redis.url(),
            "--checkpoint".to_owned(),
            dir.path()
                .join(format!("run{k}.sqlite"))
                .display()
                .to_string(),
        ]
    };
    let other = shard(&mock, &input, &outs[1], 1, 2, &with(1));
    let mut victim = shard(&mock, &input, &outs[0], 0, 2, &with(0));
    std::thread::sleep(Duration::from_secs(3));
    victim.kill().unwrap();
    let _ = victim.wait();
    let again = shard(&mock, &input, &outs[0], 0, 2, &with(0));
    for c in [other, again] {
        let (code, err) = finish(c);
        assert_eq!(code, Some(0), "{err}");
    }
    merged_exactly_once(dir.path(), &input, &outs);
    let stats = mock.get("/stats");
    assert!(
        stats["rate_limited"].as_u64().unwrap() <= 1,
        "the killed process's calls were not counted: {stats}"
    );
}

#[test]
fn redis_going_away_pauses_the_calls_and_the_run_completes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let port = redis.port();
    let url = redis.url();
    let mock = small_quota("30");
    let dir = tempfile::tempdir().unwrap();
    let (input, outs) = job(dir.path(), 200, 2);
    let extra = ["--shared-limits".to_owned(), url];
    let children: Vec<Child> = outs
        .iter()
        .enumerate()
        .map(|(k, out)| shard(&mock, &input, out, k, 2, &extra))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(redis);
    // Calls admitted before it went have arrived within a second; after
    // that, none while it is away.
    std::thread::sleep(Duration::from_secs(1));
    let before = requests(&mock);
    std::thread::sleep(Duration::from_secs(4));
    let during = requests(&mock) - before;
    let _back = RedisServer::start_on(port).unwrap();
    let mut told = false;
    for c in children {
        let (code, err) = finish(c);
        assert_eq!(code, Some(0), "{err}");
        told |= err.contains("shared limits unreachable");
    }
    assert!(told, "no process said the shared limits were unreachable");
    assert_eq!(during, 0, "calls were sent while Redis was away");
    merged_exactly_once(dir.path(), &input, &outs);
    let stats = mock.get("/stats");
    assert!(
        stats["rate_limited"].as_u64().unwrap() <= 1,
        "calls beyond the quota while Redis was away: {stats}"
    );
}

#[test]
fn a_shared_limits_url_that_is_not_redis_or_unreachable_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 3);
    for (url, words) in [
        ("http://localhost:6379", "takes a Redis URL"),
        ("redis://127.0.0.1:1/0", "cannot reach"),
    ] {
        let o = run(&[
            "run",
            input.to_str().unwrap(),
            "--model",
            "mock:echo",
            "--shared-limits",
            url,
            "-o",
            dir.path().join("out.jsonl").to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(words), "{}", stderr(&o));
        assert!(!dir.path().join("out.jsonl").exists());
    }
}

#[test]
fn with_a_local_share_the_calls_go_on_while_redis_is_away() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mock = small_quota("30");
    let dir = tempfile::tempdir().unwrap();
    let (input, outs) = job(dir.path(), 200, 2);
    let extra = [
        "--shared-limits".to_owned(),
        redis.url(),
        "--shared-limits-fallback".to_owned(),
        "local:2".to_owned(),
    ];
    let children: Vec<Child> = outs
        .iter()
        .enumerate()
        .map(|(k, out)| shard(&mock, &input, out, k, 2, &extra))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(redis);
    let before = requests(&mock);
    std::thread::sleep(Duration::from_secs(8));
    let during = requests(&mock) - before;
    for c in children {
        let (code, err) = finish(c);
        assert_eq!(code, Some(0), "{err}");
    }
    merged_exactly_once(dir.path(), &input, &outs);
    // Redis stayed away: the two shares together kept to the quota (60 in
    // 5 s), and the calls went on.
    assert!(during >= 40, "{during} calls in 8 s without Redis");
    let stats = mock.get("/stats");
    assert!(
        stats["rate_limited"].as_u64().unwrap() <= 2,
        "the local shares overran the quota: {stats}"
    );
}
