//! Message content as users write it in JSONL: a string, or an array of
//! parts in any provider's usual shape — OpenAI Chat (`image_url`, `file`,
//! `input_audio`), OpenAI Responses (`input_text`, `input_image`,
//! `input_file`), Anthropic (`image` / `document` with a `source`), Gemini
//! (`inline_data` / `file_data`, either case) — or simply
//! `{"type": "image", "path": "scans/1.png"}`. Wherever a URL is expected,
//! a local path works too, relative to the input file.

use std::path::Path;

use serde_json::Value;

use super::Attachment;
use super::media::MediaType;

/// A content part that could not be read: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("content[{index}]: {message}")]
pub struct ContentError {
    /// The part's index in the content array.
    pub index: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a message's `content`: its text (text parts joined by blank
/// lines) and its attachments, in order. Relative paths are taken
/// relative to `base`.
pub fn parse_content(
    content: &Value,
    base: Option<&Path>,
) -> Result<(String, Vec<Attachment>), ContentError> {
    let parts = match content {
        Value::String(s) => return Ok((s.clone(), Vec::new())),
        Value::Array(parts) => parts,
        _ => {
            return Err(ContentError {
                index: 0,
                message: "content must be a string or an array of parts".into(),
            });
        }
    };
    let mut texts: Vec<&str> = Vec::new();
    let mut attachments = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let err = |message: String| ContentError { index, message };
        match read_part(part, base).map_err(err)? {
            Part::Text(t) => texts.push(t),
            Part::Attachment(a) => attachments.push(a),
        }
    }
    Ok((texts.join("\n\n"), attachments))
}

enum Part<'a> {
    Text(&'a str),
    Attachment(Attachment),
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str))
}

fn read_part<'a>(part: &'a Value, base: Option<&Path>) -> Result<Part<'a>, String> {
    if let Value::String(s) = part {
        return Ok(Part::Text(s));
    }
    if !part.is_object() {
        return Err("a part must be an object or a string".into());
    }
    let typ = part.get("type").and_then(Value::as_str);
    let reference = |r: &str| Attachment::from_reference(r, base);
    let with_type = |a: Attachment, mime: Option<&str>| match mime {
        Some(m) => a.with_media_type(MediaType::parse(m)),
        None => a,
    };
    // Gemini parts have no type: one key says what they are.
    if let Some(d) = part.get("inline_data").or_else(|| part.get("inlineData")) {
        let data = str_at(d, &["data"]).ok_or("inline_data needs 'data' (base64)")?;
        let mime = str_at(d, &["mime_type", "mimeType"]);
        return Ok(Part::Attachment(with_type(Attachment::base64(data), mime)));
    }
    if let Some(d) = part.get("file_data").or_else(|| part.get("fileData")) {
        let uri = str_at(d, &["file_uri", "fileUri"]).ok_or("file_data needs 'file_uri'")?;
        let mime = str_at(d, &["mime_type", "mimeType"]);
        return Ok(Part::Attachment(with_type(reference(uri)?, mime)));
    }
    let mime = str_at(part, &["media_type", "mime_type", "mimeType"]);
    let named = |a: Attachment| match str_at(part, &["filename", "name"]) {
        Some(n) => a.with_name(n),
        None => a,
    };
    // Our own short form: a type and a path, url or data.
    if let Some(p) = str_at(part, &["path"]) {
        return Ok(Part::Attachment(named(with_type(reference(p)?, mime))));
    }
    match typ {
        None | Some("text" | "input_text") => {
            if let Some(t) = str_at(part, &["text"]) {
                return Ok(Part::Text(t));
            }
            Err(match typ {
                None => {
                    "a part needs a 'type' (text, image, document, audio …) or a Gemini key".into()
                }
                Some(t) => format!("a '{t}' part needs 'text'"),
            })
        }
        // OpenAI Chat: {"type":"image_url","image_url":{"url":...}} or a string.
        Some("image_url") => {
            let url = match part.get("image_url") {
                Some(Value::String(s)) => s.as_str(),
                Some(v) => str_at(v, &["url"]).ok_or("image_url needs 'url'")?,
                None => return Err("an image_url part needs 'image_url'".into()),
            };
            Ok(Part::Attachment(with_type(reference(url)?, mime)))
        }
        // OpenAI Responses: {"type":"input_image","image_url":"..."}.
        Some("input_image") => {
            let url = str_at(part, &["image_url", "url"]).ok_or("input_image needs 'image_url'")?;
            Ok(Part::Attachment(with_type(reference(url)?, mime)))
        }
        // OpenAI Responses input_file, Chat file.
        Some("input_file" | "file") => {
            let f = part.get("file").unwrap_or(part);
            let named_from = |a: Attachment| match str_at(f, &["filename"]) {
                Some(n) => a.with_name(n),
                None => named(a),
            };
            let r = str_at(f, &["file_data", "file_url", "url"])
                .ok_or("a file part needs 'file_data' or 'file_url'")?;
            Ok(Part::Attachment(named_from(with_type(reference(r)?, mime))))
        }
        // OpenAI Chat audio: {"type":"input_audio","input_audio":{"data","format"}}.
        Some("input_audio") => {
            let a = part
                .get("input_audio")
                .ok_or("an input_audio part needs 'input_audio'")?;
            let data = str_at(a, &["data"]).ok_or("input_audio needs 'data' (base64)")?;
            let format = str_at(a, &["format"]).and_then(MediaType::from_extension);
            let att = Attachment::base64(data);
            Ok(Part::Attachment(match format {
                Some(m) => att.with_media_type(m),
                None => att,
            }))
        }
        // Anthropic: {"type":"image"|"document","source":{...}}, or ours
        // with a url/data field.
        Some("image" | "document" | "audio") => {
            let a = sourced(part, base)?;
            Ok(Part::Attachment(named(with_type(a, mime))))
        }
        Some(t) => Err(format!("part type '{t}' is not one this tool reads")),
    }
}

