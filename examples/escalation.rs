//! Model escalation through `on_error` and `RetryState`: every item starts
//! on a cheap model; only a reply that fails validation moves that item to a
//! stronger model. A rate limit does not escalate: it cools the scope down and
//! the same model is tried again.
//!
//! Runs against the built-in mock provider, no key needed:
//!
//! ```text
//! cargo run -p async-batch-llm --example escalation
//! ```
//!
//! Prompts carry mock markers to script what happens: `[[mock:invalid-output]]`
//! makes the reply break the schema, `[[mock:429:1*1]]` answers one 429 with a
//! one-second hint.

use std::sync::Arc;
use std::time::Duration;

use abl_mock::{MockConfig, MockServer};
use async_batch_llm::Validator;
use async_batch_llm::providers::{ApiKey, ModelOptions, llm_with};
use async_batch_llm::{
    BatchConfig, CallError, Completion, DynModel, ErrorCategory, Item, Model, Prompt, RetryState,
    Strategy, StructuredStrategy, process_prompts,
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
struct Ticket {
    title: String,
    priority: Priority,
    tags: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Priority {
    Low,
    High,
}

const ESCALATED: &str = "escalated";

/// A cheap model first; the strong one after a validation failure. Generic
/// over the model type, so it works with any provider (and, being generic,
/// with `Arc<dyn DynModel>` from the factory).
struct Escalating<M> {
    cheap: StructuredStrategy<Ticket, M>,
    strong: StructuredStrategy<Ticket, M>,
}

impl<M: Model> Strategy for Escalating<M> {
    /// The ticket and the model that produced it.
    type Output = (Ticket, &'static str);

    async fn prepare(&self) -> Result<(), CallError> {
        self.cheap.prepare().await?;
        self.strong.prepare().await
    }

    async fn execute(
        &self,
        prompt: &Prompt,
        attempt: u32,
        timeout: Duration,
        state: &mut RetryState,
    ) -> Result<Completion<Self::Output>, CallError> {
        let (strategy, name) = if state.contains(ESCALATED) {
            (&self.strong, "strong")
        } else {
            (&self.cheap, "cheap")
        };
        let (ticket, usage) = strategy.execute(prompt, attempt, timeout, state).await?;
        Ok(((ticket, name), usage))
    }

    async fn on_error(&self, error: &CallError, attempt: u32, state: &mut RetryState) {
        // Escalate on bad output only: rate limits and server errors say
        // nothing about the model's ability.
        if error.category() == ErrorCategory::ValidationError && !state.contains(ESCALATED) {
            println!("  attempt {attempt} failed validation: escalating to the strong model");
            state.set(ESCALATED, true);
        }
    }

    fn quota_scope(&self) -> Option<String> {
        self.cheap.quota_scope()
    }
}

fn model(mock: &MockServer, spec: &str) -> Result<Arc<dyn DynModel>, async_batch_llm::Error> {
    llm_with(
        spec,
        ModelOptions {
            api_key: Some(ApiKey::new("mock-key")),
            base_url: Some(format!("{}/v1", mock.base_url())),
            ..ModelOptions::default()
        },
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockServer::start(MockConfig::default()).await?;
    // One schema and validator, shared by both models.
    let validator = Arc::new(Validator::<Ticket>::new()?);
    let strategy = Escalating {
        cheap: StructuredStrategy::with_validator(
            model(&mock, "openai:gpt-4o-mini")?,
            Arc::clone(&validator),
        ),
        strong: StructuredStrategy::with_validator(model(&mock, "openai:gpt-4o")?, validator),
    };
    let prompts = [
        ("t1", "The printer on floor 2 is jammed"),
        ("t2", "[[mock:invalid-output]] VPN drops every hour"),
        ("t3", "[[mock:429:1*1]] Laptop battery swollen"),
        ("t4", "Badge reader at the east door is dead"),
        (
            "t5",
            "[[mock:invalid-output]] Payroll export has wrong totals",
        ),
        ("t6", "[[mock:429:1*1]] Wi-Fi slow in meeting room 4"),
    ];
    let items = prompts.iter().map(|(id, p)| Item::new(*id, *p));
    let config = BatchConfig {
        concurrency: 4,
        preserve_order: true,
        ..BatchConfig::default()
    };
    let batch = process_prompts(strategy, items, &config).await?;

    println!(
        "\n{:<4} {:<8} {:>8} {:>6}  ticket",
        "id", "model", "attempts", "tries"
    );
    for r in &batch.results {
        match r.output() {
            Some((ticket, used)) => println!(
                "{:<4} {:<8} {:>8} {:>6}  {} ({:?}, {} tags)",
                r.id,
                used,
                r.attempts,
                r.tries,
                ticket.title,
                ticket.priority,
                ticket.tags.len()
            ),
            None => println!("{:<4} failed: {:?}", r.id, r.error()),
        }
    }
    println!("\n{}", batch.summary());

    // What the example demonstrates, checked.
    for r in &batch.results {
        let scripted_invalid = prompts
            .iter()
            .any(|(id, p)| *id == r.id && p.contains("invalid-output"));
        let used = r.output().map(|(_, m)| *m);
        let expected = if scripted_invalid { "strong" } else { "cheap" };
        assert_eq!(used, Some(expected), "item {}", r.id);
    }
    println!("the strong model answered only the items whose cheap reply failed validation");
    Ok(())
}
