//! Token usage and cost.
//!
//! [`TokenUsage`] is what one billed call consumed; it sums with `+` and
//! [`Sum`](std::iter::Sum), so an item's usage is the sum over every billed
//! attempt, failed ones included. [`Prices`] turns usage into money.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Tokens consumed by one or more billed calls.
///
/// Serialized with the seed's names (`input_tokens`, `output_tokens`,
/// `total_tokens`, `cached_input_tokens`, plus `reasoning_tokens` and
/// `cache_write_input_tokens`); the short names of earlier records
/// (`input`, `output`…) are still read.
///
/// `total` is explicit because some providers report a total that is not
/// `input + output` (reasoning or tool tokens); [`TokenUsage::new`] fills it
/// with the sum when the provider gives none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Input (prompt) tokens, cached ones included.
    #[serde(default, rename = "input_tokens", alias = "input")]
    pub input: u64,
    /// Output (completion) tokens, reasoning tokens included.
    #[serde(default, rename = "output_tokens", alias = "output")]
    pub output: u64,
    /// Total tokens as reported, or `input + output`.
    #[serde(default, rename = "total_tokens", alias = "total")]
    pub total: u64,
    /// The part of `input` served from a prompt cache (billed at a lower rate).
    #[serde(default, rename = "cached_input_tokens", alias = "cached_input")]
    pub cached_input: u64,
    /// The part of `output` spent on reasoning, when the provider reports it.
    #[serde(default, rename = "reasoning_tokens", alias = "reasoning")]
    pub reasoning: u64,
    /// The part of `input` written to a prompt cache (Anthropic bills it at
    /// a higher rate).
    #[serde(
        default,
        rename = "cache_write_input_tokens",
        alias = "cache_write_input",
        skip_serializing_if = "is_zero"
    )]
    pub cache_write_input: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenUsage {
    /// Usage with `total = input + output` and no cached or reasoning tokens.
    pub const fn new(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            total: input + output,
            cached_input: 0,
            reasoning: 0,
            cache_write_input: 0,
        }
    }

    /// Sets the cached part of the input.
    #[must_use]
    pub const fn with_cached_input(mut self, cached_input: u64) -> Self {
        self.cached_input = cached_input;
        self
    }

    /// Sets the part of the input written to a prompt cache.
    #[must_use]
    pub const fn with_cache_write_input(mut self, cache_write_input: u64) -> Self {
        self.cache_write_input = cache_write_input;
        self
    }

    /// Sets the reasoning part of the output.
    #[must_use]
    pub const fn with_reasoning(mut self, reasoning: u64) -> Self {
        self.reasoning = reasoning;
        self
    }

    /// Sets an explicit total, as reported by a provider.
    #[must_use]
    pub const fn with_total(mut self, total: u64) -> Self {
        self.total = total;
        self
    }

    /// True when no token was counted.
    pub const fn is_zero(&self) -> bool {
        self.input == 0 && self.output == 0 && self.total == 0
    }
}

impl Add for TokenUsage {
    type Output = Self;
    fn add(mut self, rhs: Self) -> Self {
        self += rhs;
        self
    }
}

impl AddAssign for TokenUsage {
    fn add_assign(&mut self, rhs: Self) {
        self.input = self.input.saturating_add(rhs.input);
        self.output = self.output.saturating_add(rhs.output);
        self.total = self.total.saturating_add(rhs.total);
        self.cached_input = self.cached_input.saturating_add(rhs.cached_input);
        self.reasoning = self.reasoning.saturating_add(rhs.reasoning);
        self.cache_write_input = self.cache_write_input.saturating_add(rhs.cache_write_input);
    }
}

impl std::iter::Sum for TokenUsage {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

impl<'a> std::iter::Sum<&'a TokenUsage> for TokenUsage {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().sum()
    }
}

/// Prices in currency units (usually US dollars) per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// Price of one million uncached input tokens.
    pub input_per_million: f64,
    /// Price of one million output tokens.
    pub output_per_million: f64,
    /// Price of one million cached input tokens; `None` bills them as uncached input.
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
    /// Price of a million input tokens written to a prompt cache (Anthropic:
    /// 1.25 × input); `None` uses the input price.
    #[serde(default)]
    pub cache_write_input_per_million: Option<f64>,
}

impl Prices {
    /// Prices for input and output tokens; cached input billed as input.
    pub const fn new(input_per_million: f64, output_per_million: f64) -> Self {
        Self {
            input_per_million,
            output_per_million,
            cached_input_per_million: None,
            cache_write_input_per_million: None,
        }
    }

    /// Sets the cached-input rate.
    #[must_use]
    pub const fn with_cached_input(mut self, cached_input_per_million: f64) -> Self {
        self.cached_input_per_million = Some(cached_input_per_million);
        self
    }

    /// Sets the cache-write rate.
    #[must_use]
    pub const fn with_cache_write_input(mut self, per_million: f64) -> Self {
        self.cache_write_input_per_million = Some(per_million);
        self
    }

    /// The cost of `usage` at these prices.
    pub fn cost(&self, usage: &TokenUsage) -> f64 {
        let cached = usage.cached_input.min(usage.input);
        let written = usage.cache_write_input.min(usage.input - cached);
        let plain = usage.input - cached - written;
        let cached_rate = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million);
        let write_rate = self
            .cache_write_input_per_million
            .unwrap_or(self.input_per_million);
        (plain as f64 * self.input_per_million
            + cached as f64 * cached_rate
            + written as f64 * write_rate
            + usage.output as f64 * self.output_per_million)
            / 1_000_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_field() {
        let a = TokenUsage::new(10, 5)
            .with_cached_input(4)
            .with_reasoning(2);
        let b = TokenUsage::new(1, 2).with_total(7);
        let s: TokenUsage = [a, b].iter().sum();
        assert_eq!(
            s,
            TokenUsage {
                input: 11,
                output: 7,
                total: 22,
                cached_input: 4,
                reasoning: 2,
                cache_write_input: 0,
            }
        );
    }

    #[test]
    fn cost_uses_cached_rate() {
        let p = Prices::new(2.0, 8.0).with_cached_input(0.5);
        let u = TokenUsage::new(1_000_000, 500_000).with_cached_input(400_000);
        // 600k * 2 + 400k * 0.5 + 500k * 8 = 1.2 + 0.2 + 4.0
        assert!((p.cost(&u) - 5.4).abs() < 1e-9);
        let no_cache_rate = Prices::new(2.0, 8.0);
        assert!((no_cache_rate.cost(&u) - 6.0).abs() < 1e-9);
        // Anthropic: 300k read at 0.1x, 200k written at 1.25x, 500k plain.
        let anthropic = Prices::new(3.0, 15.0)
            .with_cached_input(0.3)
            .with_cache_write_input(3.75);
        let u = TokenUsage::new(1_000_000, 0)
            .with_cached_input(300_000)
            .with_cache_write_input(200_000);
        // 500k * 3 + 300k * 0.3 + 200k * 3.75 = 1.5 + 0.09 + 0.75
        assert!((anthropic.cost(&u) - 2.34).abs() < 1e-9);
    }
}
