//! List prices built in: a dated table of what each provider charges per
//! million tokens for the models we know (`data/prices.json`, shipped in the
//! crate), so a run shows its cost without the user looking prices up. The
//! user's own prices always win; a model not in the table has no cost.
//!
//! ```
//! use async_batch_llm::PriceList;
//!
//! let list = PriceList::builtin();
//! let p = list.lookup("openai", "gpt-4o-mini-2024-07-18").unwrap();
//! assert_eq!(p.prices.input_per_million, 0.15);
//! assert!(list.lookup("openai", "a-model-nobody-has").is_none());
//! ```

use std::sync::OnceLock;

use serde::Deserialize;

use crate::usage::Prices;

const BUILTIN: &str = include_str!("../data/prices.json");

/// One model's list price.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedPrice {
    /// Provider family: `openai`, `anthropic`, `gemini`, `deepseek`.
    pub provider: String,
    /// The model name, or the prefix of its dated versions.
    pub model: String,
    /// Per million tokens.
    pub prices: Prices,
    /// The share the provider's batch API takes off (0.5: half price).
    pub batch_discount: f64,
}

/// A dated table of list prices.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceList {
    /// The day the prices were read off the providers' pages.
    pub as_of: String,
    /// Where they come from, and what they cover.
    pub note: String,
    models: Vec<ListedPrice>,
}

#[derive(Deserialize)]
struct File {
    as_of: String,
    note: String,
    models: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    provider: String,
    model: String,
    input: f64,
    output: f64,
    #[serde(default)]
    cached_input: Option<f64>,
    #[serde(default)]
    cache_write_input: Option<f64>,
    #[serde(default)]
    batch_discount: f64,
}

impl PriceList {
    /// The table shipped with this version of the crate.
    pub fn builtin() -> &'static Self {
        static LIST: OnceLock<PriceList> = OnceLock::new();
        // The file is part of the crate and a test parses it; were it ever
        // unreadable, no price is known rather than a panic.
        LIST.get_or_init(|| {
            Self::parse(BUILTIN).unwrap_or_else(|_| Self {
                as_of: String::new(),
                note: String::new(),
                models: Vec::new(),
            })
        })
    }

    /// A table in the format of `data/prices.json`.
    pub fn parse(json: &str) -> Result<Self, crate::Error> {
        let f: File = serde_json::from_str(json)
            .map_err(|e| crate::Error::config(format!("price list: {e}")))?;
        let models = f
            .models
            .into_iter()
            .map(|e| ListedPrice {
                provider: e.provider,
                model: e.model,
                prices: Prices {
                    input_per_million: e.input,
                    output_per_million: e.output,
                    cached_input_per_million: e.cached_input,
                    cache_write_input_per_million: e.cache_write_input,
                },
                batch_discount: e.batch_discount,
            })
            .collect();
        Ok(Self {
            as_of: f.as_of,
            note: f.note,
            models,
        })
    }

    /// The price of `model` at `provider` (`openai`, `anthropic`, `gemini`,
    /// `deepseek`; `openrouter` with `vendor/model` names): the longest
    /// listed name that `model` is or starts with followed by `-` (dated
    /// versions such as `gpt-4o-2024-08-06`), so `gpt-4o-mini` never gets
    /// the price of `gpt-4o`.
    pub fn lookup(&self, provider: &str, model: &str) -> Option<&ListedPrice> {
        let (provider, model) = match provider {
            "openrouter" => {
                let (vendor, name) = model.split_once('/')?;
                (if vendor == "google" { "gemini" } else { vendor }, name)
            }
            "openai-chat" => ("openai", model),
            p => (p, model),
        };
        let model = model.strip_prefix("models/").unwrap_or(model);
        self.models
            .iter()
            .filter(|p| p.provider == provider)
            .filter(|p| {
                model
                    .strip_prefix(p.model.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
            })
            .max_by_key(|p| p.model.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_parses_and_is_dated() {
        let list = PriceList::parse(BUILTIN).expect("data/prices.json parses");
        assert!(!list.as_of.is_empty());
        assert!(list.models.len() >= 20);
        for m in &list.models {
            assert!(m.prices.input_per_million > 0.0, "{}", m.model);
            assert!(m.prices.output_per_million > 0.0, "{}", m.model);
            assert!((0.0..1.0).contains(&m.batch_discount), "{}", m.model);
        }
    }

    #[test]
    fn the_longest_name_wins_and_dated_versions_match() {
        let list = PriceList::builtin();
        let price = |p, m| list.lookup(p, m).map(|l| l.model.as_str());
        assert_eq!(price("openai", "gpt-4o-mini"), Some("gpt-4o-mini"));
        assert_eq!(price("openai", "gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(price("openai-chat", "gpt-4.1-nano"), Some("gpt-4.1-nano"));
        assert_eq!(
            price("anthropic", "claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            price("gemini", "models/gemini-2.5-flash-lite"),
            Some("gemini-2.5-flash-lite")
        );
        assert_eq!(
            price("openrouter", "anthropic/claude-haiku-4-5"),
            Some("claude-haiku-4-5")
        );
        // Not a prefix at a word boundary, another provider, unknown.
        assert_eq!(price("openai", "gpt-4oo"), None);
        assert_eq!(price("anthropic", "gpt-4o"), None);
        assert_eq!(price("openai-compatible", "llama-3"), None);
    }
}
