//! The probe: one pass over an attachment's bytes, streamed, that learns
//! what the checks, the token estimate and the fingerprint need (size,
//! media type, pixels, pages, seconds, SHA-256) without keeping the bytes.

use std::io::Read as _;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::media::MediaType;
use super::sniff::{self, PdfPages};
use super::{Attachment, Source};
use crate::item::Prompt;

/// What the probe learned about an attachment's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// Size of the bytes (decoded, for inline data).
    pub bytes: u64,
    /// SHA-256 of the bytes, 64 hex digits.
    pub sha256: String,
    /// The media type the bytes start with, if a known one.
    pub media_type: Option<MediaType>,
    /// Width and height of an image.
    pub pixels: Option<(u32, u32)>,
    /// Pages of a PDF, when its page tree says.
    pub pages: Option<u32>,
    /// Seconds of a WAV clip.
    pub seconds: Option<f64>,
}

/// Why an attachment's bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(String);

/// Bytes kept to sniff the type and read an image header: a JPEG keeps
/// its frame header after its EXIF block (at most 64 KB); one whose size
/// is further in counts as an image of unknown size.
const HEAD: usize = 96 << 10;
const CHUNK: usize = 64 << 10;

/// Reads the bytes in chunks, keeping only the head.
struct Pass {
    hash: Sha256,
    head: Vec<u8>,
    len: u64,
    pdf: PdfPages,
}

impl Pass {
    fn new(size_hint: u64) -> Self {
        Self {
            hash: Sha256::new(),
            head: Vec::with_capacity(usize::try_from(size_hint).unwrap_or(HEAD).min(HEAD)),
            len: 0,
            pdf: PdfPages::default(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
        if self.head.len() < HEAD {
            let take = chunk.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        // Only a PDF is scanned for pages (known from its first bytes).
        if self.head.starts_with(b"%PDF-") {
            self.pdf.feed(chunk);
        }
        self.len += chunk.len() as u64;
    }

    fn finish(self) -> Facts {
        let media_type = sniff::media_type(&self.head);
        let pixels = media_type
            .as_ref()
            .and_then(|m| sniff::pixels(m, &self.head));
        let seconds = match media_type {
            Some(MediaType::Wav) => sniff::wav_seconds(&self.head, self.len),
            _ => None,
        };
        let pages = if media_type == Some(MediaType::Pdf) {
            self.pdf.finish()
        } else {
            None
        };
        Facts {
            bytes: self.len,
            sha256: crate::fingerprint::hex_of(&self.hash.finalize()),
            media_type,
            pixels,
            pages,
            seconds,
        }
    }
}

fn probe_path(path: &std::path::Path) -> Result<Facts, ProbeError> {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; CHUNK]);
    }
    let mut f =
        std::fs::File::open(path).map_err(|e| ProbeError(format!("cannot open the file: {e}")))?;
    let len = f.metadata().map_or(HEAD as u64, |m| m.len());
    let mut pass = Pass::new(len);
    let mut read_all = |buf: &mut [u8]| loop {
        match f.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => pass.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProbeError(format!("cannot read the file: {e}"))),
        }
    };
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => read_all(&mut buf),
        Err(_) => read_all(&mut vec![0u8; CHUNK]),
    })?;
    Ok(pass.finish())
}

fn probe_base64(data: &str) -> Result<Facts, ProbeError> {
    let mut pass = Pass::new(data.len() as u64);
    // Decoded a piece at a time (4 characters make 3 bytes), so a large
    // inline part is never held twice.
    let data = data.trim_end();
    let mut rest = data.as_bytes();
    let mut out = Vec::with_capacity(CHUNK);
    while !rest.is_empty() {
        let take = rest.len().min(CHUNK / 3 * 4);
        out.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(&rest[..take], &mut out)
            .map_err(|e| ProbeError(format!("inline data is not valid base64: {e}")))?;
        pass.feed(&out);
        rest = &rest[take..];
    }
    Ok(pass.finish())
}

