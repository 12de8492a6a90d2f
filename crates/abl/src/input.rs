//! Input files: JSONL, CSV with a header, or plain text, read as a stream.
//! Every problem names the file, the line and the field.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use async_batch_llm::attachment::parse_content;
use async_batch_llm::{Attachment, Item, Message, Prompt, Role};
use serde_json::{Map, Value};

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
    /// One prompt per line.
    Text,
}

impl Format {
    /// The format of `path` by its extension (stdin: JSONL).
    pub fn detect(path: &str) -> Format {
        let ext = Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("csv") => Format::Csv,
            Some("txt" | "text") => Format::Text,
            _ => Format::Jsonl,
        }
    }
}

/// A bad input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// `file:line`.
    pub place: String,
    /// The field, when one is at fault.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: field '{field}': {}", self.place, self.message),
            None => write!(f, "{}: {}", self.place, self.message),
        }
    }
}

impl std::error::Error for InputError {}

/// A `{field}` template. `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    /// Parses a template; an unclosed or empty placeholder is an error, and
    /// so is a template without one (every item would ask the same).
    pub fn parse(t: &str) -> Result<Self, String> {
        let parsed = Self::parse_fixed(t)?;
        if !parsed.parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err("template: it has no {field} placeholder".into());
        }
        Ok(parsed)
    }

    /// Parses a template that may have no placeholder: the prompt of items
    /// that differ by their attachments ("Extract the total of this
    /// invoice" with `--attach`).
    pub fn parse_fixed(t: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = t.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let rest = &t[i + 1..];
                    let end = rest.find('}').ok_or_else(|| {
                        format!("template: '{{' at character {} is never closed", i + 1)
                    })?;
                    let name = rest[..end].trim();
                    if name.is_empty() || name.contains('{') {
                        return Err(format!(
                            "template: empty or nested placeholder at character {}",
                            i + 1
                        ));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Field(name.to_owned()));
                    for _ in 0..=end {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(format!(
                        "template: '}}' at character {} has no opening '{{' (write '}}}}' for a brace)",
                        i + 1
                    ));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { parts })
    }

    fn render(&self, record: &Map<String, Value>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match record.get(f) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Null) | None => return Err(f.clone()),
                    Some(other) => out.push_str(&other.to_string()),
                },
            }
        }
        Ok(out)
    }
}

/// How records become items.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The field holding the id (`id`); absent ids are the line number,
    /// unless the field was named by the user.
    pub id_field: String,
    /// The user named the id field: a record without it is an error.
    pub id_field_required: bool,
    /// The field holding the prompt (`prompt`), unless a template is given.
    pub prompt_field: String,
    /// A prompt template over the record's fields.
    pub template: Option<Template>,
    /// Fields holding a path, URL or data URL (or an array of them) to
    /// attach to the prompt (`--attach`).
    pub attach: Vec<String>,
    /// Where relative attachment paths start: the input file's folder
    /// (the working directory for stdin).
    pub base_dir: Option<std::path::PathBuf>,
}

fn role(s: &str) -> Option<Role> {
    match s {
        "system" | "developer" => Some(Role::System),
        "user" => Some(Role::User),
        "assistant" => Some(Role::Assistant),
        _ => None,
    }
}

