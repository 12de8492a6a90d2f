//! Is a 429 the provider's quota, or noise? The calls that were in flight
//! when it came answer the question.
//!
//! A rate limit (or an overload: HTTP 529, a 503) opens an *episode* that
//! closes when every attempt that was in flight at that moment has ended.
//! Then:
//!
//! - **Quota** when, of those attempts (the first included), at least four
//!   reached the provider, at least two were rate limits, and the signals
//!   are at least a quarter: the provider is refusing much of what is sent.
//!   Or when, of the attempts sent *after* the first refused one, at least
//!   five were rate limits and they are at least half, or at least two
//!   were and no call behind it got through: a wall met in the middle of a
//!   burst refuses everything behind it, while the calls sent before it
//!   (which arrived before the wall) succeed and would hide it in the share
//!   of the whole. Random 429s are scattered: five in a row behind the
//!   first at a 5 % rate happen about once in ten thousand episodes. While
//!   sends are spread over the round trip (no limits known, see
//!   [`Spacing`](super::spacing::Spacing)), the refusal comes back before
//!   more than a few went behind it, and its cooldown holds the rest; two
//!   behind, both refused, is then the wall (by chance at a 5 % random
//!   rate: one episode in 400 of those where only two went behind, and
//!   fewer the more did; a random 429 the provider answers after the full
//!   latency has a round trip of calls behind it).
//!   Or when a rate limit of the episode, as it ends, leaves the scope
//!   held by the provider's hints for [`LONG_WAIT`] or more: the provider
//!   says its quota's window is full (a minute's quota met in its first
//!   seconds waits out most of the minute; Gemini states no limits but
//!   answers `"retryDelay": "36s"`), which a transient refusal, hinting a
//!   second or less, does not. Without this, a wall met by spread sends
//!   with one call behind the refusal taught nothing, and the run met it
//!   again every minute.
//!   Overloads (529, 503) are judged by a lower share, since being a little
//!   over a provider's capacity refuses few calls but refuses them every
//!   round trip: one in sixteen of eight or more calls, twice, or in two
//!   episodes in a row, is the provider's capacity. An adaptive window shrinks and, with no
//!   limits known, the scope learns them from what was accepted.
//! - **Noise** otherwise, when at least three of them succeeded: a random
//!   429 or 503 among successes. Nothing shrinks, and a cooldown without a
//!   hint ends at once.
//! - **Undecided** otherwise (too few calls in flight to tell): the
//!   cooldown runs its course, nothing else changes.
//!
//! So a few per cent of random faults never collapse a run, and a wall is
//! recognized within one round trip.

use std::sync::Mutex;
use std::time::Duration;

/// A provider's hint this long or longer says its quota has no room for
/// many round trips: a wall, whatever the calls in flight showed.
pub const LONG_WAIT: Duration = Duration::from_secs(5);

/// How an attempt ended, as the scope counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// A rate limit (429).
    RateLimited,
    /// An overload (529, 503).
    Overloaded,
    /// Any other failure.
    Failure,
    /// No call was made (preempted by a cooldown, the run stopped).
    NotCalled,
}

impl Outcome {
    fn is_signal(self) -> bool {
        matches!(self, Self::RateLimited | Self::Overloaded)
    }
}

/// The judgement of an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The provider's quota or overload; `in_flight` attempts were out.
    Quota {
        /// Attempts in flight when the episode began.
        in_flight: usize,
        /// Most of the signals were rate limits (not overloads): a rate
        /// quota, which limits can be learned from.
        rate: bool,
    },
    /// Noise among successes.
    Noise,
    /// Too little evidence.
    Undecided,
}

#[derive(Debug)]
struct Episode {
    /// Attempts with a lower sequence number were in flight at the start.
    boundary: u64,
    /// The sequence number of the attempt that opened it.
    opener: u64,
    /// The attempts of the episode that reached the provider, but the
    /// opener: their numbers and whether they were rate limits (the first
    /// refused by the order of sending is not always the first answered).
    called_ends: Vec<(u64, bool)>,
    /// Of the attempts in flight, how many have not ended yet.
    pending: usize,
    in_flight: usize,
    signals: u32,
    rate_limited: u32,
    successes: u32,
    called: u32,
    /// The episode before was heavy in overloads too.
    repeated: bool,
    /// A rate limit of the episode came with a hint of [`LONG_WAIT`] or
    /// more.
    long_wait: bool,
}

