//! Work items: an id, a prompt, and an optional context carried to the result.

use serde::{Deserialize, Serialize};

use crate::attachment::{Attachment, Source};

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One chat message: text, and any images, documents or audio with it
/// (providers are sent the attachments first, then the text, the order
/// they recommend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
    /// Images, documents and audio sent with the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            attachments: Vec::new(),
        }
    }

    /// Adds an attachment.
    #[must_use]
    pub fn with_attachment(mut self, attachment: Attachment) -> Self {
        self.attachments.push(attachment);
        self
    }
}

/// What is sent to the model: a plain text, or a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One user turn.
    Text(String),
    /// A conversation; system messages are instructions.
    Messages(Vec<Message>),
}

impl Prompt {
    /// Bytes it holds (a measure of its size in memory): text, and the
    /// paths, URLs or inline data of attachments.
    pub(crate) fn text_bytes(&self) -> usize {
        match self {
            Prompt::Text(t) => t.len(),
            Prompt::Messages(m) => m
                .iter()
                .map(|m| {
                    m.content.len()
                        + m.attachments
                            .iter()
                            .map(|a| match a.source() {
                                Source::Path(p) => p.as_os_str().len(),
                                Source::Url(u) => u.len(),
                                Source::Base64(b) => b.len(),
                            })
                            .sum::<usize>()
                })
                .sum(),
        }
    }

    /// Every attachment of every message, in order.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        let messages: &[Message] = match self {
            Prompt::Text(_) => &[],
            Prompt::Messages(m) => m,
        };
        messages.iter().flat_map(|m| &m.attachments)
    }

    /// Whether any message has an attachment.
    pub fn has_attachments(&self) -> bool {
        self.attachments().next().is_some()
    }

    /// Every attachment with its place, for messages: "attachment 2" in a
    /// one-message prompt, "message 3, attachment 1" in a longer one.
    pub(crate) fn attachments_placed(&self) -> impl Iterator<Item = (String, &Attachment)> {
        let messages: &[Message] = match self {
            Prompt::Text(_) => &[],
            Prompt::Messages(m) => m,
        };
        let one = messages.len() == 1;
        messages.iter().enumerate().flat_map(move |(i, m)| {
            m.attachments.iter().enumerate().map(move |(j, a)| {
                let place = if one {
                    format!("attachment {}", j + 1)
                } else {
                    format!("message {}, attachment {}", i + 1, j + 1)
                };
                (place, a)
            })
        })
    }

    /// The prompt as one text: the text itself, or the chat's non-system
    /// messages joined by blank lines.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Prompt::Text(t) => std::borrow::Cow::Borrowed(t),
            Prompt::Messages(m) => {
                let mut parts = m.iter().filter(|m| m.role != Role::System);
                match (parts.next(), parts.next()) {
                    (None, _) => std::borrow::Cow::Borrowed(""),
                    (Some(only), None) => std::borrow::Cow::Borrowed(&only.content),
                    (Some(first), Some(second)) => {
                        let mut s = first.content.clone();
                        for m in std::iter::once(second).chain(parts) {
                            s.push_str("\n\n");
                            s.push_str(&m.content);
                        }
                        std::borrow::Cow::Owned(s)
                    }
                }
            }
        }
    }

    /// The system instructions of a chat, joined; `None` for a plain text.
    pub fn system(&self) -> Option<String> {
        match self {
            Prompt::Text(_) => None,
            Prompt::Messages(m) => {
                let sys: Vec<&str> = m
                    .iter()
                    .filter(|m| m.role == Role::System)
                    .map(|m| m.content.as_str())
                    .collect();
                (!sys.is_empty()).then(|| sys.join("\n\n"))
            }
        }
    }

    /// Number of characters, for token estimates.
    pub fn char_len(&self) -> usize {
        match self {
            Prompt::Text(t) => t.chars().count(),
            Prompt::Messages(m) => m.iter().map(|m| m.content.chars().count()).sum(),
        }
    }
}

impl From<String> for Prompt {
    fn from(s: String) -> Self {
        Prompt::Text(s)
    }
}

impl From<&str> for Prompt {
    fn from(s: &str) -> Self {
        Prompt::Text(s.to_owned())
    }
}

/// One unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The caller's id, carried to the result (need not be unique for the
    /// engine, but checkpoints key on it).
    pub id: String,
    /// What to send.
    pub prompt: Prompt,
    /// Any JSON value, carried untouched to the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<serde_json::Value>,
}

impl Item {
    /// An item without context.
    pub fn new(id: impl Into<String>, prompt: impl Into<Prompt>) -> Self {
        Self {
            id: id.into(),
            prompt: prompt.into(),
            context: None,
        }
    }

    /// Attaches a context value.
    #[must_use]
    pub fn with_context(mut self, context: serde_json::Value) -> Self {
        self.context = Some(context);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_and_system() {
        let p = Prompt::Messages(vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "hi"),
            Message::new(Role::Assistant, "hello"),
            Message::new(Role::User, "bye"),
        ]);
        assert_eq!(p.text(), "hi\n\nhello\n\nbye");
        assert_eq!(p.system().as_deref(), Some("be brief"));
        assert_eq!(Prompt::from("x").system(), None);
        assert_eq!(p.char_len(), 8 + 2 + 5 + 3);
    }
}
