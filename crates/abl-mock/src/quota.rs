//! Strict requests-per-minute and tokens-per-minute quotas over a rolling
//! window, as a provider enforces them. Rejected requests consume nothing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a request was refused, and the headers to say so.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// When enough of the window will have expired.
    pub retry_after: Duration,
    /// Which limit: `requests` or `tokens`.
    pub limit: &'static str,
    /// The request limit per window.
    pub limit_requests: u64,
    /// Requests left in the window.
    pub remaining_requests: u64,
    /// The token limit per window.
    pub limit_tokens: u64,
    /// Tokens left in the window.
    pub remaining_tokens: u64,
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
    /// A quota of `rpm` requests and `tpm` tokens per minute. A fractional
    /// RPM below one becomes one request per `60 / rpm` seconds.
    pub fn new(rpm: Option<f64>, tpm: Option<u64>) -> Option<Self> {
        if rpm.is_none() && tpm.is_none() {
            return None;
        }
        let (max_requests, window) = match rpm {
            Some(r) if r < 1.0 => (1, Duration::from_secs_f64(60.0 / r)),
            Some(r) => (r.floor() as u64, Duration::from_secs(60)),
            None => (u64::MAX, Duration::from_secs(60)),
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

    /// Admits a request of `tokens` tokens at `now`, or says why not.
    pub fn admit(&self, tokens: u64, now: Instant) -> Result<(), Rejection> {
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
        let count = st.admitted.len() as u64;
        let reject = |limit: &'static str, retry_after: Duration| Rejection {
            retry_after,
            limit,
            limit_requests: self.max_requests,
            remaining_requests: self.max_requests.saturating_sub(count),
            limit_tokens: self.max_tokens.unwrap_or(u64::MAX),
            remaining_tokens: self
                .max_tokens
                .map_or(u64::MAX, |m| m.saturating_sub(st.tokens)),
        };
        let expiry = |t: Instant| (t + self.window).saturating_duration_since(now);
        if count + 1 > self.max_requests {
            let oldest = st.admitted.front().map_or(now, |a| a.0);
            return Err(reject("requests", expiry(oldest)));
        }
        if let Some(max) = self.max_tokens {
            if tokens > max {
                return Err(reject("tokens", self.window));
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
                return Err(reject("tokens", expiry(at)));
            }
        }
        st.admitted.push_back((now, tokens));
        st.tokens += tokens;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_window_for_requests_and_tokens() {
        let q = Quota::new(Some(2.0), Some(100)).unwrap();
        let t0 = Instant::now();
        assert!(q.admit(10, t0).is_ok());
        assert!(q.admit(10, t0 + Duration::from_secs(10)).is_ok());
        let r = q.admit(10, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after),
            ("requests", Duration::from_secs(40))
        );
        assert!(q.admit(10, t0 + Duration::from_secs(60)).is_ok());
        let q = Quota::new(None, Some(100)).unwrap();
        assert!(q.admit(60, t0).is_ok());
        let r = q.admit(60, t0 + Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after, r.remaining_tokens),
            ("tokens", Duration::from_secs(55), 40)
        );
        let half = Quota::new(Some(0.5), None).unwrap();
        assert!(half.admit(1, t0).is_ok());
        assert!(half.admit(1, t0 + Duration::from_secs(119)).is_err());
        assert!(half.admit(1, t0 + Duration::from_secs(120)).is_ok());
    }
}
