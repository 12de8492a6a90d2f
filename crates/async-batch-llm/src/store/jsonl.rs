//! The JSONL store: a manifest line, then one record per line, append-only.
//! A run of an identity the file has not seen appends a manifest line for
//! it before its first record, so the file names every identity it holds.
//!
//! Opening refuses a file that is not ours: one that is not empty and whose
//! first line is not our manifest is left untouched. In a file that is
//! ours, a torn last line (a crash mid-write) is cut off, so that item runs
//! again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::lock::StoreLock;
use super::record::check_version;
use super::{
    CHECKPOINT_SCHEMA, CheckpointStore, EncodedRecord, Identity, KnownIdentity, Manifest, Record,
    StoredLine,
};
use crate::error::Error;

/// An identity's number in this file (its manifest line's order).
type Ident = u32;

struct State {
    file: File,
    end: u64,
    /// (identity, id) → (offset, length) of its latest line.
    index: HashMap<(Ident, Box<str>), (u64, u32)>,
    /// Keys in first-write order, for `for_each`.
    order: Vec<(Ident, Box<str>)>,
    /// Identities by number: fingerprint and identity.
    identities: Vec<(String, Identity)>,
}

impl State {
    fn ident(&self, fp: &str) -> Option<Ident> {
        self.identities
            .iter()
            .position(|(f, _)| f == fp)
            .and_then(|i| Ident::try_from(i).ok())
    }
}

/// Append-only JSONL checkpoint.
pub struct JsonlStore {
    path: PathBuf,
    fsync: bool,
    manifest: Option<Manifest>,
    state: Mutex<State>,
    reader: File,
    repaired: Option<u64>,
    /// Fingerprints of identities with records when the file was opened.
    had_records: Vec<String>,
    _lock: Option<StoreLock>,
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
    Error::io(path.display().to_string(), source)
}

fn bad(path: &Path, line: u64, message: impl Into<String>) -> Error {
    Error::format(format!("{}:{line}", path.display()), message)
}

/// Longest span a chunk lookup reads at once.
const SPAN_MAX: u64 = 16 << 20;

/// The fields of a line the index needs: a manifest has `schema`, a
/// record `v`, `id` and `identity_fp`; the rest is checked for syntax only.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    schema: Option<Cow<'a, str>>,
    #[serde(default)]
    v: u32,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    identity_fp: Option<Cow<'a, str>>,
}

/// What reading the file found.
struct Scanned {
    manifest: Option<Manifest>,
    index: HashMap<(Ident, Box<str>), (u64, u32)>,
    order: Vec<(Ident, Box<str>)>,
    identities: Vec<(String, Identity)>,
    good_end: u64,
    repaired: Option<u64>,
}

/// A manifest line of ours, or why not.
fn read_manifest(path: &Path, n: u64, text: &str) -> Result<Manifest, Error> {
    let m: Manifest = serde_json::from_str(text)
        .map_err(|e| bad(path, n, format!("bad checkpoint manifest: {e}")))?;
    if m.schema != CHECKPOINT_SCHEMA {
        return Err(bad(
            path,
            n,
            format!("not a checkpoint (schema {:?})", m.schema),
        ));
    }
    Ok(m)
}

