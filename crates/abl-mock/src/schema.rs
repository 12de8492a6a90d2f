//! A JSON value that satisfies a JSON schema (the subset providers accept:
//! types, properties, required, items, enum, const, anyOf/oneOf/allOf,
//! `$ref` into `$defs`/`definitions`, Gemini's upper-case types).

use serde_json::{Map, Value, json};

/// A value satisfying `schema`.
pub fn value_for(schema: &Value) -> Value {
    generate(schema, schema, 0)
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix("#/")?;
    path.split('/').try_fold(root, |v, seg| {
        v.get(seg.replace("~1", "/").replace("~0", "~"))
    })
}

fn type_of(schema: &Value) -> Option<String> {
    match schema.get("type") {
        Some(Value::String(t)) => Some(t.to_ascii_lowercase()),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_ascii_lowercase)
            .find(|t| t != "null")
            .or_else(|| Some("null".into())),
        _ if schema.get("properties").is_some() => Some("object".into()),
        _ if schema.get("items").is_some() => Some("array".into()),
        _ => None,
    }
}

fn generate(schema: &Value, root: &Value, depth: u32) -> Value {
    if depth > 24 {
        return Value::Null;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return resolve(root, r).map_or(Value::Null, |s| generate(s, root, depth + 1));
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(variants) = schema.get(key).and_then(Value::as_array) {
            let pick = variants
                .iter()
                .find(|v| type_of(v).as_deref() != Some("null"))
                .or_else(|| variants.first());
            if let Some(v) = pick {
                return generate(v, root, depth + 1);
            }
        }
    }
    match type_of(schema).as_deref() {
        Some("object") => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    out.insert(name.clone(), generate(sub, root, depth + 1));
                }
            }
            Value::Object(out)
        }
        Some("array") => {
            let n = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 8);
            let item = schema
                .get("items")
                .map_or(Value::Null, |i| generate(i, root, depth + 1));
            Value::Array(vec![item; n as usize])
        }
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("date") => json!("2024-01-01"),
            Some("date-time") => json!("2024-01-01T00:00:00Z"),
            _ => json!("mock"),
        },
        Some("integer") => schema.get("minimum").cloned().unwrap_or(json!(1)),
        Some("number") => schema.get("minimum").cloned().unwrap_or(json!(1.5)),
        Some("boolean") => json!(true),
        Some("null") => Value::Null,
        _ => json!({}),
    }
}

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
