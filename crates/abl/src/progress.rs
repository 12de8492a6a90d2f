//! What the user sees while a run goes: a progress bar on a terminal, plain
//! lines otherwise (no escape codes), and logs that never garble the bar.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_batch_llm::{Prices, TokenUsage};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Live counters shared with the result loop.
#[derive(Default)]
pub struct Counters {
    /// Results written.
    pub done: AtomicU64,
    /// Failures among them.
    pub failed: AtomicU64,
    usage: Mutex<TokenUsage>,
    /// Seconds left of the running cooldown, in ms (0: none).
    pub cooldown_ms: AtomicU64,
    /// Cooldowns so far.
    pub cooldowns: AtomicU64,
    /// Results finished but held back to keep the output in input order.
    pub held_back: AtomicU64,
    /// The limits in force, when any is known or adaptive concurrency moved.
    limits: Mutex<Option<String>>,
}

impl Counters {
    /// Adds one result.
    pub fn add(&self, ok: bool, usage: TokenUsage) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut u) = self.usage.lock() {
            *u += usage;
        }
    }

    /// Notes the limits the run's scope runs under now.
    pub fn set_limits(&self, l: &async_batch_llm::LimitsInForce) {
        let text = l.is_worth_showing().then(|| l.to_string());
        if let Ok(mut slot) = self.limits.lock() {
            *slot = text;
        }
    }

    /// Takes in what the run's stream says now: the cooldown, the limits,
    /// the cooldowns so far, the results held back for order.
    pub fn follow<T>(&self, stream: &async_batch_llm::ResultStream<T>) {
        let left = stream
            .cooldown_remaining()
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.cooldown_ms.store(left, Ordering::Relaxed);
        self.set_limits(&stream.limits_in_force());
        self.cooldowns.store(stream.cooldowns(), Ordering::Relaxed);
        self.held_back
            .store(stream.held_back() as u64, Ordering::Relaxed);
    }

    fn limits(&self) -> Option<String> {
        self.limits.lock().ok().and_then(|l| l.clone())
    }

    fn usage(&self) -> TokenUsage {
        self.usage.lock().map(|u| *u).unwrap_or_default()
    }
}

/// The bar, when one is drawn; logs go through it.
static BAR: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();

fn bar_slot() -> &'static Mutex<Option<ProgressBar>> {
    BAR.get_or_init(|| Mutex::new(None))
}

/// A log writer that suspends the bar while it writes.
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = bar_slot().lock().ok().and_then(|b| b.clone());
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Prints a line on stderr without garbling the bar. A closed stderr is
/// not an error (the run goes on; nothing panics).
pub fn eprintln_safe(line: &str) {
    let _ = writeln!(LogWriter, "{line}");
}

/// Prints text on stdout; a closed stdout (`abl summary … | head -1`) is
/// not an error.
pub fn print_safe(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The progress display.
pub struct Progress {
    counters: Arc<Counters>,
    total: Option<u64>,
    prices: Option<Prices>,
    started: Instant,
    bar: Option<ProgressBar>,
    interval: Duration,
    /// The partial output file being written (for `tail -f`).
    writing: Option<String>,
}

impl Progress {
    /// A bar on a terminal (unless `plain`), plain lines every `interval` otherwise.
    pub fn new(
        counters: Arc<Counters>,
        total: Option<u64>,
        prices: Option<Prices>,
        plain: bool,
        interval: Duration,
        writing: Option<&std::path::Path>,
    ) -> Self {
        let bar = (!plain && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(5));
            // The message fills what the terminal has left and is cut
            // there, so the line never wraps (the cooldown comes first in it).
            let template = if total.is_some() {
                "{spinner:.green} [{elapsed_precise}] {bar:20.cyan/blue} {pos}/{len} {wide_msg}"
            } else {
                "{spinner:.green} [{elapsed_precise}] {pos} done {wide_msg}"
            };
            b.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        if let Ok(mut slot) = bar_slot().lock() {
            slot.clone_from(&bar);
        }
        Self {
            counters,
            total,
            prices,
            started: Instant::now(),
            bar,
            interval,
            writing: writing.map(|p| p.display().to_string()),
        }
    }

    /// Items finished: written, and held back for order.
    fn finished(&self) -> u64 {
        self.counters.done.load(Ordering::Relaxed) + self.counters.held_back.load(Ordering::Relaxed)
    }

    fn status(&self) -> String {
        let done = self.finished();
        let failed = self.counters.failed.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let usage = self.counters.usage();
        let mut s = format!("failed {failed}");
        // First, so that a narrow terminal, which cuts the line, still shows it.
        let cooldown = self.counters.cooldown_ms.load(Ordering::Relaxed);
        if cooldown > 0 {
            let _ = write!(s, " | COOLDOWN {:.1}s (429)", cooldown as f64 / 1000.0);
        }
        let held = self.counters.held_back.load(Ordering::Relaxed);
        if held > 0 {
            let _ = write!(s, " | {held} held for order");
        }
        let cooldowns = self.counters.cooldowns.load(Ordering::Relaxed);
        if cooldowns > 0 {
            let _ = write!(s, " | cooldowns {cooldowns}");
        }
        let _ = write!(s, " | {rate:.1}/s | {} tokens", usage.total);
        if let Some(p) = &self.prices {
            let _ = write!(s, " | cost {:.4}", p.cost(&usage));
        }
        if let Some(total) = self.total
            && rate > 0.0
            && done < total
        {
            let eta = Duration::from_secs_f64((total - done) as f64 / rate);
            let _ = write!(s, " | ETA {}", async_batch_llm::human_duration(eta));
        }
        if let Some(l) = self.counters.limits() {
            let _ = write!(s, " | {l}");
        }
        if let Some(w) = &self.writing {
            let _ = write!(s, " | writing {w}");
        }
        s
    }

    /// Redraws (bar) or prints a line (plain), as due.
    pub fn tick(&self, last_line: &mut Instant) {
        let done = self.finished();
        if let Some(b) = &self.bar {
            b.set_position(done);
            b.set_message(self.status());
        } else if last_line.elapsed() >= self.interval {
            *last_line = Instant::now();
            let of = self.total.map_or_else(String::new, |t| format!("/{t}"));
            eprintln_safe(&format!("abl: {done}{of} done | {}", self.status()));
        }
    }

    /// Clears the bar before the summary.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.set_position(self.counters.done.load(Ordering::Relaxed));
            b.finish_and_clear();
        }
        if let Ok(mut slot) = bar_slot().lock() {
            *slot = None;
        }
    }
}
