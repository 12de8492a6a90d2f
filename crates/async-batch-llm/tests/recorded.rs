//! Responses recorded from the real providers, replayed over loopback HTTP
//! through each provider and the engine (the CLI's record of each is
//! checked by `crates/abl/tests/recorded.rs`).
//!
//! Each file in `tests/fixtures/recorded/` holds one response (provider,
//! status, headers, body), what must come of it, and where it was recorded
//! (see the folder's README); the mock replays it ([`abl_mock::Replay`]). A success must give the text and every usage
//! field; a failure its category, whether the engine retries it, the retry
//! hint, and words of the message. Adding a fixture is adding a file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use abl_mock::{MockConfig, MockServer, Replay};

use async_batch_llm::providers::{ApiKey, ModelOptions, llm_with};
use async_batch_llm::{
    BatchConfig, CooldownPolicy, Item, LlmRequest, Model, ModelStrategy, RetryPolicy, call_result,
};
use serde_json::Value;

/// A mock replaying the fixture's response to every request.
async fn serve(fixture: &Value) -> MockServer {
    let replay = Replay::from_json(fixture).unwrap();
    MockServer::start(MockConfig {
        replay: Some(Box::new(replay)),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn model(provider: &str, base: &str) -> Arc<dyn async_batch_llm::DynModel> {
    let base_url = if provider == "gemini" || provider == "anthropic" {
        base.to_owned()
    } else {
        format!("{base}/v1")
    };
    llm_with(
        &format!("{provider}:recorded-model"),
        ModelOptions {
            api_key: Some(ApiKey::new("replay-key")),
            base_url: Some(base_url),
            ..ModelOptions::default()
        },
    )
    .unwrap()
}

/// What is wrong with the provider's reading of a fixture.
async fn provider_wrong(m: &Arc<dyn async_batch_llm::DynModel>, expect: &Value) -> Vec<String> {
    let mut wrong = Vec::new();
    match (
        m.generate(&LlmRequest::new("hi")).await,
        expect["ok"] == true,
    ) {
        (Ok(r), true) => {
            if let Some(text) = expect["text"].as_str()
                && r.text != text
            {
                wrong.push(format!("text {:?}, want {text:?}", short(&r.text)));
            }
            let u = r.token_usage().unwrap_or_default();
            let fields = [
                ("input_tokens", u.input),
                ("output_tokens", u.output),
                ("total_tokens", u.total),
                ("cached_input_tokens", u.cached_input),
                ("reasoning_tokens", u.reasoning),
                ("cache_write_input_tokens", u.cache_write_input),
            ];
            for (field, value) in fields {
                let want = expect["usage"][field].as_u64().unwrap_or(0);
                if value != want {
                    wrong.push(format!("usage.{field} {value}, want {want}"));
                }
            }
        }
        (Err(e), false) => {
            let want = expect["category"].as_str().unwrap();
            if e.category().as_str() != want {
                wrong.push(format!(
                    "category {} ({}), want {want}",
                    e.category(),
                    e.message()
                ));
            }
            if let Some(ms) = expect["hint_ms"].as_u64() {
                let hint = e.retry_after().map(|d| d.as_millis());
                if hint != Some(u128::from(ms)) {
                    wrong.push(format!("hint {hint:?} ms, want {ms}"));
                }
            }
            if let Some(words) = expect["message_contains"].as_str()
                && !e.message().contains(words)
            {
                wrong.push(format!("message {:?} lacks {words:?}", e.message()));
            }
        }
        (Ok(r), false) => wrong.push(format!("succeeded with {:?}", short(&r.text))),
        (Err(e), true) => wrong.push(format!("failed: {e}")),
    }
    wrong
}

/// Whether the engine retries a failing fixture as it says (the record
/// itself is checked through the CLI, in `crates/abl/tests/recorded.rs`).
async fn engine_wrong(
    m: Arc<dyn async_batch_llm::DynModel>,
    mock: &MockServer,
    name: &str,
    expect: &Value,
) -> Option<String> {
    let before = mock.stats().requests;
    let config = BatchConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            max_rate_limit_retries: 1,
            initial_backoff: Duration::from_millis(1),
            jitter: false,
            ..RetryPolicy::default()
        },
        cooldown: CooldownPolicy {
            default: Duration::from_millis(1),
            max_hint: Duration::from_millis(1),
            ..CooldownPolicy::default()
        },
        ..BatchConfig::default()
    };
    let text: fn(&async_batch_llm::LlmResponse) -> Result<Value, std::convert::Infallible> =
        |r| Ok(Value::String(r.text.clone()));
    call_result(ModelStrategy::new(m, text), Item::new(name, "hi"), &config)
        .await
        .unwrap();
    let calls = mock.stats().requests - before;
    let retried = expect["retried"].as_bool()?;
    ((calls > 1) != retried)
        .then(|| format!("the engine made {calls} calls; retried should be {retried}"))
}

/// Whether the README lists a fixture's source: a cassette's folder, or
/// the issue or page a quoted body came from.
fn listed_in_readme(readme: &str, name: &str, source: &Value) -> bool {
    if let Some(p) = source["path"].as_str() {
        let folder = p.rsplit_once('/').map_or(p, |(dir, _)| dir);
        return readme.contains(&format!("`{folder}/`"));
    }
    let url = source["issue"].as_str().or(source["docs"].as_str());
    url.is_some_and(|u| readme.contains(&format!("`{name}.json`")) && readme.contains(u))
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recorded_response_is_handled_as_its_fixture_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 60, "{} fixtures", names.len());
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut failures = Vec::new();
    for path in &names {
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            fixture["source"].as_object().is_some_and(|s| !s.is_empty()),
            "{}: no source",
            path.display()
        );
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !listed_in_readme(&readme, &name, &fixture["source"]) {
            failures.push(format!("{name}: its source is not in the README"));
        }
        let mock = serve(&fixture).await;
        let m = model(fixture["provider"].as_str().unwrap(), mock.base_url());
        let mut wrong = provider_wrong(&m, &fixture["expect"]).await;
        wrong.extend(engine_wrong(m, &mock, &name, &fixture["expect"]).await);
        failures.extend(wrong.into_iter().map(|w| format!("{name}: {w}")));
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
