//! [`BatchClient`]: one value for the batch API of any of the three
//! providers, so a caller writes its job loop once.

use std::path::Path;

use super::{BatchJob, BatchResults, JobHint, JobLimits};
use crate::error::{CallError, Error};
use crate::model::LlmRequest;
use crate::providers::factory::{Resolved, require, resolve};
use crate::providers::{ModelOptions, Provider};

/// A provider with a batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchProvider {
    /// OpenAI's Batch API (`/v1/files` + `/v1/batches`).
    OpenAi,
    /// Anthropic's Message Batches (`/v1/messages/batches`).
    Anthropic,
    /// Gemini's Batch Mode (`models/{m}:batchGenerateContent`).
    Gemini,
}

impl BatchProvider {
    /// The batch API of a model provider, if it has one.
    pub fn of(provider: Provider) -> Option<Self> {
        match provider {
            Provider::OpenAi => Some(BatchProvider::OpenAi),
            Provider::Anthropic => Some(BatchProvider::Anthropic),
            Provider::Gemini => Some(BatchProvider::Gemini),
            _ => None,
        }
    }

    /// Its name as jobs are recorded (`openai`, `anthropic`, `gemini`).
    pub fn name(self) -> &'static str {
        match self {
            BatchProvider::OpenAi => "openai",
            BatchProvider::Anthropic => "anthropic",
            BatchProvider::Gemini => "gemini",
        }
    }

    /// The provider of a recorded name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "openai" => Some(BatchProvider::OpenAi),
            "anthropic" => Some(BatchProvider::Anthropic),
            "gemini" => Some(BatchProvider::Gemini),
            _ => None,
        }
    }

    /// What one job may hold: OpenAI 50,000 requests and 200 MB per input
    /// file; Anthropic 100,000 requests or 256 MB per batch (less the
    /// body's own brackets); Gemini a 2 GB input file, kept by abl to
    /// 100,000 requests so one job's results stay a manageable file.
    pub fn limits(self) -> JobLimits {
        match self {
            BatchProvider::OpenAi => JobLimits {
                max_requests: 50_000,
                max_bytes: 200 * 1_000_000,
            },
            BatchProvider::Anthropic => JobLimits {
                max_requests: 100_000,
                max_bytes: 256 * 1_000_000 - 200_000,
            },
            BatchProvider::Gemini => JobLimits {
                max_requests: 100_000,
                max_bytes: 2_000 * 1_000_000,
            },
        }
    }
}

/// The batch API of one provider account.
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchClient {
    /// OpenAI.
    #[cfg(feature = "openai")]
    OpenAi(super::OpenAiBatches),
    /// Anthropic.
    #[cfg(feature = "anthropic")]
    Anthropic(super::AnthropicBatches),
    /// Gemini.
    #[cfg(feature = "gemini")]
    Gemini(super::GeminiBatches),
}

impl BatchClient {
    /// The batch API of `"provider:model"` (`openai:`, `anthropic:` or
    /// `gemini:`), with its key and base URL found as
    /// [`llm_with`](crate::providers::llm_with) finds them, and the same
    /// request options, so its request lines are the online bodies.
    ///
    /// ```
    /// use async_batch_llm::batch_api::{BatchClient, BatchProvider};
    /// use async_batch_llm::providers::{ApiKey, ModelOptions};
    ///
    /// let client = BatchClient::new(
    ///     "anthropic:claude-3-5-haiku-latest",
    ///     ModelOptions { api_key: Some(ApiKey::new("sk-ant-test")), ..ModelOptions::default() },
    /// )?;
    /// assert_eq!(client.provider(), BatchProvider::Anthropic);
    /// assert_eq!(client.limits().max_requests, 100_000);
    /// # Ok::<(), async_batch_llm::Error>(())
    /// ```
    pub fn new(spec: &str, options: ModelOptions) -> Result<Self, Error> {
        let Resolved {
            spec,
            key,
            base_url,
        } = resolve(spec, &options)?;
        let p = spec.provider;
        let _ = (&key, &base_url);
        #[allow(unreachable_code)]
        Ok(match p {
            #[cfg(feature = "openai")]
            Provider::OpenAi => {
                BatchClient::OpenAi(super::OpenAiBatches::new(crate::providers::OpenAiConfig {
                    model: spec.model,
                    base_url,
                    api_key: Some(require(p, key)?),
                    http: options.http,
                })?)
            }
            #[cfg(feature = "anthropic")]
            Provider::Anthropic => BatchClient::Anthropic(super::AnthropicBatches::new(
                crate::providers::AnthropicConfig {
                    model: spec.model,
                    base_url,
                    api_key: require(p, key)?,
                    default_max_tokens: 1024,
                    prompt_cache: options.prompt_cache,
                    http: options.http,
                },
            )?),
            #[cfg(feature = "gemini")]
            Provider::Gemini => {
                BatchClient::Gemini(super::GeminiBatches::new(crate::providers::GeminiConfig {
                    model: spec.model,
                    base_url,
                    api_key: require(p, key)?,
                    safety_settings: options.safety_settings,
                    system_instruction: options.system_instruction,
                    generation_config: None,
                    http: options.http,
                })?)
            }
            other if BatchProvider::of(other).is_some() => {
                return Err(Error::config(format!(
                    "{} support is not built in: build async-batch-llm with the cargo feature \"{}\"",
                    other.prefix(),
                    other.feature()
                )));
            }
            other => {
                return Err(Error::config(format!(
                    "{}: has no batch API (openai:, anthropic: and gemini: have one)",
                    other.prefix()
                )));
            }
        })
    }

