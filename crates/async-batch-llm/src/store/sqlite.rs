//! The SQLite store: WAL, one writer connection fed by the writer thread,
//! batched transactions, an index on item id so lookups and reopening stay
//! fast whatever the size, and a read-only mode for inspection.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::{CheckpointStore, EncodedRecord, Identity, Manifest, Record, StoredLine};
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

/// Read-ahead for resumes. Records sit in the table in the order they were
/// written, which is close to input order, so a resume reads them in
/// sequence (one cheap range scan per [`SCAN_CHUNK`] rows) and finds most
/// ids in this window instead of one index lookup each. Ids not in the
/// window (new items, or far out of order) are looked up by key: the window
/// is only a cache of what the table holds.
///
/// Each scan step copies its rows into one buffer (ids and bodies), and the
/// window indexes them by a hash of the id, so a step allocates a few times,
/// not three times per row; a line taken from the window shares the buffer.
#[derive(Default)]
struct Scan {
    /// Rows waiting to be taken, by [`id_hash`].
    window: HashMap<u64, Slot, BuildHasherDefault<Prehashed>>,
    /// Rows whose id hash is already in `window` (two ids, one hash).
    spill: HashMap<Box<str>, Slot>,
    /// Buffers of the scan steps whose rows may still be in the window,
    /// oldest first.
    blocks: VecDeque<Block>,
    /// Number of the first buffer in `blocks` (buffers are numbered in
    /// the order they were read).
    first_block: u64,
    /// Buffers dropped from the window, kept to be reused once no line
    /// taken from them is alive (a fresh buffer of a megabyte costs page
    /// faults on every step).
    retired: Vec<Arc<String>>,
    /// Last rowid read.
    cursor: i64,
    /// Largest rowid taken from the window: where the resume has got to in
    /// the table.
    claimed: i64,
    /// Largest rowid when the store was opened: rows written by this run
    /// are never read ahead.
    end: i64,
}

/// The rows of one scan step.
struct Block {
    buf: Arc<String>,
    /// The largest rowid in it.
    last: i64,
    /// Its rows still in the window.
    live: usize,
}

/// Where a row read ahead sits: buffer number, the id at `start..body`,
/// the body at `body..end`.
#[derive(Clone, Copy)]
struct Slot {
    rowid: i64,
    block: u64,
    start: u32,
    body: u32,
    end: u32,
}

