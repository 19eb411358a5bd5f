//! Graceful drain: stop accepting, let open connections finish until a deadline, then
//! close what is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
}

impl Cut {
    pub(crate) fn generation(&self) -> u64 {
        self.released.map_or(0, |(generation, _)| generation)
    }
}

/// The switches every accept loop and connection watches.
pub(crate) struct Switches {
    pub stop_accepting: watch::Sender<bool>,
    /// One channel for both reasons to cut, so a connection holds one receiver.
    pub cut: watch::Sender<Cut>,
    /// Set when the drain is over: dedicated forwarder threads then stop their runtimes.
    pub finished: watch::Sender<bool>,
}

impl Switches {
    pub(crate) fn new() -> Switches {
        Switches {
            stop_accepting: watch::channel(false).0,
            cut: watch::channel(Cut::default()).0,
            finished: watch::channel(false).0,
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
            switches.cut.send_modify(|c| c.all = true);
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
