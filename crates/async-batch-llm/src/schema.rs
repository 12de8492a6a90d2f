//! JSON schemas for structured output, and their provider dialects.
//!
//! A [`ResponseSchema`] holds one standard JSON schema (for example the one
//! `schemars` derives for a Rust type). Each provider accepts a different
//! subset, so the schema is translated once per [`SchemaDialect`] on first
//! use and the translation is kept:
//!
//! - [`SchemaDialect::OpenAiStrict`]: every object closed
//!   (`additionalProperties: false`) and every property required; a property
//!   that was optional becomes nullable instead; `oneOf` becomes `anyOf`;
//!   keywords strict mode refuses (`default`, unknown `format`s) are dropped.
//! - [`SchemaDialect::Gemini`]: the OpenAPI subset of `responseSchema`: every
//!   `$ref` inlined, no `additionalProperties`, `nullable` instead of
//!   `null` types, upper-case type names, only the keywords Gemini knows.
//! - [`SchemaDialect::AnthropicTool`]: the input schema of a forced tool call;
//!   the root must be an object.
//! - [`SchemaDialect::JsonSchema`]: the schema as given (minus `$schema`).
//!
//! ```
//! use async_batch_llm::{ResponseSchema, SchemaDialect};
//! use serde_json::json;
//!
//! let schema = ResponseSchema::new("ticket", json!({
//!     "type": "object",
//!     "properties": {"title": {"type": "string"}, "note": {"type": "string"}},
//!     "required": ["title"]
//! }));
//! let strict = schema.for_dialect(SchemaDialect::OpenAiStrict).unwrap();
//! assert_eq!(strict["required"], json!(["note", "title"]));
//! assert_eq!(strict["properties"]["note"]["type"], json!(["string", "null"]));
//! let gemini = schema.for_dialect(SchemaDialect::Gemini).unwrap();
//! assert_eq!(gemini["properties"]["note"]["type"], json!("STRING"));
//! ```

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{CallError, ErrorCategory};

/// The schema subset a provider accepts for structured output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaDialect {
    /// Standard JSON schema, sent as given.
    JsonSchema,
    /// OpenAI `json_schema` with `strict: true` (Responses and Chat).
    OpenAiStrict,
    /// Gemini `generationConfig.responseSchema`.
    Gemini,
    /// Anthropic: the `input_schema` of a forced tool.
    AnthropicTool,
}

impl SchemaDialect {
    #[cfg(test)]
    const ALL: [Self; 4] = [
        Self::JsonSchema,
        Self::OpenAiStrict,
        Self::Gemini,
        Self::AnthropicTool,
    ];

    fn index(self) -> usize {
        match self {
            Self::JsonSchema => 0,
            Self::OpenAiStrict => 1,
            Self::Gemini => 2,
            Self::AnthropicTool => 3,
        }
    }

    /// A readable name (`openai-strict`, `gemini`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::JsonSchema => "json-schema",
            Self::OpenAiStrict => "openai-strict",
            Self::Gemini => "gemini",
            Self::AnthropicTool => "anthropic-tool",
        }
    }
}

/// A JSON schema for the reply, with its translations cached per dialect.
/// Share it behind an `Arc`: requests carry `Arc<ResponseSchema>`.
pub struct ResponseSchema {
    name: String,
    source: Value,
    dialects: [OnceLock<Result<Value, String>>; 4],
}

impl ResponseSchema {
    /// A schema named `name` (OpenAI wants `[A-Za-z0-9_-]{1,64}`; other
    /// characters are replaced by `_`).
    pub fn new(name: impl AsRef<str>, schema: Value) -> Self {
        let mut clean: String = name
            .as_ref()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        if clean.is_empty() {
            clean = "output".into();
        }
        Self {
            name: clean,
            source: schema,
            dialects: Default::default(),
        }
    }

    /// The schema `schemars` derives for `T`, named after its title.
    pub fn of<T: schemars::JsonSchema>() -> Self {
        let schema = schemars::schema_for!(T);
        let value = schema.as_value().clone();
        let name = value
            .get("title")
            .and_then(Value::as_str)
            .map_or_else(|| T::schema_name().into_owned(), str::to_owned);
        Self::new(name, value)
    }

