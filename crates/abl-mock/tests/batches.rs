//! The mock's OpenAI Files and Batches APIs over loopback HTTP: upload,
//! job, results after the processing time, per-line failures and expiry,
//! listing by metadata, cancel, and the counters that prove exactly-once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use abl_mock::{MockConfig, MockServer};
use serde_json::{Value, json};

fn line(id: &str, prompt: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/responses",
           "body": {"model": "gpt-4o-mini", "input": prompt}})
    .to_string()
}

async fn upload(base: &str, jsonl: String) -> String {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::text(jsonl).file_name("in.jsonl"),
        );
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/v1/files"))
        .bearer_auth("k")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["purpose"], "batch");
    r["id"].as_str().unwrap().to_owned()
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
}

/// The JSON lines of a results file.
async fn file_lines(base: &str, file_id: &Value) -> Vec<Value> {
    let url = format!("{base}/v1/files/{}/content", file_id.as_str().unwrap());
    let text = get(&url).await.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn create(base: &str, file: &str, key: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/v1/batches"))
        .bearer_auth("k")
        .json(&json!({"input_file_id": file, "endpoint": "/v1/responses",
                      "completion_window": "24h", "metadata": {"abl_job": key}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_answers_every_line_once_with_failures_and_expiry_in_the_error_file() {
    let mock = MockServer::start(MockConfig {
        batch_processing_ms: 200,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let base = mock.base_url().to_owned();
    let jsonl = [
        line("a", "hello"),
        line("b", "fail [[mock:500]]"),
        line("c", "late [[mock:expire]]"),
        line("d", "world"),
    ]
    .join("\n");
    let file = upload(&base, jsonl).await;
    let job = create(&base, &file, "job-1").await;
    assert_eq!(job["status"], "in_progress");
    assert_eq!(job["request_counts"]["total"], 4);
    let id = job["id"].as_str().unwrap().to_owned();
    // Not due yet: still in progress, nothing executed.
    let j: Value = get(&format!("{base}/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(j["status"], "in_progress");
    assert_eq!(mock.stats().batch_items_executed, 0);
    // Polled as a client would, until the job ends (no timing asserted).
    let mut j = Value::Null;
    for _ in 0..200 {
        j = get(&format!("{base}/v1/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if j["status"] != "in_progress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(j["status"], "expired", "a line expired");
    assert_eq!(
        j["request_counts"],
        json!({"total": 4, "completed": 2, "failed": 2})
    );
    let out = file_lines(&base, &j["output_file_id"]).await;
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["custom_id"], "a");
    assert_eq!(out[0]["response"]["status_code"], 200);
    assert_eq!(
        out[0]["response"]["body"]["output"][0]["content"][0]["text"],
        "hello"
    );
    let errs = file_lines(&base, &j["error_file_id"]).await;
    assert_eq!(errs[0]["custom_id"], "b");
    assert_eq!(errs[0]["response"]["status_code"], 500);
    assert_eq!(errs[1]["custom_id"], "c");
    assert_eq!(errs[1]["error"]["code"], "batch_expired");
    // Asked again: the same job, nothing executed twice.
    let again: Value = get(&format!("{base}/v1/batches/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["output_file_id"], j["output_file_id"]);
    let stats = mock.stats();
    assert_eq!(
        (
            stats.batch_files_uploaded,
            stats.batches_created,
            stats.batch_items_executed,
            stats.batch_items_repeated
        ),
        (1, 1, 3, 0),
        "the expired line never ran"
    );
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_their_metadata_and_a_pending_one_cancels() {
    let mock = MockServer::start(MockConfig {
        batch_processing_ms: 60_000,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let base = mock.base_url().to_owned();
    let file = upload(&base, line("x", "hi")).await;
    let first = create(&base, &file, "job-1").await;
    let second = create(&base, &file, "job-2").await;
    let page: Value = get(&format!("{base}/v1/batches?limit=1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"][0]["id"], second["id"]);
    assert_eq!(page["data"][0]["metadata"]["abl_job"], "job-2");
    assert_eq!(page["has_more"], true);
    let after = page["last_id"].as_str().unwrap();
    let next: Value = get(&format!("{base}/v1/batches?limit=10&after={after}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(next["data"][0]["id"], first["id"]);
    assert_eq!(next["has_more"], false);
    let c: Value = reqwest::Client::new()
        .post(format!(
            "{base}/v1/batches/{}/cancel",
            first["id"].as_str().unwrap()
        ))
        .bearer_auth("k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"], "cancelled");
    assert_eq!(mock.stats().batch_items_executed, 0);
}
