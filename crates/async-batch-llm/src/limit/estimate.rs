//! Token estimates for TPM admission: how many tokens a call will use,
//! guessed before it is made (the reservation is settled with the real
//! usage afterwards).

use crate::item::Prompt;
use crate::usage::TokenUsage;

/// Why a prompt's tokens could not be estimated; the item fails with
/// `admission_error` before any call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EstimateError(pub String);

/// Estimates the tokens of a call before it is made.
pub trait TokenEstimator: Send + Sync {
    /// Input plus expected output tokens for `prompt`.
    fn estimate(&self, prompt: &Prompt) -> Result<u64, EstimateError>;

    /// The same estimate split into input and output, for a dry run's
    /// projected usage and cost. The default counts it all as input.
    fn estimate_usage(&self, prompt: &Prompt) -> Result<TokenUsage, EstimateError> {
        Ok(TokenUsage::new(self.estimate(prompt)?, 0))
    }
}

/// The default estimator: characters / 4 (rounded up) plus the expected
/// output tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharEstimator {
    /// Output tokens expected per call (256).
    pub expected_output: u64,
}

impl Default for CharEstimator {
    fn default() -> Self {
        Self {
            expected_output: 256,
        }
    }
}

impl TokenEstimator for CharEstimator {
    fn estimate(&self, prompt: &Prompt) -> Result<u64, EstimateError> {
        Ok((prompt.char_len() as u64).div_ceil(4) + self.expected_output)
    }

    fn estimate_usage(&self, prompt: &Prompt) -> Result<TokenUsage, EstimateError> {
        Ok(TokenUsage::new(
            (prompt.char_len() as u64).div_ceil(4),
            self.expected_output,
        ))
    }
}

/// Token estimates with OpenAI's tokenizer (feature `tiktoken`): exact
/// input tokens for OpenAI models (o200k or cl100k by model name, o200k for
/// unknown names) plus the expected output tokens and a few tokens of
/// per-message overhead.
#[cfg(feature = "tiktoken")]
pub struct TiktokenEstimator {
    bpe: &'static tiktoken_rs::CoreBPE,
    /// Output tokens expected per call.
    pub expected_output: u64,
}

#[cfg(feature = "tiktoken")]
impl std::fmt::Debug for TiktokenEstimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TiktokenEstimator")
            .field("expected_output", &self.expected_output)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tiktoken")]
impl TiktokenEstimator {
    /// The estimator for `model` (e.g. `gpt-4o-mini`).
    pub fn for_model(model: &str, expected_output: u64) -> Result<Self, crate::error::Error> {
        let bpe = tiktoken_rs::bpe_for_model(model)
            .or_else(|_| {
                tiktoken_rs::bpe_for_tokenizer(tiktoken_rs::tokenizer::Tokenizer::O200kBase)
            })
            .map_err(|e| crate::error::Error::config(format!("no tokenizer for {model}: {e}")))?;
        Ok(Self {
            bpe,
            expected_output,
        })
    }
}

#[cfg(feature = "tiktoken")]
impl TiktokenEstimator {
    fn input(&self, prompt: &Prompt) -> u64 {
        const PER_MESSAGE: u64 = 4;
        match prompt {
            Prompt::Text(t) => self.bpe.encode_ordinary(t).len() as u64 + PER_MESSAGE,
            Prompt::Messages(ms) => ms
                .iter()
                .map(|m| self.bpe.encode_ordinary(&m.content).len() as u64 + PER_MESSAGE)
                .sum(),
        }
    }
}

#[cfg(feature = "tiktoken")]
impl TokenEstimator for TiktokenEstimator {
    fn estimate(&self, prompt: &Prompt) -> Result<u64, EstimateError> {
        Ok(self.input(prompt) + self.expected_output)
    }

    fn estimate_usage(&self, prompt: &Prompt) -> Result<TokenUsage, EstimateError> {
        Ok(TokenUsage::new(self.input(prompt), self.expected_output))
    }
}

#[cfg(all(test, feature = "tiktoken"))]
mod tests {
    use super::*;

    #[test]
    fn tiktoken_counts_real_tokens() {
        let e = TiktokenEstimator::for_model("gpt-4o-mini", 10).unwrap();
        // "hello world" is two tokens in o200k_base.
        assert_eq!(e.estimate(&Prompt::from("hello world")), Ok(2 + 4 + 10));
        let unknown = TiktokenEstimator::for_model("some-new-model", 0).unwrap();
        assert_eq!(unknown.estimate(&Prompt::from("hello world")), Ok(6));
    }
}