    /// The name sent to providers that want one.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schema as given: replies are validated against it.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// The schema in `dialect`, translated on first use. A schema that
    /// cannot be expressed (e.g. a recursive type for Gemini) is a
    /// `structured_output_schema_rejected` error, never retried.
    pub fn for_dialect(&self, dialect: SchemaDialect) -> Result<&Value, CallError> {
        self.dialects[dialect.index()]
            .get_or_init(|| translate(&self.source, dialect))
            .as_ref()
            .map_err(|why| {
                CallError::new(
                    ErrorCategory::StructuredOutputSchemaRejected,
                    format!(
                        "schema '{}' cannot be sent as {}: {why}",
                        self.name,
                        dialect.name()
                    ),
                )
                .with_retryable(false)
            })
    }
}

impl Clone for ResponseSchema {
    fn clone(&self) -> Self {
        Self::new(&self.name, self.source.clone())
    }
}

impl std::fmt::Debug for ResponseSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseSchema")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ResponseSchema {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.source == other.source
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    schema: Value,
}

impl Serialize for ResponseSchema {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            name: self.name.clone(),
            schema: self.source.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ResponseSchema {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(Self::new(w.name, w.schema))
    }
}

/// Translates `schema` into `dialect`.
pub fn translate(schema: &Value, dialect: SchemaDialect) -> Result<Value, String> {
    if !schema.is_object() {
        return Err("a schema must be a JSON object".into());
    }
    let defs = Defs::of(schema);
    let out = match dialect {
        SchemaDialect::JsonSchema => strip_root(schema),
        SchemaDialect::OpenAiStrict => {
            require_object_root(schema, &defs, "OpenAI strict mode")?;
            strict(&strip_root(schema))
        }
        SchemaDialect::AnthropicTool => {
            require_object_root(schema, &defs, "an Anthropic tool input")?;
            strip_root(schema)
        }
        SchemaDialect::Gemini => gemini(schema, &defs, &mut Vec::new())?,
    };
    Ok(out)
}

/// Every dialect at once, for tests and inspection.
#[cfg(test)]
pub(crate) fn translate_all(schema: &Value) -> Vec<(SchemaDialect, Result<Value, String>)> {
    SchemaDialect::ALL
        .iter()
        .map(|d| (*d, translate(schema, *d)))
        .collect()
}

struct Defs<'a> {
    root: &'a Value,
}

impl<'a> Defs<'a> {
    fn of(root: &'a Value) -> Self {
        Self { root }
    }

    fn resolve(&self, reference: &str) -> Option<&'a Value> {
        if reference == "#" {
            return Some(self.root);
        }
        let path = reference.strip_prefix("#/")?;
        path.split('/').try_fold(self.root, |v, seg| {
            v.get(seg.replace("~1", "/").replace("~0", "~"))
        })
    }
}

fn strip_root(schema: &Value) -> Value {
    let mut out = schema.clone();
    if let Some(m) = out.as_object_mut() {
        m.remove("$schema");
    }
    out
}

fn require_object_root(schema: &Value, defs: &Defs<'_>, what: &str) -> Result<(), String> {
    let mut s = schema;
    for _ in 0..8 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                s = defs
                    .resolve(r)
                    .ok_or_else(|| format!("unresolved $ref {r}"))?;
            }
            None => break,
        }
    }
    let is_object = s.get("type").and_then(Value::as_str) == Some("object")
        || (s.get("type").is_none() && s.get("properties").is_some());
    if is_object {
        Ok(())
    } else {
        Err(format!(
            "{what} needs an object at the root; wrap the value in a struct"
        ))
    }
}

fn accepts_null(s: &Value) -> bool {
    match s.get("type") {
        Some(Value::String(t)) if t == "null" => return true,
        Some(Value::Array(ts)) if ts.iter().any(|t| t == "null") => return true,
        _ => {}
    }
    if s.get("enum")
        .and_then(Value::as_array)
        .is_some_and(|e| e.iter().any(Value::is_null))
    {
        return true;
    }
    ["anyOf", "oneOf"].iter().any(|k| {
        s.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(accepts_null))
    })
}

