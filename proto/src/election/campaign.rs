//! Standing for election: a pre-vote round that changes nobody's state, then a vote
//! round in a new term.

use super::*;
use crate::message::{Ballot, Candidacy, Transfer, VoteRequest};

impl Node {
    /// Everything that must hold before this node asks for votes.
    fn may_campaign(&self, now: Instant) -> bool {
        // At MAX_TERM there is no next term to stand in (never reached by real elections:
        // members refuse terms that would lead there).
        self.term < MAX_TERM
            && self.can_lead(now)
            && self.vip == VipState::Released
            && !(self.cfg.rules().promise_check && self.promise_active(now))
    }

    pub(super) fn on_election_timeout(&mut self, now: Instant) {
        if self.may_campaign(now) {
            if self.cfg.rules().prevote {
                self.start_prevote(now);
            } else {
                self.become_candidate(now, None);
            }
            return;
        }
        // Not now: look again when whatever blocks us may have cleared.
        let t = self.election_timeout();
        let mut next = now + t;
        if self.silent(now) {
            next = self.silent_until;
        }
        if let Some(p) = self.promise
            && now < p.until
        {
            next = next.min(p.until.max(now + t / 4));
        }
        self.election_deadline = next;
    }

    fn start_prevote(&mut self, now: Instant) {
        let t = self.election_timeout();
        let c = Campaign {
            term: self.term + 1,
            grants: BTreeSet::from([self.cfg.id]),
            denials: BTreeSet::new(),
            resend_at: now + self.cfg.timing.heartbeat,
            deadline: now + t,
            transfer: None,
        };
        let enough = c.grants.len() >= self.cfg.quorum_size();
        self.role = Role::PreCandidate(c);
        if enough {
            self.prevote_won(now);
        } else {
            self.ask_prevotes(now, None);
        }
    }

    fn ask_prevotes(&mut self, now: Instant, only_missing: Option<&BTreeSet<NodeId>>) {
        let cand = Candidacy {
            priority: self.cfg.my_priority(),
            flags: self.my_flags(now),
        };
        let Role::PreCandidate(c) = &self.role else {
            return;
        };
        let proposed = c.term;
        let ids: Vec<NodeId> = self
            .cfg
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != self.cfg.id && only_missing.is_none_or(|g| !g.contains(id)))
            .collect();
        for id in ids {
            // A pre-vote names the term it would start, not ours.
            self.out.push(Action::Send {
                to: id,
                msg: Message {
                    term: proposed,
                    body: Body::PreVoteRequest(cand),
                },
            });
        }
    }

    pub(super) fn on_prevote(&mut self, now: Instant, from: NodeId, term: Term, b: Ballot) {
        if !self.is_member(from) {
            return;
        }
        let Role::PreCandidate(c) = &mut self.role else {
            return;
        };
        if term >= c.term {
            // The voter is already at (or past) the term we proposed: catch up, unless a
            // promise or lease says we must not move (Rule 5), and try again later.
            if !self.promise_active(now) {
                self.adopt_term(term);
                let t = self.election_timeout();
                self.election_deadline = now + t;
            }
            return;
        }
        if !b.granted {
            return;
        }
        c.grants.insert(from);
        if c.grants.len() >= self.cfg.quorum_size() {
            self.prevote_won(now);
        }
    }

    fn prevote_won(&mut self, now: Instant) {
        // Rule M2's re-check: a heartbeat accepted since the round began renewed our
        // promise to the leader; campaigning now would break it.
        let blocked = if self.cfg.rules().prevote_recheck {
            !self.may_campaign(now)
        } else {
            !self.can_lead(now)
        };
        if blocked {
            self.role = Role::Follower;
            let t = self.election_timeout();
            self.election_deadline = now + t;
            if let Some(p) = self.promise
                && now < p.until
            {
                self.election_deadline = self.election_deadline.max(p.until);
            }
            return;
        }
        self.become_candidate(now, None);
    }

    pub(super) fn become_candidate(&mut self, now: Instant, transfer: Option<Transfer>) {
        if self.term >= MAX_TERM {
            return;
        }
        self.term += 1;
        self.voted_for = Some(self.cfg.id);
        self.leader = None;
        self.after_release = AfterRelease::Nothing;
        self.forget_resume();
        self.persist();
        let t = self.election_timeout();
        self.role = Role::Candidate(Campaign {
            term: self.term,
            grants: BTreeSet::from([self.cfg.id]),
            denials: BTreeSet::new(),
            resend_at: now + self.cfg.timing.heartbeat,
            deadline: now + t,
            transfer,
        });
        if self.cfg.quorum_size() <= 1 {
            self.become_leader(now);
            return;
        }
        self.ask_votes(now, None);
    }

    fn ask_votes(&mut self, now: Instant, only_missing: Option<&BTreeSet<NodeId>>) {
        let Role::Candidate(c) = &self.role else {
            return;
        };
        let req = VoteRequest {
            priority: self.cfg.my_priority(),
            flags: self.my_flags(now),
            transfer: c.transfer,
        };
        let ids: Vec<NodeId> = self
            .cfg
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != self.cfg.id && only_missing.is_none_or(|g| !g.contains(id)))
            .collect();
        for id in ids {
            self.send(id, Body::VoteRequest(req));
        }
    }

    pub(super) fn on_vote(&mut self, now: Instant, from: NodeId, term: Term, b: Ballot) {
        if !self.is_member(from) {
            return;
        }
        if term > self.term {
            if !self.promise_active(now) && !self.is_leader() {
                self.adopt_term(term);
                let t = self.election_timeout();
                self.election_deadline = now + t;
            }
            return;
        }
        let q = self.cfg.quorum_size();
        let n = self.cfg.members.len();
        let Role::Candidate(c) = &mut self.role else {
            return;
        };
        if term != c.term {
            return;
        }
        if b.granted {
            c.denials.remove(&from);
            c.grants.insert(from);
            if c.grants.len() >= q {
                self.become_leader(now);
            }
            return;
        }
        c.denials.insert(from);
        if n - c.denials.len() < q {
            // Lost for sure (a split vote, most likely): rather than wait out a whole
            // election timeout, stand again after this node's rank offset, so the better
            // ranked of the split candidates goes first.
            self.role = Role::Follower;
            let offset = self.slot_offset();
            self.election_deadline = now + offset.max(self.cfg.timing.heartbeat);
        }
    }

    pub(super) fn poll_campaign(&mut self, now: Instant) {
        let (deadline, resend_at, grants, is_pre) = match &self.role {
            Role::PreCandidate(c) => (c.deadline, c.resend_at, c.grants.clone(), true),
            Role::Candidate(c) => (c.deadline, c.resend_at, c.grants.clone(), false),
            _ => return,
        };
        if now >= deadline {
            // Lost or split: back to follower; the next round starts from our own slot.
            self.role = Role::Follower;
            self.election_deadline = now;
            self.on_election_timeout(now);
            return;
        }
        if now >= resend_at {
            let h = self.cfg.timing.heartbeat;
            match &mut self.role {
                Role::PreCandidate(c) | Role::Candidate(c) => c.resend_at = now + h,
                _ => {}
            }
            if is_pre {
                self.ask_prevotes(now, Some(&grants));
            } else {
                self.ask_votes(now, Some(&grants));
            }
        }
    }
}
