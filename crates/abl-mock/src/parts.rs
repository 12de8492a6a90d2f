//! Content parts as each provider takes them: images, documents and audio
//! in a message, checked the way the provider checks them (the shape of
//! its format, base64 that decodes, a declared type that matches the
//! bytes) and described in the reply, so a test can prove which bytes
//! arrived by their SHA-256.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::format::Format;

/// Input tokens the mock charges for each part.
pub const PART_TOKENS: u64 = 100;

/// One part that reached the mock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSeen {
    /// `image`, `document`, `audio` or `file`.
    pub kind: &'static str,
    /// The media type stated (or, for OpenAI images and files, the one in
    /// the data URL).
    pub media_type: String,
    /// Where it came from.
    pub source: PartSource,
}

/// How a part's bytes arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartSource {
    /// Inline: the decoded bytes' SHA-256 (hex) and size.
    Inline {
        /// SHA-256 of the decoded bytes, 64 hex digits.
        sha256: String,
        /// Decoded size.
        bytes: u64,
    },
    /// A URL for the provider to fetch (the mock fetches nothing).
    Url(String),
}

impl PartSeen {
    /// How the reply describes it: `image/png sha256:<hex>`, or
    /// `application/pdf url:<url>` (`url:<url>` when no type was stated).
    pub fn describe(&self) -> String {
        match &self.source {
            PartSource::Inline { sha256, .. } => format!("{} sha256:{sha256}", self.media_type),
            PartSource::Url(u) if self.media_type.is_empty() => format!("url:{u}"),
            PartSource::Url(u) => format!("{} url:{u}", self.media_type),
        }
    }
}

/// The line the mock adds to a text reply for the parts of a request:
/// `[parts: <describe>; <describe>]`.
pub fn parts_line(parts: &[PartSeen]) -> String {
    let d: Vec<String> = parts.iter().map(PartSeen::describe).collect();
    format!("[parts: {}]", d.join("; "))
}

/// SHA-256 of `bytes` as hex, as the reply line shows it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The media type bytes start with, for the types providers take.
fn sniff(b: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xFF\xD8\xFF", "image/jpeg"),
        (b"GIF8", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"ID3", "audio/mpeg"),
        (b"fLaC", "audio/flac"),
        (b"OggS", "audio/ogg"),
    ];
    if b.len() >= 12 && &b[..4] == b"RIFF" {
        return match &b[8..12] {
            b"WEBP" => Some("image/webp"),
            b"WAVE" => Some("audio/wav"),
            _ => None,
        };
    }
    MAGIC
        .iter()
        .find(|(m, _)| b.starts_with(m))
        .map(|(_, t)| *t)
}

fn kind_of(media_type: &str) -> &'static str {
    match media_type.split('/').next() {
        Some("image") => "image",
        Some("audio") => "audio",
        _ if media_type == "application/pdf" => "document",
        _ => "file",
    }
}

/// The canonical name of a media type some clients spell otherwise.
fn canonical(t: &str) -> &str {
    match t {
        "audio/mp3" => "audio/mpeg",
        "audio/x-wav" | "audio/wave" => "audio/wav",
        "image/jpg" => "image/jpeg",
        other => other,
    }
}

/// Decodes base64 and checks the bytes are what `media_type` says.
fn inline(media_type: &str, data: &str, what: &str) -> Result<PartSeen, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("{what}: the data is not valid base64: {e}"))?;
    let found = sniff(&bytes);
    if let Some(f) = found
        && f != canonical(media_type)
    {
        return Err(format!(
            "{what}: the data does not match the provided media type {media_type} (it is {f})"
        ));
    }
    if found.is_none() && matches!(kind_of(media_type), "image" | "document") {
        return Err(format!("{what}: the data is not a valid {media_type}"));
    }
    Ok(PartSeen {
        kind: kind_of(media_type),
        media_type: media_type.to_owned(),
        source: PartSource::Inline {
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
        },
    })
}

