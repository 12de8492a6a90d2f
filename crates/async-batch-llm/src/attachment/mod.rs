//! Attachments: images, PDF documents and audio sent with a message.
//!
//! An [`Attachment`] names where its bytes are — a local path, a URL the
//! provider fetches, or inline base64 — and, optionally, its media type
//! (sniffed from the bytes when not given). Three rules keep a
//! 300,000-file job flat in memory and honest in its checkpoint:
//!
//! - **Bytes are read when the item's call is made**, not when the input
//!   is read: an item holds a path until a provider builds its request,
//!   and the encoded bytes live only as long as that request.
//! - **Before the first call** each attachment is probed once (size, media
//!   type, image dimensions, PDF pages, SHA-256) and checked against what
//!   the provider takes: a part it cannot take, or one over its size
//!   limits, fails the item as `client_error` without a call.
//! - **Fingerprints hash the bytes, never carry them**: a checkpoint knows
//!   an item by the SHA-256 of each attachment, so a changed image reruns
//!   the item and the checkpoint never holds image data.
//!
//! Each provider sends parts in its own format (OpenAI `input_image` /
//! `input_file` or `image_url` / `file`, Gemini `inline_data` /
//! `file_data`, Anthropic `image` / `document` blocks), and estimates
//! their tokens for TPM admission the way it documents them
//! ([`PartTokens`]).
//!
//! ```
//! use async_batch_llm::{Attachment, Item, Message, MediaType, Prompt, Role};
//!
//! let msg = Message::new(Role::User, "What is the total of this invoice?")
//!     .with_attachment(Attachment::path("invoices/0001.pdf"))
//!     .with_attachment(Attachment::url("https://example.com/logo.png"))
//!     .with_attachment(Attachment::bytes(b"GIF89a\x01\x00\x01\x00").with_media_type(MediaType::Gif));
//! let item = Item::new("0001", Prompt::Messages(vec![msg]));
//! assert_eq!(item.prompt.attachments().count(), 3);
//! ```

mod content_json;
#[cfg(any(feature = "openai", feature = "gemini", feature = "anthropic"))]
mod load;
mod media;
mod policy;
mod probe;
mod sniff;
mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;

pub use content_json::{ContentError, parse_content};
#[cfg(any(feature = "openai", feature = "gemini", feature = "anthropic"))]
pub(crate) use load::{Staged, stage};
pub use media::{MediaType, PartKind};
pub use policy::PartPolicy;
pub(crate) use probe::probe_all;
pub use probe::{Facts, ProbeError};
pub use tokens::PartTokens;

/// Where an attachment's bytes are.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A local file, read when the call is made.
    Path(PathBuf),
    /// A URL the provider fetches itself (`http(s)://`, `gs://`, a Files
    /// API URI).
    Url(String),
    /// The bytes as standard base64, held in memory (shared, not copied,
    /// between clones).
    Base64(Arc<str>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Source::Url(u) => f.debug_tuple("Url").field(u).finish(),
            // Never megabytes of base64 in a log line.
            Source::Base64(b) => write!(f, "Base64({} chars)", b.len()),
        }
    }
}

/// One image, document or audio clip of a message.
#[derive(Clone)]
pub struct Attachment {
    source: Source,
    media_type: Option<MediaType>,
    name: Option<String>,
    /// Filled once by the probe (or the first load) and shared by clones,
    /// so retries and the fingerprint do not read the file again.
    facts: Arc<OnceLock<Result<Facts, ProbeError>>>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("source", &self.source)
            .field("media_type", &self.media_type)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Two attachments are equal when they name the same bytes the same way
/// (what was learned about them does not count).
impl PartialEq for Attachment {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.media_type == other.media_type
            && self.name == other.name
    }
}

impl Eq for Attachment {}

impl Attachment {
    fn with_source(source: Source) -> Self {
        Self {
            source,
            media_type: None,
            name: None,
            facts: Arc::default(),
        }
    }

