//! The backends, their counters and health, and which one a new connection tries first.
//!
//! Least connections with weights: the backend with the lowest `active / weight` wins;
//! ties go round-robin so a quiet forwarder (every count 0) still spreads. Healthy
//! backends come first; the unhealthy ones follow in the same order, so a client is
//! refused only when every backend has refused it (see docs/forwarder.md for why).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::health::Prober;

/// One backend as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendSpec {
    pub address: SocketAddr,
    /// Relative share of connections, 1 or more.
    pub weight: u32,
    /// This node's own apiserver (used by `prefer_local`).
    pub local: bool,
}

impl BackendSpec {
    pub fn new(address: SocketAddr) -> BackendSpec {
        BackendSpec {
            address,
            weight: 1,
            local: false,
        }
    }
}

/// How a backend is doing, for `apivip status` and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendHealth {
    Healthy,
    /// The active check says down.
    Down,
    /// Connects failed recently; skipped until the back-off ends.
    Ejected,
}

/// A snapshot of one backend's counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendStats {
    pub address: SocketAddr,
    pub weight: u32,
    pub local: bool,
    pub health: BackendHealth,
    /// Connections open now (including connects in progress).
    pub active: u64,
    /// Connections established, ever.
    pub total: u64,
    /// Failed or timed-out connects and early resets.
    pub failures: u64,
    /// Bytes from clients to this backend.
    pub bytes_in: u64,
    /// Bytes from this backend to clients.
    pub bytes_out: u64,
    /// Milliseconds of ejection left, 0 when not ejected.
    pub ejected_for_ms: u64,
    pub checks: u64,
    pub check_failures: u64,
    pub last_check_error: Option<String>,
}

/// Monotonic milliseconds from the coarse clock. The relay stamps every transfer for the
/// idle timeout, and the coarse clock is a plain read of the kernel's last tick (no TSC
/// read, no conversion): a few ns instead of tens, and a tick (1-10 ms) of resolution is
/// plenty for idle timeouts and ejection back-offs counted in seconds.
pub(crate) fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill. It cannot fail: the clock id
    // is valid on every Linux since 2.6.32 and the pointer is good.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[derive(Debug)]
struct Ejection {
    consecutive: u32,
}

pub struct Backend {
    pub spec: BackendSpec,
    pub(crate) active: AtomicU64,
    total: AtomicU64,
    failures: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Ejected until this many ms after `epoch()`; 0 = not ejected. Read per connection,
    /// so an atomic rather than the mutex.
    ejected_until: AtomicU64,
    ejection: Mutex<Ejection>,
    probe: Option<Prober>,
    /// How many times the active check has marked this backend down (counted by
    /// `drain::announce_downs`).
    pub(crate) downs: Arc<AtomicU64>,
}

