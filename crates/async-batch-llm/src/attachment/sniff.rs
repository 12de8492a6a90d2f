//! What the first bytes of a file say: its media type, an image's size in
//! pixels, a WAV clip's length; and a PDF's page count, read as the bytes
//! stream past. Never panics on truncated or hostile input.

use super::media::MediaType;

/// The media type the bytes start with, if a known one.
pub(crate) fn media_type(head: &[u8]) -> Option<MediaType> {
    let riff = |tag: &[u8; 4]| head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == tag;
    Some(if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        MediaType::Png
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        MediaType::Jpeg
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        MediaType::Gif
    } else if riff(b"WEBP") {
        MediaType::Webp
    } else if riff(b"WAVE") {
        MediaType::Wav
    } else if head.starts_with(b"%PDF-") {
        MediaType::Pdf
    } else if head.starts_with(b"fLaC") {
        MediaType::Flac
    } else if head.starts_with(b"OggS") {
        MediaType::Ogg
    } else if head.starts_with(b"ID3")
        || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE6 == 0xE2)
    {
        MediaType::Mp3
    } else if head.len() >= 2 && head[0] == 0xFF && head[1] & 0xF6 == 0xF0 {
        MediaType::Aac
    } else {
        return None;
    })
}

fn be16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le16(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Width and height in pixels of a PNG, JPEG, GIF or WebP whose first
/// bytes are `head`.
pub(crate) fn pixels(media: &MediaType, head: &[u8]) -> Option<(u32, u32)> {
    let wh = match media {
        MediaType::Png => (be32(head, 16)?, be32(head, 20)?),
        MediaType::Gif => (le16(head, 6)?, le16(head, 8)?),
        MediaType::Webp => match head.get(12..16)? {
            b"VP8 " => (le16(head, 26)? & 0x3FFF, le16(head, 28)? & 0x3FFF),
            b"VP8L" => {
                let bits = le32(head, 21)?;
                ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
            }
            b"VP8X" => (le24(head, 24)? + 1, le24(head, 27)? + 1),
            _ => return None,
        },
        MediaType::Jpeg => jpeg_pixels(head)?,
        _ => return None,
    };
    (wh.0 > 0 && wh.1 > 0).then_some(wh)
}

/// Walks JPEG markers to the first start-of-frame.
fn jpeg_pixels(b: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    loop {
        while *b.get(i)? != 0xFF {
            i += 1;
        }
        while *b.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *b.get(i)?;
        i += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => {}
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                return Some((be16(b, i + 5)?, be16(b, i + 3)?));
            }
            _ => i += usize::try_from(be16(b, i)?).ok()?,
        }
    }
}

/// Seconds of sound in a WAV file of `len` bytes, from its header.
pub(crate) fn wav_seconds(head: &[u8], len: u64) -> Option<f64> {
    let byte_rate = le32(head, 28).filter(|r| *r > 0)?;
    Some(len.saturating_sub(44) as f64 / f64::from(byte_rate))
}

/// Counts a PDF's pages as its bytes stream past: the largest `/Count` of
/// a page tree node, or else the number of `/Type /Page` objects. PDFs
/// that keep their page tree in compressed object streams show neither;
/// the caller then guesses from the size.
#[derive(Debug, Default)]
pub(crate) struct PdfPages {
    tail: Vec<u8>,
    max_count: u32,
    page_objects: u32,
}

impl PdfPages {
    const OVERLAP: usize = 24;

