//! Per-sender replay protection: the sender's latest epoch and a sliding window of the
//! counters seen under the highest one (the IPsec anti-replay scheme, RFC 4303 §3.4.3).

/// How many counters below the highest one are still accepted once. UDP may reorder
/// datagrams, but never by anywhere near 64 messages of one sender at apivip's rates.
pub const REPLAY_WINDOW: u64 = 64;

/// What the window says about one (epoch, counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// New: deliver it (the window has already recorded it).
    Fresh,
    /// Seen before in this epoch.
    Replayed,
    /// Below the window, from an older epoch, or counter 0 (counters start at 1).
    Stale,
}

/// The replay state for one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Window {
    epoch: u64,
    /// Highest counter accepted in `epoch`; 0 before the first.
    top: u64,
    /// Bit `i` set: counter `top - i` was accepted.
    seen: u64,
}

impl Window {
    /// A window for a sender's first authenticated datagram.
    pub(super) fn new(epoch: u64) -> Window {
        Window {
            epoch,
            top: 0,
            seen: 0,
        }
    }

    /// Checks (epoch, counter) and records it when fresh. Called only for datagrams whose
    /// MAC and body are valid, so forged datagrams cannot move the window.
    pub(super) fn accept(&mut self, epoch: u64, counter: u64) -> Verdict {
        if epoch < self.epoch || counter == 0 {
            return Verdict::Stale;
        }
        if epoch > self.epoch {
            // The sender restarted: its counters start again, under a new epoch that
            // no datagram of the old life carries.
            *self = Window::new(epoch);
        }
        if counter > self.top {
            let shift = counter - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = counter;
            return Verdict::Fresh;
        }
        let age = self.top - counter;
        if age >= REPLAY_WINDOW {
            return Verdict::Stale;
        }
        let bit = 1u64 << age;
        if self.seen & bit != 0 {
            return Verdict::Replayed;
        }
        self.seen |= bit;
        Verdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_edges() {
        let mut w = Window::new(5);
        assert_eq!(w.accept(5, 0), Verdict::Stale);
        assert_eq!(w.accept(5, 100), Verdict::Fresh);
        assert_eq!(w.accept(5, 100), Verdict::Replayed);
        // 100 - 63 is the oldest counter inside the window, 100 - 64 the first outside.
        assert_eq!(w.accept(5, 37), Verdict::Fresh);
        assert_eq!(w.accept(5, 37), Verdict::Replayed);
        assert_eq!(w.accept(5, 36), Verdict::Stale);
        // Sliding by exactly the window width forgets everything below the new top.
        assert_eq!(w.accept(5, 164), Verdict::Fresh);
        assert_eq!(w.accept(5, 100), Verdict::Stale);
        assert_eq!(w.accept(5, 101), Verdict::Fresh);
        assert_eq!(w.accept(5, u64::MAX), Verdict::Fresh);
        assert_eq!(w.accept(5, u64::MAX), Verdict::Replayed);
        assert_eq!(w.accept(4, u64::MAX - 1), Verdict::Stale);
        assert_eq!(w.accept(6, 1), Verdict::Fresh);
        assert_eq!(w.accept(5, 2), Verdict::Stale);
    }

    #[test]
    fn slide_keeps_seen_bits() {
        let mut w = Window::new(1);
        for c in [1, 2, 3] {
            assert_eq!(w.accept(1, c), Verdict::Fresh);
        }
        assert_eq!(w.accept(1, 10), Verdict::Fresh);
        for c in [1, 2, 3, 10] {
            assert_eq!(w.accept(1, c), Verdict::Replayed, "counter {c}");
        }
        for c in 4..10 {
            assert_eq!(w.accept(1, c), Verdict::Fresh, "counter {c}");
        }
    }
}
