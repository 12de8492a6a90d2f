//! Strict requests-per-minute and tokens-per-minute quotas over a rolling
//! window, as a provider enforces them, and the standing a provider reports
//! in its rate-limit headers after each request. Rejected requests consume
//! nothing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a quota stands after a request: what the `x-ratelimit-*` and
/// `anthropic-ratelimit-*` headers of the reply say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The request limit, per minute: a window shorter than a minute
    /// reports its limit scaled to one (OpenAI states per-minute limits and
    /// enforces them over shorter periods); `remaining` and `reset` are the
    /// window's own.
    pub limit_requests: u64,
    /// Requests left in the window.
    pub remaining_requests: u64,
    /// The token limit per minute, if there is one (scaled as
    /// `limit_requests`).
    pub limit_tokens: Option<u64>,
    /// Tokens left in the window (`u64::MAX` without a token limit).
    pub remaining_tokens: u64,
    /// Until the window holds nothing again: the full limit is back.
    pub reset: Duration,
}

/// Why a request was refused, and where the quota stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// When enough of the window will have expired.
    pub retry_after: Duration,
    /// Which limit: `requests` or `tokens`.
    pub limit: &'static str,
    /// The quota as the 429's headers report it.
    pub standing: Standing,
}

struct Window {
    admitted: VecDeque<(Instant, u64)>,
    tokens: u64,
}

/// A rolling-window quota.
pub struct Quota {
    max_requests: u64,
    max_tokens: Option<u64>,
    window: Duration,
    state: Mutex<Window>,
}

impl Quota {
    /// A quota of `rpm` requests and `tpm` tokens per `window` (a minute
    /// unless given). A fractional RPM below one becomes one request per
    /// `window / rpm`.
    pub fn new(rpm: Option<f64>, tpm: Option<u64>, window: Option<Duration>) -> Option<Self> {
        if rpm.is_none() && tpm.is_none() {
            return None;
        }
        let span = window.unwrap_or(Duration::from_secs(60));
        let (max_requests, window) = match rpm {
            Some(r) if r < 1.0 => (1, span.div_f64(r)),
            Some(r) => (r.floor() as u64, span),
            None => (u64::MAX, span),
        };
        Some(Self {
            max_requests,
            max_tokens: tpm,
            window,
            state: Mutex::new(Window {
                admitted: VecDeque::new(),
                tokens: 0,
            }),
        })
    }

    /// A limit per window as a limit per minute (unchanged for windows of
    /// a minute or more, and for "no limit").
    fn per_minute(&self, per_window: u64) -> u64 {
        let minute = Duration::from_secs(60);
        if self.window >= minute || per_window == u64::MAX {
            return per_window;
        }
        let scaled = per_window as f64 * minute.as_secs_f64() / self.window.as_secs_f64();
        if scaled >= u64::MAX as f64 {
            u64::MAX - 1
        } else {
            scaled.round() as u64
        }
    }