/// Reads every line: the manifests, and the offset of each record.
#[allow(clippy::too_many_lines)]
fn scan(path: &Path) -> Result<Scanned, Error> {
    let mut out = Scanned {
        manifest: None,
        index: HashMap::new(),
        order: Vec::new(),
        identities: Vec::new(),
        good_end: 0,
        repaired: None,
    };
    let mut reader = BufReader::new(File::open(path).map_err(|e| io(path, e))?);
    let mut line = String::new();
    let mut offset = 0u64;
    let mut n = 0u64;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|e| io(path, e))?;
        if read == 0 {
            break;
        }
        n += 1;
        let complete = line.ends_with('\n');
        let text = line.trim_end();
        // Only what the index needs is read here (a whole record is parsed
        // when it is used): four times faster on a large checkpoint.
        let parsed: Result<Head<'_>, _> = serde_json::from_str(text);
        if n == 1 {
            // The first line decides whether the file is ours at all.
            let ours = complete
                && parsed
                    .as_ref()
                    .is_ok_and(|h| h.schema.as_deref() == Some(CHECKPOINT_SCHEMA));
            if !ours {
                let what = if text.trim().is_empty() {
                    "its first line is empty".to_owned()
                } else {
                    "its first line is not an abl checkpoint manifest".to_owned()
                };
                return Err(bad(
                    path,
                    1,
                    format!(
                        "not an abl checkpoint ({what}); it was left untouched: give --checkpoint a new file or an existing checkpoint"
                    ),
                ));
            }
        }
        match (complete, parsed) {
            (true, Ok(h)) if h.schema.is_some() => {
                let m = read_manifest(path, n, text)?;
                let fp = m.identity.fingerprint();
                if !out.identities.iter().any(|(f, _)| *f == fp) {
                    out.identities.push((fp, m.identity.clone()));
                }
                if out.manifest.is_none() {
                    out.manifest = Some(m);
                }
            }
            (true, Ok(h)) => {
                check_version(h.v).map_err(|e| bad(path, n, e))?;
                let id =
                    h.id.ok_or_else(|| bad(path, n, "not a checkpoint record: no id"))?;
                let fp = h
                    .identity_fp
                    .ok_or_else(|| bad(path, n, "not a checkpoint record: no identity_fp"))?;
                // Records of an identity without a manifest line (written
                // before every identity got one) are known by fingerprint.
                let ident = if let Some(i) = out.identities.iter().position(|(f, _)| *f == fp) {
                    i
                } else {
                    out.identities.push((fp.into_owned(), Identity::default()));
                    out.identities.len() - 1
                };
                let ident =
                    Ident::try_from(ident).map_err(|_| bad(path, n, "too many identities"))?;
                let len = u32::try_from(text.len()).map_err(|_| bad(path, n, "record too long"))?;
                let key = (ident, Box::<str>::from(id.as_ref()));
                if out.index.insert(key.clone(), (offset, len)).is_none() {
                    out.order.push(key);
                }
            }
            // The last line, cut short by a crash: repaired by the caller.
            (false, _) => {
                out.repaired = Some(n);
                break;
            }
            (true, Err(e)) => {
                // A bad line that is not the last cannot be a torn write.
                let mut rest = String::new();
                let more = reader.read_line(&mut rest).map_err(|e| io(path, e))?;
                if more > 0 {
                    return Err(bad(path, n, format!("not a checkpoint record: {e}")));
                }
                out.repaired = Some(n);
                break;
            }
        }
        offset += read as u64;
        out.good_end = offset;
    }
    Ok(out)
}

fn manifest_line(path: &Path, identity: &Identity) -> Result<(Manifest, String), Error> {
    let m = Manifest::new(identity);
    let mut line = serde_json::to_string(&m).map_err(|e| bad(path, 1, e.to_string()))?;
    line.push('\n');
    Ok((m, line))
}

