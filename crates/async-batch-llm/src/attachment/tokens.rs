//! Input tokens of attachments, estimated the way each provider documents
//! them, for TPM admission and dry-run projections (the reservation is
//! settled with the real usage afterwards).

use super::Attachment;
use super::media::PartKind;

/// How a provider counts the tokens of images, PDF pages and audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartTokens {
    /// OpenAI: an image at high detail is scaled to fit 2048 × 2048, then
    /// its short side to 768, and costs 85 tokens plus 170 per 512-pixel
    /// tile; a PDF page is its text plus an image of the page (about
    /// 1,000 tokens); audio about 10 tokens a second.
    OpenAi,
    /// Anthropic: an image costs width × height / 750 tokens after scaling
    /// its long side to at most 1,568 pixels; a PDF page 1,500–3,000 (the
    /// estimate takes 3,000); no audio.
    Anthropic,
    /// Gemini: an image no larger than 384 × 384 costs 258 tokens, a larger
    /// one 258 per 768 × 768 tile; a PDF page 258; audio 32 a second.
    Gemini,
    /// Not tied to a provider: the largest of the three, so an admission
    /// estimate errs on the safe side.
    #[default]
    Largest,
}

/// An image whose size is unknown counts as 1024 × 1024.
const UNKNOWN_PIXELS: (u32, u32) = (1024, 1024);
/// A PDF whose page count is unknown: one page per 100 KB, at least one.
const PDF_BYTES_PER_PAGE: u64 = 100_000;
/// Audio whose length is unknown: 128 kbit/s.
const AUDIO_BYTES_PER_SECOND: f64 = 16_000.0;

impl PartTokens {
    /// Estimated input tokens of one attachment (its probe's facts used
    /// when there are some; a URL's size is unknown).
    pub fn of(self, a: &Attachment) -> u64 {
        let facts = a.facts();
        match a.kind() {
            Some(PartKind::Image) => {
                let (w, h) = facts.and_then(|f| f.pixels).unwrap_or(UNKNOWN_PIXELS);
                self.image(w, h)
            }
            Some(PartKind::Document) => {
                let pages = facts.map_or(1, |f| {
                    f.pages
                        .map_or_else(|| f.bytes.div_ceil(PDF_BYTES_PER_PAGE).max(1), u64::from)
                });
                pages.saturating_mul(self.per_page())
            }
            Some(PartKind::Audio) => {
                let secs = facts.map_or(60.0, |f| {
                    f.seconds.unwrap_or(f.bytes as f64 / AUDIO_BYTES_PER_SECOND)
                });
                (secs.max(0.0) * self.per_second()).ceil() as u64
            }
            // Another file: its bytes as text, four to a token.
            Some(PartKind::Other) | None => facts.map_or(1_000, |f| f.bytes.div_ceil(4)),
        }
    }

    /// Estimated input tokens of an image of `w` × `h` pixels.
    pub fn image(self, w: u32, h: u32) -> u64 {
        let (w, h) = (f64::from(w.max(1)), f64::from(h.max(1)));
        match self {
            PartTokens::OpenAi => {
                let fit = (2048.0 / w.max(h)).min(1.0);
                let (w, h) = (w * fit, h * fit);
                let short = (768.0 / w.min(h)).min(1.0);
                let (w, h) = (w * short, h * short);
                let tiles = (w / 512.0).ceil() * (h / 512.0).ceil();
                85 + 170 * tiles as u64
            }
            PartTokens::Anthropic => {
                let fit = (1568.0 / w.max(h)).min(1.0);
                ((w * fit) * (h * fit) / 750.0).ceil() as u64
            }
            PartTokens::Gemini => {
                if w <= 384.0 && h <= 384.0 {
                    258
                } else {
                    258 * ((w / 768.0).ceil() * (h / 768.0).ceil()) as u64
                }
            }
            PartTokens::Largest => [
                PartTokens::OpenAi,
                PartTokens::Anthropic,
                PartTokens::Gemini,
            ]
            .map(|p| p.image(w as u32, h as u32))
            .into_iter()
            .max()
            .unwrap_or_default(),
        }
    }

    fn per_page(self) -> u64 {
        match self {
            PartTokens::OpenAi => 1_000,
            PartTokens::Anthropic | PartTokens::Largest => 3_000,
            PartTokens::Gemini => 258,
        }
    }

    fn per_second(self) -> f64 {
        match self {
            PartTokens::OpenAi => 10.0,
            PartTokens::Anthropic => 0.0,
            PartTokens::Gemini | PartTokens::Largest => 32.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_as_each_provider_documents() {
        // OpenAI's worked examples: 1024 × 1024 → 765; 2048 × 4096 → 1105.
        assert_eq!(PartTokens::OpenAi.image(1024, 1024), 765);
        assert_eq!(PartTokens::OpenAi.image(2048, 4096), 1105);
        // Anthropic's table: 1092 × 1092 ≈ 1590 tokens.
        assert_eq!(PartTokens::Anthropic.image(1092, 1092), 1590);
        assert_eq!(PartTokens::Anthropic.image(4000, 4000), 3279);
        // Gemini: small images 258, larger ones 258 per 768 tile.
        assert_eq!(PartTokens::Gemini.image(384, 200), 258);
        assert_eq!(PartTokens::Gemini.image(1000, 1000), 4 * 258);
        assert_eq!(PartTokens::Largest.image(1024, 1024), 1399);
    }

    #[test]
    fn documents_and_audio_from_facts_or_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let pdf = dir.path().join("a.pdf");
        std::fs::write(&pdf, b"%PDF-1.4 << /Type /Pages /Count 4 >>").unwrap();
        let a = Attachment::path(&pdf);
        // Before the probe the page count is unknown: one page.
        assert_eq!(PartTokens::Gemini.of(&a), 258);
        a.probe().unwrap();
        assert_eq!(PartTokens::Gemini.of(&a), 4 * 258);
        assert_eq!(PartTokens::Anthropic.of(&a), 12_000);
        let wav = Attachment::url("https://x.test/a.wav");
        assert_eq!(PartTokens::Gemini.of(&wav), 60 * 32);
        assert_eq!(PartTokens::Anthropic.of(&wav), 0);
    }
}
