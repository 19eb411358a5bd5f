//! Election timings, the named profiles, and the inequalities that make them safe.
//!
//! Notation (docs/design.md): h heartbeat, L lease, E_min..E_max election timeout,
//! d margin, rho clock-rate drift bound.

use std::time::Duration;

use thiserror::Error;

/// How much later than its lifetime the kernel may drop an address. IPv4's
/// `check_lifetime` works in whole seconds and reschedules on a rounded-up second, so an
/// address with `valid_lft 1` goes between 1 and 2 s after its last refresh.
pub const KERNEL_LIFETIME_SLACK: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// h: the leader sends a heartbeat this often.
    pub heartbeat: Duration,
    /// L: a majority ack of heartbeat k lets the leader hold the VIP until sent(k) + L.
    pub lease: Duration,
    /// E_min..E_max: a follower that hears no leader for this long campaigns; also how
    /// long an ack's promise lasts (E_min) and how long a node stays silent after start
    /// (E_max).
    pub election_min: Duration,
    pub election_max: Duration,
    /// d: slack for scheduling and netlink latency; the leader releases at lease - d.
    pub margin: Duration,
    /// rho: the largest clock-rate difference between any node and real time, in parts
    /// per million (10_000 = 1 %).
    pub drift_ppm: u32,
    /// The kernel address lifetime (valid_lft) the leader keeps refreshing: the dead-man
    /// switch for a daemon that is killed or frozen while its kernel keeps the VIP.
    pub vip_lifetime: Duration,
    /// Rule 6: refresh the kernel lifetime only from an ack round younger than this.
    pub fresh_ack: Duration,
    /// A lost TimeoutNow is sent once more after this long.
    pub transfer_retry: Duration,
}

/// The named timing profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Median failover under 1 s on a LAN; a frozen leader may overlap for a bounded time.
    Default,
    /// Timers comparable to keepalived with advert_int 0.1.
    Fast,
    /// Strict fencing: slower failover, but even a frozen leader never overlaps.
    Strict,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Default, Profile::Fast, Profile::Strict];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Fast => "fast",
            Profile::Strict => "strict",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn timing(self) -> Timing {
        let ms = Duration::from_millis;
        let base = Timing {
            heartbeat: ms(100),
            lease: ms(500),
            election_min: ms(800),
            election_max: ms(1000),
            margin: ms(10),
            drift_ppm: 10_000,
            vip_lifetime: Duration::from_secs(1),
            // Acks slower than this cannot renew the kernel lifetime; only the strict
            // profile needs it short (its bound is zero), the others trade a little of
            // their frozen-leader bound for tolerance of slow acks.
            fresh_ack: ms(150),
            transfer_retry: ms(20),
        };
        match self {
            Profile::Default => base,
            Profile::Fast => Timing {
                heartbeat: ms(50),
                lease: ms(200),
                election_min: ms(300),
                election_max: ms(400),
                fresh_ack: ms(100),
                ..base
            },
            Profile::Strict => Timing {
                election_min: ms(2200),
                election_max: ms(2500),
                fresh_ack: ms(50),
                ..base
            },
        }
    }
}

/// A timing that breaks a rule, with the field to blame (the config layer names it).
#[derive(Clone, Debug, Error, PartialEq)]
#[error("{field}: {problem}")]
pub struct TimingError {
    pub field: &'static str,
    pub problem: String,
}

impl Timing {
    fn drift(&self) -> f64 {
        f64::from(self.drift_ppm) / 1e6
    }

    /// The shortest real time a follower's promise (E_min on its clock) can last: its
    /// clock may run fast by rho.
    pub fn election_min_real(&self) -> Duration {
        self.election_min.mul_f64(1.0 - self.drift())
    }

    /// The longest lease (on this leader's clock) that a promise lasting `promise` real
    /// time can back: (lease + margin)(1 + rho) must stay below it, as in `validate`.
    pub fn lease_backed_by(&self, promise: Duration) -> Duration {
        promise
            .div_f64(1.0 + self.drift())
            .saturating_sub(self.margin + Duration::from_millis(1))
    }

    /// The longest real time `d` measured on a slow clock can take.
    fn stretched(&self, d: Duration) -> Duration {
        d.mul_f64(1.0 + self.drift())
    }