    /// Admits a request of `tokens` tokens at `now` and says where the
    /// quota stands after it, or says why not.
    pub fn admit(&self, tokens: u64, now: Instant) -> Result<Standing, Rejection> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(t, n)) = st.admitted.front() {
            if now.duration_since(t) >= self.window {
                st.admitted.pop_front();
                st.tokens -= n;
            } else {
                break;
            }
        }
        let expiry = |t: Instant| (t + self.window).saturating_duration_since(now);
        let standing = |st: &Window| Standing {
            limit_requests: self.per_minute(self.max_requests),
            remaining_requests: self.max_requests.saturating_sub(st.admitted.len() as u64),
            limit_tokens: self.max_tokens.map(|t| self.per_minute(t)),
            remaining_tokens: self
                .max_tokens
                .map_or(u64::MAX, |m| m.saturating_sub(st.tokens)),
            reset: st.admitted.back().map_or(Duration::ZERO, |a| expiry(a.0)),
        };
        let reject = |limit: &'static str, retry_after: Duration, st: &Window| Rejection {
            retry_after,
            limit,
            standing: standing(st),
        };
        if st.admitted.len() as u64 + 1 > self.max_requests {
            let oldest = st.admitted.front().map_or(now, |a| a.0);
            return Err(reject("requests", expiry(oldest), &st));
        }
        if let Some(max) = self.max_tokens {
            if tokens > max {
                return Err(reject("tokens", self.window, &st));
            }
            if st.tokens + tokens > max {
                // Wait until enough old tokens leave the window.
                let mut freed = 0;
                let need = st.tokens + tokens - max;
                let mut at = now;
                for &(t, n) in &st.admitted {
                    freed += n;
                    at = t;
                    if freed >= need {
                        break;
                    }
                }
                return Err(reject("tokens", expiry(at), &st));
            }
        }
        st.admitted.push_back((now, tokens));
        st.tokens += tokens;
        Ok(standing(&st))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_for_requests_and_tokens() {
        let q = Quota::new(Some(2.0), Some(100), None).unwrap();
        let t0 = Instant::now();
        assert!(q.admit(10, t0).is_ok());
        assert!(q.admit(10, t0 + Duration::from_secs(10)).is_ok());
        let r = q.admit(10, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after),
            ("requests", Duration::from_secs(40))
        );
        assert!(q.admit(10, t0 + Duration::from_secs(60)).is_ok());
        let q = Quota::new(None, Some(100), None).unwrap();
        assert!(q.admit(60, t0).is_ok());
        let r = q.admit(60, t0 + Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after, r.standing.remaining_tokens),
            ("tokens", Duration::from_secs(55), 40)
        );
        let half = Quota::new(Some(0.5), None, None).unwrap();
        assert!(half.admit(1, t0).is_ok());
        assert!(half.admit(1, t0 + Duration::from_secs(119)).is_err());
        assert!(half.admit(1, t0 + Duration::from_secs(120)).is_ok());
    }

    #[test]
    fn the_standing_after_each_request() {
        let q = Quota::new(Some(3.0), Some(100), None).unwrap();
        let t0 = Instant::now();
        let s = q.admit(10, t0).unwrap();
        assert_eq!(
            (s.remaining_requests, s.remaining_tokens, s.reset),
            (2, 90, Duration::from_secs(60))
        );
        let s = q.admit(30, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(
            (s.limit_requests, s.remaining_requests, s.limit_tokens),
            (3, 1, Some(100))
        );
        assert_eq!((s.remaining_tokens, s.reset), (60, Duration::from_secs(60)));
        // Later, the first request has left the window.
        let s = q.admit(5, t0 + Duration::from_secs(70)).unwrap();
        assert_eq!(
            (s.remaining_requests, s.remaining_tokens, s.reset),
            (1, 65, Duration::from_secs(60))
        );
        let q = Quota::new(Some(1.0), None, None).unwrap();
        q.admit(1, t0).unwrap();
        let r = q.admit(1, t0 + Duration::from_secs(15)).unwrap_err();
        assert_eq!(r.standing.remaining_requests, 0);
        assert_eq!(r.standing.reset, Duration::from_secs(45));
        assert_eq!(r.standing.limit_tokens, None);
    }

    #[test]
    fn a_window_of_ten_seconds() {
        let q = Quota::new(Some(2.0), None, Some(Duration::from_secs(10))).unwrap();
        let t0 = Instant::now();
        q.admit(1, t0).unwrap();
        q.admit(1, t0).unwrap();
        let r = q.admit(1, t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(r.retry_after, Duration::from_secs(6));
        // Reported per minute; what remains is the window's own.
        assert_eq!(r.standing.limit_requests, 12);
        assert_eq!(r.standing.remaining_requests, 0);
        assert!(q.admit(1, t0 + Duration::from_secs(10)).is_ok());
    }
}
