//! What a provider takes: which kinds of part, from which sources, of
//! which media types, how large. Checked before any call, so a part a
//! provider cannot take fails its item as `client_error` at once instead
//! of costing a request (or, worse, a retry loop).

use super::media::PartKind;
use super::tokens::PartTokens;
use super::{Attachment, Source};
use crate::error::{CallError, ErrorCategory};
use crate::item::Prompt;

const MB: u64 = 1 << 20;

/// One kind of part a provider takes.
#[derive(Debug, Clone, Copy)]
struct Rule {
    kind: PartKind,
    /// The media types of this kind it takes; `None` is any.
    types: Option<&'static [&'static str]>,
    by_url: bool,
    inline: bool,
    /// Largest part of this kind, in bytes.
    max_bytes: u64,
}

/// What one provider's request format takes in content parts, and how it
/// counts their tokens.
#[derive(Debug, Clone)]
pub struct PartPolicy {
    provider: &'static str,
    rules: Vec<Rule>,
    /// Largest sum of inline bytes in one request.
    max_inline_request: u64,
    tokens: PartTokens,
    /// Said when a kind is refused (e.g. which other model takes it).
    hint: &'static str,
}

const IMAGES: &[&str] = &["image/png", "image/jpeg", "image/webp", "image/gif"];
const PDF: &[&str] = &["application/pdf"];

impl PartPolicy {
    /// Text only: every part is refused.
    pub fn text_only(provider: &'static str) -> Self {
        Self {
            provider,
            rules: Vec::new(),
            max_inline_request: 0,
            tokens: PartTokens::Largest,
            hint: "",
        }
    }

