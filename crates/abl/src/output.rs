//! Where a run's results go: one JSON line per result, into
//! `OUTPUT.abl-partial` (renamed over `OUTPUT` when the run ends with every
//! line written) or streamed to stdout.
//!
//! A write that fails does not end the run at once: [`Results::write`]
//! says so, the caller stops the run and keeps draining so that every call
//! in flight ends cleanly, and [`Results::finish`] reports why. The earlier
//! `OUTPUT` is then left exactly as it was.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_batch_llm::ItemResult;
use serde_json::Value;

use crate::paths::Replacement;
use crate::progress::eprintln_safe;

/// Why writing the results stopped.
pub enum WriteFailure {
    /// The reader of stdout went away (`abl run … | head`).
    Pipe,
    /// Anything else (a full disk).
    Io(std::io::Error),
}

impl From<std::io::Error> for WriteFailure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Self::Pipe
        } else {
            Self::Io(e)
        }
    }
}

/// A file being replaced, or stdout.
enum Sink {
    File(Replacement),
    Stdout(std::io::BufWriter<std::io::Stdout>),
}

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(buf),
            Sink::Stdout(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
        }
    }
}

/// The results of a run as they are written.
pub struct Results {
    sink: Sink,
    line: Vec<u8>,
    last_flush: Instant,
    failure: Option<WriteFailure>,
}

impl Results {
    /// Results into `target`'s partial file, or to stdout without one.
    pub fn create(target: Option<&Path>) -> anyhow::Result<Self> {
        let sink = match target {
            Some(t) => Sink::File(Replacement::create(t)?),
            None => Sink::Stdout(std::io::BufWriter::new(std::io::stdout())),
        };
        Ok(Self {
            sink,
            line: Vec::with_capacity(1024),
            last_flush: Instant::now(),
            failure: None,
        })
    }

    /// The partial file being written, if any (the progress line names it).
    pub fn partial(&self) -> Option<PathBuf> {
        match &self.sink {
            Sink::File(f) => f.partial().map(Path::to_path_buf),
            Sink::Stdout(_) => None,
        }
    }

    /// Writes one result (flushed at least once a second, so `tail -f`
    /// follows). `false` when writing has failed, now or before: the run
    /// should stop.
    pub fn write(&mut self, r: &ItemResult<Value>) -> anyhow::Result<bool> {
        if self.failure.is_some() {
            return Ok(false);
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, r).context("serializing a result")?;
        self.line.push(b'\n');
        let written = self.sink.write_all(&self.line).and_then(|()| {
            if self.last_flush.elapsed() >= Duration::from_secs(1) {
                self.last_flush = Instant::now();
                self.sink.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.failure = Some(e.into());
        }
        Ok(self.failure.is_none())
    }

    /// Flushes and, when every line was written, puts the output file in
    /// place; otherwise says where the partial results are. The failure,
    /// if writing failed.
    pub fn finish(mut self) -> anyhow::Result<Option<WriteFailure>> {
        if self.failure.is_none()
            && let Err(e) = self.sink.flush()
        {
            self.failure = Some(e.into());
        }
        match (&self.failure, self.sink) {
            (None, Sink::File(f)) => {
                let target = f.target().to_path_buf();
                f.commit().with_context(|| {
                    format!("{}: cannot put the output in place", target.display())
                })?;
            }
            (Some(_), Sink::File(f)) => {
                if let Some(partial) = f.partial() {
                    eprintln_safe(&format!(
                        "abl: {} was left as it was; the results written before the failure are in {}",
                        f.target().display(),
                        partial.display()
                    ));
                }
            }
            (_, Sink::Stdout(_)) => {}
        }
        Ok(self.failure)
    }
}

/// How reading an output file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Every line was a whole record.
    Whole,
    /// The last line was cut short (no newline, not a whole record): a run
    /// is still writing it, or died mid-write. It was not read.
    Torn,
}

/// Reads the results of an output file of `abl run` (or its partial file)
/// one at a time into `each` (with the line's number and text), skipping
/// blank lines. A line that is not a result is an error naming the file
/// and line; a torn last line is left for the caller to judge.
pub fn read_results(
    path: &Path,
    mut each: impl FnMut(u64, &str, ItemResult<Value>) -> Result<(), crate::exit::UsageError>,
) -> Result<Tail, crate::exit::UsageError> {
    use std::io::BufRead as _;
    let usage = |m: String| crate::exit::UsageError(m);
    let f = std::fs::File::open(path)
        .map_err(|e| usage(format!("{}: cannot open: {e}", path.display())))?;
    let mut reader = std::io::BufReader::new(f);
    let mut line = String::new();
    for n in 1.. {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| usage(format!("{}:{n}: cannot read: {e}", path.display())))?;
        if read == 0 {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let r: ItemResult<Value> = match serde_json::from_str(&line) {
            Ok(r) => r,
            // A last line cut short by a writer still at work (or killed).
            Err(_) if !line.ends_with('\n') => return Ok(Tail::Torn),
            Err(e) => {
                return Err(usage(format!(
                    "{}:{n}: not a result record of abl run ({e})",
                    path.display()
                )));
            }
        };
        each(n, &line, r)?;
    }
    Ok(Tail::Whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"id":"a","index":0,"ok":true,"output":"x","usage":{"input_tokens":1,"output_tokens":1,"total_tokens":2},"attempts":1,"tries":1,"timing":{"total_ms":1.0,"cooldown_wait_ms":0.0,"admission_wait_ms":0.0,"execution_ms":1.0,"backoff_ms":0.0,"tries":[]},"replayed":false}"#;

    fn read(text: &str) -> (Result<Tail, String>, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(&p, text).unwrap();
        let mut lines = Vec::new();
        let r = read_results(&p, |n, _, _| {
            lines.push(n);
            Ok(())
        });
        (r.map_err(|e| e.0), lines)
    }

    #[test]
    fn whole_lines_torn_tails_and_bad_lines() {
        assert_eq!(
            read(&format!("{LINE}\n\n{LINE}\n")),
            (Ok(Tail::Whole), vec![1, 3])
        );
        // A whole record without its newline is still a record.
        assert_eq!(
            read(&format!("{LINE}\n{LINE}")),
            (Ok(Tail::Whole), vec![1, 2])
        );
        // Cut short while being written: left out, and said.
        assert_eq!(
            read(&format!("{LINE}\n{{\"id\":\"b\",\"in")),
            (Ok(Tail::Torn), vec![1])
        );
        let (r, _) = read(&format!("{LINE}\nnot json\n{LINE}\n"));
        let e = r.unwrap_err();
        assert!(e.contains("out.jsonl:2: not a result record"), "{e}");
    }
}