    /// Reads the next chunk.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        // Tokens that end inside the overlap are counted with the next
        // chunk, so none is counted twice or missed at a boundary.
        let scan_to = buf.len().saturating_sub(Self::OVERLAP);
        let mut i = 0;
        while i < scan_to {
            if buf[i] != b'/' {
                i += 1;
                continue;
            }
            let rest = &buf[i..];
            if let Some(after) = rest.strip_prefix(b"/Count") {
                let digits: Vec<u8> = after
                    .iter()
                    .skip_while(|c| c.is_ascii_whitespace())
                    .take_while(|c| c.is_ascii_digit())
                    .copied()
                    .collect();
                if let Some(n) = std::str::from_utf8(&digits)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    self.max_count = self.max_count.max(n);
                }
            } else if let Some(after) = rest.strip_prefix(b"/Type") {
                let name = after
                    .iter()
                    .position(|c| !c.is_ascii_whitespace())
                    .map(|p| &after[p..]);
                if let Some(n) = name
                    && n.starts_with(b"/Page")
                    && !n.get(5).is_some_and(u8::is_ascii_alphanumeric)
                {
                    self.page_objects += 1;
                }
            }
            i += 1;
        }
        self.tail = buf.split_off(scan_to);
    }

    /// The page count, once every byte was fed.
    pub(crate) fn finish(mut self) -> Option<u32> {
        // The held-back tail is the file's end: count what is in it.
        let tail = std::mem::take(&mut self.tail);
        let mut pad = tail;
        pad.extend_from_slice(&[b' '; Self::OVERLAP]);
        self.feed(&pad);
        if self.max_count > 0 {
            Some(self.max_count)
        } else {
            (self.page_objects > 0).then_some(self.page_objects)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny PNG header of `w` × `h`.
    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&h.to_be_bytes());
        b
    }

    #[test]
    fn media_types_from_magic_bytes() {
        assert_eq!(media_type(&png(1, 1)), Some(MediaType::Png));
        assert_eq!(media_type(b"\xFF\xD8\xFF\xE0"), Some(MediaType::Jpeg));
        assert_eq!(media_type(b"GIF89a.."), Some(MediaType::Gif));
        assert_eq!(media_type(b"RIFF\0\0\0\0WEBPVP8 "), Some(MediaType::Webp));
        assert_eq!(media_type(b"RIFF\0\0\0\0WAVEfmt "), Some(MediaType::Wav));
        assert_eq!(media_type(b"%PDF-1.7"), Some(MediaType::Pdf));
        assert_eq!(media_type(b"ID3\x04"), Some(MediaType::Mp3));
        assert_eq!(media_type(b"hello"), None);
        assert_eq!(media_type(b""), None);
    }

    #[test]
    fn pixels_of_each_image_format() {
        assert_eq!(pixels(&MediaType::Png, &png(640, 480)), Some((640, 480)));
        assert_eq!(
            pixels(&MediaType::Gif, b"GIF89a\x20\x03\x58\x02"),
            Some((800, 600))
        );
        // JPEG: SOI, an APP0 of 4 bytes, then SOF0 (height 0x0100, width 0x0200).
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01,
            0x00, 0x02, 0x00,
        ];
        assert_eq!(pixels(&MediaType::Jpeg, &jpeg), Some((512, 256)));
        let mut vp8x = b"RIFF\0\0\0\0WEBPVP8X\0\0\0\0\0\0\0\0".to_vec();
        vp8x.extend_from_slice(&[0x7F, 0x07, 0x00, 0x37, 0x04, 0x00]);
        assert_eq!(pixels(&MediaType::Webp, &vp8x), Some((1920, 1080)));
        // Truncated or hostile input: no size, no panic.
        assert_eq!(pixels(&MediaType::Jpeg, &jpeg[..12]), None);
        assert_eq!(
            pixels(&MediaType::Jpeg, &[0xFF, 0xD8, 0xFF, 0xFF, 0xFF]),
            None
        );
        assert_eq!(pixels(&MediaType::Png, &png(0, 10)), None);
        assert_eq!(pixels(&MediaType::Webp, b"RIFF"), None);
    }

    #[test]
    fn pdf_pages_across_chunk_boundaries() {
        let body = b"%PDF-1.4\n1 0 obj << /Type /Pages /Kids [2 0 R 3 0 R 4 0 R] /Count 3 >>\n\
            2 0 obj << /Type /Page >>\n3 0 obj <</Type/Page/Parent 1 0 R>>\n4 0 obj << /Type /Page >>\n%%EOF";
        for chunk in [1, 2, 7, 16, 1000] {
            let mut p = PdfPages::default();
            for c in body.chunks(chunk) {
                p.feed(c);
            }
            assert_eq!(p.finish(), Some(3), "chunks of {chunk}");
        }
        let mut objects_only = PdfPages::default();
        objects_only.feed(b"%PDF-1.4 << /Type /Page >> << /Type /Page >> << /Type /Pages >>");
        assert_eq!(objects_only.finish(), Some(2));
        assert_eq!(PdfPages::default().finish(), None);
    }

    #[test]
    fn wav_length_from_byte_rate() {
        let mut h = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0".to_vec();
        h.extend_from_slice(&16_000u32.to_le_bytes()); // sample rate
        h.extend_from_slice(&32_000u32.to_le_bytes()); // byte rate
        assert_eq!(wav_seconds(&h, 44 + 64_000), Some(2.0));
        assert_eq!(wav_seconds(b"RIFF", 100), None);
    }
}
