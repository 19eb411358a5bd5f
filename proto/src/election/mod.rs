//! The election: a quorum leader lease that decides which node may hold the VIP.
//!
//! A [`Node`] is driven by `(now, event)` and answers with [`Action`]s; it never reads a
//! clock, opens a socket or touches the kernel. The caller must carry out actions in the
//! order given: a [`Action::Persist`] before any later [`Action::Send`], and the VIP
//! operations one after another, each answered by [`Event::VipApplied`] or
//! [`Event::VipReleased`]. docs/design.md explains the rules and why each is needed.

mod campaign;
mod config;
mod leader;
mod vipfail;
mod voter;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[cfg(any(test, feature = "sim"))]
pub use config::Rules;
pub use config::{Member, NodeConfig, NodeConfigError, Quorum};

use crate::Instant;
use crate::message::{
    Body, Flags, MAX_TERM, MAX_TERM_LEAP, Message, NodeId, Priority, Resign, Term, TimeoutNow,
};
use crate::rng::Rng;
use leader::LeaderState;
pub use vipfail::FAILURES_BEFORE_HANDOVER;
use vipfail::VipFailures;

/// What must survive a restart, written (and fsync'd) before anything that depends on it
/// is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An authenticated message from a peer.
    Message {
        from: NodeId,
        msg: Message,
    },
    /// The deadline of the last [`Action::SetTimer`] passed (early or extra calls are fine).
    Timer,
    /// The local apiserver's health changed.
    Health(bool),
    /// The VIP's interface went down or up.
    Link(bool),
    /// A [`Action::ClaimVip`] or [`Action::RefreshVip`] finished.
    VipApplied {
        ok: bool,
    },
    /// A [`Action::ReleaseVip`] finished: the kernel no longer has the VIP.
    VipReleased,
    /// The VIP vanished from the kernel without us releasing it (deleted by someone else,
    /// or its lifetime ran out).
    VipLost,
    Admin(Admin),
    /// A new member list, timings or policy (config reload).
    Reconfigure(NodeConfig),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// Hand the VIP to `to`, or to the best eligible follower (a drill).
    Transfer { to: Option<NodeId> },
    /// Hand over if leading, then report [`Notice::ShutdownReady`].
    Shutdown,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Send {
        to: NodeId,
        msg: Message,
    },
    Persist(Persisted),
    /// Add the VIP with this kernel lifetime.
    ClaimVip {
        lifetime: Duration,
    },
    /// Renew the VIP's kernel lifetime.
    RefreshVip {
        lifetime: Duration,
    },
    /// Remove the VIP; answer with [`Event::VipReleased`] once the kernel confirmed.
    ReleaseVip,
    /// Deliver [`Event::Timer`] at this instant (replaces any earlier timer).
    SetTimer(Instant),
    Notice(Notice),
}

/// Things worth a log line, a metric or a `status` field; they change nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Role {
        role: RoleName,
        term: Term,
        leader: Option<NodeId>,
    },
    /// A leader announced that it now holds the VIP.
    Holder {
        id: NodeId,
        term: Term,
    },
    TransferStarted {
        to: Option<NodeId>,
        reason: TransferReason,
    },
    TransferRefused {
        reason: String,
    },
    ShutdownReady,
    /// A node outside the member list is sending to us (e.g. a removed node still runs).
    NonMember {
        id: NodeId,
    },
    /// The kernel refused the VIP this many times in a row: the leader hands over and
    /// stays out of elections for `bench`.
    VipFailing {
        failures: u32,
        bench: Duration,
    },
    /// A member sent a term beyond what this node follows ([`MAX_TERM_LEAP`] ahead of
    /// ours, or past [`MAX_TERM`]): ignored, so no corrupted state can drag the cluster's
    /// term to where it wraps or where nobody can campaign.
    TermRefused {
        from: NodeId,
        term: Term,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferReason {
    Admin,
    Shutdown,
    Unhealthy,
    Preempt,
    LinkDown,
    /// No majority acknowledged this leader for a whole election timeout.
    NoQuorum,
    /// The kernel kept refusing the VIP.
    VipFailure,
}

impl TransferReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferReason::Admin => "drill",
            TransferReason::Shutdown => "shutdown",
            TransferReason::Unhealthy => "local apiserver unhealthy",
            TransferReason::Preempt => "preemption by a higher-priority node",
            TransferReason::LinkDown => "interface down",
            TransferReason::NoQuorum => "no majority heard",
            TransferReason::VipFailure => "the kernel keeps refusing the VIP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl RoleName {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Follower => "follower",
            RoleName::PreCandidate => "pre-candidate",
            RoleName::Candidate => "candidate",
            RoleName::Leader => "leader",
        }
    }
}

