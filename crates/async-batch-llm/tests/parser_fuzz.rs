//! No provider body, status or header can panic a parser or the
//! classifier: arbitrary JSON, real bodies with random parts replaced or
//! removed, and random bytes all give a response or a typed error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use abl_mock::wire::{self, Content, Ending, Format, MockRequest, Usage};
use async_batch_llm::providers::{
    AnthropicModel, ChatModel, GeminiModel, OpenAiModel, parse_body, retry_hint,
};
use async_batch_llm::{CallError, ErrorCategory, LlmResponse};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z_ ]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "output_text",
            "message",
            "refusal",
            "tool_use",
            "text",
            "SAFETY",
            "STOP",
            "content_filter",
            "error"
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..6).prop_map(
                |kv| Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>()
                )
            ),
        ]
    })
}

const KEYS: &[&str] = &[
    "output",
    "content",
    "type",
    "text",
    "usage",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "choices",
    "message",
    "candidates",
    "parts",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "error",
    "code",
    "status",
    "details",
    "retryDelay",
    "@type",
    "violations",
    "quotaId",
    "refusal",
    "finish_reason",
    "promptFeedback",
    "blockReason",
    "stop_reason",
    "cache_read_input_tokens",
    "input_tokens_details",
    "cached_tokens",
    "name",
    "input",
];

fn parse_all(v: &Value) -> Vec<Result<LlmResponse, CallError>> {
    vec![
        OpenAiModel::parse_response(v, None),
        ChatModel::parse_response(v, None),
        GeminiModel::parse_response(v, None),
        AnthropicModel::parse_response(v, None),
    ]
}

fn real_bodies() -> Vec<Value> {
    let req = MockRequest {
        model: "m".into(),
        user_text: "hi".into(),
        ..MockRequest::default()
    };
    let usage = Usage {
        input: 3,
        output: 2,
        cached: 1,
        reasoning: 1,
        cache_write: 0,
    };
    let mut out = Vec::new();
    for f in [
        Format::Responses,
        Format::Chat,
        Format::Gemini,
        Format::Anthropic,
    ] {
        for e in [
            Ending::Normal,
            Ending::Empty,
            Ending::Safety,
            Ending::Refusal,
        ] {
            out.push(wire::success(
                f,
                &req,
                &Content::Text("hello".into()),
                usage,
                e,
                1,
            ));
        }
        out.push(wire::error(f, abl_mock::Fault::QuotaPerDay, "x").2);
    }
    out
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_owned());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| pointers(c, &format!("{at}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| pointers(c, &format!("{at}/{i}"), out)),
        _ => {}
    }
}

fn mutate(mut v: Value, pick: usize, replacement: Option<Value>) -> Value {
    let mut ps = Vec::new();
    pointers(&v, "", &mut ps);
    let p = &ps[pick % ps.len()];
    if p.is_empty() {
        return replacement.unwrap_or(Value::Null);
    }
    let (parent, key) = p.rsplit_once('/').unwrap();
    if let Some(slot) = v.pointer_mut(parent) {
        match (slot, replacement) {
            (Value::Object(m), Some(r)) => {
                m.insert(key.to_owned(), r);
            }
            (Value::Object(m), None) => {
                m.remove(key);
            }
            (Value::Array(a), r) => {
                if let Ok(i) = key.parse::<usize>()
                    && i < a.len()
                {
                    match r {
                        Some(r) => a[i] = r,
                        None => {
                            a.remove(i);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    v
}

fn typed(r: &Result<LlmResponse, CallError>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => ErrorCategory::ALL.contains(&e.category()) && !e.message().is_empty(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(v in any_json()) {
        for r in parse_all(&v) {
            prop_assert!(typed(&r));
        }
    }

    #[test]
    fn mutated_real_bodies_never_panic(which in 0usize..20, pick in any::<usize>(), replacement in prop::option::of(any_json()), twice in any::<usize>()) {
        let bodies = real_bodies();
        let v = mutate(bodies[which % bodies.len()].clone(), pick, replacement);
        let v = mutate(v, twice, None);
        for r in parse_all(&v) {
            prop_assert!(typed(&r));
        }
        let bytes = v.to_string();
        for status in [200u16, 400, 402, 429, 500, 529] {
            let r = parse_body(status, &HeaderMap::new(), bytes.as_bytes());
            prop_assert!(r.is_ok() || ErrorCategory::ALL.contains(&r.unwrap_err().category()));
        }
    }

    #[test]
    fn random_bytes_statuses_and_headers_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<usize>(),
        status in 100u16..600,
        headers in prop::collection::vec((prop::sample::select(vec!["retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", "x-request-id"]), "[ -~]{0,24}"), 0..4),
    ) {
        let mut h = HeaderMap::new();
        for (k, v) in &headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(k), v);
            }
        }
        let _ = retry_hint(&h, None);
        let _ = parse_body(status, &h, &bytes);
        // A real body cut anywhere.
        let real = real_bodies()[cut % 20].to_string();
        let at = cut % (real.len() + 1);
        let r = parse_body(200, &h, &real.as_bytes()[..at]);
        if at < real.len() {
            prop_assert_eq!(r.err().map(|e| e.category()), Some(ErrorCategory::ProviderResponseError));
        }
    }
}
