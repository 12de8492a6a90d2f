//! What a run is and what an item is, as fingerprints: [`Identity`] (records
//! of another identity are never reused), [`item_fingerprint`] (a record is
//! reused only for the same id, prompt and context), and the [`Manifest`]
//! a store keeps of what made it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{CHECKPOINT_SCHEMA, RECORD_VERSION};
use crate::fingerprint::{Hex, hex_str, sha256_hex, sha256_hex_digits};
use crate::item::Item;

/// What a run is: records of another identity are never reused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Provider (`openai`, `gemini`, …).
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Version of the prompt or template; change it to rerun everything.
    #[serde(default)]
    pub prompt_version: String,
    /// Version of the output parser or schema.
    #[serde(default)]
    pub parser_version: String,
    /// Version of the application.
    #[serde(default)]
    pub app_version: String,
    /// Anything else that should invalidate old results.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

impl Identity {
    /// SHA-256 of the identity (key order does not matter).
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        sha256_hex(&[&canonical])
    }
}

/// SHA-256 of an item's id, prompt and context.
pub fn item_fingerprint(item: &Item) -> String {
    hex_str(&item_fingerprint_digits(item)).to_owned()
}

thread_local! {
    /// Where an item's prompt and context are serialized to be hashed (a
    /// resume fingerprints every input item).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A prompt with attachments as it is fingerprinted: each message's role
/// and text, and each attachment's [`fingerprint_form`](crate::Attachment).
fn fingerprint_form(prompt: &crate::item::Prompt) -> serde_json::Value {
    let crate::item::Prompt::Messages(messages) = prompt else {
        return serde_json::Value::Null;
    };
    serde_json::Value::Array(
        messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "role": m.role,
                    "content": m.content,
                    "attachments": m.attachments.iter().map(crate::Attachment::fingerprint_form).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// [`item_fingerprint`] without an allocation.
pub(super) fn item_fingerprint_digits(item: &Item) -> Hex {
    let hash = |buf: &mut Vec<u8>| {
        buf.clear();
        // A value that cannot be serialized counts as empty. Attachments
        // count by the hash of their bytes, never the bytes or the path.
        let written = if item.prompt.has_attachments() {
            serde_json::to_writer(&mut *buf, &fingerprint_form(&item.prompt))
        } else {
            serde_json::to_writer(&mut *buf, &item.prompt)
        };
        if written.is_err() {
            buf.clear();
        }
        let split = buf.len();
        if let Some(c) = &item.context
            && serde_json::to_writer(&mut *buf, c).is_err()
        {
            buf.truncate(split);
        }
        let (prompt, context) = buf.split_at(split);
        sha256_hex_digits(&[item.id.as_bytes(), prompt, context])
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let digits = hash(&mut buf);
            if buf.capacity() > 64 << 10 {
                *buf = Vec::new();
            }
            digits
        }
        Err(_) => hash(&mut Vec::new()),
    })
}
/// The manifest a store keeps: what made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`CHECKPOINT_SCHEMA`].
    pub schema: String,
    /// Record format version when the store was created (each record
    /// carries its own; a store may hold several).
    pub version: u32,
    /// The tool that created the store.
    pub tool_version: String,
    /// The identity of the run that created it.
    pub identity: Identity,
}

impl Manifest {
    /// The manifest of a store created now for `identity`.
    pub fn new(identity: &Identity) -> Self {
        Self {
            schema: CHECKPOINT_SCHEMA.into(),
            version: RECORD_VERSION,
            tool_version: concat!("async-batch-llm ", env!("CARGO_PKG_VERSION")).into(),
            identity: identity.clone(),
        }
    }
}

/// An identity a store holds records of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownIdentity {
    /// [`Identity::fingerprint`].
    pub fingerprint: String,
    /// The identity itself; `None` for records written before stores kept
    /// every identity (only their fingerprint is known).
    pub identity: Option<Identity>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_count_by_the_hash_of_their_bytes_never_the_bytes() {
        use crate::{Attachment, Message, Prompt, Role};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nfirst").unwrap();
        let item = |a: Attachment| {
            Item::new(
                "x",
                Prompt::Messages(vec![Message::new(Role::User, "hi").with_attachment(a)]),
            )
        };
        let before = item_fingerprint(&item(Attachment::path(&path)));
        // The same bytes inline: the same fingerprint.
        let inline = item(Attachment::bytes(b"\x89PNG\r\n\x1a\nfirst"));
        assert_eq!(item_fingerprint(&inline), before);
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nsecond").unwrap();
        assert_ne!(item_fingerprint(&item(Attachment::path(&path))), before);
        // A text-only item fingerprints as before attachments existed.
        let text = Item::new("x", Prompt::Messages(vec![Message::new(Role::User, "hi")]));
        assert_eq!(
            item_fingerprint(&text),
            sha256_hex(&[b"x", br#"[{"role":"user","content":"hi"}]"#, b""])
        );
    }

    #[test]
    fn fingerprints_are_stable_hex_and_see_every_part() {
        let a = Item::new("1", "p");
        assert_eq!(item_fingerprint(&a), item_fingerprint(&a.clone()));
        assert_ne!(item_fingerprint(&a), item_fingerprint(&Item::new("1", "q")));
        assert_ne!(
            item_fingerprint(&a),
            item_fingerprint(&a.clone().with_context(serde_json::json!({"k": 1})))
        );
        let mut i = Identity::default();
        let before = i.fingerprint();
        i.extra.insert("k".into(), "v".into());
        assert_ne!(before, i.fingerprint());
        assert_eq!(before.len(), 64);
    }
}
