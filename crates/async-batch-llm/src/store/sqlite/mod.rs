//! The SQLite store: WAL, one writer connection fed by the writer thread,
//! batched transactions, an index on item id so lookups and reopening stay
//! fast whatever the size, and a read-only mode for inspection.
//!
//! [`open`] opens and checks a store, [`wal`] keeps its WAL bounded, and
//! [`scan`] reads ahead for resumes.

mod errors;
mod open;
mod scan;
mod wal;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension as _, params};

use errors::{db, db_message};
use scan::Scan;
use wal::Checkpointer;

use super::lock::StoreLock;
use super::{
    CheckpointStore, EncodedRecord, Identity, KnownIdentity, Manifest, Record, StoredLine,
};
use crate::error::Error;

/// How durable each commit is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Survives a process crash (`synchronous = NORMAL` in WAL mode).
    #[default]
    Normal,
    /// Also survives power loss (`synchronous = FULL`).
    Full,
}

/// SQLite checkpoint.
///
/// Fields drop in order: the read connections and the checkpointer close
/// before the writer, so the writer is the last connection and removes the
/// `-wal` and `-shm` files (a read-only connection cannot); the lock goes
/// last of all.
pub struct SqliteStore {
    path: PathBuf,
    /// Several read connections: lookups from different threads never wait
    /// on each other (WAL lets them read beside the writer).
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    manifest: Option<Manifest>,
    layout: Layout,
    /// The identity a writable store was opened for: fingerprint, number,
    /// and whether it had records then.
    opened: Option<(String, i64, bool)>,
    /// Identity numbers by fingerprint (layout 2).
    idents: Mutex<HashMap<String, i64>>,
    _checkpointer: Option<Checkpointer>,
    scan: Mutex<Scan>,
    writer: Option<Mutex<Connection>>,
    _lock: Option<StoreLock>,
}

/// How records are keyed in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Layout 2: by identity number and id.
    Keyed,
    /// Layout 1 (read-only): by id, identity fingerprint in a column.
    ById,
}

impl SqliteStore {
    /// The body of `id` under `identity_fp`, looked up by key.
    fn by_key(&self, c: &Connection, identity_fp: &str, id: &str) -> Result<Option<String>, Error> {
        let found = match self.layout {
            Layout::Keyed => {
                let Some(ident) = self.ident_of(identity_fp) else {
                    return Ok(None);
                };
                c.prepare_cached("SELECT body FROM records WHERE ident = ?1 AND id = ?2")
                    .and_then(|mut s| s.query_row(params![ident, id], |row| row.get(0)).optional())
            }
            Layout::ById => c
                .prepare_cached("SELECT body FROM records WHERE identity_fp = ?1 AND id = ?2")
                .and_then(|mut s| {
                    s.query_row(params![identity_fp, id], |row| row.get(0))
                        .optional()
                }),
        };
        found.map_err(|e| db(&self.path, &e))
    }

    fn ident_of(&self, identity_fp: &str) -> Option<i64> {
        self.idents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(identity_fp)
            .copied()
    }
}
impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("read_only", &self.writer.is_none())
            .finish_non_exhaustive()
    }
}
impl CheckpointStore for SqliteStore {
    fn lookup(&self, identity_fp: &str, id: &str) -> Result<Option<Record>, Error> {
        let body = self.by_key(&self.reader(), identity_fp, id)?;
        body.map(|b| {
            Record::from_json(&b)
                .map_err(|m| Error::format(format!("{}: record {id}", self.path.display()), m))
        })
        .transpose()
    }

    fn lookup_raw(
        &self,
        identity_fp: &str,
        ids: &[&str],
    ) -> Result<Vec<Option<StoredLine>>, Error> {
        let r = self.reader();
        // The read-ahead serves the identity the store was opened for.
        let scans = self
            .opened
            .as_ref()
            .is_some_and(|(fp, _, _)| fp == identity_fp);
        let mut scan = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        // One read transaction for the whole chunk: one snapshot, one lock.
        let tx = r.unchecked_transaction().map_err(|e| db(&self.path, &e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            while scans && scan.wants_more() {
                scan.fill(&tx, &self.path)?;
            }
            let line = match scans.then(|| scan.take(id)).flatten() {
                Some(line) => Some(line),
                None => self.by_key(&tx, identity_fp, id)?.map(StoredLine::from),
            };
            out.push(line);
        }
        tx.commit().map_err(|e| db(&self.path, &e))?;
        Ok(out)
    }

    fn write_batch(&self, records: &[EncodedRecord]) -> Result<(), Error> {
        let Some(w) = &self.writer else {
            return Err(Error::config(format!(
                "{}: opened read-only",
                self.path.display()
            )));
        };
        let mut w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = w.transaction().map_err(|e| db(&self.path, &e))?;
        {
            let mut idents = self.idents.lock().unwrap_or_else(PoisonError::into_inner);
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO records (ident, id, ok, category, body) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| db(&self.path, &e))?;
            // Inserted in id order: neighbouring keys share index pages, so
            // a commit touches fewer of them. (Stable: a later record of
            // the same id still replaces an earlier one.)
            let mut sorted: Vec<&EncodedRecord> = records.iter().collect();
            sorted.sort_by(|a, b| a.id.cmp(&b.id));
            for r in sorted {
                let ident = if let Some(n) = idents.get(&r.identity_fp) {
                    *n
                } else {
                    // An identity this store was not opened for: known by
                    // its fingerprint only (its records carry it).
                    let n: i64 = tx
                        .query_row(
                            "INSERT INTO identities (fp) VALUES (?1) RETURNING n",
                            params![r.identity_fp],
                            |row| row.get(0),
                        )
                        .map_err(|e| db(&self.path, &e))?;
                    idents.insert(r.identity_fp.clone(), n);
                    n
                };
                stmt.execute(params![ident, r.id, r.ok, r.category, r.body])
                    .map_err(|e| db(&self.path, &e))?;
            }
        }
        tx.commit().map_err(|e| db(&self.path, &e))
    }

