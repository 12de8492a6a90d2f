//! The JSONL store: a manifest line, then one record per line, append-only.
//! A torn last line (a crash mid-write) is cut off on open, so that item
//! runs again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::record::check_version;
use super::{
    CHECKPOINT_SCHEMA, CheckpointStore, EncodedRecord, Identity, Manifest, Record, StoredLine,
};
use crate::error::Error;

struct State {
    file: File,
    end: u64,
    /// id → (offset, length) of its latest line.
    index: HashMap<String, (u64, u32)>,
    /// ids in first-write order, for `for_each`.
    order: Vec<String>,
}

/// Append-only JSONL checkpoint.
pub struct JsonlStore {
    path: PathBuf,
    fsync: bool,
    manifest: Option<Manifest>,
    state: Mutex<State>,
    reader: File,
    repaired: Option<u64>,
}

impl std::fmt::Debug for JsonlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlStore")
            .field("path", &self.path)
            .field("fsync", &self.fsync)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad(path: &Path, line: u64, message: impl Into<String>) -> Error {
    Error::Format {
        place: format!("{}:{line}", path.display()),
        message: message.into(),
    }
}

/// Longest span a chunk lookup reads at once.
const SPAN_MAX: u64 = 16 << 20;

/// The fields of a line the index needs: a manifest has `schema`, a
/// record `v` and `id`; the rest is checked for syntax only.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(default)]
    v: u32,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

impl JsonlStore {
    /// Opens (or creates) the store at `path` for a run of `identity`;
    /// `fsync` makes every commit durable against power loss, not just a
    /// process crash.
    pub fn open(path: impl AsRef<Path>, identity: &Identity, fsync: bool) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut index = HashMap::new();
        let mut order = Vec::new();
        let mut manifest = None;
        let mut good_end = 0u64;
        let mut repaired = None;
        {
            let mut reader = BufReader::new(File::open(&path).map_err(|e| io(&path, e))?);
            let mut line = String::new();
            let mut offset = 0u64;
            let mut n = 0u64;
            loop {
                line.clear();
                let read = reader.read_line(&mut line).map_err(|e| io(&path, e))?;
                if read == 0 {
                    break;
                }
                n += 1;
                let complete = line.ends_with('\n');
                let text = line.trim_end();
                // Only what the index needs is read here (a whole record
                // is parsed when it is used): four times faster on a large
                // checkpoint.
                let parsed: Result<Head<'_>, _> = serde_json::from_str(text);
                match (complete, parsed) {
                    (true, Ok(h)) if n == 1 && h.schema.is_some() => {
                        let m: Manifest = serde_json::from_str(text)
                            .map_err(|e| bad(&path, 1, format!("bad manifest: {e}")))?;
                        if m.schema != CHECKPOINT_SCHEMA {
                            return Err(bad(
                                &path,
                                1,
                                format!("not a checkpoint (schema {:?})", m.schema),
                            ));
                        }
                        manifest = Some(m);
                    }
                    (true, Ok(h)) => {
                        check_version(h.v).map_err(|e| bad(&path, n, e))?;
                        let id =
                            h.id.ok_or_else(|| bad(&path, n, "not a checkpoint record: no id"))?
                                .into_owned();
                        if !index.contains_key(&id) {
                            order.push(id.clone());
                        }
                        let len = u32::try_from(text.len())
                            .map_err(|_| bad(&path, n, "record too long"))?;
                        index.insert(id, (offset, len));
                    }
                    // The last line, cut short by a crash: repaired below.
                    (false, _) => {
                        repaired = Some(n);
                        break;
                    }
                    (true, Err(e)) => {
                        // A bad line that is not the last cannot be a torn write.
                        let mut rest = String::new();
                        let more = reader.read_line(&mut rest).map_err(|e| io(&path, e))?;
                        if more > 0 {
                            return Err(bad(&path, n, format!("not a checkpoint record: {e}")));
                        }
                        repaired = Some(n);
                        break;
                    }
                }
                offset += read as u64;
                good_end = offset;
            }
        }
        if repaired.is_some() {
            file.set_len(good_end).map_err(|e| io(&path, e))?;
            tracing::warn!(path = %path.display(), line = repaired, "checkpoint: cut off a torn last line; that item runs again");
        }
        file.seek(SeekFrom::Start(good_end))
            .map_err(|e| io(&path, e))?;
        if manifest.is_none() && good_end == 0 {
            let m = Manifest::new(identity);
            let mut line = serde_json::to_string(&m).map_err(|e| bad(&path, 1, e.to_string()))?;
            line.push('\n');
            file.write_all(line.as_bytes()).map_err(|e| io(&path, e))?;
            file.flush().map_err(|e| io(&path, e))?;
            good_end = line.len() as u64;
            manifest = Some(m);
        }
        let reader = File::open(&path).map_err(|e| io(&path, e))?;
        Ok(Self {
            path,
            fsync,
            manifest,
            state: Mutex::new(State {
                file,
                end: good_end,
                index,
                order,
            }),
            reader,
            repaired,
        })
    }

    /// The line number of a torn last line that was cut off on open.
    pub fn repaired_line(&self) -> Option<u64> {
        self.repaired
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read_line(&self, offset: u64, len: u32) -> Result<String, Error> {
        self.read_span(offset, offset + u64::from(len))
    }

    /// The bytes `from..to` of the file as text (whole lines, so whole
    /// characters).
    fn read_span(&self, from: u64, to: u64) -> Result<String, Error> {
        let len = usize::try_from(to.saturating_sub(from)).map_err(|_| Error::Format {
            place: format!("{} at byte {from}", self.path.display()),
            message: "span too long to read".into(),
        })?;
        let mut buf = vec![0u8; len];
        self.reader
            .read_exact_at(&mut buf, from)
            .map_err(|e| io(&self.path, e))?;
        String::from_utf8(buf).map_err(|e| Error::Format {
            place: format!("{} at byte {from}", self.path.display()),
            message: e.to_string(),
        })
    }

    fn read(&self, offset: u64, len: u32) -> Result<Record, Error> {
        let text = self.read_line(offset, len)?;
        Record::from_json(&text).map_err(|e| Error::Format {
            place: format!("{} at byte {offset}", self.path.display()),
            message: e,
        })
    }
}