/// A `data:TYPE;base64,DATA` URL, or a URL.
fn url_or_data(u: &str, kind: &'static str, what: &str) -> Result<PartSeen, String> {
    if let Some(rest) = u.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or(format!("{what}: a data URL needs ','"))?;
        let mime = meta
            .strip_suffix(";base64")
            .ok_or(format!("{what}: a data URL must be base64"))?;
        return inline(mime, data, what);
    }
    if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("gs://")) {
        return Err(format!("{what}: '{u}' is not a URL"));
    }
    Ok(PartSeen {
        kind,
        media_type: String::new(),
        source: PartSource::Url(u.to_owned()),
    })
}

fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what}: missing required field '{key}'"))
}

/// The parts of one message's content (or a Gemini content's `parts`) in
/// `format`, refusing what that provider would refuse.
pub fn parts_of(format: Format, content: &Value) -> Result<Vec<PartSeen>, String> {
    let Value::Array(items) = content else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, p) in items.iter().enumerate() {
        let what = format!("content[{i}]");
        let typ = p.get("type").and_then(Value::as_str);
        let seen = match format {
            Format::Responses => responses_part(p, typ, &what)?,
            Format::Chat => chat_part(p, typ, &what)?,
            Format::Anthropic => anthropic_part(p, typ, &what)?,
            Format::Gemini => gemini_part(p, typ, &what)?,
        };
        out.extend(seen);
    }
    Ok(out)
}

fn invalid(what: &str, typ: Option<&str>) -> String {
    format!(
        "{what}: invalid part type '{}' for this API",
        typ.unwrap_or("(none)")
    )
}

fn responses_part(p: &Value, typ: Option<&str>, what: &str) -> Result<Option<PartSeen>, String> {
    Ok(Some(match typ {
        Some("input_text" | "output_text") => return Ok(None),
        Some("input_image") => url_or_data(str_field(p, "image_url", what)?, "image", what)?,
        Some("input_file") => {
            if let Some(u) = p.get("file_url").and_then(Value::as_str) {
                url_or_data(u, "document", what)?
            } else {
                str_field(p, "filename", what)?;
                url_or_data(str_field(p, "file_data", what)?, "document", what)?
            }
        }
        t => return Err(invalid(what, t)),
    }))
}

fn chat_part(p: &Value, typ: Option<&str>, what: &str) -> Result<Option<PartSeen>, String> {
    let field = |k: &str| {
        p.get(k)
            .ok_or(format!("{what}: missing required field '{k}'"))
    };
    Ok(Some(match typ {
        Some("text") => return Ok(None),
        Some("image_url") => {
            url_or_data(str_field(field("image_url")?, "url", what)?, "image", what)?
        }
        Some("file") => {
            let f = field("file")?;
            str_field(f, "filename", what)?;
            let d = str_field(f, "file_data", what)?;
            if !d.starts_with("data:") {
                return Err(format!("{what}: file_data must be a data URL"));
            }
            url_or_data(d, "document", what)?
        }
        Some("input_audio") => {
            let a = field("input_audio")?;
            let mime = match str_field(a, "format", what)? {
                "wav" => "audio/wav",
                "mp3" => "audio/mpeg",
                f => {
                    return Err(format!(
                        "{what}: input_audio.format '{f}' is not wav or mp3"
                    ));
                }
            };
            inline(mime, str_field(a, "data", what)?, what)?
        }
        t => return Err(invalid(what, t)),
    }))
}

