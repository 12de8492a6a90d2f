//! A JSON value that satisfies a JSON schema (the subset providers accept:
//! types, properties, required, items, enum, const, anyOf/oneOf/allOf,
//! `$ref` into `$defs`/`definitions`, Gemini's upper-case types).

use serde_json::Value;

pub use abl_example_value::example_value as value_for;

/// Why OpenAI's strict mode would reject `schema`: an object that is not
/// closed (`additionalProperties: false`) or does not require every property.
pub fn openai_strict_problem(schema: &Value) -> Option<String> {
    fn walk(v: &Value, path: &str) -> Option<String> {
        match v {
            Value::Object(m) => {
                let is_object = m.get("type").and_then(Value::as_str) == Some("object")
                    || m.contains_key("properties");
                if is_object {
                    if m.get("additionalProperties") != Some(&Value::Bool(false)) {
                        return Some(format!(
                            "In context={path}, 'additionalProperties' is required to be supplied and to be false."
                        ));
                    }
                    let props: Vec<&String> = m
                        .get("properties")
                        .and_then(Value::as_object)
                        .map(|p| p.keys().collect())
                        .unwrap_or_default();
                    let required: Vec<&str> = m
                        .get("required")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if let Some(missing) = props.iter().find(|p| !required.contains(&p.as_str())) {
                        return Some(format!(
                            "In context={path}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'."
                        ));
                    }
                }
                m.iter()
                    .find_map(|(k, sub)| walk(sub, &format!("{path}/{k}")))
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, sub)| walk(sub, &format!("{path}/{i}"))),
            _ => None,
        }
    }
    walk(schema, "")
}

/// Why Gemini's `responseSchema` would reject `schema` (it has no `$ref`
/// and no `additionalProperties`).
pub fn gemini_problem(schema: &Value) -> Option<String> {
    match schema {
        Value::Object(m) => {
            for bad in ["$ref", "additionalProperties", "$defs"] {
                if m.contains_key(bad) {
                    return Some(format!(
                        "Invalid JSON payload received. Unknown name \"{bad}\" at 'generation_config.response_schema': Cannot find field."
                    ));
                }
            }
            m.values().find_map(gemini_problem)
        }
        Value::Array(a) => a.iter().find_map(gemini_problem),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_schema_with_refs_enums_and_options() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "kind": {"$ref": "#/$defs/Kind"},
                "score": {"type": ["number", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "inner": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}
            },
            "$defs": {"Kind": {"type": "string", "enum": ["bug", "feature"]}}
        });
        let v = value_for(&schema);
        assert_eq!(
            v,
            json!({"name": "mock", "kind": "bug", "score": 1.5, "tags": ["mock"], "inner": {"n": 3}})
        );
        let gemini = json!({"type": "OBJECT", "properties": {"ok": {"type": "BOOLEAN"}}});
        assert_eq!(value_for(&gemini), json!({"ok": true}));
    }

    #[test]
    fn strict_and_gemini_problems() {
        let open = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert!(openai_strict_problem(&open).is_some());
        let closed = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false});
        assert_eq!(openai_strict_problem(&closed), None);
        assert!(gemini_problem(&closed).is_some());
        assert_eq!(
            gemini_problem(&json!({"type": "OBJECT", "properties": {}})),
            None
        );
    }
}
