//! Opening a SQLite checkpoint: is the file ours (before anything is
//! written to it), the lock, the writer connection and its settings, the
//! schema (created, or migrated from the first layout), the manifest, the
//! identities, and the read connections.
//!
//! A store of ours carries `PRAGMA application_id = 0x41424C43` ("ABLC")
//! and `user_version` = [`LAYOUT`]. Layout 2 (this build) keys records by
//! identity and id:
//!
//! ```text
//! manifest   (key TEXT PRIMARY KEY, value TEXT)           -- 'manifest': the creator
//! identities (n INTEGER PRIMARY KEY, fp TEXT UNIQUE, identity TEXT)
//! records    (ident INTEGER, id TEXT, ok INTEGER, category TEXT, body TEXT,
//!             UNIQUE (ident, id))
//! ```
//!
//! Layout 1 (no application id; `records` keyed by id alone, with the
//! identity fingerprint in a column) is migrated in one transaction when
//! it is opened for writing, and read as it is when opened read-only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::errors::{db, db_message};
use super::scan::Scan;
use super::wal::Checkpointer;
use super::{Durability, Layout, SqliteStore};
use crate::error::Error;
use crate::store::lock::StoreLock;
use crate::store::{CHECKPOINT_SCHEMA, Identity, Manifest};

/// `PRAGMA application_id` of our stores: "ABLC".
pub(super) const APPLICATION_ID: i64 = 0x4142_4C43;
/// `PRAGMA user_version`: the layout this build writes.
pub(super) const LAYOUT: i64 = 2;
/// Stores up to this size are integrity-checked when opened for writing
/// (a quick check reads every page: ~0.1 s here; past this size it would
/// cost more than the reopen budget, and corruption there is found when
/// the damaged page is read, which stops the run).
const CHECK_BYTES: u64 = 64 << 20;

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

fn refuse(path: &Path, what: &str) -> Error {
    Error::format(
        path.display().to_string(),
        format!(
            "not an abl checkpoint ({what}); it was left untouched: give --checkpoint a new file or an existing checkpoint"
        ),
    )
}

const SCHEMA: &str = "
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE identities (n INTEGER PRIMARY KEY, fp TEXT NOT NULL UNIQUE, identity TEXT);
CREATE TABLE records (
    ident INTEGER NOT NULL,
    id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    category TEXT,
    body TEXT NOT NULL,
    UNIQUE (ident, id)
);";

/// What a file holds, found without writing to it.
enum Found {
    /// No table at all (a new or empty file).
    Empty,
    /// Ours, in the current layout.
    Ours,
    /// Ours, in layout 1.
    Legacy,
}

fn tables(c: &Connection, path: &Path) -> Result<Vec<String>, Error> {
    let mut stmt = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .map_err(|e| db(path, &e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| db(path, &e))?;
    rows.collect::<Result<_, _>>().map_err(|e| db(path, &e))
}

/// Is the file at `path` one of ours, and in which layout.
fn inspect(c: &Connection, path: &Path) -> Result<Found, Error> {
    let app: i64 = c
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                refuse(path, "not a SQLite database")
            }
            other => db(path, &other),
        })?;
    let names = tables(c, path)?;
    if app == APPLICATION_ID {
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db(path, &e))?;
        if version > LAYOUT {
            return Err(db_message(
                path,
                &format!(
                    "checkpoint layout {version} was written by a newer abl (this build reads 1..={LAYOUT})"
                ),
            ));
        }
        let want = ["identities", "manifest", "records"];
        if names.iter().any(|n| !want.contains(&n.as_str())) || names.len() != want.len() {
            return Err(db_message(
                path,
                &format!(
                    "a checkpoint whose tables are not ours ({})",
                    names.join(", ")
                ),
            ));
        }
        return Ok(Found::Ours);
    }
    if app != 0 {
        return Err(refuse(
            path,
            &format!("a SQLite database of another application (application_id {app:#x})"),
        ));
    }
    if names.is_empty() {
        return Ok(Found::Empty);
    }
    let legacy = names == ["manifest", "records"]
        && read_manifest(c, path)
            .ok()
            .flatten()
            .is_some_and(|m| m.schema == CHECKPOINT_SCHEMA);
    if legacy {
        Ok(Found::Legacy)
    } else {
        Err(refuse(
            path,
            &format!("a SQLite database with other tables: {}", names.join(", ")),
        ))
    }
}

