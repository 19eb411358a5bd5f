//! Graceful drain: stop accepting, let open connections finish until a deadline, then
//! close what is left.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, watch};

/// What a drain found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Connections open when the drain began.
    pub open_at_start: usize,
    /// Connections closed by force at the deadline.
    pub forced: usize,
    pub took_ms: u64,
}

/// What open connections must close for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cut {
    /// The drain's deadline passed: every connection.
    pub all: bool,
    /// The latest address this node released, numbered so a connection only heeds
    /// releases that came after it was accepted.
    pub released: Option<(u64, std::net::IpAddr)>,
    /// Bumped when an active check marks any backend down; each connection then compares
    /// its own backend's count of downs with the count when it connected.
    pub downs: u64,
}

impl Cut {
    pub(crate) fn generation(&self) -> u64 {
        self.released.map_or(0, |(generation, _)| generation)
    }
}

/// The switches every accept loop and connection watches.
pub(crate) struct Switches {
    pub stop_accepting: watch::Sender<bool>,
    /// One cut channel per accept loop, for all three reasons to cut: a connection
    /// subscribes to its own loop's, so the per-connection subscribe, wake registration
    /// and drop touch no cache line another forwarder thread writes (one channel shared
    /// by every thread, plus one per backend, cost about a microsecond per connection).
    cuts: Mutex<Vec<watch::Sender<Cut>>>,
    /// Set when the drain is over: dedicated forwarder threads then stop their runtimes.
    pub finished: watch::Sender<bool>,
}

impl Switches {
    pub(crate) fn new() -> Switches {
        Switches {
            stop_accepting: watch::channel(false).0,
            cuts: Mutex::new(Vec::new()),
            finished: watch::channel(false).0,
        }
    }

    /// A cut channel for a new accept loop, starting from what every loop has seen.
    pub(crate) fn cut_channel(&self) -> watch::Receiver<Cut> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|p| p.into_inner());
        let now = cuts.first().map(|c| *c.borrow()).unwrap_or_default();
        let (tx, rx) = watch::channel(now);
        cuts.push(tx);
        rx
    }

    /// Applies `change` to every loop's cut channel.
    pub(crate) fn cut(&self, change: impl Fn(&mut Cut)) {
        for tx in self.cuts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            tx.send_modify(&change);
        }
    }
}

/// Counts a backend's downs (the check's verdict turning to down) and tells every
/// connection, until the prober is gone (the backend was removed by a reload).
pub(crate) async fn announce_downs(
    switches: Arc<Switches>,
    downs: Arc<AtomicU64>,
    mut verdicts: watch::Receiver<bool>,
) {
    while verdicts.changed().await.is_ok() {
        if !*verdicts.borrow_and_update() {
            // SeqCst: a connection that reads this count before the increment and then
            // the verdict as healthy must see the bump that follows (see `BackendCut`).
            downs.fetch_add(1, Ordering::SeqCst);
            switches.cut(|c| c.downs = c.downs.wrapping_add(1));
        }
    }
}

/// The connection cap is a semaphore with one permit per open connection, so "every
/// connection has closed" is "all permits are back".
pub(crate) async fn drain(
    switches: &Switches,
    permits: &Arc<Semaphore>,
    max: u32,
    open: &AtomicUsize,
    deadline: Duration,
) -> DrainReport {
    let started = Instant::now();
    switches.stop_accepting.send_replace(true);
    let open_at_start = open.load(Ordering::Relaxed);
    let done = tokio::time::timeout(deadline, permits.acquire_many(max)).await;
    let forced = match done {
        Ok(Ok(all)) => {
            // Keep the semaphore empty: nothing may start after a drain.
            all.forget();
            0
        }
        _ => {
            let left = open.load(Ordering::Relaxed);
            switches.cut(|c| c.all = true);
            // Connection tasks see the switch on their next poll; give them a moment so
            // the sockets are closed when this returns.
            let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(max)).await;
            left
        }
    };
    switches.finished.send_replace(true);
    DrainReport {
        open_at_start,
        forced,
        took_ms: started.elapsed().as_millis() as u64,
    }
}

/// Counts one connection being served while alive.
pub(crate) struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    pub(crate) fn new(open: Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