    /// Takes every part from every source, counted at the largest of the
    /// providers' rates: the default of custom models and strategies.
    pub fn any() -> &'static Self {
        static ANY: std::sync::LazyLock<PartPolicy> =
            std::sync::LazyLock::new(|| PartPolicy::anything(PartTokens::Largest));
        &ANY
    }

    /// Takes every part from every source, counting tokens with `tokens`.
    pub fn anything(tokens: PartTokens) -> Self {
        let any = |kind| Rule {
            kind,
            types: None,
            by_url: true,
            inline: true,
            max_bytes: u64::MAX,
        };
        Self {
            provider: "this model",
            rules: vec![
                any(PartKind::Image),
                any(PartKind::Document),
                any(PartKind::Audio),
                any(PartKind::Other),
            ],
            max_inline_request: u64::MAX,
            tokens,
            hint: "",
        }
    }

    /// OpenAI Responses: `input_image` (URL or data URL; PNG, JPEG, WebP,
    /// GIF) and `input_file` (PDF by URL or inline); 50 MB a request; no
    /// audio.
    pub fn openai_responses() -> Self {
        Self {
            provider: "OpenAI Responses",
            rules: vec![
                rule(PartKind::Image, IMAGES, true, true, 50 * MB),
                rule(PartKind::Document, PDF, true, true, 50 * MB),
            ],
            max_inline_request: 50 * MB,
            tokens: PartTokens::OpenAi,
            hint: " (audio goes through openai-chat: with an audio model)",
        }
    }

    /// OpenAI Chat Completions and compatible servers: `image_url` (URL or
    /// data URL), `file` (PDF inline only), `input_audio` (WAV or MP3,
    /// inline only).
    pub fn openai_chat() -> Self {
        Self {
            provider: "Chat Completions",
            rules: vec![
                rule(PartKind::Image, IMAGES, true, true, 50 * MB),
                rule(PartKind::Document, PDF, false, true, 50 * MB),
                rule(
                    PartKind::Audio,
                    &["audio/wav", "audio/mpeg"],
                    false,
                    true,
                    25 * MB,
                ),
            ],
            max_inline_request: 50 * MB,
            tokens: PartTokens::OpenAi,
            hint: "",
        }
    }

    /// Anthropic Messages: `image` blocks (JPEG, PNG, GIF, WebP; 5 MB each)
    /// and `document` blocks (PDF), base64 or URL sources; 32 MB a request;
    /// no audio.
    pub fn anthropic() -> Self {
        Self {
            provider: "Anthropic",
            rules: vec![
                rule(PartKind::Image, IMAGES, true, true, 5 * MB),
                rule(PartKind::Document, PDF, true, true, 32 * MB),
            ],
            max_inline_request: 32 * MB,
            tokens: PartTokens::Anthropic,
            hint: " (Anthropic takes images and PDFs)",
        }
    }

    /// Gemini `generateContent`: `inline_data` (100 MB a request, PDFs
    /// 50 MB) and `file_data` (public or signed URLs, `gs://`, Files API
    /// URIs) of images, PDFs, audio and other types.
    pub fn gemini() -> Self {
        Self {
            provider: "Gemini",
            rules: vec![
                rule(
                    PartKind::Image,
                    &[
                        "image/png",
                        "image/jpeg",
                        "image/webp",
                        "image/heic",
                        "image/heif",
                    ],
                    true,
                    true,
                    100 * MB,
                ),
                rule(PartKind::Document, PDF, true, true, 50 * MB),
                Rule {
                    kind: PartKind::Audio,
                    types: None,
                    by_url: true,
                    inline: true,
                    max_bytes: 100 * MB,
                },
                Rule {
                    kind: PartKind::Other,
                    types: None,
                    by_url: true,
                    inline: true,
                    max_bytes: 100 * MB,
                },
            ],
            max_inline_request: 100 * MB,
            tokens: PartTokens::Gemini,
            hint: "",
        }
    }

    /// How this provider counts the tokens of parts.
    pub fn tokens(&self) -> PartTokens {
        self.tokens
    }

    /// Checks every attachment of `prompt` (after its probe, when it has
    /// one) and returns their estimated input tokens. A part this provider
    /// cannot take is a `client_error` naming the part, never retried.
    pub fn check(&self, prompt: &Prompt) -> Result<u64, CallError> {
        if let Prompt::Messages(ms) = prompt
            && let Some(i) = ms
                .iter()
                .position(|m| m.role != crate::item::Role::User && !m.attachments.is_empty())
        {
            return Err(CallError::new(
                ErrorCategory::ClientError,
                format!("message {}: only user messages carry attachments", i + 1),
            )
            .with_retryable(false));
        }
        let mut inline = 0u64;
        let mut tokens = 0u64;
        for (place, a) in prompt.attachments_placed() {
            let refuse = |why: String| {
                CallError::new(
                    ErrorCategory::ClientError,
                    format!("{place} ({}): {why}", a.describe()),
                )
                .with_retryable(false)
            };
            let bytes = self.check_one(a).map_err(refuse)?;
            if matches!(a.source(), Source::Path(_) | Source::Base64(_)) {
                inline = inline.saturating_add(bytes);
                if inline > self.max_inline_request {
                    return Err(refuse(format!(
                        "the inline parts of this request add up to {}; {} takes at most {} in one request (send large files by URL)",
                        size(inline),
                        self.provider,
                        size(self.max_inline_request)
                    )));
                }
            }
            tokens = tokens.saturating_add(self.tokens.of(a));
        }
        Ok(tokens)
    }

    /// Checks one part; returns its size in bytes (0 when unknown).
    fn check_one(&self, a: &Attachment) -> Result<u64, String> {
        let Some(media) = a.media_type() else {
            return Err("its media type is unknown (its bytes are none of PNG, JPEG, WebP, GIF, PDF, WAV, MP3, FLAC, Ogg, AAC, and its name has no known extension); give media_type".into());
        };
        let kind = media.kind();
        let Some(rule) = self.rules.iter().find(|r| r.kind == kind) else {
            return Err(format!(
                "{} does not take {kind} parts ({media}){}",
                self.provider, self.hint
            ));
        };
        if let Some(types) = rule.types
            && !types.contains(&media.as_str())
        {
            return Err(format!(
                "{} takes {kind} parts of type {} only, not {media}",
                self.provider,
                types.join(", ")
            ));
        }
        if let (Some(given), Some(found)) =
            (&a.media_type, a.facts().and_then(|f| f.media_type.as_ref()))
            && given != found
        {
            return Err(format!("it is given as {given} but its bytes are {found}"));
        }
        match a.source() {
            Source::Url(_) if !rule.by_url => {
                return Err(format!(
                    "{} cannot take {kind} parts by URL; give a local path or inline data",
                    self.provider
                ));
            }
            Source::Path(_) | Source::Base64(_) if !rule.inline => {
                return Err(format!("{} takes {kind} parts by URL only", self.provider));
            }
            _ => {}
        }
        let bytes = a.facts().map_or(0, |f| f.bytes);
        if bytes > rule.max_bytes {
            return Err(format!(
                "it is {}; {} takes at most {} per {kind}",
                size(bytes),
                self.provider,
                size(rule.max_bytes)
            ));
        }
        Ok(bytes)
    }
}

