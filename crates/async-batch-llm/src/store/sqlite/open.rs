//! Opening a SQLite checkpoint: the writer connection and its settings,
//! the schema, the manifest, the read connections.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::scan::Scan;
use super::wal::Checkpointer;
use super::{Durability, SqliteStore};
use crate::error::Error;
use crate::store::{Identity, Manifest};

const READERS: usize = 4;

fn open_readers(path: &Path) -> Result<Vec<Mutex<Connection>>, Error> {
    (0..READERS)
        .map(|_| {
            // No mmap: it saved little CPU on a resume and counted the whole
            // mapped file in the process's resident memory (550 MiB at 1M).
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map(Mutex::new)
            .map_err(|e| db(path, &e))
        })
        .collect()
}
pub(super) fn db(path: &Path, e: &rusqlite::Error) -> Error {
    db_message(path, &e.to_string())
}

pub(super) fn db_message(path: &Path, message: &str) -> Error {
    Error::Format {
        place: path.display().to_string(),
        message: format!("SQLite: {message}"),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    item_fp TEXT NOT NULL,
    identity_fp TEXT NOT NULL,
    ok INTEGER NOT NULL,
    category TEXT,
    body TEXT NOT NULL
);";

impl SqliteStore {
    /// Opens (or creates) the store at `path` for a run of `identity`.
    pub fn open(
        path: impl AsRef<Path>,
        identity: &Identity,
        durability: Durability,
    ) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let w = Connection::open(&path).map_err(|e| db(&path, &e))?;
        // Before the first table exists this sets the page size of a new
        // file (16 KiB: records are ~600 bytes; fewer page reads and writes
        // per row than the 4 KiB default); an existing file keeps its own.
        w.pragma_update(None, "page_size", 16_384)
            .map_err(|e| db(&path, &e))?;
        w.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db(&path, &e))?;
        let sync = if durability == Durability::Full {
            "FULL"
        } else {
            "NORMAL"
        };
        w.pragma_update(None, "synchronous", sync)
            .map_err(|e| db(&path, &e))?;
        w.busy_timeout(Duration::from_secs(5))
            .map_err(|e| db(&path, &e))?;
        w.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| db(&path, &e))?;

        w.execute_batch(SCHEMA).map_err(|e| db(&path, &e))?;
        let manifest = read_manifest(&w, &path)?;
        let manifest = if let Some(m) = manifest {
            m
        } else {
            let m = Manifest::new(identity);
            let json = serde_json::to_string(&m).map_err(|e| Error::Format {
                place: path.display().to_string(),
                message: e.to_string(),
            })?;
            w.execute(
                "INSERT OR REPLACE INTO manifest (key, value) VALUES ('manifest', ?1)",
                params![json],
            )
            .map_err(|e| db(&path, &e))?;
            m
        };
        let end: i64 = w
            .query_row("SELECT coalesce(max(rowid), 0) FROM records", [], |r| {
                r.get(0)
            })
            .map_err(|e| db(&path, &e))?;
        let had_records = end > 0;
        Ok(Self {
            readers: open_readers(&path)?,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            _checkpointer: Some(Checkpointer::start(&path)?),
            path,
            writer: Some(Mutex::new(w)),
            manifest: Some(manifest),
            had_records,
            scan: Mutex::new(Scan::new(end)),
        })
    }

    /// Opens an existing store read-only (for summaries and inspection).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let r = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db(&path, &e))?;
        let manifest = read_manifest(&r, &path)?;
        drop(r);
        Ok(Self {
            readers: open_readers(&path)?,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            path,
            writer: None,
            manifest,
            had_records: true,
            _checkpointer: None,
            scan: Mutex::default(),
        })
    }

    /// A read connection: a free one if any, else the next in turn.
    pub(super) fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        for r in &self.readers {
            if let Ok(guard) = r.try_lock() {
                return guard;
            }
        }
        let i = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.readers.len();
        self.readers[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of records.
    pub fn len(&self) -> Result<u64, Error> {
        let r = self.reader();
        r.query_row("SELECT count(*) FROM records", [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|e| db(&self.path, &e))
    }

    /// True when there is no record.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }
}

fn read_manifest(c: &Connection, path: &Path) -> Result<Option<Manifest>, Error> {
    let has_table: bool = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'manifest'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(|e| db(path, &e))?;
    if !has_table {
        return Ok(None);
    }
    let json: Option<String> = c
        .query_row(
            "SELECT value FROM manifest WHERE key = 'manifest'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| db(path, &e))?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| Error::Format {
            place: path.display().to_string(),
            message: format!("bad manifest: {e}"),
        })
    })
    .transpose()
}
