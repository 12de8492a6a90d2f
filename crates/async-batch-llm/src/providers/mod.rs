//! Providers over HTTP (reqwest; no provider SDKs) and a factory that
//! builds one from a `"provider:model"` string.
//!
//! | spec | API | key variable | default base URL |
//! |---|---|---|---|
//! | `openai:MODEL` | Responses | `OPENAI_API_KEY` | `https://api.openai.com/v1` |
//! | `openai-chat:MODEL` | Chat Completions | `OPENAI_API_KEY` | `https://api.openai.com/v1` |
//! | `openrouter:MODEL` | Chat Completions | `OPENROUTER_API_KEY` | `https://openrouter.ai/api/v1` |
//! | `deepseek:MODEL` | Chat Completions | `DEEPSEEK_API_KEY` | `https://api.deepseek.com/v1` |
//! | `openai-compatible:MODEL` | Chat Completions | `OPENAI_COMPATIBLE_API_KEY` (optional) | `OPENAI_COMPATIBLE_BASE_URL` (required) |
//! | `gemini:MODEL` | generateContent | `GEMINI_API_KEY`, `GOOGLE_API_KEY` | `https://generativelanguage.googleapis.com` |
//! | `anthropic:MODEL` | Messages | `ANTHROPIC_API_KEY` | `https://api.anthropic.com` |
//!
//! Every provider classifies responses as SPEC.md §4 says, never retries on
//! its own (the engine is the only retry loop), and reports a quota scope of
//! provider, base URL, key fingerprint and model.

//! Each provider family is a cargo feature (`openai`, `gemini`,
//! `anthropic`, all on by default); a spec of a family not built in is a
//! configuration error that names the feature.

#[cfg(feature = "anthropic")]
mod anthropic;
pub(crate) mod factory;
#[cfg(feature = "gemini")]
mod gemini;
pub(crate) mod http;
mod key;
#[cfg(feature = "openai")]
mod openai;
#[cfg(any(feature = "openai", feature = "gemini", feature = "anthropic"))]
pub(crate) mod wire;

#[cfg(feature = "anthropic")]
pub use anthropic::{ANTHROPIC_VERSION, AnthropicConfig, AnthropicModel, OUTPUT_TOOL, PromptCache};
pub use factory::{ModelOptions, ModelSpec, Provider, llm, llm_with};
#[cfg(feature = "gemini")]
pub use gemini::{
    CONTENT_TAG, CacheOptions, CachedContent, GEMINI_MAX_EMBED_INPUTS, GeminiCachedModel,
    GeminiConfig, GeminiEmbeddings, GeminiModel, TAG_PREFIX, content_fingerprint,
};
pub use http::{HttpOptions, parse_body, retry_hint};
pub use key::ApiKey;
#[cfg(feature = "openai")]
pub use openai::{ChatFlavor, ChatModel, OpenAiConfig, OpenAiEmbeddings, OpenAiModel};
