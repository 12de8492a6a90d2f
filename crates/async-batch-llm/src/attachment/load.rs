//! Files into request bodies, without holding them twice.
//!
//! A body builder never sees a file's bytes: [`stage`] stands a short
//! marker in for each file part, the builder renders the marker where the
//! base64 goes (inside a data URL or a `data` field alike), and
//! [`Staged::body`] serializes the body into one buffer of the exact final
//! size, encoding each file into it straight from disk in chunks. A
//! request with a 200 KB image thus costs one 267 KB allocation, freed
//! when the request is sent, however many layers built it; the heap does
//! not creep over a 300,000-file run the way it does when every call
//! allocates and frees a file, its base64 and two copies of the body.

use std::borrow::Cow;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use serde_json::Value;

use super::{Attachment, Source};
use crate::error::{CallError, ErrorCategory};
use crate::item::Prompt;
use crate::model::LlmRequest;

/// A request whose file parts are markers, and the files they stand for.
pub(crate) struct Staged<'r> {
    /// The request to build the body from.
    pub(crate) request: Cow<'r, LlmRequest>,
    /// `(marker as it appears in serialized JSON, file, its place)`.
    files: Vec<(String, PathBuf, String)>,
}

/// Tells the markers of one request from any other text: a control
/// character no prompt carries, a per-request number, and the part's index.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Stands a marker in for every file attachment of `req` (borrowed
/// untouched when it has none). Reads nothing.
pub(crate) fn stage(req: &LlmRequest) -> Staged<'_> {
    let has_files = req
        .prompt
        .iter()
        .flat_map(Prompt::attachments)
        .any(|a| matches!(a.source(), Source::Path(_)));
    if !has_files {
        return Staged {
            request: Cow::Borrowed(req),
            files: Vec::new(),
        };
    }
    let nonce = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut staged = req.clone();
    let mut files = Vec::new();
    if let Some(Prompt::Messages(messages)) = &mut staged.prompt {
        for (i, m) in messages.iter_mut().enumerate() {
            for (j, a) in m.attachments.iter_mut().enumerate() {
                if let Source::Path(p) = a.source() {
                    let k = files.len();
                    let marker = format!("\u{1}abl-{nonce}-{k}\u{1}");
                    // serde_json writes U+0001 as \u0001.
                    let in_json = marker.replace('\u{1}', "\\u0001");
                    files.push((
                        in_json,
                        p.clone(),
                        format!("message {}, attachment {}", i + 1, j + 1),
                    ));
                    *a = marker_copy(a, marker);
                }
            }
        }
    }
    Staged {
        request: Cow::Owned(staged),
        files,
    }
}

/// The same part with a marker for its bytes: its media type, name and
/// probe facts are kept.
fn marker_copy(a: &Attachment, marker: String) -> Attachment {
    let mut b = Attachment::base64(marker);
    b.media_type = a.media_type();
    b.name = Some(a.file_name());
    b.share_facts(a);
    b
}

impl Staged<'_> {
    /// `body` serialized, each marker replaced by its file's base64, read
    /// on the blocking pool into one buffer of the final size.
    pub(crate) async fn body(&self, body: &Value) -> Result<Vec<u8>, CallError> {
        let json = serde_json::to_vec(body).map_err(|e| {
            CallError::new(
                ErrorCategory::LogicError,
                format!("the request body cannot be serialized: {e}"),
            )
        })?;
        if self.files.is_empty() {
            return Ok(json);
        }
        let refuse =
            |e: String| CallError::new(ErrorCategory::ClientError, e).with_retryable(false);
        let files = self.files.clone();
        let (json, files, size) = super::blocking_io(move || {
            let size = final_size(&json, &files)?;
            Ok((json, files, size))
        })
        .await
        .map_err(refuse)?;
        // Allocated here, on the caller's thread, so that the buffers of
        // every call come from the few arenas of the async threads (which
        // also free them) rather than from the blocking pool's.
        let out = Vec::with_capacity(size);
        super::blocking_io(move || splice(&json, &files, out))
            .await
            .map_err(refuse)
    }
}

/// Bytes of `n` bytes as padded base64.
fn encoded_len(n: u64) -> u64 {
    n.div_ceil(3).saturating_mul(4)
}