fn nullable(s: Value) -> Value {
    if accepts_null(&s) {
        return s;
    }
    let mut s = s;
    let simple = s.get("$ref").is_none() && s.get("anyOf").is_none() && s.get("allOf").is_none();
    if simple && let Some(Value::String(t)) = s.get("type").cloned() {
        s["type"] = json!([t, "null"]);
        if let Some(Value::Array(e)) = s.get_mut("enum") {
            e.push(Value::Null);
        }
        return s;
    }
    if let Some(Value::Array(vs)) = s.get_mut("anyOf") {
        vs.push(json!({"type": "null"}));
        return s;
    }
    json!({"anyOf": [s, {"type": "null"}]})
}

const OPENAI_FORMATS: [&str; 9] = [
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
];

fn is_object_schema(m: &Map<String, Value>) -> bool {
    match m.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        _ => m.contains_key("properties"),
    }
}

/// OpenAI strict: closes every object, requires every property.
fn strict(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match k.as_str() {
                    "default" | "examples" | "$schema" => {}
                    "format" if !v.as_str().is_some_and(|f| OPENAI_FORMATS.contains(&f)) => {}
                    "oneOf" => {
                        out.insert("anyOf".into(), strict(v));
                    }
                    // Maps of sub-schemas: keep the names, translate the values.
                    "properties" | "$defs" | "definitions" => {
                        let sub = v
                            .as_object()
                            .map(|p| p.iter().map(|(n, s)| (n.clone(), strict(s))).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(sub));
                    }
                    _ => {
                        out.insert(k.clone(), strict(v));
                    }
                }
            }
            if is_object_schema(m) {
                let required: Vec<String> = m
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| {
                        r.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                let mut names = Vec::new();
                if let Some(Value::Object(props)) = out.get_mut("properties") {
                    for (name, sub) in props.iter_mut() {
                        if !required.contains(name) {
                            *sub = nullable(sub.take());
                        }
                        names.push(Value::String(name.clone()));
                    }
                }
                out.insert("required".into(), Value::Array(names));
                out.insert("additionalProperties".into(), Value::Bool(false));
                out.entry("properties")
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(strict).collect()),
        other => other.clone(),
    }
}

const GEMINI_KEYS: [&str; 18] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "anyOf",
    "items",
    "propertyOrdering",
];

const GEMINI_FORMATS: [&str; 6] = ["date-time", "enum", "int32", "int64", "float", "double"];

