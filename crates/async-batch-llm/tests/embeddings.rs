//! Embeddings over loopback HTTP against the mock: packed to the limit,
//! every item its own vector in input order, and a request refused for one
//! input split until only that input fails.

#![cfg(feature = "openai")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use abl_mock::{MockConfig, MockServer};
use async_batch_llm::embed::{PackLimits, embed_items};
use async_batch_llm::providers::{ApiKey, HttpOptions, OpenAiConfig, OpenAiEmbeddings};
use async_batch_llm::{BatchConfig, ErrorCategory, Item};

async fn mock() -> MockServer {
    MockServer::start(MockConfig::default()).await.unwrap()
}

fn model(mock: &MockServer) -> Arc<OpenAiEmbeddings> {
    Arc::new(
        OpenAiEmbeddings::new(
            OpenAiConfig {
                model: "text-embedding-3-small".into(),
                base_url: format!("{}/v1", mock.base_url()),
                api_key: Some(ApiKey::new("sk-embed-test")),
                http: HttpOptions::default(),
            },
            None,
        )
        .unwrap(),
    )
}

fn items(n: usize) -> Vec<Item> {
    (0..n)
        .map(|i| Item::new(format!("p{i}"), format!("passage number {i} about rivers")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_are_packed_to_the_limit_and_each_gets_its_own_vector() {
    let mock = mock().await;
    let limits = PackLimits {
        max_inputs: 100,
        ..PackLimits::default()
    };
    let results = embed_items(model(&mock), items(5_000), &BatchConfig::default(), limits)
        .await
        .unwrap();
    assert_eq!(results.len(), 5_000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.id, format!("p{i}"));
        let text = format!("passage number {i} about rivers");
        assert_eq!(
            r.output().unwrap(),
            &abl_mock::embedding_of(&text, abl_mock::DEFAULT_DIMENSIONS),
            "{}",
            r.id
        );
    }
    let stats = mock.stats();
    assert_eq!(stats.requests, 50, "5,000 inputs in requests of 100");
    // Each request's call is counted once, on its first item.
    let calls: u32 = results.iter().map(|r| r.tries).sum();
    assert_eq!(calls, 50);
    assert_eq!(stats.embedded_inputs, 5_000);
    // Each item's share of its request's tokens; together the requests'.
    let tokens: u64 = results.iter().map(|r| r.usage.input).sum();
    assert_eq!(tokens, stats.tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_input_the_provider_refuses_fails_alone() {
    let mock = mock().await;
    let mut batch = items(64);
    batch[37] = Item::new("p37", "a passage so long it is POISON to the model");
    let results = embed_items(
        model(&mock),
        batch,
        &BatchConfig::default(),
        PackLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 64);
    for r in &results {
        if r.id == "p37" {
            assert_eq!(
                r.error().unwrap().category,
                ErrorCategory::ContextLengthExceeded
            );
            assert!(
                r.error()
                    .unwrap()
                    .message
                    .contains("maximum context length")
            );
        } else {
            assert!(r.is_ok(), "{}: {:?}", r.id, r.error());
        }
    }
    let stats = mock.stats();
    assert_eq!(stats.embedded_inputs, 63, "every other input embedded once");
    // One request of 64, then halves down to the one: 1 + 2 × 6.
    assert_eq!(stats.requests, 13);
}

#[tokio::test]
async fn more_inputs_than_the_provider_takes_are_packed_below_its_limit() {
    let mock = mock().await;
    // Asking for more than OpenAI's 2,048 per request is capped to it.
    let limits = PackLimits {
        max_inputs: 10_000,
        ..PackLimits::default()
    };
    let results = embed_items(model(&mock), items(4_100), &BatchConfig::default(), limits)
        .await
        .unwrap();
    assert!(results.iter().all(async_batch_llm::ItemResult::is_ok));
    assert_eq!(mock.stats().requests, 3);
}

#[cfg(feature = "gemini")]
#[tokio::test]
async fn gemini_embeds_in_requests_of_100() {
    use async_batch_llm::providers::GeminiEmbeddings;
    let mock = mock().await;
    let model = GeminiEmbeddings::new(
        "gemini-embedding-001",
        mock.base_url(),
        &ApiKey::new("gemini-test-key"),
        Some(16),
        &HttpOptions::default(),
    )
    .unwrap();
    let results = embed_items(
        Arc::new(model),
        items(250),
        &BatchConfig::default(),
        PackLimits::default(),
    )
    .await
    .unwrap();
    for (i, r) in results.iter().enumerate() {
        let text = format!("passage number {i} about rivers");
        assert_eq!(r.output().unwrap(), &abl_mock::embedding_of(&text, 16));
    }
    let stats = mock.stats();
    assert_eq!(stats.requests, 3, "250 texts at Gemini's 100 a request");
    assert_eq!(stats.embedded_inputs, 250);
}