/// A quick integrity check of stores small enough to check at open.
fn check_integrity(c: &Connection, path: &Path) -> Result<(), Error> {
    if std::fs::metadata(path).map_or(0, |m| m.len()) > CHECK_BYTES {
        return Ok(());
    }
    let verdict: String = c
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| db(path, &e))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(db_message(
            path,
            &format!(
                "the checkpoint is damaged ({verdict}); restore it from a copy or start a new one"
            ),
        ))
    }
}

fn to_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::format(path.display().to_string(), e.to_string()))
}

/// Creates the layout-2 tables and marks the file as ours.
fn create(w: &Connection, path: &Path, identity: &Identity) -> Result<(), Error> {
    let tx = w.unchecked_transaction().map_err(|e| db(path, &e))?;
    tx.execute_batch(SCHEMA).map_err(|e| db(path, &e))?;
    tx.execute(
        "INSERT INTO manifest (key, value) VALUES ('manifest', ?1)",
        params![to_json(path, &Manifest::new(identity))?],
    )
    .map_err(|e| db(path, &e))?;
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {LAYOUT};"
    ))
    .map_err(|e| db(path, &e))?;
    tx.commit().map_err(|e| db(path, &e))
}

/// Moves a layout-1 store to layout 2 in one transaction: every record is
/// kept, under the identity whose fingerprint it carries.
fn migrate(w: &Connection, path: &Path) -> Result<(), Error> {
    tracing::info!(path = %path.display(), "checkpoint: moving to layout 2 (records keyed by identity), once");
    let manifest = read_manifest(w, path)?;
    let tx = w.unchecked_transaction().map_err(|e| db(path, &e))?;
    tx.execute_batch(
        "CREATE TABLE identities (n INTEGER PRIMARY KEY, fp TEXT NOT NULL UNIQUE, identity TEXT);",
    )
    .map_err(|e| db(path, &e))?;
    if let Some(m) = &manifest {
        tx.execute(
            "INSERT INTO identities (fp, identity) VALUES (?1, ?2)",
            params![m.identity.fingerprint(), to_json(path, &m.identity)?],
        )
        .map_err(|e| db(path, &e))?;
    }
    tx.execute_batch(
        "INSERT OR IGNORE INTO identities (fp) SELECT identity_fp FROM records GROUP BY identity_fp ORDER BY min(rowid);
         CREATE TABLE records_2 (
             ident INTEGER NOT NULL, id TEXT NOT NULL, ok INTEGER NOT NULL,
             category TEXT, body TEXT NOT NULL, UNIQUE (ident, id));
         INSERT INTO records_2 (ident, id, ok, category, body)
             SELECT i.n, r.id, r.ok, r.category, r.body
             FROM records r JOIN identities i ON i.fp = r.identity_fp ORDER BY r.rowid;
         DROP TABLE records;
         ALTER TABLE records_2 RENAME TO records;",
    )
    .map_err(|e| db(path, &e))?;
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {LAYOUT};"
    ))
    .map_err(|e| db(path, &e))?;
    tx.commit().map_err(|e| db(path, &e))
}