/// Gemini: inlines references, keeps only the keywords Gemini knows.
fn gemini(schema: &Value, defs: &Defs<'_>, stack: &mut Vec<String>) -> Result<Value, String> {
    let Some(m) = schema.as_object() else {
        return Ok(json!({}));
    };
    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
        return gemini_ref(r, m, defs, stack);
    }
    // allOf with one member (what derives emit for documented refs): merge.
    if let Some(Value::Array(all)) = m.get("allOf")
        && all.len() == 1
    {
        let mut merged = m.clone();
        merged.remove("allOf");
        let inner = gemini(&all[0], defs, stack)?;
        let mut out = gemini(&Value::Object(merged), defs, stack)?;
        if let (Some(o), Value::Object(i)) = (out.as_object_mut(), inner) {
            for (k, v) in i {
                o.entry(k).or_insert(v);
            }
        }
        return Ok(out);
    }
    let mut out = Map::new();
    let mut nullable = m.get("nullable") == Some(&Value::Bool(true));
    // anyOf/oneOf: drop the null member (it becomes `nullable`); a single
    // remaining member is inlined.
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(vs)) = m.get(key) {
            let mut members = Vec::new();
            for v in vs {
                if v.get("type").and_then(Value::as_str) == Some("null") {
                    nullable = true;
                } else {
                    members.push(gemini(v, defs, stack)?);
                }
            }
            if members.len() == 1 {
                if let Some(Value::Object(inner)) = members.pop() {
                    out.extend(inner);
                }
            } else if !members.is_empty() {
                out.insert("anyOf".into(), Value::Array(members));
            }
        }
    }
    for (k, v) in m {
        match k.as_str() {
            "type" => gemini_type(v, &mut out, &mut nullable),
            "const" if v.is_string() => {
                out.insert("enum".into(), json!([v]));
                out.entry("type").or_insert_with(|| json!("STRING"));
            }
            "enum" => {
                let strings: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| {
                        if e.is_null() {
                            nullable = true;
                        }
                        e.is_string()
                    })
                    .cloned()
                    .collect();
                if !strings.is_empty() {
                    out.insert("enum".into(), Value::Array(strings));
                    out.entry("type").or_insert_with(|| json!("STRING"));
                }
            }
            "format" if v.as_str().is_some_and(|f| GEMINI_FORMATS.contains(&f)) => {
                out.insert(k.clone(), v.clone());
            }
            "properties" => {
                let mut props = Map::new();
                for (name, sub) in v.as_object().into_iter().flatten() {
                    props.insert(name.clone(), gemini(sub, defs, stack)?);
                }
                out.insert(k.clone(), Value::Object(props));
            }
            "items" => {
                out.insert(k.clone(), gemini(v, defs, stack)?);
            }
            "anyOf" | "oneOf" | "nullable" | "format" | "const" => {}
            _ if GEMINI_KEYS.contains(&k.as_str()) => {
                out.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
    if !out.contains_key("type") && out.contains_key("properties") {
        out.insert("type".into(), json!("OBJECT"));
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    Ok(Value::Object(out))
}

pub use abl_example_value::example_value;

/// Gemini has no `$ref`: the target is inlined (recursion is an error).
fn gemini_ref(
    r: &str,
    m: &Map<String, Value>,
    defs: &Defs<'_>,
    stack: &mut Vec<String>,
) -> Result<Value, String> {
    if stack.iter().any(|s| s == r) || stack.len() > 32 {
        return Err(format!(
            "{r} refers to itself; Gemini cannot express recursive types"
        ));
    }
    let target = defs
        .resolve(r)
        .ok_or_else(|| format!("unresolved $ref {r}"))?;
    stack.push(r.to_owned());
    let mut out = gemini(target, defs, stack)?;
    stack.pop();
    // Sibling keywords (a description next to the $ref) win.
    let rest: Map<String, Value> = m
        .iter()
        .filter(|(k, _)| *k != "$ref")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !rest.is_empty()
        && let (Some(o), Value::Object(extra)) = (
            out.as_object_mut(),
            gemini(&Value::Object(rest), defs, stack)?,
        )
    {
        o.extend(extra);
    }
    Ok(out)
}

/// Gemini has one upper-case type and `nullable` instead of a `null` type.
fn gemini_type(v: &Value, out: &mut Map<String, Value>, nullable: &mut bool) {
    match v {
        Value::String(t) => {
            if t == "null" {
                *nullable = true;
            } else {
                out.insert("type".into(), json!(t.to_ascii_uppercase()));
            }
        }
        Value::Array(ts) => {
            let named: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            *nullable |= named.contains(&"null");
            let rest: Vec<&str> = named.into_iter().filter(|t| *t != "null").collect();
            match rest.as_slice() {
                [one] => {
                    out.insert("type".into(), json!(one.to_ascii_uppercase()));
                }
                [] => {}
                many => {
                    let alts: Vec<Value> = many
                        .iter()
                        .map(|t| json!({"type": t.to_ascii_uppercase()}))
                        .collect();
                    out.insert("anyOf".into(), Value::Array(alts));
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Ticket",
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "priority": {"$ref": "#/$defs/Priority"},
                "assignee": {"anyOf": [{"$ref": "#/$defs/Person"}, {"type": "null"}]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer", "format": "uint32", "minimum": 0},
                "note": {"type": ["string", "null"], "default": null}
            },
            "required": ["title", "priority", "tags", "count"],
            "$defs": {
                "Priority": {"type": "string", "enum": ["low", "high"]},
                "Person": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}}, "required": ["name"]}
            }
        })
    }

    #[test]
    fn openai_strict_closes_and_requires_everything() {
        let s = translate(&nested(), SchemaDialect::OpenAiStrict).unwrap();
        assert_eq!(s.get("$schema"), None);
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(
            s["required"],
            json!(["assignee", "count", "note", "priority", "tags", "title"])
        );
        // Already nullable: left as is; default dropped; unknown format dropped.
        assert_eq!(s["properties"]["note"], json!({"type": ["string", "null"]}));
        assert_eq!(
            s["properties"]["count"],
            json!({"type": "integer", "minimum": 0})
        );
        let person = &s["$defs"]["Person"];
        assert_eq!(person["additionalProperties"], json!(false));
        assert_eq!(person["required"], json!(["email", "name"]));
        assert_eq!(
            person["properties"]["email"],
            json!({"type": ["string", "null"], "format": "email"})
        );
        // A ref made nullable is wrapped.
        assert_eq!(
            nullable(json!({"$ref": "#/$defs/X"})),
            json!({"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}]})
        );
        assert_eq!(
            nullable(json!({"type": "string", "enum": ["a"]})),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
    }

    #[test]
    fn gemini_inlines_refs_and_uses_nullable() {
        let s = translate(&nested(), SchemaDialect::Gemini).unwrap();
        let text = s.to_string();
        for banned in [
            "$ref",
            "$defs",
            "additionalProperties",
            "$schema",
            "uint32",
            "default",
        ] {
            assert!(!text.contains(banned), "{banned} in {text}");
        }
        assert_eq!(s["type"], json!("OBJECT"));
        assert_eq!(
            s["properties"]["priority"],
            json!({"type": "STRING", "enum": ["low", "high"]})
        );
        let assignee = &s["properties"]["assignee"];
        assert_eq!(assignee["nullable"], json!(true));
        assert_eq!(assignee["type"], json!("OBJECT"));
        assert_eq!(assignee["required"], json!(["name"]));
        assert_eq!(
            s["properties"]["note"],
            json!({"type": "STRING", "nullable": true})
        );
        assert_eq!(
            s["properties"]["tags"],
            json!({"type": "ARRAY", "items": {"type": "STRING"}})
        );
    }

    #[test]
    fn recursion_and_non_object_roots_are_rejected() {
        let tree = json!({
            "type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#"}}}
        });
        assert!(
            translate(&tree, SchemaDialect::Gemini)
                .unwrap_err()
                .contains("recursive")
        );
        assert!(translate(&tree, SchemaDialect::OpenAiStrict).is_ok());
        let list = json!({"type": "array", "items": {"type": "string"}});
        assert!(translate(&list, SchemaDialect::OpenAiStrict).is_err());
        assert!(translate(&list, SchemaDialect::AnthropicTool).is_err());
        assert!(translate(&list, SchemaDialect::Gemini).is_ok());
        let rs = ResponseSchema::new("a list!", list);
        assert_eq!(rs.name(), "a_list_");
        let err = rs.for_dialect(SchemaDialect::OpenAiStrict).unwrap_err();
        assert_eq!(
            err.category(),
            ErrorCategory::StructuredOutputSchemaRejected
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn examples_satisfy_their_schema() {
        let v = example_value(&nested());
        assert_eq!(v["priority"], json!("low"));
        assert_eq!(v["tags"], json!(["mock"]));
        assert_eq!(v["count"], json!(0));
        let validator = jsonschema::validator_for(&nested()).unwrap();
        assert!(validator.is_valid(&v), "{v}");
        let gemini = translate(&nested(), SchemaDialect::Gemini).unwrap();
        let g = example_value(&gemini);
        assert!(validator.is_valid(&g), "{g}");
    }

    #[test]
    fn translation_is_cached_and_idempotent() {
        let rs = ResponseSchema::new("t", nested());
        let a: *const Value = rs.for_dialect(SchemaDialect::OpenAiStrict).unwrap();
        let b: *const Value = rs.for_dialect(SchemaDialect::OpenAiStrict).unwrap();
        assert_eq!(a, b);
        let once = translate(&nested(), SchemaDialect::OpenAiStrict).unwrap();
        assert_eq!(translate(&once, SchemaDialect::OpenAiStrict).unwrap(), once);
        for (d, r) in translate_all(&nested()) {
            assert!(r.is_ok(), "{d:?}");
        }
    }
}