    /// A local file, read when the call is made.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Self::with_source(Source::Path(path.into()))
    }

    /// A URL the provider fetches.
    pub fn url(url: impl Into<String>) -> Self {
        Self::with_source(Source::Url(url.into()))
    }

    /// Inline bytes given as standard base64 (not checked until the probe).
    pub fn base64(data: impl Into<Arc<str>>) -> Self {
        Self::with_source(Source::Base64(data.into()))
    }

    /// Inline bytes (encoded to base64 now).
    pub fn bytes(data: &[u8]) -> Self {
        Self::base64(base64::engine::general_purpose::STANDARD.encode(data))
    }

    /// A `data:` URL (`data:image/png;base64,...`), a URL, or a path: what
    /// users write in a content part's `url` field. Relative paths are
    /// taken relative to `base`.
    pub fn from_reference(reference: &str, base: Option<&std::path::Path>) -> Result<Self, String> {
        if let Some(rest) = reference.strip_prefix("data:") {
            let (meta, data) = rest
                .split_once(',')
                .ok_or("a data: URL needs a ',' before its data")?;
            let Some(mime) = meta.strip_suffix(";base64") else {
                return Err("a data: URL must be base64 (data:TYPE;base64,...)".into());
            };
            let mut a = Self::base64(data);
            if !mime.is_empty() {
                a.media_type = Some(MediaType::parse(mime));
            }
            return Ok(a);
        }
        if is_url(reference) {
            return Ok(Self::url(reference));
        }
        if reference.is_empty() {
            return Err("an empty path".into());
        }
        let path = std::path::Path::new(reference);
        Ok(Self::path(match base {
            Some(b) if path.is_relative() => b.join(path),
            _ => path.to_path_buf(),
        }))
    }

    /// Sets the media type (otherwise sniffed from the bytes, or guessed
    /// from a URL's extension).
    #[must_use]
    pub fn with_media_type(mut self, media_type: MediaType) -> Self {
        self.media_type = Some(media_type);
        self
    }

    /// Sets the file name some providers show the model (OpenAI files);
    /// by default the path's or URL's last segment.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the bytes are.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The media type given, or found by the probe, or guessed from the
    /// path's or URL's extension.
    pub fn media_type(&self) -> Option<MediaType> {
        self.media_type
            .clone()
            .or_else(|| self.facts().and_then(|f| f.media_type.clone()))
            .or_else(|| match &self.source {
                Source::Path(p) => p
                    .extension()
                    .and_then(|e| e.to_str())
                    .and_then(MediaType::from_extension),
                Source::Url(u) => url_extension(u).and_then(MediaType::from_extension),
                Source::Base64(_) => None,
            })
    }

    /// The file name: the one set, or the last segment of the path or URL.
    pub fn file_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let fallback = || {
            let ext = self
                .media_type()
                .map_or("bin", |m| m.extension().unwrap_or("bin"));
            format!("attachment.{ext}")
        };
        match &self.source {
            Source::Path(p) => p
                .file_name()
                .and_then(|n| n.to_str())
                .map_or_else(fallback, str::to_owned),
            Source::Url(u) => u
                .split(['?', '#'])
                .next()
                .and_then(|s| s.rsplit('/').next())
                .filter(|s| !s.is_empty())
                .map_or_else(fallback, str::to_owned),
            Source::Base64(_) => fallback(),
        }
    }

    /// What the probe learned, once it ran and succeeded.
    pub fn facts(&self) -> Option<&Facts> {
        self.facts.get().and_then(|r| r.as_ref().ok())
    }

    /// The kind of part (image, document, audio), by media type.
    pub fn kind(&self) -> Option<PartKind> {
        self.media_type().map(|m| m.kind())
    }

    /// A short name for messages: the path, the URL, or "inline data".
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Path(p) => p.display().to_string(),
            Source::Url(u) => u.clone(),
            Source::Base64(b) => format!("inline data, {} base64 characters", b.len()),
        }
    }

    /// The inline base64, once loaded (or given inline).
    #[cfg(any(test, feature = "openai"))]
    pub(crate) fn inline(&self) -> Option<&str> {
        match &self.source {
            Source::Base64(b) => Some(b),
            _ => None,
        }
    }

    /// A `data:` URL of the inline bytes.
    #[cfg(feature = "openai")]
    pub(crate) fn data_url(&self) -> Option<String> {
        let b = self.inline()?;
        let mime = self.media_type().map_or_else(
            || "application/octet-stream".to_owned(),
            |m| m.as_str().to_owned(),
        );
        Some(format!("data:{mime};base64,{b}"))
    }
}