fn anthropic_part(p: &Value, typ: Option<&str>, what: &str) -> Result<Option<PartSeen>, String> {
    let t = match typ {
        Some("text") => return Ok(None),
        Some(t @ ("image" | "document")) => t,
        t => return Err(invalid(what, t)),
    };
    let src = p
        .get("source")
        .ok_or(format!("{what}: source: Field required"))?;
    Ok(Some(match str_field(src, "type", what)? {
        "base64" => {
            let mime = str_field(src, "media_type", what)?;
            let allowed: &[&str] = if t == "image" {
                &["image/jpeg", "image/png", "image/gif", "image/webp"]
            } else {
                &["application/pdf"]
            };
            if !allowed.contains(&mime) {
                return Err(format!(
                    "{what}: source.media_type: Input should be {}",
                    allowed.join(", ")
                ));
            }
            inline(mime, str_field(src, "data", what)?, what)?
        }
        "url" => url_or_data(str_field(src, "url", what)?, kind(t), what)?,
        other => {
            return Err(format!(
                "{what}: source.type '{other}' is not base64 or url"
            ));
        }
    }))
}

fn gemini_part(p: &Value, typ: Option<&str>, what: &str) -> Result<Option<PartSeen>, String> {
    if typ.is_some() {
        return Err(invalid(what, typ));
    }
    let either = |v: &'_ Value, a: &str, b: &str| v.get(a).or_else(|| v.get(b)).cloned();
    let mime_of = |d: &Value, key: &str| {
        either(d, "mimeType", "mime_type")
            .and_then(|m| m.as_str().map(str::to_owned))
            .ok_or(format!("{what}: {key} needs mimeType"))
    };
    if p.get("text").is_some() {
        Ok(None)
    } else if let Some(d) = either(p, "inlineData", "inline_data") {
        let mime = mime_of(&d, "inlineData")?;
        Ok(Some(inline(&mime, str_field(&d, "data", what)?, what)?))
    } else if let Some(d) = either(p, "fileData", "file_data") {
        let mime = mime_of(&d, "fileData")?;
        let uri = either(&d, "fileUri", "file_uri")
            .and_then(|u| u.as_str().map(str::to_owned))
            .ok_or(format!("{what}: fileData needs fileUri"))?;
        let mut s = url_or_data(&uri, kind_of(&mime), what)?;
        s.media_type = mime;
        Ok(Some(s))
    } else {
        Err(format!("{what}: a part needs text, inlineData or fileData"))
    }
}

fn kind(t: &str) -> &'static str {
    if t == "image" { "image" } else { "document" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn each_format_reads_its_own_shape_and_refuses_others() {
        let data = b64(PNG);
        let url = format!("data:image/png;base64,{data}");
        let sha = sha256_hex(PNG);
        let cases = [
            (
                Format::Responses,
                json!([{"type": "input_image", "image_url": url}]),
            ),
            (
                Format::Chat,
                json!([{"type": "image_url", "image_url": {"url": url}}]),
            ),
            (
                Format::Anthropic,
                json!([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]),
            ),
            (
                Format::Gemini,
                json!([{"inlineData": {"mimeType": "image/png", "data": data}}]),
            ),
        ];
        for (f, c) in &cases {
            let seen = parts_of(*f, c).unwrap();
            assert_eq!(
                seen[0].describe(),
                format!("image/png sha256:{sha}"),
                "{f:?}"
            );
        }
        // Chat's shape sent to Anthropic is refused, as Anthropic would.
        assert!(
            parts_of(Format::Anthropic, &cases[1].1)
                .unwrap_err()
                .contains("invalid part type 'image_url'")
        );
    }

    #[test]
    fn a_declared_type_must_match_the_bytes() {
        let c = json!([{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(PNG)}}]);
        let e = parts_of(Format::Anthropic, &c).unwrap_err();
        assert!(
            e.contains("does not match the provided media type image/jpeg (it is image/png)"),
            "{e}"
        );
        let bad = json!([{"inlineData": {"mimeType": "image/png", "data": "%%%"}}]);
        assert!(
            parts_of(Format::Gemini, &bad)
                .unwrap_err()
                .contains("not valid base64")
        );
        let no_name =
            json!([{"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0="}]);
        assert!(
            parts_of(Format::Responses, &no_name)
                .unwrap_err()
                .contains("'filename'")
        );
    }
}
