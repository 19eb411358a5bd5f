//! The follower's side: acking heartbeats (each ack is a promise), answering votes, and
//! obeying a leader's handover.

use super::*;
use crate::message::{Ack, Ballot, Candidacy, Heartbeat, Transfer, VoteReason, VoteRequest};

impl Node {
    pub(super) fn on_heartbeat(&mut self, now: Instant, from: NodeId, term: Term, hb: Heartbeat) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.priority = Some(hb.priority);
            p.flags = hb.flags;
            p.members_hash = Some(hb.members_hash);
        }
        if !self.is_member(from) {
            return;
        }
        if term < self.term {
            // Tell a stale leader the news; it steps down when it sees the newer term.
            self.reply_ack(now, from, hb.seq, false);
            return;
        }
        if self.is_leader() {
            if self.cfg.quorum == Quorum::TwoNode {
                self.two_node_conflict(now, from, term, hb.priority);
                return;
            }
            if term == self.term {
                // Two leaders of one term cannot both have won a majority vote.
                return;
            }
        }
        if term > self.term {
            self.adopt_term(term);
        }
        match self.leader {
            Some(l) if l != from => return,
            _ => self.leader = Some(from),
        }
        if matches!(self.role, Role::Candidate(_)) {
            // Someone else won this term.
            self.role = Role::Follower;
        }
        // A pre-candidate stays one: the promise below makes its round fail the re-check
        // when the majority arrives (Rule M2).
        self.promise = Some(Promise {
            leader: from,
            term,
            until: now + self.cfg.timing.election_min,
        });
        let t = self.election_timeout();
        self.election_deadline = self.election_deadline.max(now + t);
        if hb.flags.has(Flags::HOLDS_VIP) {
            self.note_holder(from, term);
        }
        if self.cfg.rules().release_before_vote && self.vip != VipState::Released {
            return;
        }
        if self.silent(now) && !self.cfg.rules().acks_during_silence {
            return;
        }
        self.reply_ack(now, from, hb.seq, true);
    }

    fn reply_ack(&mut self, now: Instant, to: NodeId, seq: u64, accepted: bool) {
        let ack = Ack {
            seq,
            accepted,
            flags: self.my_flags(now),
            priority: self.cfg.my_priority(),
            members_hash: self.cfg.members_hash(),
            promise: (self.cfg.protocol >= 2).then(|| self.cfg.timing.election_min_real()),
        };
        self.send(to, Body::Ack(ack));
    }

    /// Why this node would refuse `from` a (pre-)vote for `term`, or `Granted`.
    fn vote_check(
        &self,
        now: Instant,
        from: NodeId,
        term: Term,
        transfer: Option<Transfer>,
        pre: bool,
    ) -> VoteReason {
        let rules = self.cfg.rules();
        if rules.members_only && !self.cfg.is_member(from) {
            return VoteReason::NotMember;
        }
        if self.silent(now) && !self.transfer_vote_allowed_in_silence(transfer, pre) {
            return VoteReason::Silent;
        }
        let fresh_term = term > self.term
            || (!pre
                && term == self.term
                && self.voted_for.is_none_or(|v| v == from)
                && !self.is_leader());
        if !fresh_term {
            return if term == self.term && self.voted_for.is_some() {
                VoteReason::AlreadyVoted
            } else {
                VoteReason::StaleTerm
            };
        }
        if rules.promise_check {
            if let Role::Leader(l) = &self.role
                && l.lease_valid(now, &self.cfg)
            {
                return VoteReason::LeaseActive;
            }
            if let Some(p) = self.promise
                && now < p.until
            {
                let released_by_transfer =
                    transfer.is_some_and(|t| t.from == p.leader && t.term == p.term);
                if !released_by_transfer {
                    return VoteReason::PromiseActive;
                }
            }
        }
        if rules.release_before_vote && self.vip != VipState::Released {
            return VoteReason::Releasing;
        }
        VoteReason::Granted
    }

    /// A node in its start-up silence may have forgotten a promise, but only one made in
    /// a term up to the one it restarted with. A handover from the leader of such a term
    /// or a later one is safe to vote for: a forgotten promise in that very term was to
    /// that leader, which released the VIP, and the leases of earlier terms ended before
    /// the later term was won. Without this, a handover right after several nodes
    /// restarted stalls for a whole silence.
    fn transfer_vote_allowed_in_silence(&self, transfer: Option<Transfer>, pre: bool) -> bool {
        !pre && transfer.is_some_and(|t| t.term >= self.start_term)
    }

    pub(super) fn on_prevote_request(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        _c: Candidacy,
    ) {
        let reason = self.vote_check(now, from, term, None, true);
        let ballot = Ballot {
            granted: reason == VoteReason::Granted,
            reason,
        };
        self.send(from, Body::PreVote(ballot));
    }

    pub(super) fn on_vote_request(
        &mut self,
        now: Instant,
        from: NodeId,
        term: Term,
        v: VoteRequest,
    ) {
        if term == self.term && self.voted_for == Some(from) {
            // A retransmitted request: the same answer again.
            self.send(
                from,
                Body::Vote(Ballot {
                    granted: true,
                    reason: VoteReason::Granted,
                }),
            );
            return;
        }
        let reason = self.vote_check(now, from, term, v.transfer, false);
        if reason != VoteReason::Granted {
            // Refusing does not adopt the term (Rule 5): a node that cannot hear the
            // leader must not depose it through us.
            self.send(
                from,
                Body::Vote(Ballot {
                    granted: false,
                    reason,
                }),
            );
            return;
        }
        if term > self.term {
            self.adopt_term(term);
        }
        if let Some(t) = v.transfer
            && self
                .promise
                .is_some_and(|p| p.leader == t.from && p.term == t.term)
        {
            self.promise = None;
        }
        self.voted_for = Some(from);
        self.persist();
        let t = self.election_timeout();
        self.election_deadline = now + t;
        self.send(
            from,
            Body::Vote(Ballot {
                granted: true,
                reason: VoteReason::Granted,
            }),
        );
    }

    pub(super) fn on_timeout_now(&mut self, now: Instant, from: NodeId, term: Term, t: TimeoutNow) {
        let obey = self.is_member(from)
            && term == self.term
            && self.leader == Some(from)
            && matches!(self.role, Role::Follower | Role::PreCandidate(_))
            && self.can_lead(now)
            && self.vip == VipState::Released;
        if obey {
            self.become_candidate(
                now,
                Some(Transfer {
                    from,
                    term,
                    last_seq: t.last_seq,
                }),
            );
        }
    }

    pub(super) fn on_resign(&mut self, now: Instant, from: NodeId, term: Term, _r: Resign) {
        if !self.is_member(from) || term != self.term || self.leader != Some(from) {
            return;
        }
        // The leader released the VIP before saying so (Rule 3) and never leads in this
        // term again (Rule 4): the promise protects nothing any more.
        if self
            .promise
            .is_some_and(|p| p.leader == from && p.term == term)
        {
            self.promise = None;
        }
        self.leader = None;
        if let Role::Follower = self.role {
            let offset = self.slot_offset();
            self.election_deadline = now + offset;
        }
    }
}