/// Reads of attachment files at once, process-wide. Reads run on the
/// blocking pool; a few at a time keep the disk busy, and keep the threads
/// that allocate file-sized buffers few, so freed buffers are reused
/// instead of being stranded in one malloc arena per thread (with 64 calls
/// in flight, unbounded reads made 60 threads and the heap crept from
/// 36 to 95 MiB over 100,000 images).
const IO_AT_ONCE: usize = 4;

/// Runs `f` on the blocking pool, at most [`IO_AT_ONCE`] at a time.
pub(crate) async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    static IO: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(IO_AT_ONCE);
    let _permit = IO
        .acquire()
        .await
        .map_err(|e| format!("attachment reads stopped: {e}"))?;
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("reading the file failed: {e}")))
}

fn is_url(s: &str) -> bool {
    ["http://", "https://", "gs://"]
        .iter()
        .any(|p| s.len() > p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

fn url_extension(u: &str) -> Option<&str> {
    let path = u.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    last.rsplit_once('.').map(|(_, e)| e)
}

/// How an attachment is written in JSON: exactly one of `path`, `url` and
/// `data` (base64), with optional `media_type` and `name`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl serde::Serialize for Attachment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut j = AttachmentJson {
            path: None,
            url: None,
            data: None,
            media_type: self.media_type.as_ref().map(|m| m.as_str().to_owned()),
            name: self.name.clone(),
        };
        match &self.source {
            Source::Path(p) => j.path = Some(p.clone()),
            Source::Url(u) => j.url = Some(u.clone()),
            Source::Base64(b) => j.data = Some(b.to_string()),
        }
        j.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Attachment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = AttachmentJson::deserialize(d)?;
        let source = match (j.path, j.url, j.data) {
            (Some(p), None, None) => Source::Path(p),
            (None, Some(u), None) => Source::Url(u),
            (None, None, Some(b)) => Source::Base64(b.into()),
            _ => {
                return Err(serde::de::Error::custom(
                    "an attachment needs exactly one of 'path', 'url' and 'data'",
                ));
            }
        };
        let mut a = Self::with_source(source);
        a.media_type = j.media_type.as_deref().map(MediaType::parse);
        a.name = j.name;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_data_urls_urls_or_paths_relative_to_the_input() {
        let d = Attachment::from_reference("data:image/png;base64,iVBORw0K", None).unwrap();
        assert_eq!(d.inline(), Some("iVBORw0K"));
        assert_eq!(d.media_type(), Some(MediaType::Png));
        let u = Attachment::from_reference("HTTPS://x.test/a/scan.PDF?sig=1", None).unwrap();
        assert_eq!(
            u.source(),
            &Source::Url("HTTPS://x.test/a/scan.PDF?sig=1".into())
        );
        assert_eq!(u.media_type(), Some(MediaType::Pdf));
        assert_eq!(u.file_name(), "scan.PDF");
        let p =
            Attachment::from_reference("img/a.jpg", Some(std::path::Path::new("/data"))).unwrap();
        assert_eq!(p.source(), &Source::Path("/data/img/a.jpg".into()));
        assert_eq!(p.media_type(), Some(MediaType::Jpeg));
        let abs =
            Attachment::from_reference("/abs/b.webp", Some(std::path::Path::new("/data"))).unwrap();
        assert_eq!(abs.source(), &Source::Path("/abs/b.webp".into()));
        assert!(Attachment::from_reference("data:image/png,raw", None).is_err());
        assert!(Attachment::from_reference("", None).is_err());
    }

    #[test]
    fn json_form_has_one_source_and_never_facts() {
        let a = Attachment::path("a.png").with_media_type(MediaType::Png);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"path": "a.png", "media_type": "image/png"})
        );
        let back: Attachment = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
        let both = serde_json::json!({"path": "a", "url": "https://x"});
        assert!(serde_json::from_value::<Attachment>(both).is_err());
        let none = serde_json::json!({"media_type": "image/png"});
        assert!(serde_json::from_value::<Attachment>(none).is_err());
    }

    #[test]
    fn debug_never_prints_inline_data() {
        let a = Attachment::bytes(&[7u8; 3000]);
        let d = format!("{a:?}");
        assert!(d.contains("Base64(4000 chars)"), "{d}");
        assert!(!d.contains("BwcH"));
    }
}