impl JsonlStore {
    /// Opens (or creates) the store at `path` for a run of `identity` and
    /// locks it for this process; `fsync` makes every commit durable
    /// against power loss, not just a process crash. A file that is not an
    /// abl checkpoint is refused and left untouched.
    pub fn open(path: impl AsRef<Path>, identity: &Identity, fsync: bool) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let lock = StoreLock::acquire(&path)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut scanned = scan(&path)?;
        if let Some(line) = scanned.repaired {
            file.set_len(scanned.good_end).map_err(|e| io(&path, e))?;
            tracing::warn!(path = %path.display(), line, "checkpoint: cut off a torn last line; that item runs again");
        }
        // A new file, or an identity this file has not seen (or knows only
        // by fingerprint): its manifest line goes before its records.
        let fp = identity.fingerprint();
        let known = scanned.identities.iter().position(|(f, _)| *f == fp);
        let named = known.is_some_and(|i| scanned.identities[i].1 == *identity);
        if !named {
            let (m, line) = manifest_line(&path, identity)?;
            file.write_all(line.as_bytes()).map_err(|e| io(&path, e))?;
            file.flush().map_err(|e| io(&path, e))?;
            if fsync {
                file.sync_data().map_err(|e| io(&path, e))?;
            }
            scanned.good_end += line.len() as u64;
            match known {
                Some(i) => scanned.identities[i].1 = identity.clone(),
                None => scanned.identities.push((fp, identity.clone())),
            }
            scanned.manifest.get_or_insert(m);
        }
        Self::from_scan(&path, fsync, file, scanned, Some(lock))
    }

    /// Opens an existing store to read it (summaries, reports, imports),
    /// without locking it or writing anything: a run may be writing it.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| io(&path, e))?;
        let scanned = scan(&path)?;
        Self::from_scan(&path, false, file, scanned, None)
    }

    fn from_scan(
        path: &Path,
        fsync: bool,
        file: File,
        s: Scanned,
        lock: Option<StoreLock>,
    ) -> Result<Self, Error> {
        let mut had: Vec<String> = Vec::new();
        for (ident, _) in s.index.keys() {
            if let Some((fp, _)) = s.identities.get(*ident as usize)
                && !had.contains(fp)
            {
                had.push(fp.clone());
            }
        }
        Ok(Self {
            reader: File::open(path).map_err(|e| io(path, e))?,
            path: path.to_path_buf(),
            fsync,
            manifest: s.manifest,
            state: Mutex::new(State {
                file,
                end: s.good_end,
                index: s.index,
                order: s.order,
                identities: s.identities,
            }),
            repaired: s.repaired,
            had_records: had,
            _lock: lock,
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
        let len = usize::try_from(to.saturating_sub(from)).map_err(|_| {
            Error::format(
                format!("{} at byte {from}", self.path.display()),
                "span too long to read",
            )
        })?;
        let mut buf = vec![0u8; len];
        self.reader
            .read_exact_at(&mut buf, from)
            .map_err(|e| io(&self.path, e))?;
        String::from_utf8(buf).map_err(|e| {
            Error::format(
                format!("{} at byte {from}", self.path.display()),
                e.to_string(),
            )
        })
    }

    fn read(&self, offset: u64, len: u32) -> Result<Record, Error> {
        let text = self.read_line(offset, len)?;
        Record::from_json(&text)
            .map_err(|e| Error::format(format!("{} at byte {offset}", self.path.display()), e))
    }

    /// Where the latest lines of `ids` under `identity_fp` are.
    fn positions(&self, identity_fp: &str, ids: &[&str]) -> Vec<Option<(u64, u32)>> {
        let st = self.lock();
        let Some(ident) = st.ident(identity_fp) else {
            return vec![None; ids.len()];
        };
        ids.iter()
            .map(|id| st.index.get(&(ident, Box::from(*id))).copied())
            .collect()
    }
}

impl CheckpointStore for JsonlStore {
    fn lookup(&self, identity_fp: &str, id: &str) -> Result<Option<Record>, Error> {
        let at = self.positions(identity_fp, &[id]).pop().flatten();
        at.map(|(o, l)| self.read(o, l)).transpose()
    }

    fn lookup_raw(
        &self,
        identity_fp: &str,
        ids: &[&str],
    ) -> Result<Vec<Option<StoredLine>>, Error> {
        let at = self.positions(identity_fp, ids);
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
        let mut st = self.lock();
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.body.len() + 1).sum());
        let mut spans = Vec::with_capacity(records.len());
        for r in records {
            if st.ident(&r.identity_fp).is_none() {
                // An identity this store was not opened for: known by its
                // fingerprint only (its records carry it).
                st.identities
                    .push((r.identity_fp.clone(), Identity::default()));
            }
            spans.push((buf.len(), r.body.len()));
            buf.extend_from_slice(r.body.as_bytes());
            buf.push(b'\n');
        }
        st.file.write_all(&buf).map_err(|e| io(&self.path, e))?;
        st.file.flush().map_err(|e| io(&self.path, e))?;
        if self.fsync {
            st.file.sync_data().map_err(|e| io(&self.path, e))?;
        }
        let base = st.end;
        for (r, (start, len)) in records.iter().zip(spans) {
            let Some(ident) = st.ident(&r.identity_fp) else {
                continue;
            };
            let key = (ident, Box::<str>::from(r.id.as_str()));
            if st
                .index
                .insert(key.clone(), (base + start as u64, len as u32))
                .is_none()
            {
                st.order.push(key);
            }
        }
        st.end += buf.len() as u64;
        Ok(())
    }

    fn for_each(&self, f: &mut dyn FnMut(Record) -> Result<(), Error>) -> Result<(), Error> {
        let at: Vec<(u64, u32)> = {
            let st = self.lock();
            st.order
                .iter()
                .filter_map(|k| st.index.get(k).copied())
                .collect()
        };
        for (o, l) in at {
            f(self.read(o, l)?)?;
        }
        Ok(())
    }

    fn manifest(&self) -> Option<Manifest> {
        self.manifest.clone()
    }

    fn identities(&self) -> Vec<KnownIdentity> {
        let st = self.lock();
        st.identities
            .iter()
            .map(|(fp, id)| KnownIdentity {
                fingerprint: fp.clone(),
                identity: (id.fingerprint() == *fp).then(|| id.clone()),
            })
            .collect()
    }

    fn had_records_at_open(&self, identity_fp: &str) -> bool {
        self.had_records.iter().any(|f| f == identity_fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> String {
        Identity::default().fingerprint()
    }

    fn open_with(lines: &[&str]) -> Result<JsonlStore, Error> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let manifest = serde_json::to_string(&Manifest::new(&Identity::default())).unwrap();
        let mut text = manifest + "\n";
        for l in lines {
            text.push_str(&l.replace("IDFP", &fp()));
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        let store = JsonlStore::open(&path, &Identity::default(), false);
        drop(dir);
        store
    }

    const GOOD: &str = r#"{"v":2,"id":"a","item_fp":"f","identity_fp":"IDFP","result":{"id":"a","ok":true,"output":1,"usage":{"input":1,"output":1,"total":2},"attempts":1,"tries":1,"timing":{"total_ms":1}}}"#;

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
        let fp = fp();
        let want = |i: usize| Some(lines[i].replace("IDFP", &fp));
        // Near each other: one span (lines 5 to 7, one missing id).
        let near = text(
            store
                .lookup_raw(&fp, &["r6", "r5", "missing", "r7"])
                .unwrap(),
        );
        assert_eq!(near, vec![want(6), want(5), None, want(7)]);
        // Far apart: two lines out of a hundred, read one by one.
        let far = text(store.lookup_raw(&fp, &["r99", "r0"]).unwrap());
        assert_eq!(far, vec![want(99), want(0)]);
        assert_eq!(text(store.lookup_raw(&fp, &["nope"]).unwrap()), vec![None]);
        // Another identity sees none of them.
        assert_eq!(
            text(store.lookup_raw("other", &["r6"]).unwrap()),
            vec![None]
        );
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

    #[test]
    fn a_file_that_is_not_a_checkpoint_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "my notes\nsecond line\n",
            "one line without an end",
            "{\"id\": 1, \"prompt\": \"x\"}\n",
            "\n",
        ] {
            let path = dir.path().join("notes.jsonl");
            std::fs::write(&path, text).unwrap();
            let e = JsonlStore::open(&path, &Identity::default(), false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not an abl checkpoint"), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
            assert!(!super::super::lock_path(&path).exists());
        }
    }

    #[test]
    fn a_second_identity_gets_its_manifest_line_and_keeps_the_first_ones_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let a = Identity {
            model: "a".into(),
            ..Identity::default()
        };
        let b = Identity {
            model: "b".into(),
            ..Identity::default()
        };
        let rec = |id: &Identity, item: &str| EncodedRecord {
            id: item.into(),
            identity_fp: id.fingerprint(),
            ok: true,
            category: None,
            body: GOOD
                .replace("IDFP", &id.fingerprint())
                .replace("\"a\"", &format!("\"{item}\"")),
        };
        let s = JsonlStore::open(&path, &a, false).unwrap();
        s.write_batch(&[rec(&a, "x"), rec(&a, "y")]).unwrap();
        drop(s);
        let s = JsonlStore::open(&path, &b, false).unwrap();
        assert!(!s.had_records_at_open(&b.fingerprint()));
        assert!(s.had_records_at_open(&a.fingerprint()));
        s.write_batch(&[rec(&b, "x")]).unwrap();
        drop(s);
        let s = JsonlStore::open_read_only(&path).unwrap();
        let ids: Vec<Option<Identity>> = s.identities().into_iter().map(|k| k.identity).collect();
        assert_eq!(ids, vec![Some(a.clone()), Some(b.clone())]);
        assert!(s.lookup(&a.fingerprint(), "x").unwrap().is_some());
        assert!(s.lookup(&b.fingerprint(), "x").unwrap().is_some());
        assert!(s.lookup(&b.fingerprint(), "y").unwrap().is_none());
        let mut n = 0;
        s.for_each(&mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(s.manifest().unwrap().identity, a);
    }
}
