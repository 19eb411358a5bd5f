//! What a node is told: who it is, who the members are, its timings and policies.

use std::time::Duration;

use thiserror::Error;

use crate::message::{NodeId, Priority};
use crate::timing::{Timing, TimingError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub priority: Priority,
}

/// How many acknowledgements a lease needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Quorum {
    /// A majority of the member list: at most one holder, ever.
    #[default]
    Majority,
    /// Two-member clusters that prefer availability: each node holds alone when it hears
    /// nobody, like VRRP. Under a partition both hold; when they hear each other again
    /// the better one (priority, then lower id) keeps the VIP.
    TwoNode,
}

/// The safety rules, each of which the simulator shows to be necessary: turning one off
/// lets some schedule put the VIP on two nodes at once (or, for the liveness rules, leave
/// it on none). Only tests turn them off: the switches exist only in this crate's tests
/// and with the `sim` feature; every other build (the daemon's) runs [`Rules::ALL`],
/// a constant the compiler folds away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Voters refuse while their promise to a leader runs (and do not adopt the term).
    pub promise_check: bool,
    /// A leader claims only under a majority-acked lease and releases when it runs out.
    pub lease_check: bool,
    /// After every start, no votes, pre-votes or campaigns for E_max (Rule 2).
    pub restart_silence: bool,
    /// No vote, ack or TimeoutNow until the kernel confirmed the VIP is gone (Rule 3).
    pub release_before_vote: bool,
    /// A leader that sent TimeoutNow in term T never leads in T again (Rule 4).
    pub no_resume_after_transfer: bool,
    /// Votes, acks and TimeoutNow only for and from members of one's own list (Rule M1).
    pub members_only: bool,
    /// Raise the term only after a majority granted a pre-vote (Rule M2).
    pub prevote: bool,
    /// When the pre-vote majority arrives, check again that one's own promise expired.
    pub prevote_recheck: bool,
    /// Acks are allowed during the start-up silence (Rule M3).
    pub acks_during_silence: bool,
    /// Refresh the kernel lifetime only from a fresh ack round (Rule 6).
    pub fresh_refresh: bool,
    /// Term and vote are persisted before any answer that depends on them.
    pub persist: bool,
    /// Two-node mode: of two leaders that hear each other, the lesser steps down.
    pub two_node_tiebreak: bool,
    /// A leader whose lease runs moves past a newer term it hears in a refusal (a member
    /// restarted with a higher stored term) instead of stepping down, which would leave
    /// the VIP on no node for a whole election.
    pub hold_against_stale_terms: bool,
    /// A leader whose kernel keeps refusing the VIP hands it over and stands aside for a
    /// while, instead of re-claiming on every ack round.
    pub vip_failure_handover: bool,
    /// The lease from each ack is bounded by the promise that acker stated (its own
    /// E_min), and a restart stays silent for the longest promise it may have given
    /// before (a timing changed across the restart): mixed timings during a rolling
    /// change never outlive a promise.
    pub acker_promises: bool,
}

#[cfg(any(test, feature = "sim"))]
impl Rules {
    /// Every rule's field name, for tools that turn rules off by name.
    pub const NAMES: [&'static str; 15] = [
        "promise_check",
        "lease_check",
        "restart_silence",
        "release_before_vote",
        "no_resume_after_transfer",
        "members_only",
        "prevote",
        "prevote_recheck",
        "acks_during_silence",
        "fresh_refresh",
        "persist",
        "two_node_tiebreak",
        "hold_against_stale_terms",
        "vip_failure_handover",
        "acker_promises",
    ];

    /// These rules with `name` turned off; `None` when `name` is not a rule.
    pub fn without(mut self, name: &str) -> Option<Rules> {
        let flag = match name {
            "promise_check" => &mut self.promise_check,
            "lease_check" => &mut self.lease_check,
            "restart_silence" => &mut self.restart_silence,
            "release_before_vote" => &mut self.release_before_vote,
            "no_resume_after_transfer" => &mut self.no_resume_after_transfer,
            "members_only" => &mut self.members_only,
            "prevote" => &mut self.prevote,
            "prevote_recheck" => &mut self.prevote_recheck,
            "acks_during_silence" => &mut self.acks_during_silence,
            "fresh_refresh" => &mut self.fresh_refresh,
            "persist" => &mut self.persist,
            "two_node_tiebreak" => &mut self.two_node_tiebreak,
            "hold_against_stale_terms" => &mut self.hold_against_stale_terms,
            "vip_failure_handover" => &mut self.vip_failure_handover,
            "acker_promises" => &mut self.acker_promises,
            _ => return None,
        };
        *flag = false;
        Some(self)
    }
}