/// The size of the body once every marker is replaced by its file.
fn final_size(json: &[u8], files: &[(String, PathBuf, String)]) -> Result<usize, String> {
    let mut total = json.len() as u64;
    for (marker, path, place) in files {
        let meta =
            std::fs::metadata(path).map_err(|e| format!("{place}: cannot read the file: {e}"))?;
        let times = count(json, marker.as_bytes()) as u64;
        total = total
            .saturating_sub(times * marker.len() as u64)
            .saturating_add(times.saturating_mul(encoded_len(meta.len())));
    }
    Ok(usize::try_from(total).unwrap_or(0))
}

fn splice(
    json: &[u8],
    files: &[(String, PathBuf, String)],
    mut out: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut rest = json;
    while let Some((at, k, len)) = next_marker(rest, files) {
        out.extend_from_slice(&rest[..at]);
        let (_, path, place) = &files[k];
        encode_file(path, &mut out).map_err(|e| format!("{place}: cannot read the file: {e}"))?;
        rest = &rest[at + len..];
    }
    out.extend_from_slice(rest);
    Ok(out)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The first marker in `hay`: its offset, which file, its length.
fn next_marker(hay: &[u8], files: &[(String, PathBuf, String)]) -> Option<(usize, usize, usize)> {
    files
        .iter()
        .enumerate()
        .filter_map(|(k, (m, _, _))| {
            hay.windows(m.len())
                .position(|w| w == m.as_bytes())
                .map(|at| (at, k, m.len()))
        })
        .min_by_key(|(at, _, _)| *at)
}

/// Appends the base64 of the file at `path`, read in chunks through a
/// buffer each blocking thread keeps.
fn encode_file(path: &std::path::Path, out: &mut Vec<u8>) -> std::io::Result<()> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHUNK]);
    }
    let mut f = std::fs::File::open(path)?;
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => encode_from(&mut f, &mut buf, out),
        Err(_) => encode_from(&mut f, &mut vec![0u8; CHUNK], out),
    })
}

/// A multiple of 3, so only the last chunk is padded.
const CHUNK: usize = 3 * 16 * 1024;

fn encode_from(f: &mut std::fs::File, buf: &mut [u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let mut filled = 0;
        while filled < CHUNK {
            match f.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        let at = out.len();
        out.resize(at + base64::encoded_len(filled, true).unwrap_or(0), 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&buf[..filled], &mut out[at..])
            .map_err(std::io::Error::other)?;
        out.truncate(at + written);
        if filled < CHUNK {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Message, Role};
    use serde_json::json;

    #[tokio::test]
    async fn files_are_encoded_into_the_body_where_their_markers_stand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.pdf");
        // Not a multiple of the chunk, so the last chunk is padded.
        let bytes: Vec<u8> = (0..200_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let msg = Message::new(Role::User, "read")
            .with_attachment(Attachment::path(&path))
            .with_attachment(Attachment::url("https://x.test/b.png"));
        let req = LlmRequest::new(Prompt::Messages(vec![msg]));
        let staged = stage(&req);
        let parts: Vec<&Attachment> = staged
            .request
            .prompt
            .as_ref()
            .unwrap()
            .attachments()
            .collect();
        assert_eq!(parts[0].file_name(), "scan.pdf");
        assert_eq!(parts[0].media_type(), Some(super::super::MediaType::Pdf));
        assert_eq!(
            parts[1].source(),
            &Source::Url("https://x.test/b.png".into())
        );
        // A builder may put the marker inside a longer string (a data URL).
        let marker = parts[0].inline().unwrap().to_owned();
        let body = json!({"a": format!("data:application/pdf;base64,{marker}"), "b": marker, "c": "\u{1}"});
        let out = staged.body(&body).await.unwrap();
        assert_eq!(out.len(), out.capacity(), "one buffer of the exact size");
        let v: Value = serde_json::from_slice(&out).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(v["a"], format!("data:application/pdf;base64,{b64}"));
        assert_eq!(v["b"], b64);
        assert_eq!(v["c"], "\u{1}");
        // A request without files is borrowed and serialized as is.
        let text = LlmRequest::new("plain");
        let s = stage(&text);
        assert!(matches!(s.request, Cow::Borrowed(_)));
        assert_eq!(s.body(&json!({"x": 1})).await.unwrap(), br#"{"x":1}"#);
        // A file gone by the time of the call is the item's error.
        std::fs::remove_file(&path).unwrap();
        let e = staged.body(&body).await.unwrap_err();
        assert!(
            e.message()
                .starts_with("message 1, attachment 1: cannot read the file"),
            "{}",
            e.message()
        );
        assert!(!e.is_retryable());
    }
}
