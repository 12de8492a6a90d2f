//! The recorded real-provider responses of the library's corpus
//! (`crates/async-batch-llm/tests/fixtures/recorded/`), this time through
//! `abl run`: `abl mock-server --replay FIXTURE` serves each to a one-item run, and the
//! record the CLI writes must hold the fixture's text and usage, or its
//! category. (Retries and hints are checked by the library's replay test;
//! here rate limits are not retried, so the run does not wait out a real
//! provider's 47-second hint.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Mock, abl, records, stderr};
use serde_json::Value;

/// What is wrong with the record `abl run` wrote for one fixture.
fn check(path: &Path, name: &str, fixture: &Value, dir: &Path) -> Vec<String> {
    let provider = fixture["provider"].as_str().unwrap();
    let mock = Mock::start(&["--replay", path.to_str().unwrap()]);
    let base = match provider {
        "gemini" | "anthropic" => mock.url.clone(),
        _ => format!("{}/v1", mock.url),
    };
    let input = dir.join(format!("{name}.jsonl"));
    let out = dir.join(format!("{name}.out.jsonl"));
    std::fs::write(&input, "{\"id\": \"1\", \"prompt\": \"hi\"}\n").unwrap();
    let key_var = match provider {
        "openai" | "openai-chat" => "OPENAI_API_KEY",
        "openrouter" => "OPENROUTER_API_KEY",
        "deepseek" => "DEEPSEEK_API_KEY",
        "openai-compatible" => "OPENAI_COMPATIBLE_API_KEY",
        "gemini" => "GEMINI_API_KEY",
        _ => "ANTHROPIC_API_KEY",
    };
    let o = abl()
        .args(["run", input.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .args(["--model", &format!("{provider}:recorded-model")])
        .args(["--base-url", &base, "--max-attempts", "1"])
        .args(["--max-rate-limit-retries", "0"])
        .env(key_var, "replay-key")
        .output()
        .unwrap();
    let expect = &fixture["expect"];
    let Some(record) = std::fs::read(&out).ok().and_then(|_| records(&out).pop()) else {
        return vec![format!("no record; stderr: {}", stderr(&o))];
    };
    let mut wrong = Vec::new();
    if expect["ok"] == true {
        if record["output"] != expect["text"] {
            wrong.push(format!(
                "output {}, want {}",
                record["output"], expect["text"]
            ));
        }
        for (field, want) in expect["usage"].as_object().unwrap() {
            let got = &record["usage"][field];
            if !(got == want || (got.is_null() && want == 0)) {
                wrong.push(format!("usage.{field} {got}, want {want}"));
            }
        }
        if o.status.code() != Some(0) {
            wrong.push(format!("exit {:?}", o.status.code()));
        }
    } else {
        let want = match expect["category"].as_str().unwrap() {
            "rate_limit" => "rate_limit_retries_exceeded",
            other => other,
        };
        if record["error"]["category"] != want {
            wrong.push(format!(
                "category {}, want {want}",
                record["error"]["category"]
            ));
        }
        if record.to_string().contains("replay-key") {
            wrong.push("the record holds the API key".into());
        }
    }
    wrong
}

#[test]
fn abl_run_records_every_recorded_response_as_its_fixture_says() {
    let corpus =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../async-batch-llm/tests/fixtures/recorded");
    let mut paths: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 60, "{} fixtures", paths.len());
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for path in &paths {
        let fixture: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        for w in check(path, &name, &fixture, dir.path()) {
            failures.push(format!("{name}: {w}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}
