//! The SQLite store: WAL, one writer connection fed by the writer thread,
//! batched transactions, an index on item id so lookups and reopening stay
//! fast whatever the size, and a read-only mode for inspection.
//!
//! [`open`] opens and checks a store, [`wal`] keeps its WAL bounded, and
//! [`scan`] reads ahead for resumes.

mod open;
mod scan;
mod wal;

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension as _, params};

use open::{db, db_message};
use scan::Scan;
use wal::Checkpointer;

use super::{CheckpointStore, EncodedRecord, Manifest, Record, StoredLine};
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
pub struct SqliteStore {
    path: PathBuf,
    writer: Option<Mutex<Connection>>,
    /// Several read connections: lookups from different threads never wait
    /// on each other (WAL lets them read beside the writer).
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    manifest: Option<Manifest>,
    had_records: bool,
    _checkpointer: Option<Checkpointer>,
    scan: Mutex<Scan>,
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
    fn lookup(&self, id: &str) -> Result<Option<Record>, Error> {
        let r = self.reader();
        let mut stmt = r
            .prepare_cached("SELECT body FROM records WHERE id = ?1")
            .map_err(|e| db(&self.path, &e))?;
        let body: Option<String> = stmt
            .query_row(params![id], |row| row.get(0))
            .optional()
            .map_err(|e| db(&self.path, &e))?;
        body.map(|b| {
            Record::from_json(&b).map_err(|m| Error::Format {
                place: format!("{}: record {id}", self.path.display()),
                message: m,
            })
        })
        .transpose()
    }

    fn lookup_raw(&self, ids: &[&str]) -> Result<Vec<Option<StoredLine>>, Error> {
        let r = self.reader();
        let mut scan = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        // One read transaction for the whole chunk: one snapshot, one lock.
        let tx = r.unchecked_transaction().map_err(|e| db(&self.path, &e))?;
        let mut by_key = tx
            .prepare_cached("SELECT body FROM records WHERE id = ?1")
            .map_err(|e| db(&self.path, &e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            while scan.wants_more() {
                scan.fill(&tx, &self.path)?;
            }
            let line = match scan.take(id) {
                Some(line) => Some(line),
                None => by_key
                    .query_row(params![id], |row| row.get::<_, String>(0))
                    .optional()
                    .map_err(|e| db(&self.path, &e))?
                    .map(StoredLine::from),
            };
            out.push(line);
        }
        drop(by_key);
        tx.commit().map_err(|e| db(&self.path, &e))?;
        Ok(out)
    }

    fn write_batch(&self, records: &[EncodedRecord]) -> Result<(), Error> {
        let Some(w) = &self.writer else {
            return Err(Error::Config(format!(
                "{}: opened read-only",
                self.path.display()
            )));
        };
        let mut w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tx = w.transaction().map_err(|e| db(&self.path, &e))?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT OR REPLACE INTO records (id, item_fp, identity_fp, ok, category, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(|e| db(&self.path, &e))?;
            // Inserted in id order: neighbouring keys share index pages, so
            // a commit touches fewer of them. (Stable: a later record of
            // the same id still replaces an earlier one.)
            let mut sorted: Vec<&EncodedRecord> = records.iter().collect();
            sorted.sort_by(|a, b| a.id.cmp(&b.id));
            for r in sorted {
                stmt.execute(params![
                    r.id,
                    r.item_fp,
                    r.identity_fp,
                    r.ok,
                    r.category,
                    r.body
                ])
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
            f(Record::from_json(&body).map_err(|m| Error::Format {
                place: format!("{}: record {id}", self.path.display()),
                message: m,
            })?)?;
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

    fn had_records_at_open(&self) -> bool {
        self.had_records
    }
}

#[cfg(test)]
mod test_support {
    use crate::store::EncodedRecord;

    pub(super) fn batch(from: usize, n: usize) -> Vec<EncodedRecord> {
        (from..from + n)
            .map(|i| EncodedRecord {
                id: format!("item-{i:06}"),
                item_fp: "f".repeat(64),
                identity_fp: "i".repeat(64),
                ok: true,
                category: None,
                body: format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(1000)),
            })
            .collect()
    }
}
