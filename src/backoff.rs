//! Pacing for every loop that retries something the kernel refused: an exponential
//! back-off between attempts, and a throttle for the log line each failure would print.
//!
//! A loop that retries at full speed turns one local fault into a second one: 17,000 log
//! lines a second and a busy core (a re-claim on every ack round) or 110 % CPU (an accept
//! loop on EMFILE). Every retry loop in the daemon goes through these two.

use std::time::{Duration, Instant};

/// Exponential back-off: `first`, doubling, at most `max`; `reset` after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The pause before the next attempt; each call doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Whether a failure has been recorded since the last reset.
    pub fn failing(&self) -> bool {
        self.next != self.first
    }
}

/// At most one log line per `every` for a failure that repeats. The first one always
/// passes; later ones say how many were held back in between.
#[derive(Clone, Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when the caller may log now, `n` lines having been held back since the
    /// last one; `None` when it should stay quiet.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(l) if now.saturating_duration_since(l) < self.every => {
                self.held_back = self.held_back.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

impl Default for LogThrottle {
    /// One line every 5 s: an operator sees the fault at once and its rate after.
    fn default() -> Self {
        LogThrottle::new(Duration::from_secs(5))
    }
}

/// Errors that say this process is out of a local resource (descriptors, buffers,
/// memory, source ports for a connect), not that a peer or a backend failed: counted and
/// waited out, never blamed on the other side.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        assert!(!b.failing());
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [10, 20, 40, 50, 50]);
        assert!(b.failing());
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn throttle_passes_one_line_per_period_and_counts_the_rest() {
        let mut t = LogThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.allow_at(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(t.allow_at(t0 + Duration::from_micros(i)), None);
        }
        assert_eq!(t.allow_at(t0 + Duration::from_secs(1)), Some(999));
        assert_eq!(t.allow_at(t0 + Duration::from_millis(1500)), None);
    }

    #[test]
    fn exhaustion_errors_are_local() {
        for e in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(is_local_exhaustion(&std::io::Error::from_raw_os_error(e)));
        }
        assert!(!is_local_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }
}
