//! A kernel that refuses the VIP: back off between claims, hand over after a few
//! failures, and stand aside for a while so the node does not win the VIP straight back.
//!
//! Without this, a leader whose claim fails (TUN device deleted, interface re-created,
//! EPERM) kept its lease, re-claimed on every ack round and never let anyone else take
//! the VIP: the cluster had a leader and no VIP until a person acted.

use std::time::Duration;

use super::*;

/// Consecutive failed claims or refreshes after which a leader hands over.
pub const FAILURES_BEFORE_HANDOVER: u32 = 3;
/// The longest pause between two claims of a failing leader.
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a node that handed over for failing stays out of elections the first time;
/// each further hand-over doubles it, up to [`BENCH_MAX`].
const BENCH_MIN: Duration = Duration::from_secs(2);
const BENCH_MAX: Duration = Duration::from_secs(60);
/// A node that has not failed for this long starts again from [`BENCH_MIN`].
const BENCH_RESET: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, Default)]
pub(super) struct VipFailures {
    /// Consecutive failed claims or refreshes.
    count: u32,
    since: Option<Instant>,
    last: Option<Instant>,
    /// No claim before this.
    retry_at: Option<Instant>,
    /// Not a candidate before this.
    bench_until: Option<Instant>,
    /// How long the next bench lasts (zero: [`BENCH_MIN`]).
    next_bench: Duration,
}

impl VipFailures {
    pub(super) fn succeeded(&mut self) {
        self.count = 0;
        self.since = None;
        self.retry_at = None;
    }

    /// Records a failure; the pause before the next claim doubles from one heartbeat.
    fn failed(&mut self, now: Instant, heartbeat: Duration) {
        if self
            .last
            .is_some_and(|l| now.saturating_since(l) >= BENCH_RESET)
        {
            self.next_bench = Duration::ZERO;
        }
        self.count = self.count.saturating_add(1);
        self.since.get_or_insert(now);
        self.last = Some(now);
        let shift = self.count.saturating_sub(1).min(16);
        let pause = heartbeat.saturating_mul(1 << shift).min(RETRY_MAX);
        self.retry_at = Some(now + pause);
    }

    /// Failed often enough, or for long enough, that another node should try.
    fn should_hand_over(&self, now: Instant, lease: Duration) -> bool {
        self.count >= FAILURES_BEFORE_HANDOVER
            || self.since.is_some_and(|s| now.saturating_since(s) >= lease)
    }

    fn bench(&mut self, now: Instant) -> Duration {
        let d = self.next_bench.max(BENCH_MIN);
        self.bench_until = Some(now + d);
        self.next_bench = d.saturating_mul(2).min(BENCH_MAX);
        self.count = 0;
        self.since = None;
        self.retry_at = None;
        d
    }

    pub(super) fn may_claim(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    pub(super) fn benched(&self, now: Instant) -> bool {
        self.bench_until.is_some_and(|t| now < t)
    }

    /// The next instant at which something here changes, if still ahead.
    pub(super) fn deadline(&self, now: Instant) -> Option<Instant> {
        self.retry_at.filter(|t| *t > now)
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }

    pub(super) fn bench_remaining(&self, now: Instant) -> Option<Duration> {
        self.bench_until
            .filter(|t| *t > now)
            .map(|t| t.saturating_since(now))
    }
}

impl Node {
    /// The kernel refused a claim or refresh.
    pub(super) fn on_vip_failed(&mut self, now: Instant) {
        if !matches!(self.vip, VipState::Claiming | VipState::Held) {
            return;
        }
        // Make sure nothing half-added stays; the claim is retried after the pause.
        self.vip = VipState::Releasing;
        self.out.push(Action::ReleaseVip);
        if !self.is_leader() || !self.cfg.rules().vip_failure_handover {
            return;
        }
        self.vip_failures.failed(now, self.cfg.timing.heartbeat);
        let alone = self.cfg.members.iter().all(|m| m.id == self.cfg.id);
        if alone
            || self.transferring()
            || !self
                .vip_failures
                .should_hand_over(now, self.cfg.timing.lease)
        {
            return;
        }
        let failures = self.vip_failures.count();
        let bench = self.vip_failures.bench(now);
        self.out
            .push(Action::Notice(Notice::VipFailing { failures, bench }));
        let target = self.best_follower(now, |_| true);
        self.start_transfer(now, target, TransferReason::VipFailure);
    }
}
