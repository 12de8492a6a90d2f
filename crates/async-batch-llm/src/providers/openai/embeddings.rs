//! OpenAI's embeddings API (`POST /v1/embeddings`), and every compatible
//! server's.

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::OpenAiConfig;
use crate::embed::{EmbeddingModel, Embeddings, PackLimits};
use crate::error::{CallError, Error};
use crate::providers::http::{Endpoint, shape_error};
use crate::providers::wire::u64_at;
use crate::usage::TokenUsage;

/// An OpenAI embeddings model (`text-embedding-3-small`, …).
pub struct OpenAiEmbeddings {
    config: OpenAiConfig,
    dimensions: Option<u32>,
    endpoint: Endpoint,
}

impl std::fmt::Debug for OpenAiEmbeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbeddings")
            .field("config", &self.config)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl OpenAiEmbeddings {
    /// Embeddings of `config.model`, shortened to `dimensions` when given
    /// (the `text-embedding-3` models take it).
    pub fn new(config: OpenAiConfig, dimensions: Option<u32>) -> Result<Self, Error> {
        Ok(Self {
            endpoint: config.endpoint("openai")?,
            config,
            dimensions,
        })
    }

    /// The JSON body for `inputs`.
    pub fn request_body(&self, inputs: &[String]) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "input": inputs,
            "encoding_format": "float",
        });
        if let Some(d) = self.dimensions {
            body["dimensions"] = json!(d);
        }
        body
    }

    /// Reads an embeddings body of a request of `n` inputs: the vectors
    /// in input order (by each item's `index`), and the usage.
    pub fn parse_response(body: &Value, n: usize) -> Result<Embeddings, CallError> {
        let data = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| shape_error("no 'data' array"))?;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
        for (k, d) in data.iter().enumerate() {
            let index = d
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(k);
            let v = d
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| shape_error("an item of 'data' has no 'embedding' array"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| shape_error("an embedding holds something other than numbers"))?;
            match vectors.get_mut(index) {
                Some(slot @ None) => *slot = Some(v),
                Some(Some(_)) => {
                    return Err(shape_error(&format!("two embeddings for input {index}")));
                }
                None => {
                    return Err(shape_error(&format!(
                        "an embedding for input {index} of a request of {n}"
                    )));
                }
            }
        }
        let vectors = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| shape_error(&format!("no embedding for input {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let input = u64_at(body, "/usage/prompt_tokens")
            .or_else(|| u64_at(body, "/usage/total_tokens"))
            .unwrap_or(0);
        Ok(Embeddings {
            vectors,
            usage: TokenUsage::new(input, 0),
        })
    }
}

impl EmbeddingModel for OpenAiEmbeddings {
    fn embed<'a>(&'a self, inputs: &'a [String]) -> BoxFuture<'a, Result<Embeddings, CallError>> {
        Box::pin(async move {
            let body = self.request_body(inputs);
            let reply = self
                .endpoint
                .post_json("embeddings", &body, &[], None)
                .await?;
            Self::parse_response(&reply.body, inputs.len())
                .map_err(|e| e.with_reported_limits(reply.limits))
        })
    }

    fn quota_scope(&self) -> Option<String> {
        Some(self.endpoint.scope().to_owned())
    }

    fn limits(&self) -> PackLimits {
        PackLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_in_input_order_and_gaps_are_errors() {
        let body = json!({
            "data": [
                {"index": 1, "embedding": [0.5, 0.25]},
                {"index": 0, "embedding": [1.0, 0.0]},
            ],
            "usage": {"prompt_tokens": 7, "total_tokens": 7},
        });
        let e = OpenAiEmbeddings::parse_response(&body, 2).unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.5, 0.25]]);
        assert_eq!(e.usage.input, 7);
        assert!(OpenAiEmbeddings::parse_response(&body, 3).is_err());
        assert!(OpenAiEmbeddings::parse_response(&body, 1).is_err());
        let twice =
            json!({"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]});
        assert!(OpenAiEmbeddings::parse_response(&twice, 2).is_err());
        assert!(
            OpenAiEmbeddings::parse_response(
                &json!({"data": [{"index": 0, "embedding": ["x"]}]}),
                1
            )
            .is_err()
        );
        assert!(OpenAiEmbeddings::parse_response(&json!({}), 1).is_err());
    }
}