/// A 64-bit hash of an id (FxHash's mixing, then a final avalanche so the
/// high bits, which the table uses, depend on every byte). Ids come from
/// the user's own input and checkpoint, so no flooding defence is needed.
fn id_hash(id: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = id.len() as u64;
    let mut chunks = id.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Most buffers kept for reuse.
const RETIRED: usize = 4;
/// Rows read per scan step.
const SCAN_CHUNK: i64 = 2048;
/// Read more once the scan is fewer rows than this ahead of the last row
/// taken.
const SCAN_AHEAD: i64 = 4096;
/// Rows further than this behind the last row taken are dropped from the
/// window (an item that was removed from the input never claims its row).
const SCAN_KEEP: i64 = 16_384;

impl Scan {
    fn fill(&mut self, c: &Connection, path: &Path) -> Result<(), Error> {
        let mut stmt = c
            .prepare_cached(
                "SELECT rowid, id, body FROM records WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid LIMIT ?3",
            )
            .map_err(|e| db(path, &e))?;
        let mut rows = stmt
            .query(params![self.cursor, self.end, SCAN_CHUNK])
            .map_err(|e| db(path, &e))?;
        let block = self.first_block + self.blocks.len() as u64;
        let mut buf = self.spare_buffer();
        let mut last = self.end;
        let mut n = 0;
        while let Some(row) = rows.next().map_err(|e| db(path, &e))? {
            let rowid: i64 = row.get(0).map_err(|e| db(path, &e))?;
            let id = row
                .get_ref(1)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(|e| db(path, &e))?;
            let body = row
                .get_ref(2)
                .and_then(|v| v.as_str().map_err(Into::into))
                .map_err(|e| db(path, &e))?;
            if buf.is_empty() {
                buf.reserve((id.len() + body.len()) * SCAN_CHUNK as usize * 9 / 8);
            }
            let start = buf.len();
            buf.push_str(id);
            let body_at = buf.len();
            buf.push_str(body);
            let (Ok(start), Ok(body_at), Ok(end)) = (
                u32::try_from(start),
                u32::try_from(body_at),
                u32::try_from(buf.len()),
            ) else {
                // A step of more than 4 GiB: leave the rest to lookups by key.
                break;
            };
            let slot = Slot {
                rowid,
                block,
                start,
                body: body_at,
                end,
            };
            match self.window.entry(id_hash(id)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(slot);
                }
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.spill.insert(id.into(), slot);
                }
            }
            last = rowid;
            n += 1;
        }
        self.blocks.push_back(Block {
            buf: Arc::new(buf),
            last,
            live: n as usize,
        });
        self.cursor = if n < SCAN_CHUNK { self.end } else { last };
        // Rows nobody claimed (items gone from the input) are dropped once
        // they are SCAN_KEEP rows behind the last row taken; half that again
        // at once, so this pass over the window runs at most every few
        // steps. When every row is claimed, it never runs.
        if self
            .blocks
            .front()
            .is_some_and(|b| b.live > 0 && b.last < self.claimed - SCAN_KEEP)
        {
            let keep_from = self.claimed - SCAN_KEEP / 2;
            let (first, blocks) = (self.first_block, &mut self.blocks);
            let mut evict = |s: &Slot| {
                let keep = s.rowid >= keep_from;
                if !keep
                    && let Some(b) = s
                        .block
                        .checked_sub(first)
                        .and_then(|i| usize::try_from(i).ok())
                        .and_then(|i| blocks.get_mut(i))
                {
                    b.live = b.live.saturating_sub(1);
                }
                keep
            };
            self.window.retain(|_, s| evict(s));
            self.spill.retain(|_, s| evict(s));
        }
        self.drop_empty_blocks();
        Ok(())
    }

    /// Retires the oldest buffers once none of their rows is in the window.
    fn drop_empty_blocks(&mut self) {
        while self.blocks.front().is_some_and(|b| b.live == 0) {
            if let Some(b) = self.blocks.pop_front()
                && self.retired.len() < RETIRED
            {
                self.retired.push(b.buf);
            }
            self.first_block += 1;
        }
    }

    /// An empty buffer: a retired one that nothing reads any more, or new.
    fn spare_buffer(&mut self) -> String {
        let free = self.retired.iter().position(|b| Arc::strong_count(b) == 1);
        free.map(|i| self.retired.swap_remove(i))
            .and_then(|b| Arc::try_unwrap(b).ok())
            .map(|mut b| {
                b.clear();
                b
            })
            .unwrap_or_default()
    }

    fn block(&mut self, slot: &Slot) -> Option<&mut Block> {
        let i = usize::try_from(slot.block.checked_sub(self.first_block)?).ok()?;
        self.blocks.get_mut(i)
    }

    /// Whether `slot` holds the row of `id`.
    fn holds(&self, slot: &Slot, id: &str) -> bool {
        slot.block
            .checked_sub(self.first_block)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.blocks.get(i))
            .and_then(|b| b.buf.get(slot.start as usize..slot.body as usize))
            == Some(id)
    }

    /// Whether the scan should read on: it is close to the rows being
    /// taken, and rows are left.
    fn wants_more(&self) -> bool {
        self.cursor < self.end && self.cursor < self.claimed + SCAN_AHEAD
    }

    fn take(&mut self, id: &str) -> Option<StoredLine> {
        let h = id_hash(id);
        let slot = match self.window.get(&h) {
            Some(slot) if self.holds(slot, id) => self.window.remove(&h),
            _ => self.spill.remove(id),
        }?;
        self.claimed = self.claimed.max(slot.rowid);
        let block = self.block(&slot)?;
        block.live = block.live.saturating_sub(1);
        let line = StoredLine::shared(
            Arc::clone(&block.buf),
            slot.body as usize..slot.end as usize,
        );
        self.drop_empty_blocks();
        Some(line)
    }
}

/// Copies the WAL into the database from its own thread and connection,
/// so the writer thread spends its time on inserts (the writer's own
/// automatic checkpoints are off).
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the WAL is copied into the database while records arrive.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL size past which the checkpointer also resets it. A passive copy
/// never catches a writer that commits without pause, and SQLite restarts
/// the WAL only when a commit begins with every frame copied, so without a
/// reset the WAL grows for the whole run (2.3 GB for 200,000 records).
const WAL_RESET_BYTES: i64 = 64 << 20;

