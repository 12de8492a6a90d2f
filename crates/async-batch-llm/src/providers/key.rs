//! The API key of a provider: read from the environment or a file, never
//! shown by `Debug` or `Display`.

use crate::error::Error;

/// An API key. Its `Debug` and `Display` never show it, and making one
/// registers it with [`crate::secret`], so no error message, result or
/// checkpoint of this process can carry it, even when a server echoes it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        let key = key.into();
        crate::secret::register(&key);
        Self(key)
    }

    /// The first set variable among `vars`.
    pub fn from_env(vars: &[&str]) -> Option<Self> {
        vars.iter()
            .find_map(|v| std::env::var(v).ok())
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .map(Self::new)
    }

    /// Reads a key from a file (surrounding whitespace removed).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::io(path.display().to_string(), source))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(Error::config(format!(
                "{}: the key file is empty",
                path.display()
            )));
        }
        Ok(Self::new(key))
    }

    /// The key itself, for a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_redacted() {
        let k = ApiKey::new("sk-very-secret");
        assert_eq!(format!("{k:?} {k}"), "ApiKey(<redacted>) <redacted>");
        assert_eq!(k.expose(), "sk-very-secret");
    }
}
