//! Gemini embeddings (`models/{model}:batchEmbedContents`): up to 100
//! texts per request.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::embed::{EmbeddingModel, Embeddings, PackLimits};
use crate::error::{CallError, Error};
use crate::limit::default_scope_name;
use crate::providers::http::{Endpoint, HttpOptions, shape_error};
use crate::providers::key::ApiKey;
use crate::usage::TokenUsage;

/// Most texts in one `batchEmbedContents` request.
pub const GEMINI_MAX_EMBED_INPUTS: usize = 100;

/// A Gemini embeddings model (`gemini-embedding-001`, `text-embedding-004`).
pub struct GeminiEmbeddings {
    model: String,
    dimensions: Option<u32>,
    endpoint: Endpoint,
}

impl std::fmt::Debug for GeminiEmbeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiEmbeddings")
            .field("model", &self.model)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl GeminiEmbeddings {
    /// Embeddings of `model` at `base_url` (without the version,
    /// `https://generativelanguage.googleapis.com`), shortened to
    /// `dimensions` (`outputDimensionality`) when given.
    pub fn new(
        model: &str,
        base_url: &str,
        api_key: &ApiKey,
        dimensions: Option<u32>,
        http: &HttpOptions,
    ) -> Result<Self, Error> {
        let scope = default_scope_name("gemini", base_url, api_key.expose(), model);
        let headers = vec![("x-goog-api-key", api_key.expose().to_owned())];
        Ok(Self {
            model: model.to_owned(),
            dimensions,
            endpoint: Endpoint::new(http, base_url, headers, scope)?,
        })
    }

    /// The JSON body for `inputs`.
    pub fn request_body(&self, inputs: &[String]) -> Value {
        let requests: Vec<Value> = inputs
            .iter()
            .map(|t| {
                let mut r = json!({
                    "model": format!("models/{}", self.model),
                    "content": {"parts": [{"text": t}]},
                });
                if let Some(d) = self.dimensions {
                    r["outputDimensionality"] = json!(d);
                }
                r
            })
            .collect();
        json!({ "requests": requests })
    }

    /// Reads a `batchEmbedContents` body of a request of `n` inputs. Gemini
    /// reports no tokens for embeddings: usage is zero (TPM admission keeps
    /// its estimates).
    pub fn parse_response(body: &Value, n: usize) -> Result<Embeddings, CallError> {
        let list = body
            .get("embeddings")
            .and_then(Value::as_array)
            .ok_or_else(|| shape_error("no 'embeddings' array"))?;
        if list.len() != n {
            return Err(shape_error(&format!(
                "{} embeddings for a request of {n}",
                list.len()
            )));
        }
        let vectors = list
            .iter()
            .map(|e| {
                e.get("values")
                    .and_then(Value::as_array)
                    .and_then(|v| {
                        v.iter()
                            .map(|x| x.as_f64().map(|f| f as f32))
                            .collect::<Option<Vec<f32>>>()
                    })
                    .ok_or_else(|| shape_error("an embedding has no 'values' of numbers"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Embeddings {
            vectors,
            usage: TokenUsage::default(),
        })
    }
}

impl EmbeddingModel for GeminiEmbeddings {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Embeddings, CallError>> {
        Box::pin(async move {
            let path = format!("v1beta/models/{}:batchEmbedContents", self.model);
            let body = self.request_body(inputs);
            let reply = self.endpoint.post_json(&path, &body, &[], None).await?;
            Self::parse_response(&reply.body, inputs.len())
                .map_err(|e| e.with_reported_limits(reply.limits))
        })
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.endpoint.scope().to_owned())
    }

    fn limits(&self) -> PackLimits {
        PackLimits {
            max_inputs: GEMINI_MAX_EMBED_INPUTS,
            ..PackLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_model_per_text_and_replies_must_match_the_request() {
        let m = GeminiEmbeddings::new(
            "gemini-embedding-001",
            "http://localhost",
            &ApiKey::new("k"),
            Some(64),
            &HttpOptions::default(),
        )
        .unwrap();
        let body = m.request_body(&["a".into(), "b".into()]);
        assert_eq!(body["requests"][1]["model"], "models/gemini-embedding-001");
        assert_eq!(body["requests"][1]["content"]["parts"][0]["text"], "b");
        assert_eq!(body["requests"][0]["outputDimensionality"], 64);
        let reply = json!({"embeddings": [{"values": [0.5]}, {"values": [1.0]}]});
        let e = GeminiEmbeddings::parse_response(&reply, 2).unwrap();
        assert_eq!(e.vectors, vec![vec![0.5], vec![1.0]]);
        assert!(GeminiEmbeddings::parse_response(&reply, 3).is_err());
        assert!(
            GeminiEmbeddings::parse_response(&json!({"embeddings": [{"values": ["x"]}]}), 1)
                .is_err()
        );
        assert!(
            format!("{m:?}").contains("gemini-embedding-001")
                && !format!("{m:?}").contains("\"k\"")
        );
    }
}