impl Rules {
    pub const ALL: Rules = Rules {
        promise_check: true,
        lease_check: true,
        restart_silence: true,
        release_before_vote: true,
        no_resume_after_transfer: true,
        members_only: true,
        prevote: true,
        prevote_recheck: true,
        acks_during_silence: true,
        fresh_refresh: true,
        persist: true,
        two_node_tiebreak: true,
        hold_against_stale_terms: true,
        vip_failure_handover: true,
        acker_promises: true,
    };
}

impl Default for Rules {
    fn default() -> Self {
        Rules::ALL
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Every member, this node included.
    pub members: Vec<Member>,
    pub timing: Timing,
    pub quorum: Quorum,
    /// Hand the VIP to a healthy follower of higher priority once it has been eligible for
    /// `preempt_delay`.
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// Test-only switches for the safety rules (the simulator's experiments).
    #[cfg(any(test, feature = "sim"))]
    pub rules: Rules,
    /// The highest protocol version this node speaks: 2 sends promises in acks and uses
    /// them; 1 behaves as the previous release (for rolling upgrades and their tests).
    pub protocol: u8,
    /// The start-up silence lasts at least this long: the longest promise this node may
    /// have given before it restarted (a timing changed across the restart). The
    /// daemon keeps it in the state file.
    pub silence_floor: Duration,
}

#[derive(Clone, Debug, Error, PartialEq)]
pub enum NodeConfigError {
    #[error("node id 0 is reserved")]
    ZeroId,
    #[error("node {0} is not in its own member list")]
    NotAMember(NodeId),
    #[error("member {0} is listed twice")]
    Duplicate(NodeId),
    #[error("two-node quorum needs exactly two members, not {0}")]
    TwoNodeSize(usize),
    #[error("timing: {0}")]
    Timing(TimingError),
    #[error("protocol {0}: this build speaks protocol 1 and 2")]
    Protocol(u8),
}

impl NodeConfig {
    pub fn new(id: NodeId, members: Vec<Member>, timing: Timing) -> NodeConfig {
        NodeConfig {
            id,
            members,
            timing,
            quorum: Quorum::Majority,
            preempt: true,
            preempt_delay: Duration::from_secs(3),
            #[cfg(any(test, feature = "sim"))]
            rules: Rules::ALL,
            protocol: crate::wire::VERSION_MAX,
            silence_floor: Duration::ZERO,
        }
    }

    pub fn validate(&self) -> Result<(), NodeConfigError> {
        if self.id == 0 || self.members.iter().any(|m| m.id == 0) {
            return Err(NodeConfigError::ZeroId);
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].iter().any(|o| o.id == m.id) {
                return Err(NodeConfigError::Duplicate(m.id));
            }
        }
        if !self.is_member(self.id) {
            return Err(NodeConfigError::NotAMember(self.id));
        }
        if self.quorum == Quorum::TwoNode && self.members.len() != 2 {
            return Err(NodeConfigError::TwoNodeSize(self.members.len()));
        }
        if let Some(e) = self.timing.validate().into_iter().next() {
            return Err(NodeConfigError::Timing(e));
        }
        if !(1..=crate::wire::VERSION_MAX).contains(&self.protocol) {
            return Err(NodeConfigError::Protocol(self.protocol));
        }
        Ok(())
    }

    /// The safety rules in force: all of them, except in the simulator's experiments.
    #[inline]
    pub(crate) fn rules(&self) -> Rules {
        #[cfg(any(test, feature = "sim"))]
        {
            self.rules
        }
        #[cfg(not(any(test, feature = "sim")))]
        {
            Rules::ALL
        }
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    pub fn priority_of(&self, id: NodeId) -> Option<Priority> {
        self.members.iter().find(|m| m.id == id).map(|m| m.priority)
    }

    pub fn my_priority(&self) -> Priority {
        self.priority_of(self.id).unwrap_or(0)
    }

    /// Acknowledgements (the leader's own included) a lease needs; votes a win needs.
    pub fn quorum_size(&self) -> usize {
        match self.quorum {
            Quorum::Majority => self.members.len() / 2 + 1,
            Quorum::TwoNode => 1,
        }
    }

    /// This node's place among the members that may lead, best first: it picks the slot of
    /// the election timeout range, so the best live node campaigns first and candidates
    /// rarely collide.
    pub fn rank(&self) -> usize {
        let me = (self.my_priority(), self.id);
        self.members
            .iter()
            .filter(|m| m.priority > 0)
            .filter(|m| (m.priority, std::cmp::Reverse(m.id)) > (me.0, std::cmp::Reverse(me.1)))
            .count()
    }

    pub fn leaders_possible(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.priority > 0)
            .count()
            .max(1)
    }

    /// FNV-1a over the sorted ids: shown in `status` so operators see nodes whose member
    /// lists differ (acks must not depend on it, or every reload would drop the lease).
    pub fn members_hash(&self) -> u32 {
        let mut ids: Vec<NodeId> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        let mut h: u32 = 0x811C_9DC5;
        for id in ids {
            for b in id.to_be_bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        }
        h
    }
}