impl Backend {
    pub fn new(spec: BackendSpec, probe: Option<Prober>) -> Backend {
        Backend {
            spec,
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejection: Mutex::new(Ejection { consecutive: 0 }),
            probe,
            downs: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn health(&self) -> BackendHealth {
        if self.probe.as_ref().is_some_and(|p| !p.is_healthy()) {
            BackendHealth::Down
        } else if self.ejected_until.load(Ordering::Relaxed) > now_ms() {
            BackendHealth::Ejected
        } else {
            BackendHealth::Healthy
        }
    }

    /// A connect failed, timed out, or the backend reset before sending a byte: eject for
    /// a back-off that doubles with each failure in a row, up to `max`.
    pub(crate) fn failed(&self, base: Duration, max: Duration) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let Ok(mut e) = self.ejection.lock() else {
            return;
        };
        e.consecutive = e.consecutive.saturating_add(1);
        let shift = (e.consecutive - 1).min(16);
        let backoff = base.saturating_mul(1 << shift).min(max);
        let until = now_ms() + backoff.as_millis() as u64;
        self.ejected_until.store(until.max(1), Ordering::Relaxed);
        tracing::warn!(
            target: "apivip::forward",
            backend = %self.spec.address,
            failures_in_a_row = e.consecutive,
            backoff_ms = backoff.as_millis() as u64,
            "backend ejected"
        );
    }

    /// Flips of the active check's verdict (true = healthy); `None` without active checks.
    pub(crate) fn verdicts(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.probe.as_ref().map(Prober::verdicts)
    }

    /// The active check's verdict; `None` without active checks.
    pub(crate) fn checked_healthy(&self) -> Option<bool> {
        self.probe.as_ref().map(Prober::is_healthy)
    }

    pub(crate) fn connected(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
        // Only touch the mutex when there is a failure streak to clear.
        if self.ejected_until.load(Ordering::Relaxed) != 0
            && let Ok(mut e) = self.ejection.lock()
        {
            e.consecutive = 0;
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> BackendStats {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let (checks, check_failures, last_check_error) = match &self.probe {
            Some(p) => {
                let c = p.counters();
                (c.checks, c.failures, p.state().last_error)
            }
            None => (0, 0, None),
        };
        BackendStats {
            address: self.spec.address,
            weight: self.spec.weight,
            local: self.spec.local,
            health: self.health(),
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            ejected_for_ms: until.saturating_sub(now_ms()),
            checks,
            check_failures,
            last_check_error,
        }
    }
}

/// Counts a connection (or a connect in progress) against a backend while alive.
pub(crate) struct ActiveGuard(pub(crate) Arc<Backend>);

impl ActiveGuard {
    pub(crate) fn new(b: Arc<Backend>) -> ActiveGuard {
        b.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(b)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The order in which a new connection tries the backends.
pub(crate) fn order(
    backends: &[Arc<Backend>],
    prefer_local: bool,
    rr: &AtomicUsize,
) -> Vec<Arc<Backend>> {
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    // Rotating the start gives round-robin among equals: the stable sort below keeps
    // the rotated order for ties.
    let start = rr.fetch_add(1, Ordering::Relaxed) % n;
    let mut v: Vec<(u8, u64, u32, Arc<Backend>)> = (0..n)
        .map(|i| {
            let b = &backends[(start + i) % n];
            let tier = match (
                b.health() == BackendHealth::Healthy,
                prefer_local && b.spec.local,
            ) {
                (true, true) => 0,
                (true, false) => 1,
                (false, _) => 2,
            };
            (
                tier,
                b.active.load(Ordering::Relaxed),
                b.spec.weight.max(1),
                b.clone(),
            )
        })
        .collect();
    // Compare active/weight without division: a.active * b.weight vs b.active * a.weight.
    v.sort_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            (u128::from(a.1) * u128::from(b.2)).cmp(&(u128::from(b.1) * u128::from(a.2)))
        })
    });
    v.into_iter().map(|t| t.3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(port: u16, active: u64, weight: u32, local: bool) -> Arc<Backend> {
        let mut s = BackendSpec::new(SocketAddr::from(([127, 0, 0, 1], port)));
        s.weight = weight;
        s.local = local;
        let b = Backend::new(s, None);
        b.active.store(active, Ordering::Relaxed);
        Arc::new(b)
    }

    fn ports(v: &[Arc<Backend>]) -> Vec<u16> {
        v.iter().map(|b| b.spec.address.port()).collect()
    }

    #[test]
    fn least_connections_first_then_round_robin_among_ties() {
        let list = vec![b(1, 3, 1, false), b(2, 1, 1, false), b(3, 1, 1, false)];
        let rr = AtomicUsize::new(0);
        let firsts: Vec<u16> = (0..4)
            .map(|_| ports(&order(&list, false, &rr))[0])
            .collect();
        assert!(firsts.iter().all(|p| *p != 1), "{firsts:?}");
        assert!(firsts.contains(&2) && firsts.contains(&3), "{firsts:?}");
        assert_eq!(*ports(&order(&list, false, &rr)).last().unwrap(), 1);
    }

    #[test]
    fn weights_scale_the_count() {
        // 4 connections on weight 4 is lighter than 2 on weight 1.
        let list = vec![b(1, 2, 1, false), b(2, 4, 4, false)];
        let rr = AtomicUsize::new(0);
        assert_eq!(ports(&order(&list, false, &rr)), vec![2, 1]);
    }

    #[test]
    fn ejected_backends_go_last_and_local_first_when_preferred() {
        let list = vec![b(1, 0, 1, false), b(2, 5, 1, true), b(3, 0, 1, false)];
        list[0].failed(Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(list[0].health(), BackendHealth::Ejected);
        let rr = AtomicUsize::new(0);
        let o = ports(&order(&list, true, &rr));
        assert_eq!(o[0], 2);
        assert_eq!(o[2], 1);
        let o = ports(&order(&list, false, &rr));
        assert_eq!(o, vec![3, 2, 1]);
        list[0].connected();
        assert_eq!(list[0].health(), BackendHealth::Healthy);
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        let x = b(1, 0, 1, false);
        for _ in 0..10 {
            x.failed(Duration::from_millis(100), Duration::from_millis(800));
        }
        let left = x.stats().ejected_for_ms;
        assert!(left > 700 && left <= 800, "{left}");
        assert_eq!(x.stats().failures, 10);
    }
}