impl Mapping {
    /// Turns one record into an item; the other fields become the context.
    pub fn item(
        &self,
        mut record: Map<String, Value>,
        place: &str,
        line: u64,
    ) -> Result<Item, InputError> {
        let err = |field: Option<&str>, message: String| InputError {
            place: place.to_owned(),
            field: field.map(str::to_owned),
            message,
        };
        let id = match record.remove(&self.id_field) {
            None | Some(Value::Null) if self.id_field_required => {
                return Err(err(
                    Some(&self.id_field),
                    "is missing (--id-field names it, so every record needs it)".into(),
                ));
            }
            None | Some(Value::Null) => line.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(err(
                    Some(&self.id_field),
                    "must be a non-empty string or a number".into(),
                ));
            }
        };
        let prompt = if let Some(t) = &self.template {
            let text = t
                .render(&record)
                .map_err(|f| err(Some(&f), "is missing (the template uses it)".into()))?;
            Prompt::Text(text)
        } else if let Some(v) = record.remove(&self.prompt_field) {
            match v {
                Value::String(s) => Prompt::Text(s),
                _ => return Err(err(Some(&self.prompt_field), "must be a string".into())),
            }
        } else if let Some(m) = record.remove("messages") {
            let Value::Array(list) = m else {
                return Err(err(
                    Some("messages"),
                    "must be an array of {\"role\", \"content\"}".into(),
                ));
            };
            let mut msgs = Vec::with_capacity(list.len());
            for (i, m) in list.iter().enumerate() {
                let field = format!("messages[{i}]");
                let r = m.get("role").and_then(Value::as_str).and_then(role);
                let (Some(r), Some(c)) = (r, m.get("content")) else {
                    return Err(err(
                        Some(&field),
                        "needs a role (system, user, assistant) and a content (a string or an array of parts)".into(),
                    ));
                };
                let (text, attachments) = parse_content(c, self.base_dir.as_deref())
                    .map_err(|e| err(Some(&format!("{field}.content[{}]", e.index)), e.message))?;
                let mut msg = Message::new(r, text);
                msg.attachments = attachments;
                msgs.push(msg);
            }
            if !msgs.iter().any(|m| m.role == Role::User) {
                return Err(err(Some("messages"), "has no user message".into()));
            }
            Prompt::Messages(msgs)
        } else {
            return Err(err(
                Some(&self.prompt_field),
                "is missing (and there is no \"messages\" array; name the field that holds the text, or give --template)"
                    .into(),
            ));
        };
        let prompt = self.attached(prompt, &record, &err)?;
        let empty = match &prompt {
            Prompt::Text(t) => t.trim().is_empty(),
            Prompt::Messages(m) => m
                .iter()
                .filter(|m| m.role != Role::System)
                .all(|m| m.content.trim().is_empty() && m.attachments.is_empty()),
        };
        if empty {
            let field = if self.template.is_some() {
                "template"
            } else if matches!(prompt, Prompt::Messages(_)) {
                "messages"
            } else {
                &self.prompt_field
            };
            return Err(err(
                Some(field),
                "the prompt is empty (a call would be paid for nothing)".into(),
            ));
        }
        let context = (!record.is_empty()).then_some(Value::Object(record));
        Ok(Item {
            id,
            prompt,
            context,
        })
    }
}

impl Mapping {
    /// `prompt` with the `--attach` fields' files added to its last user
    /// message (a plain text becomes a one-message chat).
    fn attached(
        &self,
        prompt: Prompt,
        record: &Map<String, Value>,
        err: &dyn Fn(Option<&str>, String) -> InputError,
    ) -> Result<Prompt, InputError> {
        if self.attach.is_empty() {
            return Ok(prompt);
        }
        let mut parts = Vec::new();
        for field in &self.attach {
            let refs: Vec<&str> = match record.get(field) {
                Some(Value::String(s)) => vec![s.as_str()],
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
                    a.iter().filter_map(Value::as_str).collect()
                }
                None | Some(Value::Null) => {
                    return Err(err(Some(field), "is missing (--attach names it)".into()));
                }
                Some(_) => {
                    return Err(err(
                        Some(field),
                        "must be a path, a URL or a data: URL (or an array of them)".into(),
                    ));
                }
            };
            for r in refs {
                let r = r.trim();
                if r.is_empty() {
                    // A call without its file would be paid for nothing.
                    return Err(err(Some(field), "is empty (--attach names it)".into()));
                }
                parts.push(
                    Attachment::from_reference(r, self.base_dir.as_deref())
                        .map_err(|e| err(Some(field), e))?,
                );
            }
        }
        let mut messages = match prompt {
            Prompt::Text(t) => vec![Message::new(Role::User, t)],
            Prompt::Messages(m) => m,
        };
        if let Some(last) = messages.iter_mut().rev().find(|m| m.role == Role::User) {
            last.attachments.extend(parts);
        }
        Ok(Prompt::Messages(messages))
    }
}

/// The ids seen so far, to find a duplicate as it arrives. Keeps a 128-bit
/// hash of each id (16 bytes, ~20 with the table), not the id: two million
/// ids take ~40 MiB; two ids share a hash with odds below 10^-26.
#[derive(Debug, Default)]
pub struct IdSet {
    seen: std::collections::HashSet<u128>,
}

impl IdSet {
    fn key(id: &str) -> u128 {
        use std::hash::{Hash as _, Hasher as _};
        let half = |salt: u8| {
            let mut h = std::hash::DefaultHasher::new();
            salt.hash(&mut h);
            id.hash(&mut h);
            h.finish()
        };
        (u128::from(half(1)) << 64) | u128::from(half(2))
    }

