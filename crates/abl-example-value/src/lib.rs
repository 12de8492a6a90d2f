//! # abl-example-value
//!
//! [`example_value`] builds a JSON value that satisfies a JSON schema. Two
//! crates need the same answer: `async-batch-llm` uses it as the output of
//! a dry run, and `abl-mock` as the reply of a request for structured
//! output. Keeping it here lets the mock stand apart from the library it
//! tests.
//!
//! ```
//! use serde_json::json;
//! let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}});
//! assert_eq!(abl_example_value::example_value(&schema), json!({"n": 3}));
//! ```

use serde_json::{Map, Value, json};

/// A value that satisfies `schema` (types, properties, items, enum,
/// const, anyOf/oneOf/allOf, `$ref` into the schema itself, upper-case
/// Gemini types): the placeholder of a dry run, and the mock's reply.
pub fn example_value(schema: &Value) -> Value {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_enums_arrays_and_gemini_types() {
        let schema = json!({
            "type": "object",
            "properties": {
                "kind": {"enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "when": {"type": "string", "format": "date"},
                "child": {"$ref": "#/$defs/child"},
                "maybe": {"anyOf": [{"type": "null"}, {"type": "number"}]},
                "upper": {"type": "BOOLEAN"}
            },
            "$defs": {"child": {"type": "object", "properties": {"k": {"const": 7}}}}
        });
        assert_eq!(
            example_value(&schema),
            json!({"kind": "a", "tags": ["mock", "mock"], "when": "2024-01-01",
                   "child": {"k": 7}, "maybe": 1.5, "upper": true})
        );
        // A self-reference ends in null instead of recursing forever.
        let looped = json!({"$ref": "#"});
        assert_eq!(example_value(&looped), Value::Null);
    }
}