/// The episodes of one scope.
#[derive(Debug, Default)]
pub struct Signals {
    episode: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: Option<Episode>,
    /// The last episode was heavy in overloads (one in sixteen or more)
    /// and closed when the attempt numbers reached this.
    heavy_until: Option<u64>,
}

impl Signals {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.episode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An attempt with sequence number `seq` ended with `outcome`; `next_seq`
    /// is the number the next attempt will get, `in_flight` how many others
    /// are in flight now and `wait` how long the provider's hints still
    /// hold the scope. The verdict when this closes an episode.
    pub fn ended(
        &self,
        seq: u64,
        outcome: Outcome,
        next_seq: u64,
        in_flight: usize,
        wait: Duration,
    ) -> Option<Verdict> {
        let long_wait = outcome == Outcome::RateLimited && wait >= LONG_WAIT;
        let mut st = self.lock();
        let State { open, heavy_until } = &mut *st;
        match open.as_mut() {
            None if outcome.is_signal() => {
                // Heavy overloads in the episode just before this one (no
                // more than a window of attempts between them): a provider
                // a little over its capacity, every round trip.
                let repeated =
                    heavy_until.is_some_and(|h| next_seq <= h + 2 * in_flight as u64 + 2);
                let e = Episode {
                    boundary: next_seq,
                    opener: seq,
                    called_ends: Vec::new(),
                    pending: in_flight,
                    in_flight: in_flight + 1,
                    signals: 1,
                    rate_limited: u32::from(outcome == Outcome::RateLimited),
                    successes: 0,
                    called: 1,
                    repeated,
                    long_wait,
                };
                if e.pending == 0 {
                    *heavy_until = e.heavy().then_some(next_seq);
                    return Some(judge(&e));
                }
                *open = Some(e);
                None
            }
            Some(e) if seq < e.boundary => {
                e.pending = e.pending.saturating_sub(1);
                e.long_wait |= long_wait;
                match outcome {
                    Outcome::Success => e.successes += 1,
                    Outcome::RateLimited => {
                        e.signals += 1;
                        e.rate_limited += 1;
                    }
                    Outcome::Overloaded => e.signals += 1,
                    Outcome::Failure | Outcome::NotCalled => {}
                }
                if outcome != Outcome::NotCalled {
                    e.called += 1;
                    e.called_ends.push((seq, outcome == Outcome::RateLimited));
                }
                if e.pending == 0 {
                    let verdict = judge(e);
                    *heavy_until = e.heavy().then_some(next_seq);
                    *open = None;
                    return Some(verdict);
                }
                None
            }
            None | Some(_) => None,
        }
    }
}

impl Episode {
    /// Of the calls sent after the first one refused (by the order of
    /// sending), how many reached the provider and how many were refused.
    fn behind_first_refused(&self) -> (u32, u32) {
        let first = self
            .called_ends
            .iter()
            .filter(|(_, refused)| *refused)
            .map(|(seq, _)| *seq)
            .fold(self.opener, u64::min);
        let mut called = u32::from(self.opener > first);
        let mut refused = called;
        for (seq, r) in &self.called_ends {
            if *seq > first {
                called += 1;
                refused += u32::from(*r);
            }
        }
        (called, refused)
    }

    /// One in sixteen of eight or more calls refused as overloaded.
    fn heavy(&self) -> bool {
        self.called >= 8 && self.signals * 16 >= self.called && self.rate_limited * 2 < self.signals
    }
}

