//! Every provider against `abl-mock` over loopback: the exact request on the
//! wire, usage extraction, and the category, retryability and hint of every
//! fault.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use abl_mock::{MockConfig, MockServer};
use async_batch_llm::providers::{ApiKey, ModelOptions, llm_with};
use async_batch_llm::{
    BatchConfig, DynModel, ErrorCategory, Item, LlmRequest, LlmResponse, Model, ModelStrategy,
    Prompt, RetryPolicy, ScopeRegistry, TokenUsage, call_result,
};
use serde_json::json;

async fn mock() -> MockServer {
    MockServer::start_recording().await.unwrap()
}

fn base(mock: &MockServer, provider: &str) -> String {
    mock.base_url_for(provider)
}

fn model(mock: &MockServer, spec: &str) -> Arc<dyn DynModel> {
    llm_with(
        spec,
        ModelOptions {
            api_key: Some(ApiKey::new("test-key")),
            base_url: Some(base(mock, spec)),
            ..ModelOptions::default()
        },
    )
    .unwrap()
}

const ALL: [&str; 7] = [
    "openai:gpt-4o-mini",
    "openai-chat:gpt-4o-mini",
    "openrouter:meta/llama-3",
    "deepseek:deepseek-chat",
    "openai-compatible:llama3",
    "gemini:gemini-2.0-flash",
    "anthropic:claude-3-5-haiku",
];

fn request(prompt: &str) -> LlmRequest {
    LlmRequest {
        system: Some("be brief".into()),
        temperature: Some(0.5),
        max_output_tokens: Some(64),
        timeout: Some(Duration::from_secs(5)),
        ..LlmRequest::new(prompt)
    }
}

#[tokio::test]
async fn openai_responses_sends_the_documented_body() {
    let m = mock().await;
    let r = model(&m, "openai:gpt-4o-mini")
        .generate(&request("hello there"))
        .await
        .unwrap();
    assert_eq!(r.text, "hello there");
    let sent = &m.recent_requests()[0];
    assert_eq!(sent.route, "responses");
    assert_eq!(
        sent.body,
        json!({"model": "gpt-4o-mini", "input": "hello there", "instructions": "be brief", "store": false, "temperature": 0.5, "max_output_tokens": 64})
    );
    assert_eq!(
        sent.headers.get("authorization").map(String::as_str),
        Some("<present>")
    );
}

#[tokio::test]
async fn chat_bodies_per_flavor_and_openrouter_headers() {
    let m = mock().await;
    model(&m, "openai-chat:gpt-4o-mini")
        .generate(&request("hi"))
        .await
        .unwrap();
    model(&m, "deepseek:deepseek-chat")
        .generate(&request("hi"))
        .await
        .unwrap();
    let or = llm_with(
        "openrouter:meta/llama-3",
        ModelOptions {
            api_key: Some(ApiKey::new("k")),
            base_url: Some(base(&m, "openrouter")),
            referer: Some("https://example.org".into()),
            title: Some("batch".into()),
            provider_routing: Some(json!({"order": ["groq"], "allow_fallbacks": false})),
            ..ModelOptions::default()
        },
    )
    .unwrap();
    or.generate(&LlmRequest::new("x")).await.unwrap();
    let sent = m.recent_requests();
    let msgs =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]);
    assert_eq!(
        sent[0].body,
        json!({"model": "gpt-4o-mini", "messages": msgs, "temperature": 0.5, "max_completion_tokens": 64})
    );
    assert_eq!(
        sent[1].body,
        json!({"model": "deepseek-chat", "messages": msgs, "temperature": 0.5, "max_tokens": 64})
    );
    assert_eq!(
        sent[2].body["provider"],
        json!({"order": ["groq"], "allow_fallbacks": false})
    );
    assert_eq!(
        sent[2].headers.get("http-referer").map(String::as_str),
        Some("https://example.org")
    );
    assert_eq!(
        sent[2].headers.get("x-title").map(String::as_str),
        Some("batch")
    );
}

#[tokio::test]
async fn gemini_and_anthropic_bodies_and_headers() {
    let m = mock().await;
    let chat = Prompt::Messages(vec![
        async_batch_llm::Message::new(async_batch_llm::Role::User, "q1"),
        async_batch_llm::Message::new(async_batch_llm::Role::Assistant, "a1"),
        async_batch_llm::Message::new(async_batch_llm::Role::User, "q2"),
    ]);
    let req = LlmRequest {
        prompt: Some(chat),
        ..request("")
    };
    let g = model(&m, "gemini:gemini-2.0-flash")
        .generate(&req)
        .await
        .unwrap();
    assert_eq!(g.text, "q2");
    let a = model(&m, "anthropic:claude-3-5-haiku")
        .generate(&req)
        .await
        .unwrap();
    assert_eq!(a.text, "q2");
    let sent = m.recent_requests();
    assert_eq!(sent[0].path, "models/gemini-2.0-flash");
    assert_eq!(
        sent[0].body,
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "q1"}]},
                {"role": "model", "parts": [{"text": "a1"}]},
                {"role": "user", "parts": [{"text": "q2"}]}
            ],
            "systemInstruction": {"parts": [{"text": "be brief"}]},
            "generationConfig": {"temperature": 0.5, "maxOutputTokens": 64}
        })
    );
    assert_eq!(
        sent[0].headers.get("x-goog-api-key").map(String::as_str),
        Some("<present>")
    );
    assert_eq!(
        sent[1].body,
        json!({
            "model": "claude-3-5-haiku",
            "max_tokens": 64,
            "system": "be brief",
            "temperature": 0.5,
            "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
        })
    );
    assert_eq!(
        sent[1].headers.get("anthropic-version").map(String::as_str),
        Some("2023-06-01")
    );
}

