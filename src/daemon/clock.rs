//! The daemon's clock for the election: CLOCK_BOOTTIME, which keeps counting while the
//! machine is suspended (a paused VM). With CLOCK_MONOTONIC a leader resumed after a
//! suspend would believe its lease still ran; with BOOTTIME it sees it ran out.

use std::time::Duration;

use apivip_proto::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
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
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl Clock {
    pub fn start() -> Clock {
        Clock { origin: boottime() }
    }

    /// Time since the daemon started, as the election's instant.
    pub fn now(&self) -> Instant {
        Instant::from_duration(boottime().saturating_sub(self.origin))
    }

    /// How long until `t` (zero if it passed).
    pub fn until(&self, t: Instant) -> Duration {
        t.saturating_since(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances() {
        let c = Clock::start();
        let a = c.now();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.now();
        assert!(b.saturating_since(a) >= Duration::from_millis(5));
        assert_eq!(c.until(a), Duration::ZERO);
    }
}
