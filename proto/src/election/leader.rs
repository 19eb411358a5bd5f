//! The leader's side: heartbeats, the lease their acks build, the VIP it allows, and the
//! handovers (drill, shutdown, unhealthy, preemption).

use std::collections::VecDeque;

use super::*;
use crate::message::{Ack, Heartbeat};

/// Heartbeats remembered for lease arithmetic; an ack older than this is useless anyway
/// (the lease it could back has long run out).
const SENT_KEPT: usize = 64;

#[derive(Clone, Debug)]
pub(super) struct LeaderState {
    next_seq: u64,
    /// (seq, send time) of recent heartbeats.
    sent: VecDeque<(u64, Instant)>,
    /// Highest seq each member acked, when, and the lease that ack can back.
    pub(super) acked: BTreeMap<NodeId, Acked>,
    pub(super) lease_until: Option<Instant>,
    /// The heartbeat the current lease comes from.
    lease_seq: u64,
    /// The heartbeat whose ack round last set the kernel lifetime.
    refreshed_seq: u64,
    next_heartbeat: Instant,
    since: Instant,
    transfer: Option<TransferReason>,
    /// A better follower and since when it has been eligible.
    preempt: Option<(NodeId, Instant)>,
}

/// A member's latest ack, as the lease needs it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Acked {
    pub(super) seq: u64,
    pub(super) at: Instant,
    /// The longest lease this acker's promise backs (the leader's own lease at most).
    lease: Duration,
}

impl LeaderState {
    fn new(now: Instant) -> LeaderState {
        LeaderState {
            next_seq: 1,
            sent: VecDeque::with_capacity(SENT_KEPT),
            acked: BTreeMap::new(),
            lease_until: None,
            lease_seq: 0,
            refreshed_seq: 0,
            next_heartbeat: now,
            since: now,
            transfer: None,
            preempt: None,
        }
    }

    fn sent_at(&self, seq: u64) -> Option<Instant> {
        self.sent.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t)
    }

    fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The leader may hold the VIP: `now + d < lease_until`.
    pub(super) fn lease_valid(&self, now: Instant, cfg: &NodeConfig) -> bool {
        if !cfg.rules().lease_check {
            return true;
        }
        self.lease_until
            .is_some_and(|l| now + cfg.timing.margin < l)
    }

    /// The lease's ack round is recent enough to start a kernel lifetime from (Rule 6):
    /// the lifetime runs from now, the followers' promises from their acks.
    fn fresh(&self, now: Instant, cfg: &NodeConfig) -> bool {
        if !cfg.rules().fresh_refresh || !cfg.rules().lease_check {
            return true;
        }
        self.sent_at(self.lease_seq)
            .is_some_and(|s| now.saturating_since(s) <= cfg.timing.fresh_ack)
    }

    pub(super) fn deadlines(&self, cfg: &NodeConfig, vip: VipState) -> Vec<Instant> {
        let mut d = Vec::with_capacity(4);
        if self.transfer.is_none() {
            d.push(self.next_heartbeat);
            if cfg.rules().lease_check {
                d.push(
                    self.lease_until.unwrap_or(self.since).max(self.since)
                        + cfg.timing.election_max,
                );
            }
        }
        if cfg.rules().lease_check
            && matches!(vip, VipState::Held | VipState::Claiming)
            && let Some(l) = self.lease_until
        {
            d.push(l.saturating_sub(cfg.timing.margin));
        }
        // check_handover acts on preemption only while running and not transferring: a
        // deadline it would not act on would wake the node in a loop.
        if let Some((_, since)) = self.preempt
            && self.transfer.is_none()
        {
            d.push(since + cfg.preempt_delay);
        }
        d
    }
}

impl Node {
    pub(super) fn become_leader(&mut self, now: Instant) {
        if self.cfg.rules().no_resume_after_transfer && self.transferred_in == Some(self.term) {
            return;
        }
        self.leader = Some(self.cfg.id);
        self.promise = None;
        self.forget_resume();
        self.role = Role::Leader(Box::new(LeaderState::new(now)));
        // Rule 1: no VIP yet; the first heartbeat's majority ack makes the lease.
        self.send_heartbeat(now);
    }

