//! Running embeddings: packs through the engine, results back to items,
//! refused packs split until the input at fault stands alone.

use std::sync::Arc;
use std::time::Duration;

use super::pack::{pack_by, text_of, tokens_of};
use super::{EmbeddingModel, Embeddings, PackLimits};
use crate::engine::{BatchConfig, process_prompts};
use crate::error::{CallError, Error, ErrorCategory};
use crate::item::{Item, Message, Prompt, Role};
use crate::result::{ItemError, ItemResult};
use crate::strategy::{Completion, RetryState, Strategy};
use crate::usage::TokenUsage;

/// The engine's strategy for packs: each item is one request, its prompt
/// one user turn per input.
pub struct EmbedStrategy<E: ?Sized> {
    model: Arc<E>,
}

impl<E: ?Sized> std::fmt::Debug for EmbedStrategy<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedStrategy").finish_non_exhaustive()
    }
}

impl<E: ?Sized> EmbedStrategy<E> {
    /// Requests to `model`.
    pub fn new(model: Arc<E>) -> Self {
        Self { model }
    }
}

impl<E: EmbeddingModel + ?Sized> Strategy for EmbedStrategy<E> {
    type Output = Embeddings;

    async fn execute(
        &self,
        prompt: &Prompt,
        _attempt: u32,
        _timeout: Duration,
        _state: &mut RetryState,
    ) -> Result<Completion<Embeddings>, CallError> {
        let inputs: Vec<String> = match prompt {
            Prompt::Text(t) => vec![t.clone()],
            Prompt::Messages(m) => m.iter().map(|m| m.content.clone()).collect(),
        };
        let e = self.model.embed(&inputs).await?;
        if e.vectors.len() != inputs.len() {
            return Err(CallError::new(
                ErrorCategory::ServerError,
                format!(
                    "the provider returned {} vectors for {} inputs",
                    e.vectors.len(),
                    inputs.len()
                ),
            ));
        }
        let usage = e.usage;
        Ok((e, Some(usage)))
    }

    fn quota_scope(&self) -> Option<String> {
        self.model.quota_scope()
    }
}

/// Items of one pack: their place in the input, and themselves.
type Pack = Vec<(usize, Item)>;

/// Whether a pack refused this way should be split: the provider refused
/// the request as a whole, and one input may be at fault.
fn splits(e: &ItemError) -> bool {
    matches!(
        e.category,
        ErrorCategory::ClientError
            | ErrorCategory::ContextLengthExceeded
            | ErrorCategory::ValidationError
    )
}

/// Shares `total` tokens in proportion to `weights`, the remainder to the
/// last, so the shares add up to `total` exactly.
fn shares(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum = weights.iter().fold(0u128, |a, w| a + u128::from(*w)).max(1);
    let mut left = total;
    let last = weights.len().saturating_sub(1);
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let share = if i == last {
                left
            } else {
                u64::try_from(u128::from(total) * u128::from(*w) / sum)
                    .unwrap_or(u64::MAX)
                    .min(left)
            };
            left -= share;
            share
        })
        .collect()
}

/// Embeds every item, packed within `limits` (and the model's own limits,
/// whichever are smaller), through the engine with `config`. Returns one
/// result per item in input order: its vector, or why it has none. Usage
/// is each item's share of its request's, by estimated tokens.
pub async fn embed_items<E: EmbeddingModel + ?Sized>(
    model: Arc<E>,
    items: Vec<Item>,
    config: &BatchConfig,
    limits: PackLimits,
) -> Result<Vec<ItemResult<Vec<f32>>>, Error> {
    let own = model.limits();
    let limits = PackLimits {
        max_inputs: limits.max_inputs.min(own.max_inputs).max(1),
        max_tokens: limits.max_tokens.min(own.max_tokens),
    };
    let strategy = Arc::new(EmbedStrategy::new(model));
    let n = items.len();
    let mut done: Vec<Option<ItemResult<Vec<f32>>>> = (0..n).map(|_| None).collect();
    // Each item keeps its place in the input.
    let mut pending: Vec<Pack> = pack_by(
        items.into_iter().enumerate().collect(),
        |(_, i)| tokens_of(&text_of(&i.prompt)),
        limits,
    );
    while !pending.is_empty() {
        let requests: Vec<Item> = pending
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let turns = p
                    .iter()
                    .map(|(_, i)| Message::new(Role::User, text_of(&i.prompt)))
                    .collect();
                Item::new(format!("pack-{k}"), Prompt::Messages(turns))
            })
            .collect();
        let batch =
            process_prompts::<EmbedStrategy<E>, _>(Arc::clone(&strategy), requests, config).await?;
        let mut packs: Vec<Option<Pack>> = pending.into_iter().map(Some).collect();
        let mut next = Vec::new();
        for r in batch.results {
            let Some(p) = usize::try_from(r.index)
                .ok()
                .and_then(|k| packs.get_mut(k))
                .and_then(Option::take)
            else {
                continue;
            };
            match &r.outcome {
                Err(e) if splits(e) && p.len() > 1 => {
                    let mut first = p;
                    let second = first.split_off(first.len() / 2);
                    next.push(first);
                    next.push(second);
                }
                _ => unpack(&r, p, &mut done),
            }
        }
        pending = next;
    }
    Ok(done.into_iter().flatten().collect())
}

/// Gives each item of a pack its result. The request's calls are the
/// first item's (its `tries` and per-try timing), so that summed over the
/// items they count each request once; every item has the request's
/// attempts, wall times and waits.
fn unpack(r: &ItemResult<Embeddings>, p: Pack, done: &mut [Option<ItemResult<Vec<f32>>>]) {
    let weights: Vec<u64> = p
        .iter()
        .map(|(_, i)| tokens_of(&text_of(&i.prompt)))
        .collect();
    let input = match &r.outcome {
        Ok(e) => e.usage.input,
        Err(_) => r.usage.input,
    };
    let tokens = shares(input, &weights);
    let mut vectors = match &r.outcome {
        Ok(e) => e.vectors.clone().into_iter().map(Some).collect(),
        Err(_) => Vec::new(),
    };
    for (k, (place, item)) in p.into_iter().enumerate() {
        let outcome = match (&r.outcome, vectors.get_mut(k).and_then(Option::take)) {
            (Ok(_), Some(v)) => Ok(v),
            (Ok(_), None) => Err(ItemError::new(
                ErrorCategory::LogicError,
                "the request's reply had no vector for this input",
            )),
            (Err(e), _) => Err(e.clone()),
        };
        let mut timing = r.timing.clone();
        if k > 0 {
            timing.tries.clear();
        }
        if let Some(slot) = done.get_mut(place) {
            *slot = Some(ItemResult {
                id: item.id,
                index: place as u64,
                outcome,
                usage: TokenUsage::new(tokens[k], 0),
                attempts: r.attempts,
                tries: if k == 0 { r.tries } else { 0 },
                timing,
                context: item.context,
                replayed: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_shares_add_up_to_the_request() {
        assert_eq!(shares(10, &[1, 1, 1]), [3, 3, 4]);
        assert_eq!(shares(0, &[5, 5]), [0, 0]);
        assert_eq!(shares(7, &[0, 0]), [0, 7]);
        assert_eq!(
            shares(u64::MAX, &[u64::MAX, 1]).iter().sum::<u64>(),
            u64::MAX
        );
    }
}
