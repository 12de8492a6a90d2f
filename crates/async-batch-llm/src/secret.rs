//! Keeping API keys out of everything a run writes.
//!
//! Providers echo keys back: OpenAI's 401 says "Incorrect API key provided:
//! sk-proj-abc1…", proxies quote the whole `Authorization` header. Every
//! [`ApiKey`](crate::providers::ApiKey) registers its value here when it is
//! made, and every error message the library builds ([`CallError`]'s and
//! [`ItemError`]'s constructors) passes through [`redact`], so what reaches
//! a result, a checkpoint, a log line or a summary never holds a key.
//!
//! The rule: the exact key, and any run of 8 or more characters that is a
//! prefix of a key (a server showing the first characters of a key it
//! masks), become `[redacted]`. Keys shorter than 8 characters are not real
//! provider keys and are left alone (redacting every `abc` would wreck the
//! messages).
//!
//! [`CallError`]: crate::CallError
//! [`ItemError`]: crate::ItemError

use std::borrow::Cow;
use std::sync::RwLock;

/// Characters of a key prefix that count as the key.
const MIN_PREFIX: usize = 8;

/// What replaces a key in a text.
pub const REDACTED: &str = "[redacted]";

static KEYS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret: from now on [`redact`] removes it from every text.
/// Registering the same value twice is harmless.
pub fn register(secret: &str) {
    if secret.chars().count() < MIN_PREFIX {
        return;
    }
    let mut keys = KEYS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !keys.iter().any(|k| k == secret) {
        keys.push(secret.to_owned());
    }
}

/// The length in bytes of the longest prefix of `key` that `text` starts
/// with, on character boundaries.
fn common_prefix(text: &str, key: &str) -> usize {
    text.char_indices()
        .zip(key.chars())
        .take_while(|((_, a), b)| a == b)
        .last()
        .map_or(0, |((i, c), _)| i + c.len_utf8())
}

/// `text` with every registered key, and every prefix of 8 or more
/// characters of one, replaced by `[redacted]`. Borrowed when nothing was
/// found (the common case costs one scan and no allocation).
pub fn redact(text: &str) -> Cow<'_, str> {
    let keys = KEYS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if keys.is_empty() || text.len() < MIN_PREFIX {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    while at < text.len() {
        let rest = &text[at..];
        let longest = keys
            .iter()
            .map(|k| common_prefix(rest, k))
            .max()
            .unwrap_or(0);
        if rest[..longest].chars().count() >= MIN_PREFIX {
            out.push_str(&text[copied..at]);
            out.push_str(REDACTED);
            at += longest;
            copied = at;
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// [`redact`] into an owned string.
pub(crate) fn redacted(text: String) -> String {
    match redact(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(s) => s,
    }
}

/// `url` with the password of its user part replaced by `***`
/// (`redis://me:***@host/0`), for messages and records.
pub fn url_without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{}{shown}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            url_without_password("redis://:hunter22@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            url_without_password("redis://me:hunter22@host/1"),
            "redis://me:***@host/1"
        );
        assert_eq!(
            url_without_password("redis://host:6379"),
            "redis://host:6379"
        );
    }

    #[test]
    fn keys_and_long_prefixes_are_removed_short_runs_kept() {
        register("sk-proj-Zq81xK7mWvT0aBcDeF");
        register("short");
        let openai = "Incorrect API key provided: sk-proj-Zq81x*************eF. You can find your API key at https://platform.openai.com/account/api-keys.";
        let got = redact(openai);
        assert!(!got.contains("sk-proj-Zq81x"), "{got}");
        assert!(
            got.contains("Incorrect API key provided: [redacted]****"),
            "{got}"
        );
        let whole =
            "header was Bearer sk-proj-Zq81xK7mWvT0aBcDeF, twice: sk-proj-Zq81xK7mWvT0aBcDeF";
        assert_eq!(
            redact(whole),
            "header was Bearer [redacted], twice: [redacted]"
        );
        // Fewer than 8 characters of the key, or a short key: untouched.
        assert!(matches!(redact("sk-proj is a prefix"), Cow::Borrowed(_)));
        assert!(matches!(redact("a short text"), Cow::Borrowed(_)));
        assert_eq!(redact("é sk-proj-Zq81xK7m é"), "é [redacted] é");
    }
}