    /// Adds `id`; false when it was there already.
    pub fn insert(&mut self, id: &str) -> bool {
        self.seen.insert(Self::key(id))
    }

    /// Whether `id` was added.
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(&Self::key(id))
    }

    /// How many ids were added.
    pub fn len(&self) -> usize {
        self.seen.len()
    }
}

/// The line of the first item of `path` whose id is `id` (for the message
/// about a duplicate; reads the file again).
pub fn first_line_of(path: &str, format: Format, mapping: &Mapping, id: &str) -> Option<u64> {
    let mut r = Reader::open(path, format, mapping.clone()).ok()?;
    while let Some(item) = r.next_item() {
        if item.ok()?.id == id {
            return Some(r.line);
        }
    }
    None
}

/// Reads items from a source one at a time.
pub struct Reader {
    name: String,
    format: Format,
    lines: Box<dyn BufRead + Send>,
    csv: Option<csv::Reader<Box<dyn Read + Send>>>,
    headers: Vec<String>,
    line: u64,
    mapping: Mapping,
    buf: String,
    crlf: bool,
}

impl Reader {
    /// Opens `path` (`-` is stdin).
    pub fn open(path: &str, format: Format, mapping: Mapping) -> Result<Self, InputError> {
        let source: Box<dyn Read + Send> = if path == "-" {
            Box::new(std::io::stdin())
        } else {
            let f = File::open(Path::new(path)).map_err(|e| InputError {
                place: path.to_owned(),
                field: None,
                message: format!("cannot open: {e}"),
            })?;
            Box::new(f)
        };
        let name = if path == "-" {
            "<stdin>".to_owned()
        } else {
            path.to_owned()
        };
        let mut r = Reader {
            name,
            format,
            lines: Box::new(BufReader::new(std::io::empty())),
            csv: None,
            headers: Vec::new(),
            line: 0,
            mapping,
            buf: String::new(),
            crlf: false,
        };
        if format == Format::Csv {
            let mut peek = BufReader::with_capacity(1 << 16, source);
            if let Ok(head) = peek.fill_buf() {
                r.crlf = head
                    .iter()
                    .position(|b| *b == b'\n')
                    .is_some_and(|i| i > 0 && head[i - 1] == b'\r');
            }
            let source: Box<dyn Read + Send> = Box::new(peek);
            let mut c = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(false)
                .from_reader(source);
            let headers = c.headers().map_err(|e| r.csv_error(&e))?;
            r.headers = headers.iter().map(str::to_owned).collect();
            if r.headers.is_empty() {
                return Err(InputError {
                    place: format!("{}:1", r.name),
                    field: None,
                    message: "the CSV header row is empty".into(),
                });
            }
            if r.mapping.id_field_required && !r.headers.contains(&r.mapping.id_field) {
                return Err(InputError {
                    place: format!("{}:1", r.name),
                    field: Some(r.mapping.id_field.clone()),
                    message: format!(
                        "--id-field names a column the header does not have (columns: {})",
                        r.headers.join(", ")
                    ),
                });
            }
            r.line = 1;
            r.csv = Some(c);
        } else {
            r.lines = Box::new(BufReader::with_capacity(1 << 16, source));
        }
        Ok(r)
    }

    fn csv_error(&self, e: &csv::Error) -> InputError {
        let line = e.position().map_or(self.line + 1, csv::Position::line);
        InputError {
            place: format!("{}:{line}", self.name),
            field: None,
            message: format!("bad CSV: {e}"),
        }
    }

    /// The line of the last item read.
    pub fn line(&self) -> u64 {
        self.line
    }

    fn place(&self) -> String {
        format!("{}:{}", self.name, self.line)
    }