/// The number of `identity` in the store, registered if new (or named if
/// it was known by fingerprint only).
fn register(w: &Connection, path: &Path, identity: &Identity) -> Result<i64, Error> {
    let fp = identity.fingerprint();
    w.execute(
        "INSERT INTO identities (fp, identity) VALUES (?1, ?2)
         ON CONFLICT (fp) DO UPDATE SET identity = excluded.identity WHERE identity IS NULL",
        params![fp, to_json(path, identity)?],
    )
    .map_err(|e| db(path, &e))?;
    w.query_row("SELECT n FROM identities WHERE fp = ?1", params![fp], |r| {
        r.get(0)
    })
    .map_err(|e| db(path, &e))
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` for a run of `identity` and
    /// locks it for this process. A file that is not an abl checkpoint (not
    /// SQLite, another application's database) is refused and left
    /// untouched; a damaged small store is refused; a store of the first
    /// layout is migrated.
    pub fn open(
        path: impl AsRef<Path>,
        identity: &Identity,
        durability: Durability,
    ) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let lock = StoreLock::acquire(&path)?;
        let w = Connection::open(&path).map_err(|e| db(&path, &e))?;
        w.busy_timeout(Duration::from_secs(5))
            .map_err(|e| db(&path, &e))?;
        let found = inspect(&w, &path)?;
        if !matches!(found, Found::Empty) {
            check_integrity(&w, &path)?;
        }
        if matches!(found, Found::Empty) {
            // Before the first table exists this sets the page size of a
            // new file (16 KiB: records are ~350 bytes; fewer page reads
            // and writes per row than the 4 KiB default).
            w.pragma_update(None, "page_size", 16_384)
                .map_err(|e| db(&path, &e))?;
        }
        w.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db(&path, &e))?;
        let sync = if durability == Durability::Full {
            "FULL"
        } else {
            "NORMAL"
        };
        w.pragma_update(None, "synchronous", sync)
            .map_err(|e| db(&path, &e))?;
        w.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| db(&path, &e))?;
        match found {
            Found::Empty => create(&w, &path, identity)?,
            Found::Legacy => migrate(&w, &path)?,
            Found::Ours => {}
        }
        let manifest = read_manifest(&w, &path)?;
        let ident = register(&w, &path, identity)?;
        let end: i64 = w
            .query_row("SELECT coalesce(max(rowid), 0) FROM records", [], |r| {
                r.get(0)
            })
            .map_err(|e| db(&path, &e))?;
        let had_records = w
            .query_row(
                "SELECT 1 FROM records WHERE ident = ?1 LIMIT 1",
                params![ident],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| db(&path, &e))?
            .is_some();
        let idents = identity_numbers(&w, &path)?;
        Ok(Self {
            readers: open_readers(&path)?,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            _checkpointer: Some(Checkpointer::start(&path)?),
            writer: Some(Mutex::new(w)),
            manifest,
            layout: Layout::Keyed,
            opened: Some((identity.fingerprint(), ident, had_records)),
            idents: Mutex::new(idents),
            scan: Mutex::new(Scan::new(end, ident)),
            path,
            _lock: Some(lock),
        })
    }

    /// Opens an existing store to read it (summaries, reports, imports),
    /// without locking it or writing anything: a run may be writing it.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::io(
                path.display().to_string(),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let r = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db(&path, &e))?;
        let layout = match inspect(&r, &path)? {
            Found::Ours => Layout::Keyed,
            Found::Legacy => Layout::ById,
            Found::Empty => return Err(refuse(&path, "an empty SQLite database")),
        };
        let manifest = read_manifest(&r, &path)?;
        let idents = match layout {
            Layout::Keyed => identity_numbers(&r, &path)?,
            Layout::ById => HashMap::new(),
        };
        drop(r);
        Ok(Self {
            readers: open_readers(&path)?,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
            path,
            writer: None,
            manifest,
            layout,
            opened: None,
            idents: Mutex::new(idents),
            _checkpointer: None,
            scan: Mutex::new(Scan::new(0, 0)),
            _lock: None,
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

    /// Number of records, of every identity.
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

/// Identity fingerprints and their numbers.
pub(super) fn identity_numbers(c: &Connection, path: &Path) -> Result<HashMap<String, i64>, Error> {
    let mut stmt = c
        .prepare("SELECT fp, n FROM identities")
        .map_err(|e| db(path, &e))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(|e| db(path, &e))?;
    rows.collect::<Result<_, _>>().map_err(|e| db(path, &e))
}

pub(super) fn read_manifest(c: &Connection, path: &Path) -> Result<Option<Manifest>, Error> {
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
        serde_json::from_str(&j)
            .map_err(|e| Error::format(path.display().to_string(), format!("bad manifest: {e}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CheckpointStore as _;

    fn identity(model: &str) -> Identity {
        Identity {
            model: model.into(),
            ..Identity::default()
        }
    }

    fn body(id: &str, identity_fp: &str) -> String {
        format!(
            r#"{{"v":2,"id":"{id}","item_fp":"f","identity_fp":"{identity_fp}","result":{{"id":"{id}","ok":true,"output":"{id}","usage":{{"input":1,"output":1,"total":2}},"attempts":1,"tries":1,"timing":{{"total_ms":1}}}}}}"#
        )
    }

    #[test]
    fn foreign_databases_and_other_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("app.sqlite");
        let c = Connection::open(&other).unwrap();
        c.execute_batch("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ada');")
            .unwrap();
        drop(c);
        let before = std::fs::read(&other).unwrap();
        let e = SqliteStore::open(&other, &identity("m"), Durability::Normal)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not an abl checkpoint") && e.contains("users"),
            "{e}"
        );
        assert_eq!(std::fs::read(&other).unwrap(), before);
        assert!(!dir.path().join("app.sqlite-wal").exists());

        let text = dir.path().join("notes.sqlite");
        std::fs::write(&text, "just some notes\n").unwrap();
        let e = SqliteStore::open(&text, &identity("m"), Durability::Normal)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a SQLite database"), "{e}");
        assert_eq!(std::fs::read_to_string(&text).unwrap(), "just some notes\n");

        let tagged = dir.path().join("tagged.sqlite");
        let c = Connection::open(&tagged).unwrap();
        c.execute_batch("PRAGMA application_id = 7; CREATE TABLE manifest (key TEXT);")
            .unwrap();
        drop(c);
        let e = SqliteStore::open(&tagged, &identity("m"), Durability::Normal)
            .unwrap_err()
            .to_string();
        assert!(e.contains("application_id 0x7"), "{e}");
    }

    #[test]
    fn a_damaged_store_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sqlite");
        let s = SqliteStore::open(&path, &identity("m"), Durability::Normal).unwrap();
        let fp = identity("m").fingerprint();
        let rows: Vec<_> = (0..2000)
            .map(|i| crate::store::EncodedRecord {
                id: format!("r{i}"),
                identity_fp: fp.clone(),
                ok: true,
                category: None,
                body: body(&format!("r{i}"), &fp),
            })
            .collect();
        s.write_batch(&rows).unwrap();
        s.settle().unwrap();
        drop(s);
        // Garble the pages after the first two (the header stays readable).
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 3 * 16_384);
        for b in &mut bytes[2 * 16_384..] {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let e = SqliteStore::open(&path, &identity("m"), Durability::Normal)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SQLite"), "{e}");
    }

    #[test]
    fn a_first_layout_store_is_migrated_keeping_every_record_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        let (a, b) = (identity("a"), identity("b"));
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE records (id TEXT PRIMARY KEY, item_fp TEXT NOT NULL, identity_fp TEXT NOT NULL,
                                   ok INTEGER NOT NULL, category TEXT, body TEXT NOT NULL);",
        )
        .unwrap();
        c.execute(
            "INSERT INTO manifest VALUES ('manifest', ?1)",
            params![serde_json::to_string(&Manifest::new(&a)).unwrap()],
        )
        .unwrap();
        for (id, who) in [("x", &a), ("y", &b)] {
            c.execute(
                "INSERT INTO records VALUES (?1, 'f', ?2, 1, NULL, ?3)",
                params![id, who.fingerprint(), body(id, &who.fingerprint())],
            )
            .unwrap();
        }
        drop(c);
        // Read as it is without a lock or a change.
        let ro = SqliteStore::open_read_only(&path).unwrap();
        assert!(ro.lookup(&a.fingerprint(), "x").unwrap().is_some());
        assert!(ro.lookup(&a.fingerprint(), "y").unwrap().is_none());
        let known: Vec<_> = ro.identities().into_iter().map(|k| k.identity).collect();
        assert_eq!(known, vec![Some(a.clone()), None]);
        drop(ro);
        // Opened for writing: migrated.
        let s = SqliteStore::open(&path, &b, Durability::Normal).unwrap();
        assert!(s.had_records_at_open(&b.fingerprint()));
        assert!(s.lookup(&b.fingerprint(), "y").unwrap().is_some());
        assert!(s.lookup(&a.fingerprint(), "x").unwrap().is_some());
        let known: Vec<_> = s.identities().into_iter().map(|k| k.identity).collect();
        assert_eq!(known, vec![Some(a), Some(b)]);
        assert_eq!(s.len().unwrap(), 2);
    }

    #[test]
    fn a_second_writer_is_refused_and_a_reader_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sqlite");
        let s = SqliteStore::open(&path, &identity("m"), Durability::Normal).unwrap();
        let e = SqliteStore::open(&path, &identity("m"), Durability::Normal).unwrap_err();
        assert!(e.is_in_use(), "{e}");
        assert!(SqliteStore::open_read_only(&path).is_ok());
        drop(s);
        assert!(SqliteStore::open(&path, &identity("m"), Durability::Normal).is_ok());
    }
}
