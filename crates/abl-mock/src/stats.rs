//! What the mock saw: `GET /stats`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Counters of the Gemini cache endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheOps {
    /// `POST cachedContents`.
    pub created: u64,
    /// `PATCH cachedContents/{id}`.
    pub updated: u64,
    /// `DELETE cachedContents/{id}`.
    pub deleted: u64,
    /// `GET cachedContents`.
    pub listed: u64,
    /// `GET cachedContents/{id}`.
    pub fetched: u64,
}

/// A snapshot of the mock's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests to the model routes.
    pub requests: u64,
    /// Requests by route and outcome (`ok`, `429`, `500`, …).
    pub by_route: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests being answered now.
    pub in_flight: u64,
    /// Most requests answered at once.
    pub peak_in_flight: u64,
    /// 429s sent (rate limits and quota).
    pub rate_limited: u64,
    /// Requests that arrived while a cooldown the mock had signalled with a
    /// hint was running (after the grace period for requests already sent).
    pub during_cooldown: u64,
    /// Tokens of the successful replies (input + output).
    pub tokens: u64,
    /// Inputs embedded (each input of each successful embeddings request),
    /// so a test can prove every input was embedded exactly once.
    #[serde(default)]
    pub embedded_inputs: u64,
    /// Images, documents and audio received inline (every parsed request).
    #[serde(default)]
    pub parts_inline: u64,
    /// Parts received as URLs.
    #[serde(default)]
    pub parts_by_url: u64,
    /// Decoded bytes of the inline parts.
    #[serde(default)]
    pub part_bytes: u64,
    /// Batch-API input files uploaded.
    #[serde(default)]
    pub batch_files_uploaded: u64,
    /// Batch-API jobs created.
    #[serde(default)]
    pub batches_created: u64,
    /// Request lines in the batch jobs created (each job's input counted
    /// once per job): a client that submits every item once keeps this at
    /// the number of items.
    #[serde(default)]
    pub batch_lines_submitted: u64,
    /// Batch lines executed (each line of each job that ran).
    #[serde(default)]
    pub batch_items_executed: u64,
    /// Batch lines executed whose custom id had been executed before: a
    /// client that never submits an item twice keeps this at zero.
    #[serde(default)]
    pub batch_items_repeated: u64,
    /// Requests answered (not 429) in each second since the first request
    /// (at most a day), so a test can check any rolling window.
    #[serde(default)]
    pub accepted_per_second: Vec<u64>,
    /// Requests answered 429 in each second since the first request.
    #[serde(default)]
    pub refused_per_second: Vec<u64>,
    /// Gemini cache operations.
    pub cache: CacheOps,
}

impl Stats {
    /// The most requests answered (not 429) in any `secs` consecutive
    /// seconds of [`accepted_per_second`](Self::accepted_per_second).
    pub fn most_accepted_in(&self, secs: usize) -> u64 {
        let v = &self.accepted_per_second;
        let secs = secs.max(1);
        (0..v.len().max(1))
            .map(|i| v.iter().skip(i).take(secs).sum::<u64>())
            .max()
            .unwrap_or(0)
    }
}

/// A model request as the mock received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    /// Route name (`responses`, `chat_completions`, `gemini`, `anthropic`).
    pub route: String,
    /// Request path.
    pub path: String,
    /// Headers, with credentials replaced by `<present>`.
    pub headers: BTreeMap<String, String>,
    /// The body, if it was JSON.
    pub body: serde_json::Value,
}

#[derive(Default)]
struct Inner {
    recent: std::collections::VecDeque<Recorded>,
    stats: Stats,
    /// The signalled cooldown: opened at, ends at.
    cooldown: Option<(Instant, Instant)>,
    /// When the first request was answered (the per-second counts' zero).
    first: Option<Instant>,
    prompts: HashMap<String, u64>,
    /// Custom ids of the batch lines executed.
    batch_ids: std::collections::HashSet<String>,
}

/// Live counters.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
    in_flight: AtomicU64,
    peak: AtomicU64,
}

