//! A run on a time axis, rebuilt from its records: when items finished,
//! how many calls were in flight, when 429s came back, and the windows in
//! which items waited for a cooldown.
//!
//! Records carry each try's start and its waits and call time, so the
//! timeline needs no log of events: a try began waiting at `started_at`,
//! its call ran from `started_at + cooldown_wait + admission_wait` for
//! `execution`. Everything is summed into buckets of [`BASE_MS`] as records
//! stream past (memory follows the run's length, not its item count), then
//! merged into at most [`Timeline::series`]'s `max_points` for drawing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_batch_llm::{ErrorCategory, ItemResult};
use serde_json::Value;

/// The finest bucket, in milliseconds.
const BASE_MS: i64 = 100;

/// What happened in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    /// Items that ended with an output.
    pub succeeded: u64,
    /// Items that ended failed.
    pub failed: u64,
    /// Call time inside the bucket, in milliseconds (divided by the
    /// bucket's width: the mean number of calls in flight).
    pub busy_ms: f64,
    /// Tries answered with a rate limit.
    pub rate_limited: u64,
}

impl Bucket {
    fn merge(&mut self, o: &Bucket) {
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.busy_ms += o.busy_ms;
        self.rate_limited += o.rate_limited;
    }
}

/// The timeline as drawn: equal steps from `start`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Wall time of the first step.
    pub start: SystemTime,
    /// Width of a step.
    pub step: Duration,
    /// One bucket per step.
    pub points: Vec<Bucket>,
    /// Merged cooldown windows, as offsets from `start`.
    pub cooldowns: Vec<(Duration, Duration)>,
}

impl Series {
    /// Items finished per second in each step.
    pub fn throughput(&self) -> Vec<f64> {
        let secs = self.step.as_secs_f64();
        self.points
            .iter()
            .map(|b| (b.succeeded + b.failed) as f64 / secs)
            .collect()
    }

    /// Mean calls in flight in each step.
    pub fn in_flight(&self) -> Vec<f64> {
        let ms = self.step.as_secs_f64() * 1000.0;
        self.points.iter().map(|b| b.busy_ms / ms).collect()
    }

    /// Tries answered with a rate limit in each step.
    pub fn rate_limited(&self) -> Vec<f64> {
        self.points.iter().map(|b| b.rate_limited as f64).collect()
    }

    /// Failed items in each step.
    pub fn failed(&self) -> Vec<f64> {
        self.points.iter().map(|b| b.failed as f64).collect()
    }
}

/// Records summed onto a time axis.
#[derive(Debug, Default)]
pub struct Timeline {
    buckets: BTreeMap<i64, Bucket>,
    /// Cooldown waits; merged whenever they grow large, so they hold about
    /// as many entries as the run had cooldowns.
    cooldowns: Vec<(i64, i64)>,
    /// First start and last end of a placed record (ms).
    span: Option<(i64, i64)>,
    /// Records with no wall times (written by an older abl, or never
    /// started): counted, not placed.
    pub unplaced: u64,
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// The steps a chart may use, in milliseconds: round numbers a person reads.
const STEPS_MS: [i64; 17] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    900_000, 1_800_000, 3_600_000, 7_200_000,
];

impl Timeline {
    /// Places one record. Replayed results are an earlier run's and are
    /// not placed.
    pub fn add(&mut self, r: &ItemResult<Value>) {
        let Some(start) = r.timing.started_at.filter(|_| !r.replayed) else {
            self.unplaced += 1;
            return;
        };
        let start = unix_ms(start);
        let end = start.saturating_add(ms(r.timing.total));
        self.span = Some(
            self.span
                .map_or((start, end), |(a, b)| (a.min(start), b.max(end))),
        );
        let b = self.bucket(end);
        if r.outcome.is_ok() {
            b.succeeded += 1;
        } else {
            b.failed += 1;
        }
        for t in &r.timing.tries {
            let began = t.started_at.map_or(start, unix_ms);
            let waited = ms(t.cooldown_wait);
            if waited > 0 {
                self.cooldowns.push((began, began.saturating_add(waited)));
                if self.cooldowns.len() >= 1 << 16 {
                    self.cooldowns = merge(std::mem::take(&mut self.cooldowns));
                }
            }
            let call = began
                .saturating_add(waited)
                .saturating_add(ms(t.admission_wait));
            let call_end = call.saturating_add(ms(t.execution));
            self.busy(call, call_end);
            if t.error == Some(ErrorCategory::RateLimit) {
                self.bucket(call_end).rate_limited += 1;
            }
        }
    }

