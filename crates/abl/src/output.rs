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
