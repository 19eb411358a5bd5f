//! The daemon's clock for the election: CLOCK_BOOTTIME, which keeps counting while the
//! machine is suspended (a paused VM). With CLOCK_MONOTONIC a leader resumed after a
//! suspend would believe its lease still ran; with BOOTTIME it sees it ran out.
//!
//! The election thread and the VIP worker read the same clock (the worker's hold gate
//! compares against the lease the election set), so it is shared as a trait object;
//! tests put a [`ManualClock`] in its place to freeze and resume a process at will.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apivip_proto::Instant;

/// Where the daemon reads the time. Instants are relative to an origin the clock picks.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;

    /// How long until `t` (zero if it passed).
    fn until(&self, t: Instant) -> Duration {
        t.saturating_since(self.now())
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    origin: Duration,
}

fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given; BOOTTIME
    // exists on every kernel apivip supports (2.6.39+), so it cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec.clamp(0, 999_999_999)).unwrap_or(0),
    )
}

impl BootClock {
    pub fn start() -> BootClock {
        BootClock { origin: boottime() }
    }
}

impl Clock for BootClock {
    /// Time since the daemon started, as the election's instant.
    fn now(&self) -> Instant {
        Instant::from_duration(boottime().saturating_sub(self.origin))
    }
}

/// A clock that moves only when told: a frozen process is one whose clock jumps.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn new(start: Instant) -> ManualClock {
        ManualClock {
            nanos: AtomicU64::new(start.as_nanos()),
        }
    }

    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(add))
            });
    }

    pub fn set(&self, t: Instant) {
        self.nanos.store(t.as_nanos(), Ordering::Release);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances() {
        let c = BootClock::start();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.now();
        assert!(b.saturating_since(a) >= Duration::from_millis(5));
        assert_eq!(c.until(a), Duration::ZERO);
    }

    #[test]
    fn manual_moves_only_when_told() {
        let c = ManualClock::new(Instant::from_nanos(5));
        assert_eq!(c.now(), Instant::from_nanos(5));
        c.advance(Duration::from_nanos(10));
        assert_eq!(c.now(), Instant::from_nanos(15));
        c.set(Instant::from_nanos(1));
        assert_eq!(c.now(), Instant::from_nanos(1));
    }
}