/// An `image` / `document` / `audio` part's bytes: an Anthropic `source`
/// (its `media_type` kept), or a `url` or `data` field.
fn sourced(part: &Value, base: Option<&Path>) -> Result<Attachment, String> {
    let reference = |r: &str| Attachment::from_reference(r, base);
    if let Some(src) = part.get("source") {
        let a = match str_at(src, &["type"]) {
            Some("base64") => {
                Attachment::base64(str_at(src, &["data"]).ok_or("a base64 source needs 'data'")?)
            }
            Some("url") => reference(str_at(src, &["url"]).ok_or("a url source needs 'url'")?)?,
            Some(t) => return Err(format!("source type '{t}' is not one of base64, url")),
            None => return Err("a source needs a 'type' (base64 or url)".into()),
        };
        return Ok(match str_at(src, &["media_type"]) {
            Some(m) => a.with_media_type(MediaType::parse(m)),
            None => a,
        });
    }
    if let Some(u) = str_at(part, &["url"]) {
        reference(u)
    } else if let Some(d) = str_at(part, &["data"]) {
        Ok(Attachment::base64(d))
    } else {
        Err("an attachment part needs 'path', 'url', 'data' or 'source'".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::Source;
    use serde_json::json;

    fn parse(v: &Value) -> (String, Vec<Attachment>) {
        parse_content(v, Some(Path::new("/in"))).unwrap()
    }

    #[test]
    fn every_providers_shape_reads_the_same() {
        let png = "iVBORw0KGgo=";
        let shapes = [
            json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{png}")}}),
            json!({"type": "input_image", "image_url": format!("data:image/png;base64,{png}")}),
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}),
            json!({"inline_data": {"mime_type": "image/png", "data": png}}),
            json!({"inlineData": {"mimeType": "image/png", "data": png}}),
            json!({"type": "image", "data": png, "media_type": "image/png"}),
        ];
        for s in shapes {
            let (text, parts) = parse(&json!([{"type": "text", "text": "what is it?"}, s.clone()]));
            assert_eq!(text, "what is it?");
            assert_eq!(parts.len(), 1, "{s}");
            assert_eq!(parts[0].inline(), Some(png), "{s}");
            assert_eq!(parts[0].media_type(), Some(MediaType::Png), "{s}");
        }
    }

    #[test]
    fn urls_and_paths_and_files() {
        let (_, p) = parse(&json!([
            {"type": "image", "path": "scans/1.png"},
            {"type": "input_file", "file_url": "https://x.test/r.pdf"},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "r.pdf"}},
            {"file_data": {"file_uri": "gs://b/a.wav", "mime_type": "audio/wav"}},
            {"type": "document", "source": {"type": "url", "url": "docs/a.pdf"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        ]));
        assert_eq!(p[0].source(), &Source::Path("/in/scans/1.png".into()));
        assert_eq!(p[1].source(), &Source::Url("https://x.test/r.pdf".into()));
        assert_eq!(p[2].file_name(), "r.pdf");
        assert_eq!(p[3].media_type(), Some(MediaType::Wav));
        assert_eq!(p[4].source(), &Source::Path("/in/docs/a.pdf".into()));
        assert_eq!(p[5].media_type(), Some(MediaType::Wav));
    }

    #[test]
    fn mistakes_name_the_part() {
        let e = parse_content(&json!(["hi", {"type": "image_url"}]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "content[1]: an image_url part needs 'image_url'"
        );
        let e = parse_content(&json!([{"type": "video", "url": "x"}]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "content[0]: part type 'video' is not one this tool reads"
        );
        assert!(parse_content(&json!(7), None).is_err());
        let e = parse_content(
            &json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}]),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("not one of base64, url"));
    }
}
