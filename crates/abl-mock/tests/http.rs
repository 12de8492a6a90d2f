//! The mock over real loopback HTTP: quotas, Gemini caches, stats, reset.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use abl_mock::{MockConfig, MockServer, ReplyMode};
use serde_json::{Value, json};

async fn post(url: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth("k")
        .header("x-goog-api-key", "k")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn strict_rpm_quota_answers_429_with_headers_and_counts_cooldown_arrivals() {
    let mock = MockServer::start(MockConfig {
        rpm: Some(3.0),
        cooldown_grace_ms: 0,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        assert_eq!(post(&url, &body).await.0, 200);
    }
    let (status, headers, err) = post(&url, &body).await;
    assert_eq!(status, 429);
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-limit-requests"], "3");
    // Arriving again during the signalled cooldown is counted.
    assert_eq!(post(&url, &body).await.0, 429);
    let s = mock.stats();
    assert_eq!((s.requests, s.rate_limited, s.during_cooldown), (5, 2, 1));
    assert_eq!(s.by_route["chat_completions"]["ok"], 3);
    assert_eq!(s.by_route["chat_completions"]["429_quota"], 2);
}

#[tokio::test]
async fn gemini_caches_live_expire_renew_and_delete() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let base = format!("{}/v1beta/cachedContents", mock.base_url());
    let (status, _, c) = post(
        &base,
        &json!({"model": "models/gemini-2.0-flash", "displayName": "tags:a", "ttl": "1s",
        "contents": [{"role": "user", "parts": [{"text": "a long shared document"}]}]}),
    )
    .await;
    assert_eq!(status, 200);
    let name = c["name"].as_str().unwrap().to_owned();
    assert_eq!(c["usageMetadata"]["totalTokenCount"], 6);
    // Generate with the cache: cached tokens reported.
    let gen_url = format!(
        "{}/v1beta/models/gemini-2.0-flash:generateContent",
        mock.base_url()
    );
    let gen_body =
        json!({"contents": [{"role": "user", "parts": [{"text": "q"}]}], "cachedContent": name});
    let (status, _, r) = post(&gen_url, &gen_body).await;
    assert_eq!(status, 200);
    assert_eq!(r["usageMetadata"]["cachedContentTokenCount"], 6);
    // A system instruction beside a cache is refused, as by Gemini.
    let mut with_system = gen_body.clone();
    with_system["systemInstruction"] = json!({"parts": [{"text": "s"}]});
    assert_eq!(post(&gen_url, &with_system).await.0, 400);
    // Renew, then let it expire.
    let client = reqwest::Client::new();
    let patched = client
        .patch(format!("{}/v1beta/{name}", mock.base_url()))
        .header("x-goog-api-key", "k")
        .json(&json!({"ttl": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, e) = post(&gen_url, &gen_body).await;
    assert_eq!(status, 403);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CachedContent not found")
    );
    let listed: Value = client
        .get(&base)
        .header("x-goog-api-key", "k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["cachedContents"], json!([]));
    let s = mock.stats();
    assert_eq!(
        (s.cache.created, s.cache.updated, s.cache.listed),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn replies_auth_and_reset() {
    let mock = MockServer::start(MockConfig {
        reply: ReplyMode::Upper,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let url = format!("{}/v1/responses", mock.base_url());
    let (status, _, r) = post(&url, &json!({"model": "m", "input": "shout"})).await;
    assert_eq!(status, 200);
    assert_eq!(r["output"][0]["content"][0]["text"], "SHOUT");
    let no_key = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "m", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let (status, _, r) = post(&url, &json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "o", "strict": true,
        "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false}}}})).await;
    assert_eq!(status, 200);
    assert_eq!(r["output"][0]["content"][0]["text"], "{\"a\":1}");
    assert_eq!(mock.stats().requests, 3);
    reqwest::Client::new()
        .post(format!("{}/reset", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(mock.stats().requests, 0);
}

#[tokio::test]
async fn anthropic_takes_x_api_key_or_bearer_like_the_api() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let url = format!("{}/v1/messages", mock.base_url());
    let body = json!({"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let send = |auth: Option<(&'static str, &'static str)>| {
        let mut r = reqwest::Client::new()
            .post(&url)
            .header("anthropic-version", "2023-06-01")
            .json(&body);
        if let Some((k, v)) = auth {
            r = r.header(k, v);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(Some(("x-api-key", "k"))).await, 200);
    assert_eq!(send(Some(("authorization", "Bearer k"))).await, 200);
    assert_eq!(send(Some(("authorization", "Basic k"))).await, 401);
    assert_eq!(send(None).await, 401);
}

#[tokio::test]
async fn every_reply_carries_the_quota_standing_in_each_providers_headers() {
    let mock = MockServer::start(MockConfig {
        rpm: Some(100.0),
        tpm: Some(50_000),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let base = mock.base_url();
    let (status, h, _) = post(
        &format!("{base}/v1/responses"),
        &json!({"model": "m", "input": "hello"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h["x-ratelimit-limit-requests"], "100");
    assert_eq!(h["x-ratelimit-remaining-requests"], "99");
    assert_eq!(h["x-ratelimit-limit-tokens"], "50000");
    let remaining: u64 = h["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 50_000, "{remaining}");
    assert!(
        h["x-ratelimit-reset-tokens"]
            .to_str()
            .unwrap()
            .ends_with('s')
    );
    // A fault after admission carries them too.
    let (status, h, _) = post(
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "[[mock:500]]"}]}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(h["x-ratelimit-remaining-requests"], "98");
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert_eq!(h["anthropic-ratelimit-requests-remaining"], "97");
    assert_eq!(h["anthropic-ratelimit-tokens-limit"], "50000");
    let reset = h["anthropic-ratelimit-requests-reset"].to_str().unwrap();
    assert!(reset.len() == 27 && reset.ends_with('Z'), "{reset}");
    assert!(h.get("x-ratelimit-limit-requests").is_none());
    let (_, h, _) = post(
        &format!("{base}/v1beta/models/g:generateContent"),
        &json!({"contents": [{"parts": [{"text": "hi"}]}]}),
    )
    .await;
    assert!(h.keys().all(|k| !k.as_str().contains("ratelimit")), "{h:?}");
}

#[tokio::test]
async fn a_responses_body_has_what_the_sdk_type_requires() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let (_, _, r) = post(
        &format!("{}/v1/responses", mock.base_url()),
        &json!({"model": "m", "input": "x"}),
    )
    .await;
    for field in [
        "parallel_tool_calls",
        "tool_choice",
        "tools",
        "created_at",
        "error",
    ] {
        assert!(r.get(field).is_some(), "{field} missing from {r}");
    }
    assert_eq!(r["usage"]["input_tokens_details"]["cache_write_tokens"], 0);
}
