//! Fingerprints: SHA-256 digests as hex, for identities, items, cache
//! contents and API keys. One place, so every part hashes the same way.

use sha2::{Digest, Sha256};

/// A SHA-256 as 64 lowercase hex digits, on the stack.
pub(crate) type Hex = [u8; 64];

/// SHA-256 over length-prefixed parts, as hex digits. Each part is framed
/// by its length, so `("ab", "")` and `("a", "b")` differ.
pub(crate) fn sha256_hex_digits(parts: &[&[u8]]) -> Hex {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    // Hand-rolled: `format!("{b:02x}")` per byte cost more than the hash.
    let mut out = [0u8; 64];
    for (i, b) in h.finalize().into_iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// Bytes as lowercase hex digits.
pub(crate) fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The digits as text (they are ASCII).
pub(crate) fn hex_str(h: &Hex) -> &str {
    std::str::from_utf8(h).unwrap_or_default()
}

/// Hex SHA-256 over length-prefixed parts.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    hex_str(&sha256_hex_digits(parts)).to_owned()
}

/// A short, non-reversible fingerprint of an API key (the first 8 hex
/// digits of its plain SHA-256), safe to show in scope names and logs.
pub fn key_fingerprint(api_key: &str) -> String {
    hex_of(&Sha256::digest(api_key.as_bytes())[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_framed_hex() {
        // SHA-256 of eight zero bytes (the length frame of one empty part).
        assert_eq!(
            sha256_hex(&[b""]),
            "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
        );
        assert_ne!(sha256_hex(&[b"ab", b""]), sha256_hex(&[b"a", b"b"]));
        assert_eq!(key_fingerprint("abc"), "ba7816bf");
    }
}