    pub(super) fn send_heartbeat(&mut self, now: Instant) {
        let flags = self.my_flags(now);
        let hb = Heartbeat {
            seq: 0,
            flags,
            priority: self.cfg.my_priority(),
            members_hash: self.cfg.members_hash(),
        };
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let seq = l.next_seq;
        l.next_seq += 1;
        if l.sent.len() == SENT_KEPT {
            l.sent.pop_front();
        }
        l.sent.push_back((seq, now));
        l.next_heartbeat = now + self.cfg.timing.heartbeat;
        self.broadcast(Body::Heartbeat(Heartbeat { seq, ..hb }));
        self.recompute_lease();
    }

    pub(super) fn on_ack(&mut self, now: Instant, from: NodeId, term: Term, ack: Ack) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.priority = Some(ack.priority);
            p.flags = ack.flags;
            p.members_hash = Some(ack.members_hash);
        }
        if !self.is_member(from) || !self.is_leader() {
            return;
        }
        if term > self.term {
            if self.cfg.quorum == Quorum::TwoNode {
                self.two_node_conflict(now, from, term, ack.priority);
            } else if self.cfg.rules().hold_against_stale_terms
                && !ack.accepted
                && matches!(&self.role, Role::Leader(l) if l.lease_valid(now, &self.cfg))
            {
                self.move_past(now, term);
            } else {
                // A newer term exists: stop leading; the VIP goes before any vote or ack
                // (update_vip releases it, Rule 3 holds the answers back).
                self.adopt_term(term);
            }
            return;
        }
        if term < self.term || !ack.accepted {
            return;
        }
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let t = &self.cfg.timing;
        let lease = match ack.promise {
            Some(p) if self.cfg.protocol >= 2 && self.cfg.rules().acker_promises => {
                t.lease.min(t.lease_backed_by(p))
            }
            // A protocol-1 acker: it runs the timing this leader runs (timing changes
            // wait until every node speaks 2).
            _ => t.lease,
        };
        let e = l.acked.entry(from).or_insert(Acked {
            seq: 0,
            at: now,
            lease,
        });
        if ack.seq >= e.seq {
            *e = Acked {
                seq: ack.seq,
                at: now,
                lease,
            };
        }
        self.recompute_lease();
    }

    /// A member at a newer term refuses our heartbeats: it restarted with a term it
    /// reached alone (a candidacy that lost, a restored state file). Stepping down would
    /// leave the VIP on no node for a whole election. Instead the leader moves past that
    /// term while its lease runs: it votes for itself in `term + 1` and heartbeats there,
    /// and the member follows again.
    ///
    /// Safe without a vote round because the VIP rests on promises, not on terms: the
    /// lease we keep was built from acks that promised us, by the clock, not to vote for
    /// anyone else, and every later lease needs a majority to ack us in the new term. A
    /// node that wins `term + 1` by votes can only do so from voters no longer promised
    /// to us, by which time our lease is gone; acks are given to one leader per term, so
    /// two leaders of one term cannot both build a lease.
    fn move_past(&mut self, now: Instant, term: Term) {
        if term >= MAX_TERM || self.transferring() {
            return;
        }
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        // Acks of the old term promised us nothing about the new one.
        l.acked.clear();
        l.lease_seq = l.last_seq();
        l.refreshed_seq = l.refreshed_seq.max(l.lease_seq);
        self.term = term + 1;
        self.voted_for = Some(self.cfg.id);
        self.leader = Some(self.cfg.id);
        self.persist();
        self.send_heartbeat(now);
    }

    /// Each member of a quorum (us included) backs the lease until the send time of the
    /// heartbeat it last acked plus what its promise covers (our own lease at most);
    /// the lease runs to the q-th latest of those. With one timing everywhere this is
    /// "send time of the newest heartbeat a quorum acked, + L". An ack of a later
    /// heartbeat counts for earlier ones: its promise started later.
    fn recompute_lease(&mut self) {
        let q = self.cfg.quorum_size();
        let rules = self.cfg.rules();
        let lease = self.cfg.timing.lease;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let latest = l.last_seq();
        if !rules.lease_check {
            l.lease_seq = latest;
            return;
        }
        let mut backed: Vec<(Instant, u64)> = l
            .acked
            .values()
            .filter(|a| a.seq > 0)
            .filter_map(|a| l.sent_at(a.seq).map(|s| (s + a.lease, a.seq)))
            .collect();
        if let Some(s) = l.sent_at(latest) {
            backed.push((s + lease, latest));
        }
        if backed.len() < q {
            return;
        }
        backed.sort_unstable_by(|a, b| b.cmp(a));
        let (until, seq) = backed[q - 1];
        if seq == 0 || l.lease_until.is_some_and(|u| until <= u) {
            return;
        }
        l.lease_until = Some(until);
        l.lease_seq = l.lease_seq.max(seq);
    }

    pub(super) fn poll_leader(&mut self, now: Instant) {
        let Role::Leader(l) = &self.role else { return };
        if l.transfer.is_none() && now >= l.next_heartbeat {
            self.send_heartbeat(now);
        }
        let Role::Leader(l) = &self.role else { return };
        let e_max = self.cfg.timing.election_max;
        let quorumless = self.cfg.rules().lease_check
            && !l.lease_valid(now, &self.cfg)
            && now >= l.lease_until.unwrap_or(l.since).max(l.since) + e_max;
        if quorumless && l.transfer.is_none() {
            // Acks stopped arriving (a one-way partition, or we are the minority): stop
            // heartbeating so followers that still hear us may elect someone who can be
            // heard both ways.
            self.start_transfer(now, None, TransferReason::NoQuorum);
            return;
        }
        self.check_handover(now);
    }

    /// Claims, refreshes or releases the VIP to match the role and lease. Every path that
    /// changes either ends here, so a release never waits for a timer.
    pub(super) fn update_vip(&mut self, now: Instant) {
        let want = match &self.role {
            Role::Leader(l) => {
                l.transfer.is_none() && self.link_up && l.lease_valid(now, &self.cfg)
            }
            _ => false,
        };
        let may_claim = self.vip_failures.may_claim(now);
        let lifetime = self.cfg.timing.vip_lifetime;
        match (want, self.vip) {
            (true, VipState::Released) => {
                let Role::Leader(l) = &mut self.role else {
                    return;
                };
                if may_claim && l.fresh(now, &self.cfg) {
                    l.refreshed_seq = l.lease_seq;
                    self.vip = VipState::Claiming;
                    self.out.push(Action::ClaimVip { lifetime });
                }
            }
            (true, VipState::Held) => {
                let Role::Leader(l) = &mut self.role else {
                    return;
                };
                if l.lease_seq > l.refreshed_seq && l.fresh(now, &self.cfg) {
                    l.refreshed_seq = l.lease_seq;
                    self.out.push(Action::RefreshVip { lifetime });
                }
            }
            (false, VipState::Held | VipState::Claiming) => {
                // Queued behind any add still in flight, so a slow add cannot outlive the
                // lease (Rule 7).
                self.vip = VipState::Releasing;
                self.out.push(Action::ReleaseVip);
            }
            _ => {}
        }
    }

    pub(super) fn transferring(&self) -> bool {
        matches!(&self.role, Role::Leader(l) if l.transfer.is_some())
    }

    /// Releases the VIP, then (Rule 3) hands over to `target` with TimeoutNow, or to
    /// nobody with Resign.
    pub(super) fn start_transfer(
        &mut self,
        now: Instant,
        target: Option<NodeId>,
        reason: TransferReason,
    ) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.transfer.is_some() {
            return;
        }
        l.transfer = Some(reason);
        let last_seq = l.last_seq();
        self.out.push(Action::Notice(Notice::TransferStarted {
            to: target,
            reason,
        }));
        self.after_release = match target {
            Some(to) => AfterRelease::TimeoutNow { to, last_seq },
            None => AfterRelease::Resign { last_seq },
        };
        if matches!(self.vip, VipState::Held | VipState::Claiming) {
            self.vip = VipState::Releasing;
            self.out.push(Action::ReleaseVip);
        }
        if self.vip == VipState::Released {
            self.vip = VipState::Releasing;
            self.on_vip_released(now);
        } else if !self.cfg.rules().release_before_vote {
            // The bug Rule 3 prevents: hand over while the kernel may still hold the VIP.
            let pending = std::mem::replace(&mut self.after_release, AfterRelease::Nothing);
            let vip = self.vip;
            self.vip = VipState::Releasing;
            self.after_release = pending;
            self.on_vip_released(now);
            // The release is still in flight: its confirmation must find it so.
            self.vip = vip;
        }
    }

    /// A follower that could take over right now: a member with priority > 0 that acked
    /// within the last three heartbeats and says it can lead.
    pub(super) fn eligible_follower(&self, now: Instant, id: NodeId) -> bool {
        let Role::Leader(l) = &self.role else {
            return false;
        };
        let recent = self.cfg.timing.heartbeat * 3;
        id != self.cfg.id
            && self.cfg.is_member(id)
            && self.cfg.priority_of(id).is_some_and(|p| p > 0)
            && l.acked
                .get(&id)
                .is_some_and(|a| now.saturating_since(a.at) <= recent)
            && self
                .peers
                .get(&id)
                .is_some_and(|p| p.flags.has(Flags::CAN_LEAD))
    }

    pub(super) fn best_follower(
        &self,
        now: Instant,
        want: impl Fn(Priority) -> bool,
    ) -> Option<NodeId> {
        self.cfg
            .members
            .iter()
            .filter(|m| want(m.priority) && self.eligible_follower(now, m.id))
            .max_by_key(|m| (m.priority, std::cmp::Reverse(m.id)))
            .map(|m| m.id)
    }

    fn check_handover(&mut self, now: Instant) {
        // A leader asked to shut down is always transferring: the request starts the
        // handover, and a campaign under way when it came is dropped (`on_admin`).
        if !self.is_leader() || self.transferring() {
            if let Role::Leader(l) = &mut self.role {
                l.preempt = None;
            }
            return;
        }
        if !self.healthy || !self.cfg.preempt {
            // Preemption waits while we are unhealthy (or is off): its deadline must not
            // stay armed with nobody acting on it.
            if let Role::Leader(l) = &mut self.role {
                l.preempt = None;
            }
        }
        if !self.healthy {
            // Hand over only to someone better off; with no healthy follower a holder
            // whose forwarder reaches the peers' apiservers beats no holder.
            if let Some(t) = self.best_follower(now, |_| true) {
                self.start_transfer(now, Some(t), TransferReason::Unhealthy);
            }
            return;
        }
        if !self.cfg.preempt {
            return;
        }
        let mine = self.cfg.my_priority();
        let better = self.best_follower(now, |p| p > mine);
        let delay = self.cfg.preempt_delay;
        let lease = self.cfg.timing.lease;
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        // A pending target that merely missed an ack or two (loss) is still the same
        // candidate: restarting its delay on every gap meant that under 10% loss a
        // returning preferred node never took the VIP back (netns test, 7 s). Only a
        // target silent for a whole lease is forgotten.
        let pending_alive = l.preempt.is_some_and(|(id, _)| {
            l.acked
                .get(&id)
                .is_some_and(|a| now.saturating_since(a.at) <= lease)
        });
        let h = self.cfg.timing.heartbeat;
        match (better, l.preempt) {
            (None, Some((id, since))) if pending_alive => {
                // Due but not eligible this instant: look again in a heartbeat (a
                // deadline left in the past would wake the node in a loop).
                if now >= since + delay {
                    l.preempt = Some((id, (now + h).saturating_sub(delay)));
                }
            }
            (None, _) => l.preempt = None,
            (Some(t), Some((id, since))) if id == t => {
                if now >= since + delay {
                    l.preempt = None;
                    self.start_transfer(now, Some(t), TransferReason::Preempt);
                }
            }
            (Some(t), _) => l.preempt = Some((t, now)),
        }
    }

    /// Two-node mode: two leaders hear each other (after a partition, or after both
    /// started alone). The better one (priority, then lower id) keeps the VIP and moves
    /// past the other's term so its heartbeats win; the other steps down.
    pub(super) fn two_node_conflict(
        &mut self,
        now: Instant,
        from: NodeId,
        their_term: Term,
        their_priority: Priority,
    ) {
        if !self.cfg.rules().two_node_tiebreak {
            if their_term > self.term {
                self.adopt_term(their_term);
            }
            return;
        }
        let mine = (self.cfg.my_priority(), std::cmp::Reverse(self.cfg.id));
        let theirs = (their_priority, std::cmp::Reverse(from));
        if mine > theirs {
            if their_term >= self.term && their_term < MAX_TERM {
                self.term = their_term + 1;
                self.voted_for = Some(self.cfg.id);
                self.persist();
                self.send_heartbeat(now);
            }
            return;
        }
        if their_term > self.term {
            self.adopt_term(their_term);
        } else {
            self.role = Role::Follower;
        }
        self.leader = Some(from);
    }
}
