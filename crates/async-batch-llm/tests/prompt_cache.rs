//! Prompt-cache accounting against `abl-mock`: cached input tokens from
//! OpenAI (Responses and Chat), DeepSeek and Anthropic reach results and
//! cost; Anthropic `cache_control` breakpoints mark the shared prefix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use abl_mock::MockServer;
use async_batch_llm::providers::{ApiKey, ModelOptions, PromptCache, llm_with};
use async_batch_llm::{
    BatchConfig, DynModel, Item, LlmRequest, Message, Model, ModelStrategy, Prices, Prompt, Role,
    process_prompts,
};
use serde_json::json;

async fn mock() -> MockServer {
    MockServer::start_recording().await.unwrap()
}

fn model(m: &MockServer, spec: &str, prompt_cache: PromptCache) -> Arc<dyn DynModel> {
    let base = m.base_url_for(spec);
    llm_with(
        spec,
        ModelOptions {
            api_key: Some(ApiKey::new("test-key")),
            base_url: Some(base),
            prompt_cache,
            ..ModelOptions::default()
        },
    )
    .unwrap()
}

fn handbook() -> String {
    "Company handbook, section by section. ".repeat(60)
}

fn ask(question: &str) -> LlmRequest {
    LlmRequest {
        system: Some(handbook()),
        ..LlmRequest::new(question)
    }
}

#[tokio::test]
async fn automatic_prefix_caches_are_reported_as_cached_input() {
    for spec in [
        "openai:gpt-4o-mini",
        "openai-chat:gpt-4o-mini",
        "deepseek:deepseek-chat",
    ] {
        let m = mock().await;
        let model = model(&m, spec, PromptCache::default());
        let first = model.generate(&ask("q1")).await.unwrap();
        assert_eq!(first.cached_input_tokens.unwrap_or(0), 0, "{spec}");
        let second = model.generate(&ask("q2")).await.unwrap();
        let cached = second.cached_input_tokens.unwrap();
        let usage = second.token_usage().unwrap();
        assert!(cached > 0 && cached < usage.input, "{spec}: {usage:?}");
        assert_eq!(usage.cached_input, cached);
    }
}

#[tokio::test]
async fn anthropic_marks_the_system_and_counts_writes_then_reads() {
    let m = mock().await;
    let cache = PromptCache {
        system: true,
        leading_turns: 0,
    };
    let model = model(&m, "anthropic:claude-3-5-haiku", cache);
    let first = model
        .generate(&ask("q1"))
        .await
        .unwrap()
        .token_usage()
        .unwrap();
    let second = model
        .generate(&ask("q2"))
        .await
        .unwrap()
        .token_usage()
        .unwrap();
    assert!(
        first.cache_write_input > 0 && first.cached_input == 0,
        "{first:?}"
    );
    assert_eq!(second.cached_input, first.cache_write_input, "{second:?}");
    assert_eq!(second.cache_write_input, 0);
    assert_eq!(first.input, second.input, "same prompt size either way");
    let body = &m.recent_requests()[0].body;
    assert_eq!(
        body["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(body["system"][0]["text"], json!(handbook()));

    // Unmarked requests are never cached.
    let m = mock().await;
    let plain = model_plain(&m);
    plain.generate(&ask("q1")).await.unwrap();
    let again = plain
        .generate(&ask("q2"))
        .await
        .unwrap()
        .token_usage()
        .unwrap();
    assert_eq!((again.cached_input, again.cache_write_input), (0, 0));
    assert!(m.recent_requests()[0].body["system"].is_string());
}

fn model_plain(m: &MockServer) -> Arc<dyn DynModel> {
    model(m, "anthropic:claude-3-5-haiku", PromptCache::default())
}

#[tokio::test]
async fn anthropic_marks_the_last_shared_turn() {
    let m = mock().await;
    let cache = PromptCache {
        system: false,
        leading_turns: 2,
    };
    let model = model(&m, "anthropic:claude-3-5-haiku", cache);
    let prompt = |q: &str| {
        Prompt::Messages(vec![
            Message::new(Role::User, handbook()),
            Message::new(Role::Assistant, "Read it."),
            Message::new(Role::User, q),
        ])
    };
    model
        .generate(&LlmRequest::new(prompt("q1")))
        .await
        .unwrap();
    let second = model
        .generate(&LlmRequest::new(prompt("q2")))
        .await
        .unwrap()
        .token_usage()
        .unwrap();
    assert!(second.cached_input > 0, "{second:?}");
    let body = &m.recent_requests()[0].body;
    assert!(body["messages"][0]["content"].is_string());
    assert_eq!(
        body["messages"][1]["content"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert!(body["messages"][2]["content"].is_string());
}

#[tokio::test]
async fn cached_tokens_reach_batch_totals_and_cost() {
    let m = mock().await;
    let cache = PromptCache {
        system: true,
        leading_turns: 0,
    };
    let strategy =
        ModelStrategy::text(model(&m, "anthropic:claude-3-5-haiku", cache)).with_system(handbook());
    let items = (0..10).map(|i| Item::new(format!("i{i}"), format!("question {i}")));
    let config = BatchConfig {
        concurrency: 1,
        ..BatchConfig::default()
    };
    let batch = process_prompts(strategy, items, &config).await.unwrap();
    let u = batch.stats.usage;
    assert!(u.cached_input > 0 && u.cache_write_input > 0, "{u:?}");
    assert_eq!(
        u.cached_input,
        9 * u.cache_write_input,
        "one write, nine reads"
    );
    let list = Prices::new(3.0, 15.0);
    let cached = list.with_cached_input(0.3).with_cache_write_input(3.75);
    assert!(batch.estimated_cost(&cached) < batch.estimated_cost(&list));
    assert!(batch.summary().contains("cached"));
}