#[tokio::test]
async fn usage_with_cached_and_reasoning_tokens_from_every_format() {
    let m = mock().await;
    // 48 chars of prompt + 8 of system: 14 input tokens; the reply echoes
    // the prompt (12 tokens) plus 4 reasoning tokens.
    let prompt = "0123456789 [[mock:cached:5]][[mock:reasoning:4]]";
    assert_eq!(prompt.len(), 48);
    for spec in ALL {
        let r = model(&m, spec).generate(&request(prompt)).await.unwrap();
        let u = r.token_usage().unwrap();
        let reasoning = if spec.starts_with("anthropic") { 0 } else { 4 };
        assert_eq!(
            (u.input, u.output, u.cached_input, u.reasoning),
            (14, 16, 5, reasoning),
            "{spec}"
        );
        assert_eq!(u.total, 30, "{spec}");
        assert!(r.metadata.finish_reason.is_some(), "{spec}");
        assert!(r.metadata.request_id.is_some(), "{spec}");
    }
}

struct Case {
    marker: &'static str,
    category: ErrorCategory,
    retryable: bool,
    hint: Option<Duration>,
}

fn case(
    marker: &'static str,
    category: ErrorCategory,
    retryable: bool,
    hint: Option<Duration>,
) -> Case {
    Case {
        marker,
        category,
        retryable,
        hint,
    }
}

async fn fails(
    model: &Arc<dyn DynModel>,
    prompt: &str,
    timeout: Duration,
) -> async_batch_llm::CallError {
    let req = LlmRequest {
        timeout: Some(timeout),
        ..LlmRequest::new(prompt)
    };
    model
        .generate(&req)
        .await
        .err()
        .unwrap_or_else(|| panic!("{prompt} should fail"))
}

