//! Splitting one job between processes: shard `K/N` holds the items whose
//! id hashes to `K`, the same on every machine, in every run and with
//! every version of this crate, so each shard can run, crash and resume on
//! its own and the shards together hold every item exactly once.
//!
//! The hash is public so other tools can reproduce it: the first eight
//! bytes of the SHA-256 of the id's UTF-8 bytes, read big-endian, modulo
//! `N` (`printf %s "$id" | sha256sum` shows the digest).

use sha2::{Digest, Sha256};

use crate::error::Error;

/// One shard of `count`: the items whose id hashes to `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// The most shards a job may be split into.
pub const MAX_SHARDS: u32 = 1 << 20;

impl Shard {
    /// Shard `index` of `count` (0-based: `0..count`, as Kubernetes numbers
    /// the pods of an indexed Job).
    pub fn new(index: u32, count: u32) -> Result<Self, Error> {
        if count == 0 || count > MAX_SHARDS {
            return Err(Error::config(format!(
                "a job splits into 1 to {MAX_SHARDS} shards, not {count}"
            )));
        }
        if index >= count {
            return Err(Error::config(format!(
                "shard {index}/{count} does not exist: shards of {count} are numbered 0 to {}",
                count - 1
            )));
        }
        Ok(Self { index, count })
    }

    /// Reads `K/N` (`0/4`).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = || {
            Error::config(format!(
                "a shard is K/N with 0 <= K < N (like 0/4), not {text:?}"
            ))
        };
        let (k, n) = text.trim().split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse::<u32>().map_err(|_| bad())?;
        let n = n.trim().parse::<u32>().map_err(|_| bad())?;
        Self::new(k, n)
    }

    /// This shard's number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many shards the job has.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The shard an id belongs to, of `count`.
    pub fn of(id: &str, count: u32) -> u32 {
        let digest = Sha256::digest(id.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        let n = u64::from_be_bytes(head) % u64::from(count.max(1));
        u32::try_from(n).unwrap_or(0)
    }

    /// Whether the item with this id is this shard's.
    pub fn contains(&self, id: &str) -> bool {
        Self::of(id, self.count) == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_is_in_exactly_one_shard_and_shards_are_even() {
        let shards: Vec<Shard> = (0..4).map(|k| Shard::new(k, 4).unwrap()).collect();
        let mut sizes = [0u32; 4];
        for i in 0..40_000 {
            let id = format!("row-{i}");
            let holders: Vec<u32> = shards
                .iter()
                .filter(|s| s.contains(&id))
                .map(Shard::index)
                .collect();
            assert_eq!(holders.len(), 1, "{id} in {holders:?}");
            sizes[holders[0] as usize] += 1;
        }
        for s in sizes {
            assert!((9_500..=10_500).contains(&s), "{sizes:?}");
        }
    }

    #[test]
    fn the_hash_is_the_documented_one() {
        // printf %s row-1 | sha256sum → 0f719b1f3a428a4d…: its first 8
        // bytes as a big-endian number, mod 7.
        let head = 0x0f71_9b1f_3a42_8a4d_u64;
        assert_eq!(Shard::of("row-1", 7), u32::try_from(head % 7).unwrap());
        assert_eq!(
            Shard::of("row-1", 1000),
            u32::try_from(head % 1000).unwrap()
        );
        assert_eq!(Shard::of("row-1", 1), 0);
    }

    #[test]
    fn bad_shards_are_refused_with_the_rule() {
        assert_eq!(Shard::parse(" 3/4 ").unwrap(), Shard::new(3, 4).unwrap());
        for bad in ["4/4", "1/0", "-1/4", "a/b", "2", "1/2/3", ""] {
            let e = Shard::parse(bad).unwrap_err().to_string();
            assert!(e.contains("shard"), "{bad}: {e}");
        }
        assert!(Shard::new(0, MAX_SHARDS + 1).is_err());
        assert_eq!(Shard::new(1, 4).unwrap().to_string(), "1/4");
    }
}
