//! Media types of attachments, and the kind of part each is.

/// What a part is to a provider: each takes some kinds and not others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartKind {
    /// A picture (PNG, JPEG, WebP, GIF).
    Image,
    /// A document (PDF).
    Document,
    /// Sound (WAV, MP3, FLAC, Ogg, AAC).
    Audio,
    /// Anything else; only providers that take any media type accept it.
    Other,
}

impl std::fmt::Display for PartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PartKind::Image => "image",
            PartKind::Document => "document",
            PartKind::Audio => "audio",
            PartKind::Other => "file",
        })
    }
}

/// The media (MIME) type of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MediaType {
    /// `image/png`
    Png,
    /// `image/jpeg`
    Jpeg,
    /// `image/webp`
    Webp,
    /// `image/gif`
    Gif,
    /// `application/pdf`
    Pdf,
    /// `audio/wav`
    Wav,
    /// `audio/mpeg` (MP3)
    Mp3,
    /// `audio/flac`
    Flac,
    /// `audio/ogg`
    Ogg,
    /// `audio/aac`
    Aac,
    /// Any other type, as written (lowercase).
    Other(String),
}

impl MediaType {
    /// Reads a MIME type (case-insensitive; `image/jpg`, `audio/x-wav`,
    /// `audio/mp3` are accepted aliases; parameters after `;` are ignored).
    pub fn parse(s: &str) -> Self {
        let s = s
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match s.as_str() {
            "image/png" => MediaType::Png,
            "image/jpeg" | "image/jpg" => MediaType::Jpeg,
            "image/webp" => MediaType::Webp,
            "image/gif" => MediaType::Gif,
            "application/pdf" => MediaType::Pdf,
            "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => MediaType::Wav,
            "audio/mpeg" | "audio/mp3" => MediaType::Mp3,
            "audio/flac" | "audio/x-flac" => MediaType::Flac,
            "audio/ogg" => MediaType::Ogg,
            "audio/aac" => MediaType::Aac,
            _ => MediaType::Other(s),
        }
    }

    /// The type of a file extension (case-insensitive), if it is one of
    /// the known ones.
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "png" => MediaType::Png,
            "jpg" | "jpeg" => MediaType::Jpeg,
            "webp" => MediaType::Webp,
            "gif" => MediaType::Gif,
            "pdf" => MediaType::Pdf,
            "wav" => MediaType::Wav,
            "mp3" => MediaType::Mp3,
            "flac" => MediaType::Flac,
            "ogg" | "oga" => MediaType::Ogg,
            "aac" => MediaType::Aac,
            "txt" | "text" => MediaType::Other("text/plain".into()),
            "csv" => MediaType::Other("text/csv".into()),
            "md" => MediaType::Other("text/md".into()),
            "html" | "htm" => MediaType::Other("text/html".into()),
            _ => return None,
        })
    }

    /// The MIME type as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            MediaType::Png => "image/png",
            MediaType::Jpeg => "image/jpeg",
            MediaType::Webp => "image/webp",
            MediaType::Gif => "image/gif",
            MediaType::Pdf => "application/pdf",
            MediaType::Wav => "audio/wav",
            MediaType::Mp3 => "audio/mpeg",
            MediaType::Flac => "audio/flac",
            MediaType::Ogg => "audio/ogg",
            MediaType::Aac => "audio/aac",
            MediaType::Other(s) => s,
        }
    }

    /// The usual file extension of a known type.
    pub fn extension(&self) -> Option<&'static str> {
        Some(match self {
            MediaType::Png => "png",
            MediaType::Jpeg => "jpg",
            MediaType::Webp => "webp",
            MediaType::Gif => "gif",
            MediaType::Pdf => "pdf",
            MediaType::Wav => "wav",
            MediaType::Mp3 => "mp3",
            MediaType::Flac => "flac",
            MediaType::Ogg => "ogg",
            MediaType::Aac => "aac",
            MediaType::Other(_) => return None,
        })
    }

    /// The kind of part this type makes.
    pub fn kind(&self) -> PartKind {
        match self {
            MediaType::Png | MediaType::Jpeg | MediaType::Webp | MediaType::Gif => PartKind::Image,
            MediaType::Pdf => PartKind::Document,
            MediaType::Wav | MediaType::Mp3 | MediaType::Flac | MediaType::Ogg | MediaType::Aac => {
                PartKind::Audio
            }
            MediaType::Other(s) if s.starts_with("image/") => PartKind::Image,
            MediaType::Other(s) if s.starts_with("audio/") => PartKind::Audio,
            MediaType::Other(_) => PartKind::Other,
        }
    }
}

impl std::fmt::Display for MediaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_knows_aliases() {
        for m in [
            MediaType::Png,
            MediaType::Jpeg,
            MediaType::Webp,
            MediaType::Gif,
            MediaType::Pdf,
            MediaType::Wav,
            MediaType::Mp3,
            MediaType::Flac,
            MediaType::Ogg,
            MediaType::Aac,
        ] {
            assert_eq!(MediaType::parse(m.as_str()), m);
            assert_eq!(MediaType::from_extension(m.extension().unwrap()), Some(m));
        }
        assert_eq!(MediaType::parse("IMAGE/JPG"), MediaType::Jpeg);
        assert_eq!(MediaType::parse("audio/x-wav; codecs=1"), MediaType::Wav);
        assert_eq!(MediaType::parse("image/heic").kind(), PartKind::Image);
        assert_eq!(MediaType::parse("text/plain").kind(), PartKind::Other);
        assert_eq!(MediaType::from_extension("heic"), None);
    }
}