/// The process's view of the VIP in its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipState {
    Released,
    Claiming,
    Held,
    Releasing,
}

impl VipState {
    pub fn as_str(self) -> &'static str {
        match self {
            VipState::Released => "released",
            VipState::Claiming => "claiming",
            VipState::Held => "held",
            VipState::Releasing => "releasing",
        }
    }
}

/// An ack is a promise: until `until` (local clock) this node votes for nobody but
/// `leader`'s successor by transfer.
#[derive(Clone, Copy, Debug)]
struct Promise {
    leader: NodeId,
    term: Term,
    until: Instant,
}

/// A pre-vote or vote round.
#[derive(Clone, Debug)]
struct Campaign {
    /// The proposed term (pre-vote) or the new term (vote).
    term: Term,
    grants: BTreeSet<NodeId>,
    denials: BTreeSet<NodeId>,
    resend_at: Instant,
    deadline: Instant,
    transfer: Option<crate::message::Transfer>,
}

#[derive(Clone, Debug)]
enum Role {
    Follower,
    PreCandidate(Campaign),
    Candidate(Campaign),
    Leader(Box<LeaderState>),
}

/// What the leader does once the kernel confirms the VIP is gone (Rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterRelease {
    Nothing,
    TimeoutNow { to: NodeId, last_seq: u64 },
    Resign { last_seq: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shutdown {
    Running,
    /// Waiting for the release, the handover message and its one retransmission.
    Pending,
    Done,
}

/// What we last heard from a peer, for handover choices and `status`.
#[derive(Clone, Copy, Debug, Default)]
struct Peer {
    last_heard: Option<Instant>,
    term: Term,
    priority: Option<Priority>,
    flags: Flags,
    members_hash: Option<u32>,
}

pub struct Node {
    cfg: NodeConfig,
    rng: Rng,
    term: Term,
    voted_for: Option<NodeId>,
    role: Role,
    /// The leader recognised in `term`.
    leader: Option<NodeId>,
    promise: Option<Promise>,
    election_deadline: Instant,
    silent_until: Instant,
    /// The term this process started in: bounds what a forgotten promise could be.
    start_term: Term,
    healthy: bool,
    link_up: bool,
    vip: VipState,
    after_release: AfterRelease,
    /// Rule 4: the term in which this node handed over; it never leads in it again.
    transferred_in: Option<Term>,
    /// One retransmission of a TimeoutNow or Resign.
    retry: Option<(Instant, Vec<(NodeId, Message)>)>,
    /// Only with Rule 4 off: when a leader whose handover failed takes the role back.
    #[cfg(any(test, feature = "sim"))]
    resume_at: Option<Instant>,
    shutdown: Shutdown,
    holder: Option<(NodeId, Term)>,
    peers: BTreeMap<NodeId, Peer>,
    non_members: BTreeSet<NodeId>,
    vip_failures: VipFailures,
    timer: Option<Instant>,
    last_role: (RoleName, Term, Option<NodeId>),
    out: Vec<Action>,
}

impl Node {
    /// A node that has just (re)started. `persisted` is what it last wrote; `healthy` the
    /// first health verdict; `seed` feeds the election jitter. Call [`Node::start`] next.
    pub fn new(
        cfg: NodeConfig,
        persisted: Persisted,
        healthy: bool,
        seed: u64,
        now: Instant,
    ) -> Node {
        let silence = if cfg.rules().acker_promises {
            cfg.timing.election_max.max(cfg.silence_floor)
        } else {
            cfg.timing.election_max
        };
        let silent_until = now + silence;
        let mut node = Node {
            rng: Rng::new(seed ^ u64::from(cfg.id).rotate_left(32)),
            term: persisted.term,
            voted_for: persisted.voted_for,
            role: Role::Follower,
            leader: None,
            promise: None,
            election_deadline: silent_until,
            silent_until,
            start_term: persisted.term,
            healthy,
            link_up: true,
            // Unknown until the start-up release confirms (Rule 8).
            vip: VipState::Releasing,
            after_release: AfterRelease::Nothing,
            transferred_in: None,
            retry: None,
            #[cfg(any(test, feature = "sim"))]
            resume_at: None,
            shutdown: Shutdown::Running,
            holder: None,
            peers: BTreeMap::new(),
            non_members: BTreeSet::new(),
            vip_failures: VipFailures::default(),
            timer: None,
            last_role: (RoleName::Follower, persisted.term, None),
            out: Vec::new(),
            cfg,
        };
        // After the silence, stand in rank order like any election: at a cold start of
        // the whole cluster the best node goes first instead of everyone at once.
        let offset = node.slot_offset();
        node.election_deadline = silent_until + offset;
        node
    }

    /// First actions after a start: remove any VIP a previous run left behind (Rule 8),
    /// and arm the timer.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.out.push(Action::ReleaseVip);
        self.emit_role();
        self.finish(now)
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        // Deadlines first: a message that arrives after the lease ran out but before the
        // timer fired must meet the node as it is after the deadline.
        self.poll(now);
        match event {
            Event::Message { from, msg } => self.on_message(now, from, msg),
            Event::Timer => {
                // The armed timer is used up, even when it woke a hair early (clock
                // conversions round) and nothing was due yet: always arm the next one.
                self.timer = None;
            }
            Event::Health(h) => self.healthy = h,
            Event::Link(up) => self.on_link(now, up),
            Event::VipApplied { ok: true } => self.on_vip_applied(now),
            Event::VipApplied { ok: false } => self.on_vip_failed(now),
            Event::VipReleased => self.on_vip_released(now),
            Event::VipLost => {
                if matches!(self.vip, VipState::Held | VipState::Claiming) {
                    self.vip = VipState::Released;
                }
            }
            Event::Admin(a) => self.on_admin(now, a),
            Event::Reconfigure(cfg) => self.on_reconfigure(now, cfg),
        }
        self.poll(now);
        self.finish(now)
    }

    // ===== accessors =====

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> RoleName {
        match self.role {
            Role::Follower => RoleName::Follower,
            Role::PreCandidate(_) => RoleName::PreCandidate,
            Role::Candidate(_) => RoleName::Candidate,
            Role::Leader(_) => RoleName::Leader,
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn vip(&self) -> VipState {
        self.vip
    }

    pub fn persisted(&self) -> Persisted {
        Persisted {
            term: self.term,
            voted_for: self.voted_for,
        }
    }

    /// The next instant the node wants [`Event::Timer`]; `None` when it wants none (a
    /// caller that keeps an earlier [`Action::SetTimer`] armed past this would wake for
    /// nothing, in a loop once that instant has passed).
    pub fn next_timer(&self) -> Option<Instant> {
        self.timer
    }

    /// Until when this process may let the kernel hold the VIP and announce it: the
    /// lease less the margin, while leading with a claim made or in flight. `None` means
    /// not at all. A process resumed after a freeze must not re-add or announce a VIP
    /// whose lease ran out while it was stopped, so the VIP worker checks this before
    /// every claim, refresh and announcement, before the election has even run.
    pub fn vip_hold_until(&self) -> Option<Instant> {
        let Role::Leader(l) = &self.role else {
            return None;
        };
        if !matches!(self.vip, VipState::Claiming | VipState::Held) || self.transferring() {
            return None;
        }
        if !self.cfg.rules().lease_check {
            return Some(Instant::MAX);
        }
        l.lease_until
            .map(|u| u.saturating_sub(self.cfg.timing.margin))
    }

    // ===== shared helpers =====

    fn is_member(&self, id: NodeId) -> bool {
        !self.cfg.rules().members_only || self.cfg.is_member(id)
    }

    fn silent(&self, now: Instant) -> bool {
        self.cfg.rules().restart_silence && now < self.silent_until
    }

    fn promise_active(&self, now: Instant) -> bool {
        self.promise.is_some_and(|p| now < p.until)
    }

    /// Healthy, allowed to lead, past the silence: what the CAN_LEAD flag reports.
    fn can_lead(&self, now: Instant) -> bool {
        self.healthy
            && self.link_up
            && !self.vip_failures.benched(now)
            && self.cfg.my_priority() > 0
            && !self.silent(now)
            && self.cfg.is_member(self.cfg.id)
            && self.shutdown == Shutdown::Running
    }

    fn my_flags(&self, now: Instant) -> Flags {
        Flags::default()
            .with(Flags::HEALTHY, self.healthy)
            .with(Flags::CAN_LEAD, self.can_lead(now))
            .with(
                Flags::HOLDS_VIP,
                // Not from a leader whose lease ran out while it was stopped: its first
                // heartbeat after resuming goes out before the release.
                self.vip == VipState::Held && self.vip_hold_until().is_some_and(|u| now < u),
            )
    }

    fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    fn send(&mut self, to: NodeId, body: Body) {
        let msg = Message {
            term: self.term,
            body,
        };
        self.out.push(Action::Send { to, msg });
    }

    fn broadcast(&mut self, body: Body) {
        let ids: Vec<NodeId> = self
            .cfg
            .members
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != self.cfg.id)
            .collect();
        for id in ids {
            self.send(id, body.clone());
        }
    }

    fn persist(&mut self) {
        if self.cfg.rules().persist {
            self.out.push(Action::Persist(self.persisted()));
        }
    }

    /// Moves to a newer term as a follower with no vote and no leader yet. Leaders must
    /// have released (or be releasing) the VIP; update_vip takes care of that. Terms never
    /// go down, whatever a caller passes.
    fn adopt_term(&mut self, term: Term) {
        if term <= self.term {
            return;
        }
        self.term = term;
        self.voted_for = None;
        self.leader = None;
        self.role = Role::Follower;
        self.after_release = AfterRelease::Nothing;
        self.forget_resume();
        self.persist();
    }

    /// A random election timeout in this node's slot of [E_min, E_max]: the best-ranked
    /// node fires first, so candidates rarely duel.
    fn election_timeout(&mut self) -> Duration {
        let t = &self.cfg.timing;
        t.election_min + self.slot_offset()
    }

    /// Where in the election timeout range this node's slot starts, plus jitter that
    /// stays clear of the next slot by twice the drift two clocks can accumulate over
    /// E_max: adjacent ranks then never fire together, which would split the vote.
    fn slot_offset(&mut self) -> Duration {
        let t = &self.cfg.timing;
        let span = t.election_max.saturating_sub(t.election_min);
        let n = self.cfg.leaders_possible() as u32;
        let slot = span / n;
        let rank = (self.cfg.rank() as u32).min(n.saturating_sub(1));
        let guard = t.election_max.mul_f64(2.0 * f64::from(t.drift_ppm) / 1e6);
        let room = slot.saturating_sub(guard).max(slot / 4);
        let jitter = self
            .rng
            .below(u64::try_from(room.as_nanos()).unwrap_or(0).max(1));
        slot * rank + Duration::from_nanos(jitter)
    }

    fn note_peer(&mut self, now: Instant, from: NodeId, term: Term) {
        if !self.cfg.is_member(from) && self.non_members.insert(from) {
            self.out
                .push(Action::Notice(Notice::NonMember { id: from }));
        }
        let p = self.peers.entry(from).or_default();
        p.last_heard = Some(now);
        p.term = p.term.max(term);
    }

    fn note_holder(&mut self, id: NodeId, term: Term) {
        if self.holder != Some((id, term)) {
            self.holder = Some((id, term));
            self.out.push(Action::Notice(Notice::Holder { id, term }));
        }
    }

    fn emit_role(&mut self) {
        let now = (self.role(), self.term, self.leader);
        if now != self.last_role {
            self.last_role = now;
            self.out.push(Action::Notice(Notice::Role {
                role: now.0,
                term: now.1,
                leader: now.2,
            }));
        }
    }

    // ===== events =====

    fn on_message(&mut self, now: Instant, from: NodeId, msg: Message) {
        if from == self.cfg.id {
            return;
        }
        if msg.term > MAX_TERM || msg.term > self.term.saturating_add(MAX_TERM_LEAP) {
            self.out.push(Action::Notice(Notice::TermRefused {
                from,
                term: msg.term,
            }));
            return;
        }
        self.note_peer(now, from, msg.term);
        let term = msg.term;
        match msg.body {
            Body::Heartbeat(hb) => self.on_heartbeat(now, from, term, hb),
            Body::Ack(a) => self.on_ack(now, from, term, a),
            Body::PreVoteRequest(c) => self.on_prevote_request(now, from, term, c),
            Body::PreVote(b) => self.on_prevote(now, from, term, b),
            Body::VoteRequest(v) => self.on_vote_request(now, from, term, v),
            Body::Vote(b) => self.on_vote(now, from, term, b),
            Body::TimeoutNow(t) => self.on_timeout_now(now, from, term, t),
            Body::Resign(r) => self.on_resign(now, from, term, r),
        }
    }

    fn on_vip_applied(&mut self, now: Instant) {
        if matches!(self.vip, VipState::Claiming | VipState::Held) {
            self.vip_failures.succeeded();
        }
        if self.vip == VipState::Claiming {
            self.vip = VipState::Held;
            if self.is_leader() {
                // Tell everyone at once (drills time the move by this), not a
                // heartbeat interval later.
                self.send_heartbeat(now);
                self.note_holder(self.cfg.id, self.term);
            }
        }
    }

    fn on_vip_released(&mut self, now: Instant) {
        if self.vip != VipState::Releasing {
            return;
        }
        self.vip = VipState::Released;
        match std::mem::replace(&mut self.after_release, AfterRelease::Nothing) {
            AfterRelease::Nothing => {}
            AfterRelease::TimeoutNow { to, last_seq } => {
                let body = Body::TimeoutNow(TimeoutNow { last_seq });
                self.send(to, body.clone());
                self.finish_handover(
                    now,
                    vec![(
                        to,
                        Message {
                            term: self.term,
                            body,
                        },
                    )],
                );
            }
            AfterRelease::Resign { last_seq } => {
                let body = Body::Resign(Resign { last_seq });
                self.broadcast(body.clone());
                let msgs = self
                    .cfg
                    .members
                    .iter()
                    .filter(|m| m.id != self.cfg.id)
                    .map(|m| {
                        (
                            m.id,
                            Message {
                                term: self.term,
                                body: body.clone(),
                            },
                        )
                    })
                    .collect();
                self.finish_handover(now, msgs);
            }
        }
    }

    /// The old leader after its handover message left: a follower that never leads in
    /// this term again (Rule 4).
    fn finish_handover(&mut self, now: Instant, msgs: Vec<(NodeId, Message)>) {
        self.transferred_in = Some(self.term);
        self.role = Role::Follower;
        self.leader = None;
        self.promise = None;
        self.retry = Some((now + self.cfg.timing.transfer_retry, msgs));
        self.election_deadline = now + self.election_timeout();
        #[cfg(any(test, feature = "sim"))]
        if !self.cfg.rules().no_resume_after_transfer {
            // What a naive implementation does: take the role back in the same term when
            // no successor showed up soon.
            self.resume_at = Some(now + self.cfg.timing.election_min / 2);
        }
    }

    fn on_link(&mut self, now: Instant, up: bool) {
        self.link_up = up;
        if !up && self.is_leader() && !self.transferring() {
            self.start_transfer(now, None, TransferReason::LinkDown);
        }
    }

    fn on_admin(&mut self, now: Instant, admin: Admin) {
        match admin {
            Admin::Transfer { to } => {
                if !self.is_leader() {
                    let reason = match self.leader {
                        Some(l) => format!("this node is not the leader; node {l} is"),
                        None => "this node is not the leader, and no leader is known".into(),
                    };
                    self.out
                        .push(Action::Notice(Notice::TransferRefused { reason }));
                    return;
                }
                if self.transferring() {
                    self.out.push(Action::Notice(Notice::TransferRefused {
                        reason: "a handover is already in progress".into(),
                    }));
                    return;
                }
                let target = match to {
                    Some(t) if !self.eligible_follower(now, t) => {
                        let reason = format!(
                            "node {t} cannot take over now (not a member, not heard recently, unhealthy, priority 0 or restarting)"
                        );
                        self.out
                            .push(Action::Notice(Notice::TransferRefused { reason }));
                        return;
                    }
                    Some(t) => Some(t),
                    None => self.best_follower(now, |_| true),
                };
                match target {
                    Some(t) => self.start_transfer(now, Some(t), TransferReason::Admin),
                    None => self.out.push(Action::Notice(Notice::TransferRefused {
                        reason: "no follower can take over now (none healthy and heard recently)"
                            .into(),
                    })),
                }
            }
            Admin::Shutdown => {
                if self.shutdown != Shutdown::Running {
                    return;
                }
                self.shutdown = Shutdown::Pending;
                match self.role {
                    // A handover already under way is left to finish (`start_transfer`
                    // returns at once): it ends in the same place.
                    Role::Leader(_) => {
                        let target = self.best_follower(now, |_| true);
                        self.start_transfer(now, target, TransferReason::Shutdown);
                    }
                    Role::PreCandidate(_) | Role::Candidate(_) => {
                        // Not leading, so ready at once; a campaign left running could
                        // still win and lead after the daemon was told it may exit: it
                        // would leave with the lead and no Resign, and the cluster would
                        // wait out a lease and an election timeout instead of one timeout.
                        // The election deadline, past or not, finds a node that may not
                        // campaign and looks again later.
                        self.role = Role::Follower;
                    }
                    Role::Follower => {}
                }
            }
        }
    }

    fn on_reconfigure(&mut self, now: Instant, cfg: NodeConfig) {
        let timing_changed = cfg.timing != self.cfg.timing;
        self.cfg = cfg;
        if let Role::Leader(l) = &mut self.role {
            let members: BTreeSet<NodeId> = self.cfg.members.iter().map(|m| m.id).collect();
            l.acked.retain(|id, _| members.contains(id));
        }
        if timing_changed && !self.is_leader() {
            self.election_deadline = self.election_deadline.max(now + self.election_timeout());
        }
    }

    // ===== time =====

    fn poll(&mut self, now: Instant) {
        if let Some((at, _)) = &self.retry
            && now >= *at
            && let Some((_, msgs)) = self.retry.take()
        {
            for (to, msg) in msgs {
                self.out.push(Action::Send { to, msg });
            }
        }
        if self.shutdown == Shutdown::Pending
            && !self.is_leader()
            && self.vip == VipState::Released
            && self.retry.is_none()
        {
            self.shutdown = Shutdown::Done;
            self.out.push(Action::Notice(Notice::ShutdownReady));
        }
        #[cfg(any(test, feature = "sim"))]
        if let Some(at) = self.resume_at
            && now >= at
        {
            self.resume_at = None;
            if matches!(self.role, Role::Follower)
                && self.leader.is_none()
                && self.shutdown == Shutdown::Running
            {
                self.become_leader(now);
            }
        }
        match &self.role {
            Role::Leader(_) => self.poll_leader(now),
            Role::PreCandidate(_) | Role::Candidate(_) => self.poll_campaign(now),
            Role::Follower => {
                if now >= self.election_deadline {
                    self.on_election_timeout(now);
                }
            }
        }
        self.update_vip(now);
    }

    /// Drops a pending take-back (which only the simulator's rule experiments arm).
    fn forget_resume(&mut self) {
        #[cfg(any(test, feature = "sim"))]
        {
            self.resume_at = None;
        }
    }

    fn finish(&mut self, now: Instant) -> Vec<Action> {
        self.emit_role();
        let next = self.next_deadline(now);
        if next != self.timer {
            self.timer = next;
            if let Some(t) = next {
                self.out.push(Action::SetTimer(t));
            }
        }
        std::mem::take(&mut self.out)
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some((t, _)) = &self.retry {
            at(*t);
        }
        #[cfg(any(test, feature = "sim"))]
        if let Some(t) = self.resume_at {
            at(t);
        }
        match &self.role {
            Role::Follower => at(self.election_deadline),
            Role::PreCandidate(c) | Role::Candidate(c) => {
                at(c.resend_at);
                at(c.deadline);
            }
            Role::Leader(l) => {
                for t in l.deadlines(&self.cfg, self.vip) {
                    at(t);
                }
                // A claim held back by the failure pause: only while still ahead, since
                // update_vip may have reasons of its own not to claim once it passed.
                if let Some(t) = self.vip_failures.deadline(now) {
                    at(t);
                }
            }
        }
        next
    }

    // ===== status =====

    pub fn status(&self, now: Instant) -> Status {
        let lease = match &self.role {
            Role::Leader(l) => l.lease_until.map(|u| u.saturating_since(now)),
            _ => None,
        };
        let members = self
            .cfg
            .members
            .iter()
            .map(|m| {
                let p = self.peers.get(&m.id).copied().unwrap_or_default();
                let me = m.id == self.cfg.id;
                MemberStatus {
                    id: m.id,
                    priority: m.priority,
                    is_self: me,
                    last_heard: if me {
                        Some(Duration::ZERO)
                    } else {
                        p.last_heard.map(|t| now.saturating_since(t))
                    },
                    healthy: if me {
                        Some(self.healthy)
                    } else {
                        p.last_heard.map(|_| p.flags.has(Flags::HEALTHY))
                    },
                    can_lead: if me {
                        Some(self.can_lead(now))
                    } else {
                        p.last_heard.map(|_| p.flags.has(Flags::CAN_LEAD))
                    },
                    same_members: if me {
                        Some(true)
                    } else {
                        p.members_hash.map(|h| h == self.cfg.members_hash())
                    },
                    term: if me { self.term } else { p.term },
                }
            })
            .collect();
        Status {
            id: self.cfg.id,
            term: self.term,
            role: self.role(),
            leader: self.leader.or(if self.is_leader() {
                Some(self.cfg.id)
            } else {
                None
            }),
            holder: self.holder.map(|(id, _)| id),
            vip: self.vip,
            lease_remaining: lease,
            promise_remaining: self
                .promise
                .filter(|p| now < p.until)
                .map(|p| p.until.saturating_since(now)),
            silent_remaining: if self.silent(now) {
                Some(self.silent_until.saturating_since(now))
            } else {
                None
            },
            healthy: self.healthy,
            link_up: self.link_up,
            can_lead: self.can_lead(now),
            transferring: self.transferring(),
            vip_failures: self.vip_failures.count(),
            benched_remaining: self.vip_failures.bench_remaining(now),
            members,
            non_members_heard: self.non_members.iter().copied().collect(),
        }
    }
}

/// A snapshot for `apivip status`.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub id: NodeId,
    pub term: Term,
    pub role: RoleName,
    pub leader: Option<NodeId>,
    /// The last node that announced holding the VIP.
    pub holder: Option<NodeId>,
    pub vip: VipState,
    pub lease_remaining: Option<Duration>,
    pub promise_remaining: Option<Duration>,
    pub silent_remaining: Option<Duration>,
    pub healthy: bool,
    pub link_up: bool,
    pub can_lead: bool,
    pub transferring: bool,
    /// Claims or refreshes the kernel refused in a row.
    pub vip_failures: u32,
    /// How long this node still stays out of elections after handing over for failures.
    pub benched_remaining: Option<Duration>,
    pub members: Vec<MemberStatus>,
    pub non_members_heard: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub priority: Priority,
    pub is_self: bool,
    pub last_heard: Option<Duration>,
    pub healthy: Option<bool>,
    pub can_lead: Option<bool>,
    /// Whether the peer's member list hashes like ours.
    pub same_members: Option<bool>,
    pub term: Term,
}
