//! The threads a worker runs attempts on: one single-threaded tokio runtime
//! per thread (a shard), each queue's concurrency split across them.
//!
//! Why not one multi-threaded runtime: its threads hand tasks and Redis
//! replies to each other, and every hand-off is a wakeup, a cache miss and a
//! cross-thread free. Measured (bench/README.md; echo at
//! concurrency 100, 2 cores): one multi-threaded runtime with two threads
//! spent 41–46 µs of worker CPU per job, the extra mostly in malloc/free
//! and scheduling; with one thread 35–39 µs and 12% more jobs/s; two
//! shards 36 µs. Shards keep the one-thread cost and still let guests
//! compute on every core: a shard is a BullMQ worker of its own (its own
//! Redis connections, its share of the concurrency), the way BullMQ scales
//! Node workers by running more of them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;

/// Shard runtimes, and where the next queue's first share goes.
#[derive(Clone)]
pub(crate) struct Shards {
    handles: Arc<Vec<Handle>>,
    next: Arc<AtomicUsize>,
    /// Dropping the last clone ends the shard threads.
    _stop: Option<Arc<Stop>>,
}

struct Stop(Vec<tokio::sync::oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        for s in self.0.drain(..) {
            let _ = s.send(());
        }
    }
}

impl Shards {
    /// `n` threads named `bullpen-shard-<i>`, each running a current-thread runtime.
    pub(crate) fn start(n: usize) -> anyhow::Result<Shards> {
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            std::thread::Builder::new().name(format!("bullpen-shard-{i}")).spawn(move || {
                let _ = rt.block_on(rx);
            })?;
        }
        Ok(Shards {
            handles: Arc::new(handles),
            next: Arc::new(AtomicUsize::new(0)),
            _stop: Some(Arc::new(Stop(stops))),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Split `concurrency` over at most every shard (each share ≥ 1),
    /// starting where the previous queue's shares ended, so queues of
    /// concurrency 1 spread over the threads instead of piling on the first.
    pub(crate) fn place(&self, concurrency: usize) -> Vec<(Handle, usize)> {
        let shares = split(concurrency, self.handles.len());
        let first = self.next.fetch_add(shares.len(), Ordering::Relaxed);
        shares
            .into_iter()
            .enumerate()
            .map(|(i, c)| (self.handles[(first + i) % self.handles.len()].clone(), c))
            .collect()
    }
}

/// `total` (≥ 1) in at most `parts` shares that differ by at most one.
fn split(total: usize, parts: usize) -> Vec<usize> {
    let total = total.max(1);
    let n = parts.clamp(1, total);
    (0..n).map(|i| total / n + usize::from(i < total % n)).collect()
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn shares_cover_the_concurrency_and_differ_by_at_most_one() {
        assert_eq!(split(100, 2), vec![50, 50]);
        assert_eq!(split(5, 2), vec![3, 2]);
        assert_eq!(split(1, 4), vec![1]);
        assert_eq!(split(3, 8), vec![1, 1, 1]);
        assert_eq!(split(0, 2), vec![1], "BullMQ's minimum concurrency is 1");
        for total in 1..40 {
            for parts in 1..9 {
                let s = split(total, parts);
                assert_eq!(s.iter().sum::<usize>(), total);
                assert!(s.iter().all(|&c| c >= 1) && s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
            }
        }
    }
}
