//! A small, fast pseudo-random generator (splitmix64) for jitter and test
//! schedules. Not for cryptography.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static SEED_COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

thread_local! {
    static STATE: Cell<u64> = Cell::new(initial_seed());
}

fn initial_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ SEED_COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

/// One step of splitmix64.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in `[0, 1)` from the thread's generator.
pub(crate) fn unit() -> f64 {
    STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        unit_from(mix(next))
    })
}

/// A uniform float in `[0, 1)` from 64 random bits.
pub(crate) fn unit_from(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable 64-bit hash of bytes (FNV-1a, then mixed), for seeded decisions.
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    mix(h)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_in_range() {
        for _ in 0..10_000 {
            let u = super::unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(super::hash_bytes(1, b"a"), super::hash_bytes(1, b"a"));
        assert_ne!(super::hash_bytes(1, b"a"), super::hash_bytes(2, b"a"));
    }
}