fn judge(e: &Episode) -> Verdict {
    let rate = e.rate_limited * 2 >= e.signals;
    let quota = if rate {
        let share = e.signals >= 2 && e.called >= 4 && e.signals * 4 >= e.called;
        let (called, refused) = e.behind_first_refused();
        let most_behind = refused >= 5 && refused * 2 >= called;
        let all_behind = refused >= 2 && refused == called;
        let behind = most_behind || all_behind;
        share || behind || e.long_wait
    } else {
        e.heavy() && (e.signals >= 2 || e.repeated)
    };
    if quota {
        Verdict::Quota {
            in_flight: e.in_flight,
            rate,
        }
    } else if e.successes >= 3 {
        Verdict::Noise
    } else {
        Verdict::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Failure, NotCalled, Overloaded, RateLimited as Signal, Success};

    /// No hint holds the scope.
    const NO_HINT: Duration = Duration::ZERO;

    /// An episode opened by attempt 0 with attempts 1..=n in flight, which
    /// then end with `outcomes`.
    fn episode(outcomes: &[Outcome]) -> Option<Verdict> {
        let s = Signals::default();
        let n = outcomes.len();
        let next = n as u64 + 1;
        let mut verdict = s.ended(0, Signal, next, n, NO_HINT);
        if n == 0 {
            return verdict;
        }
        assert_eq!(verdict, None);
        for (i, o) in outcomes.iter().enumerate() {
            // Attempts started after the episode do not count.
            assert_eq!(s.ended(next + 5, Success, next + 6, n, NO_HINT), None);
            verdict = s.ended(i as u64 + 1, *o, next, n - i - 1, NO_HINT);
        }
        verdict
    }

    #[test]
    fn noise_quota_and_too_little_to_tell() {
        // 5 % random 429s at 64 in flight: ~3 more signals among 63.
        let mut five = vec![Success; 60];
        five.extend([Signal, Signal, Signal]);
        assert_eq!(episode(&five), Some(Verdict::Noise));
        // A wall: nearly everything in flight is refused.
        let mut wall = vec![Signal; 50];
        wall.extend([Success; 13]);
        assert_eq!(
            episode(&wall),
            Some(Verdict::Quota {
                in_flight: 64,
                rate: true
            })
        );
        // An overload wall is a quota of another kind: no rate to learn.
        let mut overload = vec![Overloaded; 50];
        overload.extend([Success; 13]);
        assert!(matches!(
            episode(&overload),
            Some(Verdict::Quota { rate: false, .. })
        ));
        // One call over a provider's capacity, every round trip: an overload
        // (one in eleven) — but one 503 among 64 calls is noise.
        let s = Signals::default();
        let mut verdicts = Vec::new();
        for round in 0..2u64 {
            let base = round * 11;
            assert_eq!(s.ended(base, Overloaded, base + 11, 10, NO_HINT), None);
            for i in 0..10u64 {
                if let Some(v) = s.ended(base + i + 1, Success, base + 11, 9 - i as usize, NO_HINT)
                {
                    verdicts.push(v);
                }
            }
        }
        assert_eq!(verdicts[0], Verdict::Noise, "once could be chance");
        assert!(
            matches!(verdicts[1], Verdict::Quota { rate: false, .. }),
            "{verdicts:?}"
        );
        let s = Signals::default();
        assert_eq!(s.ended(0, Overloaded, 64, 63, NO_HINT), None);
        let mut verdict = None;
        for i in 0..63 {
            verdict = s.ended(i + 1, Success, 64, 62 - i as usize, NO_HINT);
        }
        assert_eq!(verdict, Some(Verdict::Noise));
        // Alone, or with two others: no verdict.
        assert_eq!(episode(&[]), Some(Verdict::Undecided));
        assert_eq!(episode(&[Success, Success]), Some(Verdict::Undecided));
        // Calls never made count toward the end of the episode, not the share.
        assert_eq!(
            episode(&[Signal, NotCalled, NotCalled, Failure, Success]),
            Some(Verdict::Quota {
                in_flight: 6,
                rate: true
            })
        );
        assert_eq!(
            episode(&[Signal, NotCalled, NotCalled, Failure]),
            Some(Verdict::Undecided),
            "three calls made: too few to tell"
        );
    }

    /// An episode opened by attempt 50 of 0..63 in flight: those sent before
    /// it end with `before`, those sent after it with `after`.
    fn burst(before: Outcome, after: &[Outcome]) -> Option<Verdict> {
        let s = Signals::default();
        let next = 51 + after.len() as u64;
        let mut pending = 50 + after.len();
        let mut verdict = s.ended(50, Signal, next, pending, NO_HINT);
        let ends = (0..50u64)
            .map(|i| (i, before))
            .chain(after.iter().enumerate().map(|(i, o)| (51 + i as u64, *o)));
        for (seq, o) in ends {
            pending -= 1;
            verdict = s.ended(seq, o, next, pending, NO_HINT);
        }
        verdict
    }

    #[test]
    fn a_wall_in_the_middle_of_a_burst_is_a_quota() {
        // The calls sent before the wall arrived before it and succeed; the
        // dozen behind it are refused: a fifth of the whole, all of those
        // behind.
        let wall = burst(Success, &[Signal; 12]);
        assert_eq!(
            wall,
            Some(Verdict::Quota {
                in_flight: 63,
                rate: true
            })
        );
        // Random 429s behind the first are scattered among successes.
        let mut noise = vec![Success; 10];
        noise[3] = Signal;
        noise[7] = Signal;
        assert_eq!(burst(Success, &noise), Some(Verdict::Noise));
        // Spread sends: the refusal came back with two behind it, both
        // refused (the cooldown it started held the rest): the wall.
        assert!(matches!(
            burst(Success, &[Signal, Signal]),
            Some(Verdict::Quota { rate: true, .. })
        ));
        // The first refused by the order of sending (49) answered after
        // the refusal that opened the episode (50): what is behind it is
        // counted from 49.
        let s = Signals::default();
        assert_eq!(s.ended(50, Signal, 52, 51, NO_HINT), None);
        let mut verdict = None;
        for seq in 0..52u64 {
            if seq != 50 {
                let o = if seq >= 49 { Signal } else { Success };
                verdict = s.ended(seq, o, 52, 0, NO_HINT);
            }
        }
        assert!(
            matches!(verdict, Some(Verdict::Quota { rate: true, .. })),
            "{verdict:?}"
        );
        // One behind it, or four of a burst with one that got through, are
        // not enough to tell.
        assert_eq!(burst(Success, &[Signal]), Some(Verdict::Noise));
        assert_eq!(
            burst(Success, &[Signal, Signal, Success, Signal, Signal]),
            Some(Verdict::Noise)
        );
    }

    /// Attempt 50 opens an episode with `opener`; the 50 sent before it
    /// and the one behind it (51) succeed, all with `wait` left on the hints.
    fn one_behind(opener: Outcome, wait: Duration) -> Option<Verdict> {
        let s = Signals::default();
        assert_eq!(s.ended(50, opener, 52, 51, wait), None);
        let mut verdict = None;
        for seq in (0..50u64).chain([51]) {
            verdict = s.ended(seq, Success, 52, 0, wait);
        }
        verdict
    }

    #[test]
    fn a_long_hint_is_the_wall_itself() {
        // Spread sends met a minute's quota: one call behind the refusal,
        // the rest of the round trip had arrived before the wall. By the
        // calls alone that is noise; the provider's hint of most of a
        // minute says its window is full.
        let long = Duration::from_secs(59);
        assert_eq!(
            one_behind(Signal, long),
            Some(Verdict::Quota {
                in_flight: 52,
                rate: true
            })
        );
        // A hint just under the long wait, the same calls: noise, as a
        // random 429 with `Retry-After: 1` is.
        let short = LONG_WAIT.saturating_sub(Duration::from_millis(1));
        assert_eq!(one_behind(Signal, short), Some(Verdict::Noise));
        // A long hold is not a rate limit's word when a success ends under
        // it, nor an overload's: only a rate limit that brought it counts.
        assert_eq!(one_behind(Overloaded, long), Some(Verdict::Noise));
    }
}
