//! A JSON body made of the lines of a JSONL file, streamed from disk:
//! `prefix`, the lines joined by commas, `suffix`. Anthropic takes a job
//! as one `{"requests": [...]}` body of up to 256 MB; it is never held in
//! memory.

#![cfg_attr(not(feature = "anthropic"), allow(dead_code))]

use std::path::Path;

use futures::StreamExt as _;

use crate::error::{CallError, ErrorCategory};

/// The error of a job file that cannot be read.
pub(crate) fn unreadable(path: &Path, e: &std::io::Error) -> CallError {
    CallError::new(
        ErrorCategory::LogicError,
        format!("cannot read {}: {e}", path.display()),
    )
    .with_retryable(false)
}

/// The body and its exact length (a stream of chunks: wrap it with
/// `reqwest::Body::wrap_stream`). Every line of the file ends with a
/// newline (the last one may not); each newline but the last becomes a
/// comma.
pub(crate) async fn json_array(
    path: &Path,
    prefix: String,
    suffix: String,
) -> Result<
    (
        impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
        u64,
    ),
    CallError,
> {
    let len = tokio::fs::metadata(path)
        .await
        .map_err(|e| unreadable(path, &e))?
        .len();
    let ends_with_newline = len > 0 && last_byte(path).await? == Some(b'\n');
    let content = if ends_with_newline { len - 1 } else { len };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| unreadable(path, &e))?;
    let total = prefix.len() as u64 + content + suffix.len() as u64;
    let mut seen = 0u64;
    let lines = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
        chunk.map(|c| {
            let keep = usize::try_from(content.saturating_sub(seen)).unwrap_or(usize::MAX);
            seen += c.len() as u64;
            let mut out = c[..c.len().min(keep)].to_vec();
            for b in &mut out {
                if *b == b'\n' {
                    *b = b',';
                }
            }
            bytes::Bytes::from(out)
        })
    });
    let stream = futures::stream::once(async move { Ok(bytes::Bytes::from(prefix)) })
        .chain(lines)
        .chain(futures::stream::once(async move {
            Ok(bytes::Bytes::from(suffix))
        }));
    Ok((stream, total))
}

async fn last_byte(path: &Path) -> Result<Option<u8>, CallError> {
    use std::io::{Read as _, Seek as _};
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p)?;
        f.seek(std::io::SeekFrom::End(-1))?;
        let mut b = [0u8; 1];
        f.read_exact(&mut b)?;
        Ok::<_, std::io::Error>(Some(b[0]))
    })
    .await
    .map_err(|e| CallError::new(ErrorCategory::LogicError, e.to_string()))?
    .map_err(|e| unreadable(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: impl futures::Stream<Item = std::io::Result<bytes::Bytes>>) -> Vec<u8> {
        let chunks: Vec<_> = body.collect().await;
        chunks
            .into_iter()
            .flat_map(|c| c.expect("a chunk").to_vec())
            .collect()
    }

    #[tokio::test]
    async fn lines_become_one_json_array_of_the_stated_length() {
        let dir = tempfile::tempdir().expect("a temp dir");
        for (text, want) in [
            (
                "{\"a\":1}\n{\"b\":\"x\\ny\"}\n",
                r#"{"r":[{"a":1},{"b":"x\ny"}]}"#,
            ),
            ("{\"a\":1}\n{\"b\":2}", r#"{"r":[{"a":1},{"b":2}]}"#),
            ("{\"a\":1}\n", r#"{"r":[{"a":1}]}"#),
        ] {
            let p = dir.path().join("j.jsonl");
            std::fs::write(&p, text).expect("written");
            let (body, len) = json_array(&p, "{\"r\":[".into(), "]}".into())
                .await
                .expect("a body");
            let bytes = collect(body).await;
            assert_eq!(String::from_utf8_lossy(&bytes), want);
            assert_eq!(len, bytes.len() as u64);
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("valid JSON");
        }
    }
}
