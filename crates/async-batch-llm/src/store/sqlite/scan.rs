//! The read-ahead of a resume: rows read in write order, one range scan per
//! step, and found by a hash of their id.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::errors::db;
use crate::error::Error;
use crate::store::StoredLine;

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
pub(super) struct Scan {
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
    /// The identity whose rows are read ahead.
    ident: i64,
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
    /// A read-ahead over the rows up to `end` (the largest rowid when the
    /// store was opened).
    pub(super) fn new(end: i64, ident: i64) -> Self {
        Self {
            end,
            ident,
            ..Self::default()
        }
    }

    pub(super) fn fill(&mut self, c: &Connection, path: &Path) -> Result<(), Error> {
        let mut stmt = c
            .prepare_cached(
                "SELECT rowid, id, body FROM records WHERE rowid > ?1 AND rowid <= ?2 AND ident = ?4 ORDER BY rowid LIMIT ?3",
            )
            .map_err(|e| db(path, &e))?;
        let mut rows = stmt
            .query(params![self.cursor, self.end, SCAN_CHUNK, self.ident])
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
    pub(super) fn wants_more(&self) -> bool {
        self.cursor < self.end && self.cursor < self.claimed + SCAN_AHEAD
    }

    pub(super) fn take(&mut self, id: &str) -> Option<StoredLine> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::batch;
    use super::super::{Durability, SqliteStore};
    use super::*;
    use crate::store::{CheckpointStore as _, Identity};

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
        drop(store);
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
}