/// Counts a request out of flight when dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request to a model route arrived.
    pub fn arrive(&self, now: Instant, grace: Duration, prompt: Option<&str>) -> InFlight<'_> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(n, Ordering::AcqRel);
        let mut inner = self.lock();
        inner.stats.requests += 1;
        if let Some((opened, until)) = inner.cooldown
            && now < until
            && now >= opened + grace
        {
            inner.stats.during_cooldown += 1;
        }
        if let Some(p) = prompt {
            *inner.prompts.entry(p.to_owned()).or_default() += 1;
        }
        InFlight(&self.in_flight)
    }

    /// A response went out.
    pub fn outcome(&self, route: &str, label: &str, tokens: u64) {
        const DAY: usize = 86_400;
        let now = Instant::now();
        let mut inner = self.lock();
        let first = *inner.first.get_or_insert(now);
        let second = usize::try_from(now.saturating_duration_since(first).as_secs()).unwrap_or(DAY);
        if second < DAY {
            let per = if label.starts_with("429") {
                &mut inner.stats.refused_per_second
            } else {
                &mut inner.stats.accepted_per_second
            };
            if per.len() <= second {
                per.resize(second + 1, 0);
            }
            per[second] += 1;
        }
        *inner
            .stats
            .by_route
            .entry(route.to_owned())
            .or_default()
            .entry(label.to_owned())
            .or_default() += 1;
        inner.stats.tokens += tokens;
    }

    /// Counts the parts of a parsed request.
    pub fn parts_seen(&self, parts: &[crate::parts::PartSeen]) {
        if parts.is_empty() {
            return;
        }
        let mut g = self.lock();
        for p in parts {
            match &p.source {
                crate::parts::PartSource::Inline { bytes, .. } => {
                    g.stats.parts_inline += 1;
                    g.stats.part_bytes += bytes;
                }
                crate::parts::PartSource::Url(_) => g.stats.parts_by_url += 1,
            }
        }
    }

    /// A batch input file was uploaded.
    pub fn batch_file_uploaded(&self) {
        self.lock().stats.batch_files_uploaded += 1;
    }

    /// A batch job of `lines` requests was created.
    pub fn batch_created(&self, lines: u64) {
        let mut g = self.lock();
        g.stats.batches_created += 1;
        g.stats.batch_lines_submitted += lines;
    }

    /// A batch line with `custom_id` was executed.
    pub fn batch_item_executed(&self, custom_id: &str) {
        let mut g = self.lock();
        g.stats.batch_items_executed += 1;
        if !g.batch_ids.insert(custom_id.to_owned()) {
            g.stats.batch_items_repeated += 1;
        }
    }

    /// `n` inputs were embedded.
    pub fn embedded(&self, n: u64) {
        self.lock().stats.embedded_inputs += n;
    }

    /// A 429 went out with `hint`; it opens a cooldown unless one is running.
    pub fn rate_limited(&self, now: Instant, hint: Option<Duration>) {
        let mut inner = self.lock();
        inner.stats.rate_limited += 1;
        let running = inner.cooldown.is_some_and(|(_, until)| now < until);
        if let (Some(h), false) = (hint, running) {
            inner.cooldown = Some((now, now + h));
        }
    }

    /// Counts a cache operation.
    pub fn cache_op(&self, f: impl FnOnce(&mut CacheOps)) {
        f(&mut self.lock().stats.cache);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> Stats {
        let mut s = self.lock().stats.clone();
        s.in_flight = self.in_flight.load(Ordering::Acquire);
        s.peak_in_flight = self.peak.load(Ordering::Acquire);
        s
    }

    /// Requests per prompt (with `track_prompts`).
    pub fn prompts(&self) -> HashMap<String, u64> {
        self.lock().prompts.clone()
    }

    /// Keeps a request (the last 64).
    pub fn record(&self, r: Recorded) {
        let mut inner = self.lock();
        if inner.recent.len() == 64 {
            inner.recent.pop_front();
        }
        inner.recent.push_back(r);
    }

    /// The recorded requests, oldest first.
    pub fn recent(&self) -> Vec<Recorded> {
        self.lock().recent.iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_recent(&self) {
        self.lock().recent.clear();
    }

    /// Clears every counter.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
        self.peak
            .store(self.in_flight.load(Ordering::Acquire), Ordering::Release);
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    #[test]
    fn the_busiest_window_of_per_second_counts() {
        let s = Stats {
            accepted_per_second: vec![5, 0, 7, 1, 9],
            ..Stats::default()
        };
        assert_eq!(s.most_accepted_in(2), 10);
        assert_eq!(s.most_accepted_in(60), 22);
        assert_eq!(Stats::default().most_accepted_in(60), 0);
        let r = Recorder::default();
        r.outcome("responses", "ok", 1);
        r.outcome("responses", "429_quota", 0);
        let snap = r.snapshot();
        assert_eq!(snap.accepted_per_second, vec![1]);
        assert_eq!(snap.refused_per_second, vec![1]);
    }
}