    /// How long a frozen (or killed, with the VIP on the interface) leader's kernel may
    /// still hold the VIP after the others may have elected a new holder:
    /// (fresh_ack + lifetime + kernel slack + d)(1 + rho) - E_min(1 - rho).
    /// Zero means strict fencing holds.
    pub fn freeze_overlap_bound(&self) -> Duration {
        self.stretched(self.fresh_ack + self.vip_lifetime + KERNEL_LIFETIME_SLACK + self.margin)
            .saturating_sub(self.election_min_real())
    }

    /// Every rule at once, so one `check-config` shows all of them.
    pub fn validate(&self) -> Vec<TimingError> {
        let mut errs = Vec::new();
        let mut bad = |field, problem: String| errs.push(TimingError { field, problem });
        let f = crate::timing::fmt_ms;
        if self.heartbeat.is_zero() {
            bad("heartbeat", "must be greater than 0".into());
        }
        if self.drift_ppm >= 100_000 {
            bad(
                "drift",
                format!(
                    "{}% is not a clock drift bound apivip can work with (must be under 10%)",
                    self.drift() * 100.0
                ),
            );
        }
        if self.lease < self.heartbeat * 2 {
            bad(
                "lease",
                format!(
                    "{} must be at least two heartbeats ({}), or one lost heartbeat drops the VIP",
                    f(self.lease),
                    f(self.heartbeat * 2)
                ),
            );
        }
        if self.election_max < self.election_min {
            bad(
                "election_timeout_max",
                format!(
                    "{} is below election_timeout_min {}",
                    f(self.election_max),
                    f(self.election_min)
                ),
            );
        }
        // The safety inequality: every acker's promise outlives the lease it backs, with
        // the leader's clock slow and the acker's fast.
        if self.stretched(self.lease + self.margin) >= self.election_min_real() {
            bad(
                "lease",
                format!(
                    "(lease {} + margin {}) x (1 + drift {}%) must be shorter than election_timeout_min {} x (1 - drift) = {}",
                    f(self.lease),
                    f(self.margin),
                    self.drift() * 100.0,
                    f(self.election_min),
                    f(self.election_min_real())
                ),
            );
        }
        if self.election_min < self.heartbeat * 3 {
            bad(
                "election_timeout_min",
                format!(
                    "{} must be at least three heartbeats ({}) so a lost heartbeat does not start an election",
                    f(self.election_min),
                    f(self.heartbeat * 3)
                ),
            );
        }
        if self.vip_lifetime < Duration::from_secs(1) || self.vip_lifetime.subsec_nanos() != 0 {
            bad(
                "vip_lifetime",
                format!(
                    "{} must be a whole number of seconds, at least 1s (the kernel counts address lifetimes in seconds)",
                    f(self.vip_lifetime)
                ),
            );
        }
        if self.heartbeat * 2 > self.vip_lifetime {
            bad(
                "heartbeat",
                format!(
                    "{} must be at most half the vip_lifetime {} so refreshes arrive before the kernel drops the VIP",
                    f(self.heartbeat),
                    f(self.vip_lifetime)
                ),
            );
        }
        if self.fresh_ack.is_zero() || self.fresh_ack >= self.lease {
            bad(
                "fresh_ack",
                format!(
                    "{} must be greater than 0 and shorter than the lease {}",
                    f(self.fresh_ack),
                    f(self.lease)
                ),
            );
        }
        if self.transfer_retry.is_zero() || self.transfer_retry >= self.election_min {
            bad(
                "transfer_retry",
                format!(
                    "{} must be greater than 0 and shorter than election_timeout_min",
                    f(self.transfer_retry)
                ),
            );
        }
        errs
    }
}

/// Milliseconds with up to three decimals, for error texts.
pub fn fmt_ms(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{:.3}ms", us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_valid() {
        for p in Profile::ALL {
            assert_eq!(p.timing().validate(), vec![], "{}", p.name());
        }
    }

    #[test]
    fn only_strict_fences_frozen_leaders() {
        assert_eq!(
            Profile::Strict.timing().freeze_overlap_bound(),
            Duration::ZERO
        );
        assert!(Profile::Default.timing().freeze_overlap_bound() > Duration::ZERO);
    }

    #[test]
    fn lease_must_be_shorter_than_promise() {
        let t = Timing {
            lease: Duration::from_millis(790),
            ..Profile::Default.timing()
        };
        let errs = t.validate();
        assert!(
            errs.iter()
                .any(|e| e.field == "lease" && e.problem.contains("1 - drift")),
            "{errs:?}"
        );
    }
}
