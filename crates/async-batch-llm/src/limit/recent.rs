//! The last minute of a scope, second by second: the requests the provider
//! accepted and the tokens they used. In constant memory (61
//! one-second buckets) whatever the rate, so every scope can keep it.
//!
//! It is what a scope learns a quota from when the provider states none
//! (at a quota wall, what was accepted in the last minute is the limit),
//! and what seeds the RPM/TPM window when limits first come into force.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 61;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    second: u64,
    accepted: u64,
    tokens: u64,
}

/// Sums over the last minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteSums {
    /// Requests the provider answered with success.
    pub accepted: u64,
    /// Tokens those used.
    pub tokens: u64,
    /// The start of the earliest second with an accepted request.
    pub since: Option<Instant>,
}

/// The last minute of one scope.
#[derive(Debug)]
pub struct Recent {
    start: Instant,
    buckets: Mutex<[Bucket; BUCKETS]>,
}

impl Recent {
    /// An empty minute starting now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            buckets: Mutex::new([Bucket::default(); BUCKETS]),
        }
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    fn with_bucket(&self, at: Instant, f: impl FnOnce(&mut Bucket)) {
        let second = self.second(at);
        let mut b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = &mut b[(second % BUCKETS as u64) as usize];
        if slot.second != second {
            *slot = Bucket {
                second,
                ..Bucket::default()
            };
        }
        f(slot);
    }

    /// A request was answered with success at `at`, using `tokens`.
    pub fn accepted(&self, at: Instant, tokens: u64) {
        self.with_bucket(at, |b| {
            b.accepted += 1;
            b.tokens += tokens;
        });
    }

    /// The buckets of the 60 seconds up to `now`, oldest first.
    fn last_minute(&self, now: Instant) -> Vec<Bucket> {
        let now_s = self.second(now);
        let b = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<Bucket> = b
            .iter()
            .filter(|x| x.second + 60 > now_s && x.second <= now_s)
            .copied()
            .collect();
        v.sort_by_key(|x| x.second);
        v
    }

    /// Sums over the last minute.
    pub fn minute(&self, now: Instant) -> MinuteSums {
        self.last_minute(now)
            .iter()
            .fold(MinuteSums::default(), |s, b| MinuteSums {
                accepted: s.accepted + b.accepted,
                tokens: s.tokens + b.tokens,
                since: s.since.or_else(|| {
                    (b.accepted > 0).then(|| self.start + Duration::from_secs(b.second))
                }),
            })
    }

    /// The last minute as (when, requests accepted, tokens used), oldest
    /// first, to seed a window that starts counting now. Each second's
    /// requests are dated at its end (never before `now`'s): a window
    /// seeded so lets them leave late, never early.
    pub fn seed(&self, now: Instant) -> Vec<(Instant, u64, u64)> {
        self.last_minute(now)
            .iter()
            .map(|b| {
                (
                    (self.start + Duration::from_secs(b.second + 1)).min(now),
                    b.accepted,
                    b.tokens,
                )
            })
            .collect()
    }
}

impl Default for Recent {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rolling_minute_in_constant_memory() {
        let r = Recent::new();
        let t0 = Instant::now();
        for s in 0..90u64 {
            let at = t0 + Duration::from_secs(s);
            r.accepted(at, 10);
        }
        let now = t0 + Duration::from_secs(89);
        assert_eq!(
            r.minute(now),
            MinuteSums {
                accepted: 60,
                tokens: 600,
                since: Some(t0 + Duration::from_secs(30)),
            }
        );
        let seed = r.seed(now);
        assert_eq!(seed.len(), 60);
        assert_eq!(seed[0], (t0 + Duration::from_secs(31), 1, 10));
        // Long after, nothing is left.
        assert_eq!(
            r.minute(t0 + Duration::from_secs(500)),
            MinuteSums::default()
        );
    }
}