impl CheckpointStore for JsonlStore {
    fn lookup(&self, id: &str) -> Result<Option<Record>, Error> {
        let at = self.lock().index.get(id).copied();
        at.map(|(o, l)| self.read(o, l)).transpose()
    }

    fn lookup_raw(&self, ids: &[&str]) -> Result<Vec<Option<StoredLine>>, Error> {
        let at: Vec<_> = {
            let st = self.lock();
            ids.iter().map(|id| st.index.get(*id).copied()).collect()
        };
        // The lines a resume asks for together were mostly written together:
        // read the span that holds them at once when it is mostly theirs.
        let (lo, hi) = at
            .iter()
            .flatten()
            .fold((u64::MAX, 0u64), |(lo, hi), &(o, l)| {
                (lo.min(o), hi.max(o + u64::from(l)))
            });
        let wanted: u64 = at.iter().flatten().map(|&(_, l)| u64::from(l)).sum();
        if lo < hi && hi - lo <= SPAN_MAX && hi - lo <= 4 * wanted {
            let buf = Arc::new(self.read_span(lo, hi)?);
            return Ok(at
                .into_iter()
                .map(|a| {
                    a.map(|(o, l)| {
                        let start = usize::try_from(o - lo).unwrap_or(usize::MAX);
                        StoredLine::shared(
                            Arc::clone(&buf),
                            start..start.saturating_add(l as usize),
                        )
                    })
                })
                .collect());
        }
        at.into_iter()
            .map(|a| {
                a.map(|(o, l)| self.read_line(o, l).map(StoredLine::from))
                    .transpose()
            })
            .collect()
    }

    fn write_batch(&self, records: &[EncodedRecord]) -> Result<(), Error> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.body.len() + 1).sum());
        let mut spans = Vec::with_capacity(records.len());
        for r in records {
            spans.push((buf.len(), r.body.len()));
            buf.extend_from_slice(r.body.as_bytes());
            buf.push(b'\n');
        }
        let mut st = self.lock();
        st.file.write_all(&buf).map_err(|e| io(&self.path, e))?;
        st.file.flush().map_err(|e| io(&self.path, e))?;
        if self.fsync {
            st.file.sync_data().map_err(|e| io(&self.path, e))?;
        }
        let base = st.end;
        for (r, (start, len)) in records.iter().zip(spans) {
            if !st.index.contains_key(&r.id) {
                st.order.push(r.id.clone());
            }
            st.index
                .insert(r.id.clone(), (base + start as u64, len as u32));
        }
        st.end += buf.len() as u64;
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(Record) -> Result<(), Error>) -> Result<(), Error> {
        let (order, index) = {
            let st = self.lock();
            (st.order.clone(), st.index.clone())
        };
        for id in order {
            if let Some((o, l)) = index.get(&id) {
                f(self.read(*o, *l)?)?;
            }
        }
        Ok(())
    }

    fn manifest(&self) -> Option<Manifest> {
        self.manifest.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_with(lines: &[&str]) -> Result<JsonlStore, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let manifest = serde_json::to_string(&Manifest::new(&Identity::default())).unwrap();
        let mut text = manifest + "\n";
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        let store = JsonlStore::open(&path, &Identity::default(), false);
        drop(dir);
        store
    }

    const GOOD: &str = r#"{"v":2,"id":"a","item_fp":"f","identity_fp":"i","result":{"id":"a","ok":true,"output":1,"usage":{"input":1,"output":1,"total":2},"attempts":1,"tries":1,"timing":{"total_ms":1}}}"#;

    #[test]
    fn a_chunk_lookup_reads_near_lines_at_once_and_far_ones_apart() {
        let lines: Vec<String> = (0..100)
            .map(|i| GOOD.replace("\"a\"", &format!("\"r{i}\"")))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let store = open_with(&refs).unwrap();
        let text = |got: Vec<Option<StoredLine>>| -> Vec<Option<String>> {
            got.into_iter()
                .map(|l| l.map(|l| l.as_str().to_owned()))
                .collect()
        };
        // Near each other: one span (lines 5 to 7, one missing id).
        let near = text(store.lookup_raw(&["r6", "r5", "missing", "r7"]).unwrap());
        let want = |i: usize| Some(lines[i].clone());
        assert_eq!(near, vec![want(6), want(5), None, want(7)]);
        // Far apart: two lines out of a hundred, read one by one.
        let far = text(store.lookup_raw(&["r99", "r0"]).unwrap());
        assert_eq!(far, vec![want(99), want(0)]);
        assert_eq!(text(store.lookup_raw(&["nope"]).unwrap()), vec![None]);
    }

    #[test]
    fn bad_lines_before_the_last_are_errors_that_name_the_line() {
        assert!(open_with(&[GOOD, GOOD]).is_ok());
        let e = open_with(&[GOOD, "{not json", GOOD])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.jsonl:3") && e.contains("not a checkpoint record"),
            "{e}"
        );
        let e = open_with(&[GOOD, r#"{"v":2,"x":1}"#])
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.jsonl:3") && e.contains("no id"), "{e}");
        let e = open_with(&[r#"{"v":9,"id":"z"}"#]).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:2") && e.contains("version 9"), "{e}");
    }
}
