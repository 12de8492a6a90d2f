//! The WAL checkpointer: copies the WAL into the database from its own
//! thread and connection, and keeps the WAL bounded.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::errors::db;
use crate::error::Error;

/// Copies the WAL into the database from its own thread and connection,
/// so the writer thread spends its time on inserts (the writer's own
/// automatic checkpoints are off).
pub(super) struct Checkpointer {
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
    pub(super) fn start(path: &Path) -> Result<Self, Error> {
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
            .map_err(|e| Error::config(format!("cannot start the WAL checkpointer: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::super::test_support::batch;
    use super::super::{Durability, SqliteStore};
    use super::*;
    use crate::store::{CheckpointStore as _, Identity};

    fn wal_bytes(path: &Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
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
        let first = store
            .lookup_raw(&Identity::default().fingerprint(), &["item-000000"])
            .unwrap();
        assert!(first[0].as_ref().is_some_and(|b| b.as_str().len() > 1000));
    }
}