fn rule(
    kind: PartKind,
    types: &'static [&'static str],
    by_url: bool,
    inline: bool,
    max_bytes: u64,
) -> Rule {
    Rule {
        kind,
        types: Some(types),
        by_url,
        inline,
        max_bytes,
    }
}

fn size(bytes: u64) -> String {
    if bytes >= MB {
        format!("{:.1} MB", bytes as f64 / MB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::MediaType;
    use crate::item::{Message, Role};

    fn prompt(parts: Vec<Attachment>) -> Prompt {
        let mut m = Message::new(Role::User, "look");
        m.attachments = parts;
        Prompt::Messages(vec![m])
    }

    fn refused(p: &PartPolicy, a: Attachment) -> String {
        let e = p.check(&prompt(vec![a])).unwrap_err();
        assert_eq!(e.category(), ErrorCategory::ClientError);
        assert!(!e.is_retryable());
        e.message().to_owned()
    }

    #[test]
    fn each_provider_refuses_what_it_cannot_take_naming_the_part() {
        let wav = Attachment::url("https://x.test/a.wav");
        let m = refused(&PartPolicy::anthropic(), wav.clone());
        assert_eq!(
            m,
            "attachment 1 (https://x.test/a.wav): Anthropic does not take audio parts (audio/wav) (Anthropic takes images and PDFs)"
        );
        assert!(refused(&PartPolicy::openai_responses(), wav.clone()).contains("openai-chat"));
        assert!(
            refused(&PartPolicy::openai_chat(), wav).contains("cannot take audio parts by URL")
        );
        let pdf_url = Attachment::url("https://x.test/a.pdf");
        assert!(
            refused(&PartPolicy::openai_chat(), pdf_url.clone())
                .contains("cannot take document parts by URL")
        );
        assert!(
            PartPolicy::openai_responses()
                .check(&prompt(vec![pdf_url.clone()]))
                .is_ok()
        );
        assert!(
            refused(
                &PartPolicy::gemini(),
                Attachment::url("https://x.test/a.gif")
            )
            .contains("image/png")
        );
        assert!(
            refused(&PartPolicy::text_only("DeepSeek"), pdf_url)
                .contains("DeepSeek does not take document parts")
        );
        assert!(
            refused(
                &PartPolicy::gemini(),
                Attachment::url("https://x.test/blob")
            )
            .contains("media type is unknown")
        );
    }

    #[test]
    fn sizes_and_declared_types_are_checked_against_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0\0\0\x01\0".to_vec();
        png.resize(6 << 20, 0);
        std::fs::write(&big, &png).unwrap();
        let a = Attachment::path(&big);
        a.probe().unwrap();
        let m = refused(&PartPolicy::anthropic(), a.clone());
        assert!(
            m.ends_with("it is 6.0 MB; Anthropic takes at most 5.0 MB per image"),
            "{m}"
        );
        assert_eq!(
            PartPolicy::gemini()
                .check(&prompt(vec![a.clone()]))
                .unwrap(),
            258
        );
        let lying = Attachment::path(&big).with_media_type(MediaType::Jpeg);
        lying.probe().unwrap();
        assert!(
            refused(&PartPolicy::gemini(), lying)
                .contains("given as image/jpeg but its bytes are image/png")
        );
        let many = prompt(vec![a.clone(); 9]);
        let e = PartPolicy::openai_responses().check(&many).unwrap_err();
        assert!(e.message().starts_with("attachment 9 ("), "{}", e.message());
        assert!(e.message().contains("add up to 54.0 MB"), "{}", e.message());
    }
}