    /// The next item, an input error, or `None` at the end.
    pub fn next_item(&mut self) -> Option<Result<Item, InputError>> {
        if self.format == Format::Csv {
            return self.next_csv();
        }
        loop {
            self.buf.clear();
            match self.lines.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(InputError {
                        place: format!("{}:{}", self.name, self.line + 1),
                        field: None,
                        message: format!("cannot read: {e}"),
                    }));
                }
            }
            self.line += 1;
            let text = self.buf.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let place = self.place();
            return Some(match self.format {
                Format::Text => Ok(Item::new(self.line.to_string(), text)),
                _ => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(m)) => self.mapping.item(m, &place, self.line),
                    Ok(_) => Err(InputError {
                        place,
                        field: None,
                        message: "expected a JSON object".into(),
                    }),
                    Err(e) => Err(InputError {
                        place,
                        field: None,
                        message: format!("malformed JSON: {e}"),
                    }),
                },
            });
        }
    }

    fn next_csv(&mut self) -> Option<Result<Item, InputError>> {
        let c = self.csv.as_mut()?;
        let mut rec = csv::StringRecord::new();
        match c.read_record(&mut rec) {
            Ok(false) => None,
            Ok(true) => {
                // With CRLF line ends the csv reader's line count lags by one.
                self.line = rec
                    .position()
                    .map_or(self.line + 1, |p| p.line() + u64::from(self.crlf));
                let place = self.place();
                let map: Map<String, Value> = self
                    .headers
                    .iter()
                    .zip(rec.iter())
                    .map(|(h, v)| (h.clone(), Value::String(v.to_owned())))
                    .collect();
                Some(self.mapping.item(map, &place, self.line))
            }
            Err(e) => {
                let err = self.csv_error(&e);
                self.csv = None;
                Some(Err(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn mapping() -> Mapping {
        Mapping {
            id_field: "id".into(),
            id_field_required: false,
            prompt_field: "prompt".into(),
            template: None,
            attach: Vec::new(),
            base_dir: None,
        }
    }

    #[test]
    fn templates() {
        let t = Template::parse("Classify: {text} ({{lang}}: {lang})").unwrap();
        let rec: Map<String, Value> =
            serde_json::from_str(r#"{"text": "hi", "lang": "en"}"#).unwrap();
        assert_eq!(t.render(&rec).unwrap(), "Classify: hi ({lang}: en)");
        assert!(
            Template::parse("Classify: {text")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(Template::parse("no fields").is_err());
        assert!(Template::parse("a } b {x}").is_err());
        assert!(Template::parse("{}").is_err());
    }

    #[test]
    fn records_to_items() {
        let m = mapping();
        let rec = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        let it = m
            .item(rec(r#"{"id": 7, "prompt": "p", "lang": "en"}"#), "f:1", 1)
            .unwrap();
        assert_eq!(
            (it.id.as_str(), it.prompt.text().into_owned()),
            ("7", "p".to_owned())
        );
        assert_eq!(it.context, Some(serde_json::json!({"lang": "en"})));
        let it = m.item(rec(r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}"#), "f:2", 2).unwrap();
        assert_eq!(it.id, "2");
        assert_eq!(it.prompt.system().as_deref(), Some("s"));
        let e = m
            .item(rec(r#"{"id": "x", "text": "t"}"#), "f:3", 3)
            .unwrap_err();
        assert_eq!(
            e.to_string().split(" (").next().unwrap(),
            "f:3: field 'prompt': is missing"
        );
        let e = m.item(rec(r#"{"prompt": 5}"#), "f:4", 4).unwrap_err();
        assert_eq!(e.to_string(), "f:4: field 'prompt': must be a string");
        let e = m
            .item(
                rec(r#"{"messages": [{"role": "bot", "content": "x"}]}"#),
                "f:5",
                5,
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("f:5: field 'messages[0]'"));
    }
}

#[cfg(test)]
mod csv_tests {
    use super::*;

    #[test]
    fn csv_errors_name_the_data_line() {
        let dir = std::env::temp_dir().join(format!("abl-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.csv");
        for eol in ["\n", "\r\n"] {
            std::fs::write(&p, format!("id,text{eol}a,\"multi\nline\"{eol}b,{eol}")).unwrap();
            let m = Mapping {
                template: Some(Template::parse("{text}").unwrap()),
                ..super::tests::mapping()
            };
            let mut r = Reader::open(p.to_str().unwrap(), Format::Csv, m).unwrap();
            let first = r.next_item().unwrap().unwrap();
            assert_eq!(
                (first.id.as_str(), first.prompt.text().into_owned()),
                ("a", "multi\nline".to_owned())
            );
            let e = r.next_item().unwrap().unwrap_err();
            assert!(e.message.contains("empty"), "{e}");
            assert!(r.next_item().is_none());
            let m = Mapping {
                template: Some(Template::parse("{txt}").unwrap()),
                ..super::tests::mapping()
            };
            let mut r = Reader::open(p.to_str().unwrap(), Format::Csv, m).unwrap();
            let e = r.next_item().unwrap().unwrap_err();
            assert_eq!(e.place, format!("{}:2", p.display()));
            let e = r.next_item().unwrap().unwrap_err();
            assert_eq!(e.place, format!("{}:4", p.display()));
        }
    }
}
