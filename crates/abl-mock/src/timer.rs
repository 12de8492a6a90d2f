//! A precise sleep for simulated latency. tokio's timer wheel works in
//! whole milliseconds and fires up to ~2 ms late, which would make a mock
//! configured for 50 ms answer in ~52 ms. One OS thread keeps a heap of
//! deadlines and waits on a condvar (sub-millisecond precision).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;

struct Entry(Instant, u64, oneshot::Sender<()>);

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

struct Timer {
    heap: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    cv: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            cv: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("abl-mock-timer".into())
            .spawn(move || run(t));
        if let Err(e) = spawned {
            tracing::error!("abl-mock: cannot start the timer thread: {e}");
        }
        t
    })
}

fn run(t: &'static Timer) {
    let mut guard = t
        .heap
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let now = Instant::now();
        while guard.0.peek().is_some_and(|e| e.0.0 <= now) {
            if let Some(Reverse(Entry(_, _, tx))) = guard.0.pop() {
                let _ = tx.send(());
            }
        }
        guard = match guard.0.peek().map(|e| e.0.0) {
            Some(next) => match t.cv.wait_timeout(guard, next - now) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            },
            None => {
                t.cv.wait(guard)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            }
        };
    }
}

/// Sleeps until `deadline` with sub-millisecond precision.
pub async fn sleep_until(deadline: Instant) {
    if deadline <= Instant::now() {
        return;
    }
    let (tx, rx) = oneshot::channel();
    let t = timer();
    {
        let mut g = t
            .heap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1 += 1;
        let seq = g.1;
        let earliest = g.0.peek().is_none_or(|e| deadline < e.0.0);
        g.0.push(Reverse(Entry(deadline, seq, tx)));
        if earliest {
            t.cv.notify_one();
        }
    }
    let _ = rx.await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_close_to_the_deadline_and_in_order() {
        let start = std::time::Instant::now();
        let a = tokio::spawn(super::sleep_until(start + Duration::from_millis(30)));
        let b = tokio::spawn(super::sleep_until(start + Duration::from_millis(10)));
        b.await.unwrap();
        let tb = start.elapsed();
        a.await.unwrap();
        let ta = start.elapsed();
        assert!(
            tb >= Duration::from_millis(10) && tb < Duration::from_millis(25),
            "{tb:?}"
        );
        assert!(ta >= Duration::from_millis(30), "{ta:?}");
    }
}