#[tokio::test]
async fn every_fault_has_its_category_retryability_and_hint() {
    use ErrorCategory as C;
    let m = MockServer::start(MockConfig {
        hang_secs: 30,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let s = Duration::from_secs;
    let common = [
        case("[[mock:429:2]]", C::RateLimit, true, Some(s(2))),
        case(
            "[[mock:429-ms:250]]",
            C::RateLimit,
            true,
            Some(Duration::from_millis(250)),
        ),
        case("[[mock:429-reset:3]]", C::RateLimit, true, Some(s(3))),
        case("[[mock:429-nohint]]", C::RateLimit, true, None),
        case("[[mock:402]]", C::InsufficientBalance, false, None),
        case(
            "[[mock:insufficient-quota]]",
            C::InsufficientBalance,
            false,
            None,
        ),
        case("[[mock:500]]", C::ServerError, true, None),
        case("[[mock:503]]", C::ServerError, true, None),
        case("[[mock:529]]", C::ServerOverload, true, None),
        case("[[mock:401]]", C::Authentication, false, None),
        case("[[mock:403]]", C::PermissionDenied, false, None),
        case("[[mock:400]]", C::ClientError, false, None),
        case(
            "[[mock:context-length]]",
            C::ContextLengthExceeded,
            false,
            None,
        ),
        case("[[mock:malformed]]", C::ProviderResponseError, true, None),
        case("[[mock:truncated]]", C::ProviderResponseError, true, None),
        case("[[mock:empty]]", C::EmptyResponse, true, None),
        case("[[mock:error200]]", C::ServerError, true, None),
        case("[[mock:safety]]", C::ContentFilter, false, None),
        case("[[mock:refusal]]", C::ContentFilter, false, None),
        case("[[mock:hang]]", C::FrameworkTimeout, true, None),
    ];
    for spec in ALL {
        let md = model(&m, spec);
        for c in &common {
            // Gemini has no `insufficient_quota`: its billing and per-minute
            // 429s share one text, and its per-day quota is tested below.
            if spec.starts_with("gemini") && c.marker.contains("insufficient") {
                continue;
            }
            let e = fails(&md, c.marker, Duration::from_millis(300)).await;
            assert_eq!(
                (e.category(), e.is_retryable(), e.retry_after()),
                (c.category, c.retryable, c.hint),
                "{spec} {}: {e}",
                c.marker
            );
        }
    }
    let g = model(&m, "gemini:gemini-2.0-flash");
    let e = fails(&g, "[[mock:429-gemini:4]]", s(5)).await;
    assert_eq!((e.category(), e.retry_after()), (C::RateLimit, Some(s(4))));
    let e = fails(&g, "[[mock:quota-day]]", s(5)).await;
    assert_eq!((e.category(), e.is_retryable()), (C::QuotaExhausted, false));
    // Content filters keep the billed usage.
    let e = fails(&g, "[[mock:safety]]", s(5)).await;
    assert!(e.usage().is_some());
    // A bad key.
    let bad = llm_with(
        "openai:gpt-4o-mini",
        ModelOptions {
            api_key: Some(ApiKey::new("invalid")),
            base_url: Some(base(&m, "openai")),
            ..ModelOptions::default()
        },
    )
    .unwrap();
    assert_eq!(fails(&bad, "x", s(5)).await.category(), C::Authentication);
}

fn engine_config() -> BatchConfig {
    BatchConfig {
        scopes: ScopeRegistry::new(),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        ..BatchConfig::default()
    }
}

#[tokio::test]
async fn gemini_daily_quota_stops_the_item_after_one_call() {
    let m = mock().await;
    let strategy = ModelStrategy::text(model(&m, "gemini:gemini-2.0-flash"));
    let r = call_result(
        strategy,
        Item::new("q", "[[mock:quota-day]]"),
        &engine_config(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.error().map(|e| e.category),
        Some(ErrorCategory::QuotaExhausted)
    );
    assert_eq!(r.tries, 1);
    assert_eq!(m.stats().requests, 1);
}

#[tokio::test]
async fn a_billed_reply_that_fails_to_parse_keeps_its_usage() {
    let m = mock().await;
    let parse = |r: &LlmResponse| r.text.parse::<u32>();
    let strategy = ModelStrategy::new(model(&m, "openai:gpt-4o-mini"), parse);
    let cfg = BatchConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            ..engine_config().retry
        },
        ..engine_config()
    };
    // "not a number" is 12 chars: 3 input and 3 output tokens per try.
    let r = call_result(strategy, Item::new("n", "not a number"), &cfg)
        .await
        .unwrap();
    assert_eq!(
        r.error().map(|e| e.category),
        Some(ErrorCategory::ValidationError)
    );
    assert_eq!(r.tries, 2);
    assert_eq!(r.usage, TokenUsage::new(6, 6));
}

#[tokio::test]
async fn transient_faults_are_retried_through_the_engine() {
    let m = mock().await;
    for spec in ALL {
        let strategy = ModelStrategy::text(model(&m, spec));
        for marker in [
            "[[mock:500*1]]",
            "[[mock:malformed*1]]",
            "[[mock:empty*1]]",
            "[[mock:truncated*1]]",
            "[[mock:error200*1]]",
        ] {
            let prompt = format!("{spec} {marker}");
            let r = call_result(
                strategy.clone(),
                Item::new("x", prompt.as_str()),
                &engine_config(),
            )
            .await
            .unwrap();
            assert_eq!(
                r.output().map(String::as_str),
                Some(prompt.as_str()),
                "{spec} {marker}"
            );
            assert_eq!((r.attempts, r.tries), (2, 2));
        }
    }
}

/// A server that answers every request with `status`, `headers` and `body`
/// as raw HTTP/1.1 (for headers no well-behaved mock would send).
async fn raw_server(status: u16, headers: &'static str, body: &'static str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn absurd_retry_hints_from_a_provider_are_clamped_not_panics() {
    let body = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    for headers in [
        "retry-after: 1e300\r\n",
        "retry-after: 99999999999999999999\r\n",
        "retry-after: Fri, 31 Dec 9999 23:59:59 GMT\r\n",
        "retry-after-ms: 1e300\r\n",
        "x-ratelimit-reset-requests: 99999999999999999999h\r\n",
    ] {
        let url = raw_server(429, headers, body).await;
        let m = llm_with(
            "openai-chat:gpt-4o-mini",
            ModelOptions {
                api_key: Some(ApiKey::new("test-key")),
                base_url: Some(format!("{url}/v1")),
                ..ModelOptions::default()
            },
        )
        .unwrap();
        let e = m.generate(&LlmRequest::new("hi")).await.unwrap_err();
        assert_eq!(e.category(), ErrorCategory::RateLimit, "{headers}");
        let hint = e.retry_after().unwrap();
        assert!(hint <= async_batch_llm::MAX_DURATION, "{headers}: {hint:?}");
        // Through the engine: one cooldown, capped at the policy's 600 s,
        // and no panic; the item stops at its deadline.
        let cfg = BatchConfig {
            item_deadline: Some(Duration::from_millis(200)),
            scopes: ScopeRegistry::new(),
            ..BatchConfig::default()
        };
        let r = call_result(ModelStrategy::text(m), Item::new("a", "hi"), &cfg)
            .await
            .unwrap();
        assert_eq!(
            r.error().unwrap().category,
            ErrorCategory::ItemDeadline,
            "{headers}"
        );
    }
}