impl Attachment {
    /// Probes the bytes once (later calls return what the first learned).
    /// Reads the file: call it off the async threads. URLs have no facts.
    pub fn probe(&self) -> Result<Option<&Facts>, ProbeError> {
        let r = match &self.source {
            Source::Url(_) => return Ok(None),
            Source::Path(p) => self.facts.get_or_init(|| probe_path(p)),
            Source::Base64(b) => self.facts.get_or_init(|| probe_base64(b)),
        };
        r.as_ref().map(Some).map_err(Clone::clone)
    }

    /// What a fingerprint knows the part by: the SHA-256 of its bytes (read
    /// now if the probe has not run), or its URL; never the bytes.
    pub(crate) fn fingerprint_form(&self) -> serde_json::Value {
        let bytes = match self.probe() {
            Ok(Some(f)) => serde_json::Value::String(f.sha256.clone()),
            Ok(None) => serde_json::Value::Null,
            // Unreadable now: the item fails at its call; once the file is
            // there the fingerprint differs and the item runs again.
            Err(_) => serde_json::Value::String("unreadable".into()),
        };
        let url = match &self.source {
            Source::Url(u) => serde_json::Value::String(u.clone()),
            _ => serde_json::Value::Null,
        };
        serde_json::json!({
            "sha256": bytes,
            "url": url,
            "media_type": self.media_type.as_ref().map(MediaType::as_str),
            "name": self.name,
        })
    }

    /// Whether the probe still has to run.
    fn needs_probe(&self) -> bool {
        !matches!(self.source, Source::Url(_)) && self.facts.get().is_none()
    }

    /// Carries what a probe of `other` learned (the same bytes, loaded).
    #[cfg(any(feature = "openai", feature = "gemini", feature = "anthropic"))]
    pub(crate) fn share_facts(&mut self, other: &Attachment) {
        self.facts = std::sync::Arc::clone(&other.facts);
    }
}

/// Probes every attachment of `prompt` on the blocking pool (files are
/// read there, not on the async threads). The first one that cannot be
/// read is the error, with its place in the prompt.
pub(crate) async fn probe_all(prompt: &Prompt) -> Result<(), String> {
    let pending: Vec<(String, Attachment)> = prompt
        .attachments_placed()
        .filter(|(_, a)| a.needs_probe())
        .map(|(place, a)| (place, a.clone()))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    super::blocking_io(move || {
        for (place, a) in &pending {
            a.probe()
                .map_err(|e| format!("{place} ({}): {e}", a.describe()))?;
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_and_its_base64_have_the_same_facts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x02\x80\0\0\x01\xe0".to_vec();
        png.resize(300_000, 7);
        std::fs::write(&path, &png).unwrap();
        let from_file = Attachment::path(&path);
        let facts = from_file.probe().unwrap().unwrap().clone();
        assert_eq!(facts.bytes, 300_000);
        assert_eq!(facts.media_type, Some(MediaType::Png));
        assert_eq!(facts.pixels, Some((640, 480)));
        assert_eq!(
            facts.sha256,
            crate::fingerprint::hex_of(&Sha256::digest(&png))
        );
        let inline = Attachment::bytes(&png);
        assert_eq!(inline.probe().unwrap(), Some(&facts));
        // Learned once: a clone shares it, and the file is not read again.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.clone().probe().unwrap(), Some(&facts));
    }

    #[test]
    fn unreadable_parts_say_what_and_where() {
        let missing = Attachment::path("/nonexistent/scan.pdf");
        let e = missing.probe().unwrap_err().to_string();
        assert!(e.starts_with("cannot open the file: "), "{e}");
        let bad = Attachment::base64("not base64!");
        assert!(
            bad.probe()
                .unwrap_err()
                .to_string()
                .contains("not valid base64")
        );
        assert_eq!(Attachment::url("https://x.test/a.png").probe(), Ok(None));
    }
}
