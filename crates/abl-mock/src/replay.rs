//! Replaying one recorded response: with [`MockConfig::replay`] set
//! (`abl mock-server --replay FILE`), every model request gets the same
//! status, headers and body, whatever its route. It is how the recorded
//! real-provider responses of the tests are served, and how a user checks
//! what abl makes of a response a provider sent them.
//!
//! The file is JSON: `{"status": 429, "headers": {"retry-after": "16"},
//! "body": {…}}` (`body` may be a string, sent as it is; other fields, such
//! as a fixture's `expect` and `source`, are ignored).
//!
//! [`MockConfig::replay`]: crate::MockConfig::replay

use serde_json::Value;

/// One recorded response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The HTTP status.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: String,
}

impl Replay {
    /// Reads `{"status", "headers", "body"}`.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let status = v
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (100..=599).contains(s))
            .ok_or("\"status\" must be an HTTP status (100 to 599)")?;
        let mut headers = Vec::new();
        if let Some(h) = v.get("headers") {
            let h = h.as_object().ok_or("\"headers\" must be an object")?;
            for (name, value) in h {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("header {name:?} must be a string"))?;
                headers.push((name.clone(), value.to_owned()));
            }
        }
        let body = match v.get("body") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(raw)) => raw.clone(),
            Some(json) => json.to_string(),
        };
        Ok(Self {
            status,
            headers,
            body,
        })
    }

    /// Reads a replay file (the `--replay` flag's parser).
    pub fn from_file(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
        Self::from_json(&v).map_err(|e| format!("{path}: {e}"))
    }

    /// [`Replay::from_file`], boxed as [`MockConfig::replay`] keeps it (the
    /// configuration stays small when not replaying).
    ///
    /// [`MockConfig::replay`]: crate::MockConfig::replay
    pub fn boxed_from_file(path: &str) -> Result<Box<Self>, String> {
        Self::from_file(path).map(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_fixtures_and_refuses_nonsense() {
        let r = Replay::from_json(&json!({"status": 429, "headers": {"retry-after": "16"},
            "body": {"error": {"code": 429}}, "expect": {}}))
        .unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers, [("retry-after".to_owned(), "16".to_owned())]);
        assert_eq!(r.body, r#"{"error":{"code":429}}"#);
        let raw = Replay::from_json(&json!({"status": 200, "body": "<html>"})).unwrap();
        assert_eq!(raw.body, "<html>");
        for bad in [
            json!({}),
            json!({"status": 99}),
            json!({"status": 70000}),
            json!({"status": 200, "headers": []}),
            json!({"status": 200, "headers": {"a": 1}}),
        ] {
            assert!(Replay::from_json(&bad).is_err(), "{bad}");
        }
    }
}
