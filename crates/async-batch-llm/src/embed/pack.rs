//! Packing items into requests: in input order, each pack as full as the
//! provider's limits on inputs and tokens allow.

use crate::item::{Item, Prompt};

/// Limits of one embeddings request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Most inputs in one request (OpenAI: 2,048).
    pub max_inputs: usize,
    /// Most estimated tokens in one request (OpenAI: 300,000), counted as
    /// a quarter of the characters, rounded up; an input above it goes
    /// alone.
    pub max_tokens: u64,
}

impl Default for PackLimits {
    /// OpenAI's limits.
    fn default() -> Self {
        Self {
            max_inputs: 2048,
            max_tokens: 300_000,
        }
    }
}

/// The text an item asks to embed: its prompt's text (the user turns of a
/// conversation, joined by newlines).
pub(crate) fn text_of(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Messages(m) => m
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Estimated tokens of a text.
pub(crate) fn tokens_of(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// `items` in packs within `limits`, in input order.
pub fn pack(items: Vec<Item>, limits: PackLimits) -> Vec<Vec<Item>> {
    pack_by(items, |i| tokens_of(&text_of(&i.prompt)), limits)
}

/// `things` in packs within `limits`, in order, `tokens` telling each
/// one's estimated tokens.
pub(crate) fn pack_by<T>(
    things: Vec<T>,
    tokens_of: impl Fn(&T) -> u64,
    limits: PackLimits,
) -> Vec<Vec<T>> {
    let max_inputs = limits.max_inputs.max(1);
    let mut packs = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut tokens = 0u64;
    for item in things {
        let t = tokens_of(&item);
        if !current.is_empty()
            && (current.len() >= max_inputs || tokens.saturating_add(t) > limits.max_tokens)
        {
            packs.push(std::mem::take(&mut current));
            tokens = 0;
        }
        tokens = tokens.saturating_add(t);
        current.push(item);
    }
    if !current.is_empty() {
        packs.push(current);
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(lens: &[usize]) -> Vec<Item> {
        lens.iter()
            .enumerate()
            .map(|(i, n)| Item::new(format!("i{i}"), "x".repeat(*n)))
            .collect()
    }

    #[test]
    fn packs_fill_to_the_input_and_token_limits_in_order() {
        let limits = PackLimits {
            max_inputs: 3,
            max_tokens: 10,
        };
        // 4 tokens each: 2 fit in 10 tokens.
        let p = pack(items(&[16, 16, 16, 16, 16]), limits);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        // 1 token each: 3 inputs at most.
        let p = pack(items(&[1; 7]), limits);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
        // An input over the token limit goes alone; order is kept.
        let p = pack(items(&[4, 400, 4]), limits);
        let ids: Vec<Vec<&str>> = p
            .iter()
            .map(|p| p.iter().map(|i| i.id.as_str()).collect())
            .collect();
        assert_eq!(ids, [vec!["i0"], vec!["i1"], vec!["i2"]]);
        assert!(pack(Vec::new(), limits).is_empty());
    }
}
