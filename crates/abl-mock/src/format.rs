//! The providers' wire formats the mock speaks.

/// A provider wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/chat/completions` (and compatible servers).
    Chat,
    /// Gemini `generateContent`.
    Gemini,
    /// Anthropic `POST /v1/messages`.
    Anthropic,
}

impl Format {
    /// The route name in stats.
    pub fn route(self) -> &'static str {
        match self {
            Format::Responses => "responses",
            Format::Chat => "chat_completions",
            Format::Gemini => "gemini",
            Format::Anthropic => "anthropic",
        }
    }
}