    fn for_each(&self, f: &mut dyn FnMut(Record) -> Result<(), Error>) -> Result<(), Error> {
        let r = self.reader();
        let mut stmt = r
            .prepare("SELECT id, body FROM records")
            .map_err(|e| db(&self.path, &e))?;
        let mut rows = stmt.query([]).map_err(|e| db(&self.path, &e))?;
        while let Some(row) = rows.next().map_err(|e| db(&self.path, &e))? {
            let id: String = row.get(0).map_err(|e| db(&self.path, &e))?;
            let body: String = row.get(1).map_err(|e| db(&self.path, &e))?;
            f(Record::from_json(&body)
                .map_err(|m| Error::format(format!("{}: record {id}", self.path.display()), m))?)?;
        }
        Ok(())
    }

    fn settle(&self) -> Result<(), Error> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let w = w.lock().unwrap_or_else(PoisonError::into_inner);
        // Copies the whole WAL and truncates it (waits for readers of old
        // frames, up to the busy timeout).
        let busy: i64 = w
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| db(&self.path, &e))?;
        if busy != 0 {
            return Err(db_message(
                &self.path,
                "the WAL could not be copied into the database (readers kept it busy); it is copied when the store is closed",
            ));
        }
        Ok(())
    }

    fn manifest(&self) -> Option<Manifest> {
        self.manifest.clone()
    }

    /// Kept in the manifest table as `run:MILLISECONDS`, the last
    /// [`RUNS_KEPT`](crate::store::RUNS_KEPT).
    fn note_run(&self, settings: &str) -> Result<(), Error> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let w = w.lock().unwrap_or_else(PoisonError::into_inner);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        w.execute(
            "INSERT OR REPLACE INTO manifest (key, value) VALUES (?1, ?2)",
            params![format!("run:{at:015}"), settings],
        )
        .and_then(|_| {
            w.execute(
                "DELETE FROM manifest WHERE key LIKE 'run:%' AND key NOT IN
                 (SELECT key FROM manifest WHERE key LIKE 'run:%' ORDER BY key DESC LIMIT ?1)",
                params![i64::try_from(crate::store::RUNS_KEPT).unwrap_or(i64::MAX)],
            )
        })
        .map(|_| ())
        .map_err(|e| db(&self.path, &e))
    }

    fn runs(&self) -> Vec<String> {
        let r = self.reader();
        let Ok(mut stmt) =
            r.prepare("SELECT value FROM manifest WHERE key LIKE 'run:%' ORDER BY key")
        else {
            return Vec::new();
        };
        stmt.query_map([], |row| row.get::<_, String>(0))
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    fn note_job(&self, key: &str, record: &str) -> Result<(), Error> {
        let Some(w) = &self.writer else {
            return Err(Error::config("this checkpoint is open read-only"));
        };
        let w = w.lock().unwrap_or_else(PoisonError::into_inner);
        w.execute(
            "INSERT OR REPLACE INTO manifest (key, value) VALUES (?1, ?2)",
            params![format!("job:{key}"), record],
        )
        .map(|_| ())
        .map_err(|e| db(&self.path, &e))
    }

    fn jobs(&self) -> Vec<(String, String)> {
        let r = self.reader();
        let Ok(mut stmt) = r.prepare(
            "SELECT substr(key, 5), value FROM manifest WHERE key LIKE 'job:%' ORDER BY key",
        ) else {
            return Vec::new();
        };
        stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
    }

    fn identities(&self) -> Vec<KnownIdentity> {
        let r = self.reader();
        let sql = match self.layout {
            Layout::Keyed => "SELECT fp, identity FROM identities ORDER BY n",
            Layout::ById => {
                "SELECT identity_fp, NULL FROM records GROUP BY identity_fp ORDER BY min(rowid)"
            }
        };
        let rows: Vec<(String, Option<String>)> = r
            .prepare(sql)
            .and_then(|mut s| {
                s.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect()
            })
            .unwrap_or_default();
        let mut out: Vec<KnownIdentity> = rows
            .into_iter()
            .map(|(fingerprint, json)| KnownIdentity {
                identity: json.and_then(|j| serde_json::from_str::<Identity>(&j).ok()),
                fingerprint,
            })
            .collect();
        // Layout 1 names only the manifest's identity.
        if let Some(m) = &self.manifest {
            let fp = m.identity.fingerprint();
            match out.iter_mut().find(|k| k.fingerprint == fp) {
                Some(k) => {
                    k.identity.get_or_insert_with(|| m.identity.clone());
                }
                None if self.layout == Layout::ById => out.insert(
                    0,
                    KnownIdentity {
                        fingerprint: fp,
                        identity: Some(m.identity.clone()),
                    },
                ),
                None => {}
            }
        }
        out
    }

    fn had_records_at_open(&self, identity_fp: &str) -> bool {
        match &self.opened {
            Some((fp, _, had)) if fp == identity_fp => *had,
            // Another identity, or a read-only store: look it up.
            _ => true,
        }
    }
}

#[cfg(test)]
mod test_support {
    use crate::store::EncodedRecord;

    pub(super) fn batch(from: usize, n: usize) -> Vec<EncodedRecord> {
        (from..from + n)
            .map(|i| EncodedRecord {
                id: format!("item-{i:06}"),
                identity_fp: crate::store::Identity::default().fingerprint(),
                ok: true,
                category: None,
                body: format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(1000)),
            })
            .collect()
    }
}
