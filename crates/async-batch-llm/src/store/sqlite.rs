//! The SQLite store: WAL, one writer connection fed by the writer thread,
//! batched transactions, an index on item id so lookups and reopening stay
//! fast whatever the size, and a read-only mode for inspection.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::{CheckpointStore, EncodedRecord, Identity, Manifest, Record};
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
}

const READERS: usize = 4;

fn open_readers(path: &Path) -> Result<Vec<Mutex<Connection>>, Error> {
    (0..READERS)
        .map(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map(Mutex::new)
            .map_err(|e| db(path, &e))
        })
        .collect()
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("read_only", &self.writer.is_none())
            .finish_non_exhaustive()
    }
}

fn db(path: &Path, e: &rusqlite::Error) -> Error {
    Error::Format {
        place: path.display().to_string(),
        message: format!("SQLite: {e}"),
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
        w.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db(&path, &e))?;
        let sync = if durability == Durability::Full {
            "FULL"
        } else {
            "NORMAL"
        };
        w.pragma_update(None, "synchronous", sync)
            .map_err(|e| db(&path, &e))?;
        w.busy_timeout(std::time::Duration::from_secs(5))
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
        let had_records = w
            .query_row("SELECT EXISTS (SELECT 1 FROM records)", [], |r| {
                r.get::<_, bool>(0)
            })
            .map_err(|e| db(&path, &e))?;
        Ok(Self {
            readers: open_readers(&path)?,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            path,
            writer: Some(Mutex::new(w)),
            manifest: Some(manifest),
            had_records,
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
        })
    }

    /// A read connection: a free one if any, else the next in turn.
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
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
            for r in records {
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

    fn manifest(&self) -> Option<Manifest> {
        self.manifest.clone()
    }

    fn had_records_at_open(&self) -> bool {
        self.had_records
    }
}