    /// Which provider it talks to.
    pub fn provider(&self) -> BatchProvider {
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(_) => BatchProvider::OpenAi,
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(_) => BatchProvider::Anthropic,
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(_) => BatchProvider::Gemini,
        }
    }

    /// What one job may hold at this provider.
    pub fn limits(&self) -> JobLimits {
        self.provider().limits()
    }

    /// The `custom_id` of an item: its id where the provider takes it,
    /// else a stable hash of it.
    pub fn custom_id(&self, id: &str) -> String {
        match *self {
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(_) => super::AnthropicBatches::custom_id(id),
            #[allow(unreachable_patterns)]
            _ => super::custom_id_with(id, |_| true),
        }
    }

    /// The job-file line of `request` (the online route's body, with the
    /// bytes of its file attachments), serialized without its newline.
    pub async fn line(&self, custom_id: &str, request: &LlmRequest) -> Result<Vec<u8>, CallError> {
        let _ = (custom_id, request);
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(ref c) => c.line(custom_id, request).await,
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(ref c) => c.line(custom_id, request).await,
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(ref c) => c.line(custom_id, request).await,
        }
    }

    /// Submits the job file at `path` (lines from [`line`](Self::line)),
    /// labelled `key` where the provider keeps a label.
    pub async fn submit(&self, path: &Path, key: &str) -> Result<BatchJob, CallError> {
        let _ = (path, key);
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(ref c) => c.submit(path, key).await,
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(ref c) => c.submit(path).await,
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(ref c) => c.submit(path, key).await,
        }
    }

    /// The job `id` as it stands.
    pub async fn get(&self, id: &str) -> Result<BatchJob, CallError> {
        let _ = id;
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(ref c) => c.get(id).await,
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(ref c) => c.get(id).await,
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(ref c) => c.get(id).await,
        }
    }

    /// The job a caller recorded under `key` (and `hint`) and may have
    /// submitted before it stopped, if the provider has it.
    pub async fn find(&self, key: &str, hint: &JobHint) -> Result<Option<BatchJob>, CallError> {
        let _ = (key, hint);
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(ref c) => c.find(key, 10).await,
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(ref c) => c.find(hint, 10).await,
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(ref c) => c.find(key, 10).await,
        }
    }

    /// Asks the provider to cancel job `id`.
    pub async fn cancel(&self, id: &str) -> Result<BatchJob, CallError> {
        let _ = id;
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(ref c) => c.cancel(id).await,
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(ref c) => c.cancel(id).await,
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(ref c) => c.cancel(id).await,
        }
    }

    /// The results of an ended `job`, read as they download; `order` is
    /// its custom ids in the order submitted.
    pub fn results<'a>(&self, job: &BatchJob, order: &'a [String]) -> BatchResults<'a> {
        let _ = (job, order);
        if job.results.is_empty() && job.inline_results.is_none() {
            return BatchResults::empty();
        }
        match *self {
            #[cfg(feature = "openai")]
            BatchClient::OpenAi(ref c) => c.results(job),
            #[cfg(feature = "anthropic")]
            BatchClient::Anthropic(ref c) => c.results(job),
            #[cfg(feature = "gemini")]
            BatchClient::Gemini(ref c) => c.results(job, order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_round_trip_their_names_and_state_their_limits() {
        for p in [
            BatchProvider::OpenAi,
            BatchProvider::Anthropic,
            BatchProvider::Gemini,
        ] {
            assert_eq!(BatchProvider::from_name(p.name()), Some(p));
        }
        assert_eq!(BatchProvider::from_name("deepseek"), None);
        assert_eq!(BatchProvider::OpenAi.limits().max_requests, 50_000);
        assert_eq!(BatchProvider::Anthropic.limits().max_requests, 100_000);
        assert!(BatchProvider::Anthropic.limits().max_bytes < 256_000_000);
    }
}