    fn bucket(&mut self, at_ms: i64) -> &mut Bucket {
        self.buckets.entry(at_ms.div_euclid(BASE_MS)).or_default()
    }

    /// Adds call time over `[from, to)` to the buckets it crosses.
    fn busy(&mut self, from: i64, to: i64) {
        let mut at = from;
        while at < to {
            let key = at.div_euclid(BASE_MS);
            let edge = (key + 1) * BASE_MS;
            let until = edge.min(to);
            self.buckets.entry(key).or_default().busy_ms += (until - at) as f64;
            at = until;
        }
    }

    /// Wall times of the first start and the last end of a placed record.
    pub fn span(&self) -> Option<(SystemTime, SystemTime)> {
        let at = |ms: i64| {
            SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        };
        self.span.map(|(a, b)| (at(a), at(b)))
    }

    /// The timeline in at most `max_points` equal steps, or `None` when
    /// nothing was placed.
    pub fn series(&self, max_points: usize) -> Option<Series> {
        let first = *self.buckets.keys().next()?;
        let last = *self.buckets.keys().next_back()?;
        let span_ms = (last - first + 1) * BASE_MS;
        let step_ms = STEPS_MS
            .iter()
            .copied()
            .find(|s| span_ms / s < i64::try_from(max_points).unwrap_or(i64::MAX))
            .unwrap_or(STEPS_MS[STEPS_MS.len() - 1]);
        let start_ms = (first * BASE_MS).div_euclid(step_ms) * step_ms;
        let n = usize::try_from((last * BASE_MS - start_ms) / step_ms + 1).unwrap_or(1);
        let mut points = vec![Bucket::default(); n];
        for (key, b) in &self.buckets {
            let i = usize::try_from((key * BASE_MS - start_ms) / step_ms).unwrap_or(0);
            if let Some(p) = points.get_mut(i) {
                p.merge(b);
            }
        }
        let offset = |t: i64| Duration::from_millis(u64::try_from(t - start_ms).unwrap_or(0));
        let cooldowns = merge(self.cooldowns.clone())
            .into_iter()
            .map(|(a, b)| (offset(a), offset(b)))
            .collect();
        Some(Series {
            start: SystemTime::UNIX_EPOCH
                + Duration::from_millis(u64::try_from(start_ms).unwrap_or(0)),
            step: Duration::from_millis(u64::try_from(step_ms).unwrap_or(1000)),
            points,
            cooldowns,
        })
    }

    /// The merged cooldown windows: how many, their total and the longest.
    pub fn cooldown_totals(&self) -> (u64, Duration, Duration) {
        let merged = merge(self.cooldowns.clone());
        let lengths = merged
            .iter()
            .map(|(a, b)| Duration::from_millis(u64::try_from(b - a).unwrap_or(0)));
        let (mut total, mut longest) = (Duration::ZERO, Duration::ZERO);
        for d in lengths {
            total += d;
            longest = longest.max(d);
        }
        (merged.len() as u64, total, longest)
    }
}

