//! The results of a job, read as they download: one [`BatchLine`] per
//! request, from one or more files (OpenAI's output and error files), one
//! JSONL (Anthropic, Gemini's file jobs) or the job itself (Gemini's
//! inline jobs).

use std::collections::VecDeque;

use serde_json::Value;

use crate::error::CallError;
use crate::model::LlmResponse;

/// One result: the request's `custom_id` and its answer or error,
/// classified as the online route classifies it.
#[derive(Debug)]
pub struct BatchLine {
    /// The request's `custom_id`.
    pub custom_id: String,
    /// The answer, or the error in the online path's categories.
    pub result: Result<LlmResponse, CallError>,
}

/// The `custom_id` a results line names (OpenAI's and Anthropic's lines).
#[cfg(any(feature = "openai", feature = "anthropic"))]
pub(crate) fn custom_id_of(v: &Value) -> Result<String, CallError> {
    v.get("custom_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| crate::providers::http::shape_error("a results line without 'custom_id'"))
}

/// How one provider reads one result: the parsed line, and the custom id
/// of the request at the line's position (for a line that names none).
pub(crate) type ReadLine = fn(&Value, Option<&str>) -> Result<BatchLine, CallError>;

/// The results of one job, read as they download (borrowing the job's
/// custom ids, for responses that name none).
pub struct BatchResults<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    /// Nothing to read (a job that ended before any request ran).
    Empty,
    Read(Box<Reader<'a>>),
}

struct Reader<'a> {
    endpoint: crate::providers::http::Endpoint,
    read: ReadLine,
    /// Paths still to open.
    paths: VecDeque<String>,
    /// The file being read.
    lines: Option<crate::providers::http::Lines>,
    /// Results carried inline in the job.
    inline: std::vec::IntoIter<Value>,
    /// The job's custom ids in submission order.
    order: &'a [String],
    /// Position of the next line in its source.
    position: usize,
}

impl std::fmt::Debug for BatchResults<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchResults").finish_non_exhaustive()
    }
}

impl<'a> BatchResults<'a> {
    /// No results at all.
    pub(crate) fn empty() -> Self {
        Self {
            inner: Inner::Empty,
        }
    }

    /// The results of `job` read from its results files, each line
    /// through `read`.
    #[cfg(any(feature = "openai", feature = "anthropic"))]
    pub(crate) fn of_files(
        endpoint: crate::providers::http::Endpoint,
        read: ReadLine,
        job: &super::BatchJob,
    ) -> Self {
        Self::new(endpoint, read, job.results.clone(), Vec::new(), &[])
    }

    /// Results read from `paths` (GETs under `endpoint`, one after the
    /// other) and from `inline` values, each through `read`.
    pub(crate) fn new(
        endpoint: crate::providers::http::Endpoint,
        read: ReadLine,
        paths: Vec<String>,
        inline: Vec<Value>,
        order: &'a [String],
    ) -> Self {
        Self {
            inner: Inner::Read(Box::new(Reader {
                endpoint,
                read,
                paths: paths.into(),
                lines: None,
                inline: inline.into_iter(),
                order,
                position: 0,
            })),
        }
    }

    /// The next result, or `None` when all are read.
    pub async fn next(&mut self) -> Option<Result<BatchLine, CallError>> {
        match &mut self.inner {
            Inner::Empty => None,
            Inner::Read(r) => r.next().await,
        }
    }
}

impl Reader<'_> {
    async fn next(&mut self) -> Option<Result<BatchLine, CallError>> {
        if let Some(v) = self.inline.next() {
            return Some(self.read_value(&v));
        }
        loop {
            if let Some(lines) = self.lines.as_mut() {
                match lines.next().await {
                    Some(Ok(l)) => {
                        return Some(
                            serde_json::from_slice::<Value>(&l)
                                .map_err(|e| {
                                    crate::providers::http::shape_error(&format!(
                                        "a results line is not JSON: {e}"
                                    ))
                                })
                                .and_then(|v| self.read_value(&v)),
                        );
                    }
                    Some(Err(e)) => return Some(Err(e)),
                    None => self.lines = None,
                }
            }
            let path = self.paths.pop_front()?;
            self.position = 0;
            match self.endpoint.get_lines(&path).await {
                Ok(l) => self.lines = Some(l),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn read_value(&mut self, v: &Value) -> Result<BatchLine, CallError> {
        let at = self.order.get(self.position).map(String::as_str);
        self.position += 1;
        (self.read)(v, at)
    }
}
