//! `StructuredStrategy` against `abl-mock` for every provider: the schema
//! goes out in the provider's dialect, an invalid first reply is retried with
//! the error fed back, and both attempts' tokens are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use abl_mock::MockServer;
use async_batch_llm::providers::{ApiKey, ModelOptions, llm_with};
use async_batch_llm::{
    BatchConfig, DynModel, ErrorCategory, Item, StructuredStrategy, call_result, process_prompts,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Ticket {
    title: String,
    priority: Priority,
    assignee: Option<Person>,
    tags: Vec<String>,
    estimate_hours: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Priority {
    Low,
    High,
}

#[derive(Debug, Deserialize, JsonSchema, PartialEq)]
struct Person {
    name: String,
    team: Option<String>,
}

async fn mock() -> MockServer {
    MockServer::start_recording().await.unwrap()
}

fn model(m: &MockServer, spec: &str) -> Arc<dyn DynModel> {
    let base = m.base_url_for(spec);
    llm_with(
        spec,
        ModelOptions {
            api_key: Some(ApiKey::new("test-key")),
            base_url: Some(base),
            ..ModelOptions::default()
        },
    )
    .unwrap()
}

/// Walks a schema: every object closed and requiring all its properties.
fn assert_strict(v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") {
                assert_eq!(
                    m.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "{at}"
                );
                let mut props: Vec<&String> = m["properties"].as_object().unwrap().keys().collect();
                let mut req: Vec<&str> = m["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap())
                    .collect();
                props.sort();
                req.sort_unstable();
                assert_eq!(props, req, "{at}");
            }
            for (k, sub) in m {
                assert_strict(sub, &format!("{at}/{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| assert_strict(x, at)),
        _ => {}
    }
}

/// The schema as sent, by provider.
fn sent_schema(spec: &str, body: &Value) -> Value {
    let p = if spec.starts_with("openai:") {
        "/text/format/schema"
    } else if spec.starts_with("gemini") {
        "/generationConfig/responseSchema"
    } else if spec.starts_with("anthropic") {
        "/tools/0/input_schema"
    } else {
        "/response_format/json_schema/schema"
    };
    body.pointer(p)
        .cloned()
        .unwrap_or_else(|| panic!("{spec}: no schema at {p} in {body}"))
}

#[tokio::test]
async fn each_provider_gets_its_dialect_and_a_valid_typed_reply() {
    for spec in [
        "openai:gpt-4o-mini",
        "openai-chat:gpt-4o-mini",
        "openrouter:openai/gpt-4o-mini",
        "gemini:gemini-2.0-flash",
        "anthropic:claude-3-5-haiku",
    ] {
        let m = mock().await;
        let strategy = StructuredStrategy::<Ticket, _>::new(model(&m, spec)).unwrap();
        let r = call_result(
            strategy,
            Item::new("t", "printer on fire"),
            &BatchConfig::default(),
        )
        .await
        .unwrap();
        let ticket = r
            .output()
            .unwrap_or_else(|| panic!("{spec}: {:?}", r.error()));
        assert_eq!(ticket.priority, Priority::Low, "{spec}");
        assert_eq!(ticket.tags, vec!["mock".to_owned()], "{spec}");
        let body = &m.recent_requests()[0].body;
        let schema = sent_schema(spec, body);
        let text = schema.to_string();
        match spec.split(':').next().unwrap() {
            "gemini" => {
                assert_eq!(
                    body.pointer("/generationConfig/responseMimeType").unwrap(),
                    "application/json"
                );
                for banned in ["$ref", "$defs", "additionalProperties", "$schema"] {
                    assert!(!text.contains(banned), "{spec}: {banned} in {text}");
                }
                assert_eq!(
                    schema["properties"]["priority"]["enum"],
                    serde_json::json!(["low", "high"])
                );
                assert_eq!(
                    schema["properties"]["assignee"]["nullable"],
                    Value::Bool(true)
                );
            }
            "anthropic" => {
                assert_eq!(body["tool_choice"]["type"], "tool");
                assert_eq!(body["tool_choice"]["name"], body["tools"][0]["name"]);
                assert_eq!(schema["type"], "object");
            }
            _ => {
                assert_strict(&schema, spec);
                let strict = if spec.starts_with("openai:") {
                    body.pointer("/text/format/strict")
                } else {
                    body.pointer("/response_format/json_schema/strict")
                };
                assert_eq!(strict, Some(&Value::Bool(true)), "{spec}");
            }
        }
    }
}

#[tokio::test]
async fn an_invalid_reply_is_retried_with_the_error_and_both_attempts_are_billed() {
    for spec in [
        "openai:gpt-4o-mini",
        "gemini:gemini-2.0-flash",
        "anthropic:claude-3-5-haiku",
    ] {
        let m = mock().await;
        let strategy = StructuredStrategy::<Ticket, _>::new(model(&m, spec)).unwrap();
        // The marker makes the first reply of this conversation invalid
        // (markers apply to the whole conversation, the feedback included).
        let r = call_result(
            strategy,
            Item::new("t", "[[mock:invalid-output*1]] printer on fire"),
            &BatchConfig::default(),
        )
        .await
        .unwrap();
        assert!(r.output().is_some(), "{spec}: {:?}", r.error());
        assert_eq!(r.attempts, 2, "{spec}");
        let requests = m.recent_requests();
        assert_eq!(requests.len(), 2);
        let retry = requests[1].body.to_string();
        assert!(
            retry.contains("does not match the schema"),
            "{spec}: {retry}"
        );
        assert!(
            retry.contains("unexpected"),
            "{spec}: the failed reply is shown: {retry}"
        );
        let usage = r.usage;
        assert_eq!(
            usage.total,
            m.stats().tokens,
            "{spec}: both attempts counted"
        );
        assert!(usage.total > 0);
    }
}

#[tokio::test]
async fn a_rejected_schema_is_not_retried() {
    // Gemini cannot express a recursive type: refused before any call.
    #[derive(Debug, Deserialize, JsonSchema)]
    struct Tree {
        #[allow(dead_code)]
        children: Vec<Tree>,
    }
    let m = mock().await;
    let strategy =
        StructuredStrategy::<Tree, _>::new(model(&m, "gemini:gemini-2.0-flash")).unwrap();
    let r = call_result(strategy, Item::new("t", "q"), &BatchConfig::default())
        .await
        .unwrap();
    let e = r.error().unwrap();
    assert_eq!(e.category, ErrorCategory::StructuredOutputSchemaRejected);
    assert_eq!(r.attempts, 1);
    assert_eq!(m.stats().requests, 0);
}

#[tokio::test]
async fn dry_run_returns_a_schema_valid_placeholder() {
    let m = mock().await;
    let strategy = StructuredStrategy::<Ticket, _>::new(model(&m, "openai:gpt-4o-mini")).unwrap();
    let config = BatchConfig {
        dry_run: true,
        ..BatchConfig::default()
    };
    let batch = process_prompts(strategy, [Item::new("t", "q")], &config)
        .await
        .unwrap();
    let t = batch.results[0].output().unwrap();
    assert_eq!(t.priority, Priority::Low);
    assert_eq!(m.stats().requests, 0);
}