impl Checkpointer {
    fn start(path: &Path) -> Result<Self, Error> {
        let c = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db(path, &e))?;
        // A reset waits for the commit in progress and for readers of old
        // frames; past this it gives up until the next round.
        c.busy_timeout(Duration::from_secs(2))
            .map_err(|e| db(path, &e))?;
        let page_size: i64 = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| db(path, &e))?;
        let reset_frames = WAL_RESET_BYTES / page_size.max(512);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("abl-wal-checkpoint".into())
            .spawn(move || {
                let (lock, cv) = &*signal;
                loop {
                    // The lock is held only while waiting, not while copying,
                    // so dropping the store never waits on a long copy.
                    let stopped = {
                        let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        let (guard, _) = cv
                            .wait_timeout_while(guard, CHECKPOINT_EVERY, |stop| !*stop)
                            .unwrap_or_else(PoisonError::into_inner);
                        *guard
                    };
                    // PASSIVE never blocks the writer; a failure here only
                    // leaves a longer WAL for the next round. After the stop
                    // the last connection to close copies the rest.
                    if stopped {
                        break;
                    }
                    wal_round(&c, reset_frames);
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the WAL checkpointer: {e}")))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

/// One round of the checkpointer: copy what the WAL holds into the
/// database without blocking anyone, and reset the WAL to zero bytes once it
/// holds more than `reset_frames` frames (copying what the passive pass
/// missed stops the writer briefly). Failures only leave a longer WAL for
/// the next round.
fn wal_round(c: &Connection, reset_frames: i64) {
    let frames = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
        .unwrap_or(0);
    if frames > reset_frames {
        let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

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

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("read_only", &self.writer.is_none())
            .finish_non_exhaustive()
    }
}

fn db(path: &Path, e: &rusqlite::Error) -> Error {
    db_message(path, &e.to_string())
}

fn db_message(path: &Path, message: &str) -> Error {
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
            scan: Mutex::new(Scan {
                end,
                ..Scan::default()
            }),
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
mod tests {
    use super::*;

    fn wal_bytes(path: &Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    fn batch(from: usize, n: usize) -> Vec<EncodedRecord> {
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

    /// A store of `n` rows `item-000000`… with short bodies, and its scan.
    fn scanned(dir: &Path, n: usize) -> (SqliteStore, Connection) {
        let path = dir.join("scan.sqlite");
        let store = SqliteStore::open(&path, &Identity::default(), Durability::Normal).unwrap();
        for k in (0..n).step_by(5000) {
            let rows: Vec<_> = batch(k, 5000.min(n - k))
                .into_iter()
                .map(|mut r| {
                    r.body = format!("body of {}", r.id);
                    r
                })
                .collect();
            store.write_batch(&rows).unwrap();
        }
        let store = SqliteStore::open(&path, &Identity::default(), Durability::Normal).unwrap();
        let c = Connection::open(&path).unwrap();
        (store, c)
    }

    #[test]
    fn the_read_ahead_keeps_going_past_rows_nobody_claims_and_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, c) = scanned(dir.path(), 50_000);
        let mut scan = store.scan.lock().unwrap();
        let mut most_blocks = 0;
        // Every other id is claimed, in write order: the unclaimed half
        // must not stall the scan (each claimed id is in the window) nor
        // pile up (old buffers are freed).
        for i in (0..50_000).step_by(2) {
            while scan.wants_more() {
                scan.fill(&c, dir.path()).unwrap();
            }
            let id = format!("item-{i:06}");
            let line = scan
                .take(&id)
                .unwrap_or_else(|| panic!("{id} not read ahead"));
            assert_eq!(line.as_str(), format!("body of {id}"));
            most_blocks = most_blocks.max(scan.blocks.len());
        }
        let bound = (SCAN_KEEP / SCAN_CHUNK) as usize + 3;
        assert!(most_blocks <= bound, "{most_blocks} buffers held");
        let rows = (SCAN_KEEP + SCAN_AHEAD + 2 * SCAN_CHUNK) as usize;
        let held = scan.window.len() + scan.spill.len();
        assert!(held <= rows, "{held} rows in the window");
        assert!(scan.take("item-000001").is_none(), "evicted long ago");
    }

    #[test]
    fn ids_that_share_a_hash_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, c) = scanned(dir.path(), 3);
        let mut scan = store.scan.lock().unwrap();
        scan.fill(&c, dir.path()).unwrap();
        // Pretend item-000001 hashed like item-000000: its row goes to the
        // spill, and item-000000's slot sits under both hashes.
        let (h0, h1) = (id_hash("item-000000"), id_hash("item-000001"));
        let slot1 = scan.window.remove(&h1).unwrap();
        scan.spill.insert("item-000001".into(), slot1);
        let slot0 = *scan.window.get(&h0).unwrap();
        scan.window.insert(h1, slot0);
        let body = |l: Option<StoredLine>| l.map(|l| l.as_str().to_owned());
        assert_eq!(
            body(scan.take("item-000001")).unwrap(),
            "body of item-000001"
        );
        assert_eq!(
            body(scan.take("item-000000")).unwrap(),
            "body of item-000000"
        );
        assert_eq!(
            body(scan.take("item-000002")).unwrap(),
            "body of item-000002"
        );
        assert!(scan.take("item-000003").is_none());
        assert_ne!(id_hash("ab"), id_hash("ba"));
        assert_ne!(id_hash("a"), id_hash("a\0"));
    }

    #[test]
    fn a_long_wal_is_reset_to_zero_and_a_short_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.sqlite");
        let store = SqliteStore::open(&path, &Identity::default(), Durability::Normal).unwrap();
        for k in 0..20 {
            store.write_batch(&batch(k * 100, 100)).unwrap();
        }
        let before = wal_bytes(&path);
        assert!(
            before > 1 << 20,
            "2,000 records of 1 KB: WAL {before} bytes"
        );
        let c = Connection::open(&path).unwrap();
        // Below the limit: copied, not reset.
        wal_round(&c, i64::MAX);
        assert_eq!(wal_bytes(&path), before);
        // Past it: reset while the store stays open, nothing lost.
        wal_round(&c, 10);
        assert_eq!(wal_bytes(&path), 0);
        store.write_batch(&batch(2000, 10)).unwrap();
        assert_eq!(store.len().unwrap(), 2010);
        let first = store.lookup_raw(&["item-000000"]).unwrap();
        assert!(first[0].as_ref().is_some_and(|b| b.as_str().len() > 1000));
    }
}