/// Overlapping or touching intervals joined.
fn merge(mut v: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(v.len().min(1024));
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values, computed exactly
mod tests {
    use super::*;
    use async_batch_llm::{ItemError, ItemTiming, TokenUsage, TryTiming};

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_581_400_000 + ms)
    }

    fn tried(id: &str, tries: Vec<TryTiming>, total_ms: u64, ok: bool) -> ItemResult<Value> {
        ItemResult {
            id: id.into(),
            index: 0,
            outcome: if ok {
                Ok(Value::Null)
            } else {
                Err(ItemError::new(ErrorCategory::ServerError, "500"))
            },
            usage: TokenUsage::default(),
            attempts: 1,
            tries: u32::try_from(tries.len()).unwrap(),
            timing: ItemTiming {
                started_at: tries.first().and_then(|t| t.started_at),
                total: Duration::from_millis(total_ms),
                tries,
                ..ItemTiming::default()
            },
            context: None,
            replayed: false,
        }
    }

    fn one(start: u64, cooldown: u64, exec: u64, error: Option<ErrorCategory>) -> TryTiming {
        TryTiming {
            attempt: 1,
            started_at: Some(at(start)),
            cooldown_wait: Duration::from_millis(cooldown),
            admission_wait: Duration::ZERO,
            execution: Duration::from_millis(exec),
            error,
        }
    }

    #[test]
    fn calls_in_flight_429s_and_cooldowns_land_where_they_happened() {
        let mut t = Timeline::default();
        // a: a 429 answered at 1 s, waits 2 s of cooldown, then a call of 1 s.
        t.add(&tried(
            "a",
            vec![
                one(0, 0, 1000, Some(ErrorCategory::RateLimit)),
                one(1000, 2000, 1000, None),
            ],
            4000,
            true,
        ));
        // b: waits the same cooldown from 1.5 s, fails at 4 s.
        t.add(&tried("b", vec![one(1500, 1500, 1000, None)], 2500, false));
        let mut replayed = tried("c", vec![one(0, 0, 10, None)], 10, true);
        replayed.replayed = true;
        t.add(&replayed);
        assert_eq!(t.unplaced, 1);
        let s = t.series(10).unwrap();
        assert_eq!(s.step, Duration::from_millis(500));
        assert_eq!(s.start, at(0));
        // Calls: a 0–1 s, a 3–4 s, b 3–4 s: one in flight, then two.
        let flying = s.in_flight();
        assert_eq!(&flying[..2], &[1.0, 1.0]);
        assert_eq!(&flying[2..6], &[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&flying[6..8], &[2.0, 2.0]);
        assert_eq!(s.rate_limited()[2], 1.0);
        assert_eq!(s.failed()[8], 1.0);
        assert_eq!(s.throughput()[8], 4.0, "two items in half a second");
        // One merged window: 1 s to 3 s.
        assert_eq!(
            s.cooldowns,
            vec![(Duration::from_secs(1), Duration::from_secs(3))]
        );
        assert_eq!(
            t.cooldown_totals(),
            (1, Duration::from_secs(2), Duration::from_secs(2))
        );
        assert_eq!(t.span(), Some((at(0), at(4000))));
    }

    #[test]
    fn many_waits_in_one_cooldown_are_kept_as_one_window() {
        let mut t = Timeline::default();
        // 100,000 items waiting out the same 1 s cooldown, each from a
        // little later: one window of 1.1 s, and memory for few.
        for i in 0..100_000u64 {
            t.add(&tried("w", vec![one(i / 1000, 1000, 1, None)], 1001, true));
        }
        assert!(t.cooldowns.len() < 1 << 16, "{}", t.cooldowns.len());
        assert_eq!(
            t.cooldown_totals(),
            (1, Duration::from_millis(1099), Duration::from_millis(1099))
        );
    }

    #[test]
    fn a_long_run_uses_wider_steps_and_nothing_placed_is_no_series() {
        assert_eq!(Timeline::default().series(100), None);
        let mut t = Timeline::default();
        t.add(&tried("a", vec![one(0, 0, 10, None)], 10, true));
        t.add(&tried("b", vec![one(3_600_000, 0, 10, None)], 10, true));
        let s = t.series(150).unwrap();
        assert_eq!(s.step, Duration::from_secs(30));
        assert_eq!(s.points.len(), 121);
        let done: u64 = s.points.iter().map(|b| b.succeeded).sum();
        assert_eq!(done, 2);
    }
}
