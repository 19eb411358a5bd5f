//! The daemon's loop body, without the loop: feeds the election state machine with
//! heartbeats, timers, VIP outcomes, health, control requests and signals, and carries
//! out what it answers. Every decision is the state machine's; this only does I/O, and
//! only through seams ([`Clock`], [`Outbox`], [`Persist`], the VIP worker's queue) that a
//! test replaces to inject a frozen clock, a full disk or a kernel that refuses the VIP.
//!
//! What it adds around the election is the way out of each local fault:
//! - a failed write of term and vote holds back every message that depends on it, lets
//!   pre-vote traffic (which promises nothing) through, and is retried with back-off;
//!   `/readyz`, `status` and a metric show it. (It used to mute the node for good.)
//! - the timer is the node's own `next_timer()` after every batch, so a timer the node
//!   no longer wants is never left armed in the past (a 1 kHz wake-up loop before);
//! - the hold gate is set from the lease before any VIP operation leaves, so the VIP
//!   worker can refuse a claim or an announcement the lease no longer covers;
//! - the interface's state at start reaches the node before its first election;
//! - every failure that repeats logs at most once per few seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use apivip_proto::election::{
    Action, Admin, Event, Member, Node, NodeConfig, Notice, Persisted, Quorum as ElQuorum,
    RoleName, TransferReason, VipState,
};
use apivip_proto::message::{Body, Message, NodeId};
use apivip_proto::{Instant, Keyring};
use tokio::sync::{mpsc, oneshot};

use super::apiserver::LocalHealth;
use super::clock::Clock;
use super::vipctl::{HoldGate, VipDone, VipEvent, VipOp};
use crate::backoff::{Backoff, LogThrottle};
use crate::config::{Config, Quorum, Sources};
use crate::control::{
    DrillReport, FaultReport, PeerReport, Request, Response, StatusReport, VipReport,
};
use crate::forward::ForwarderHandle;
use crate::heartbeat::{self, Stats, Transport};
use crate::metrics::{Metrics, Readiness};
use crate::state::Persist;

/// How long a drill may take before it is reported as failed.
pub const DRILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the handover before releasing anyway.
pub const SHUTDOWN_HANDOVER: Duration = Duration::from_secs(3);

/// Where election messages go. The daemon's is the UDP [`Transport`].
pub trait Outbox {
    fn send(&mut self, to: NodeId, msg: &Message);
    fn stats(&self) -> Stats;
    fn epoch(&self) -> u64;
    /// The newest wire version each peer heard from speaks.
    fn peer_versions(&self) -> BTreeMap<NodeId, u8>;
    /// Whether `id`'s latest heartbeat said every member of its list speaks 2.
    fn says_all_speak_2(&self, id: NodeId) -> bool;
    fn reconfigure(&mut self, peers: BTreeMap<NodeId, SocketAddr>, keys: Keyring);
}

impl Outbox for Transport {
    fn send(&mut self, to: NodeId, msg: &Message) {
        Transport::send(self, to, msg);
    }
    fn stats(&self) -> Stats {
        Transport::stats(self).clone()
    }
    fn epoch(&self) -> u64 {
        Transport::epoch(self)
    }
    fn peer_versions(&self) -> BTreeMap<NodeId, u8> {
        Transport::peer_versions(self).clone()
    }
    fn says_all_speak_2(&self, id: NodeId) -> bool {
        Transport::says_all_speak_2(self, id)
    }
    fn reconfigure(&mut self, peers: BTreeMap<NodeId, SocketAddr>, keys: Keyring) {
        Transport::reconfigure(self, peers, keys);
    }
}

/// The election's view of the config.
pub fn node_config(cfg: &Config) -> Result<NodeConfig> {
    let members = cfg
        .peers
        .iter()
        .map(|p| Member {
            id: p.id,
            priority: p.priority,
        })
        .collect();
    let mut n = NodeConfig::new(cfg.node_id, members, cfg.election.timing());
    n.quorum = match cfg.election.quorum {
        Quorum::Majority => ElQuorum::Majority,
        Quorum::TwoNode => ElQuorum::TwoNode,
    };
    n.preempt = cfg.election.preempt;
    n.preempt_delay = cfg.election.preempt_delay;
    n.protocol = cfg.election.protocol;
    n.validate().map_err(|e| anyhow!("election config: {e}"))?;
    Ok(n)
}

pub fn peer_addrs(cfg: &Config) -> BTreeMap<u32, SocketAddr> {
    heartbeat::peer_addrs(
        cfg.peers.iter().map(|p| (p.id, p.address)),
        cfg.node_id,
        cfg.port,
    )
}

/// Reads the config's key file after checking who may read it and its directory
/// ([`crate::perms`]), naming the file in every error.
pub fn load_keys_checked(cfg: &Config) -> Result<Keyring> {
    crate::perms::enforce(
        crate::perms::key_problems(&cfg.key_file, crate::perms::euid()),
        cfg.allow_insecure_permissions,
    )?;
    load_keys(&cfg.key_file)
}

/// Reads the key file, naming it in every error.
pub fn load_keys(path: &std::path::Path) -> Result<Keyring> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("key_file {}: cannot read it: {e}", path.display()))?;
    Keyring::parse(&text).map_err(|e| anyhow!("key_file {}: {e}", path.display()))
}

/// Messages that depend on no persisted state and promise nothing: they may go out
/// while the state file cannot be written, so a node with a full or failing disk still
/// lets the others find a majority for their pre-vote.
fn stateless(msg: &Message) -> bool {
    matches!(msg.body, Body::PreVoteRequest(_) | Body::PreVote(_))
}

struct Drill {
    started: Instant,
    reply: Option<oneshot::Sender<Response>>,
}

/// A write of the state file that failed, and its retry.
#[derive(Default)]
struct StateFault {
    error: Option<String>,
    retry_at: Option<Instant>,
    backoff: Option<Backoff>,
}

/// Everything the driver is built from.
pub struct Parts<O, S> {
    pub cfg: Config,
    pub sources: Sources,
    pub clock: Arc<dyn Clock>,
    pub out: O,
    pub store: S,
    /// What the store held at start.
    pub persisted: Persisted,
    /// The longest promise the previous run may have given (the state file's): the
    /// start-up silence lasts at least this long.
    pub silence_floor: Duration,
    pub seed: u64,
    /// The local checks at start (the apiserver, and in BGP mode the speaker).
    pub health: LocalHealth,
    /// The interface's state as the VIP worker found it at start.
    pub link_up: bool,
    pub vip_ops: mpsc::UnboundedSender<VipOp>,
    pub gate: Arc<HoldGate>,
    pub vip_report: VipReport,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub forwarder: Option<Arc<ForwarderHandle>>,
    /// The runtime the forwarder (and its health probers) run on.
    pub forwarder_rt: Option<tokio::runtime::Handle>,
}

pub struct Driver<O, S> {
    cfg: Config,
    sources: Sources,
    clock: Arc<dyn Clock>,
    node: Node,
    pub out: O,
    store: S,
    vip_ops: mpsc::UnboundedSender<VipOp>,
    gate: Arc<HoldGate>,
    vip_report: VipReport,
    drill: Option<Drill>,
    holder: Option<u32>,
    last_failover_ms: Option<f64>,
    warned_non_members: BTreeSet<u32>,
    stopping: Option<Instant>,
    shutdown_ready: bool,
    state_fault: StateFault,
    state_log: LogThrottle,
    last_vip_error: Option<String>,
    vip_log: LogThrottle,
    terms_refused: u64,
    term_log: LogThrottle,
    /// Fields a reload could not apply; they take effect at the next restart.
    restart_needed: BTreeSet<String>,
    /// The state file's promise floor is above this run's E_min: lower it once the
    /// start-up silence (which covered the older, longer promises) is over.
    lower_floor_after_silence: bool,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    forwarder: Option<Arc<ForwarderHandle>>,
    forwarder_rt: Option<tokio::runtime::Handle>,
    /// The local checks as last heard, to name the failing one in the log and status.
    local_health: LocalHealth,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl<O: Outbox, S: Persist> Driver<O, S> {
    /// Builds the node and starts it: the start-up release (Rule 8), the first timer,
    /// and the interface's state if it is down.
    pub fn new(p: Parts<O, S>) -> Result<Driver<O, S>> {
        let mut node_cfg = node_config(&p.cfg)?;
        node_cfg.silence_floor = p.silence_floor;
        let promise = node_cfg.timing.election_min;
        let now = p.clock.now();
        let node = Node::new(node_cfg, p.persisted, p.health.ready(), p.seed, now);
        let mut d = Driver {
            cfg: p.cfg,
            sources: p.sources,
            clock: p.clock,
            node,
            out: p.out,
            store: p.store,
            vip_ops: p.vip_ops,
            gate: p.gate,
            vip_report: p.vip_report,
            drill: None,
            holder: None,
            last_failover_ms: None,
            warned_non_members: BTreeSet::new(),
            stopping: None,
            shutdown_ready: false,
            state_fault: StateFault::default(),
            state_log: LogThrottle::default(),
            last_vip_error: None,
            vip_log: LogThrottle::default(),
            terms_refused: 0,
            term_log: LogThrottle::default(),
            restart_needed: BTreeSet::new(),
            lower_floor_after_silence: p.silence_floor > promise,
            metrics: p.metrics,
            readiness: p.readiness,
            forwarder: p.forwarder,
            forwarder_rt: p.forwarder_rt,
            local_health: p.health,
        };
        // Before any ack of this run can promise: the floor covers the longer of the
        // previous run's promises and this run's.
        if let Err(e) = d.store.record_promise(promise.max(p.silence_floor)) {
            d.state_failed(e.to_string());
        }
        d.set_metric_peers();
        d.metrics.set_apiserver_healthy(d.local_health.apiserver);
        d.metrics.set_role(Some(RoleName::Follower));
        let first = d.node.start(now);
        d.gate.set(d.node.vip_hold_until());
        d.apply(first);
        if !p.link_up {
            tracing::warn!(interface = %d.vip_report.interface, "VIP interface is down at start: this node will not lead until it is up");
            d.handle(Event::Link(false));
        }
        Ok(d)
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn readiness(&self) -> &Arc<Readiness> {
        &self.readiness
    }

    pub fn forwarder(&self) -> Option<&Arc<ForwarderHandle>> {
        self.forwarder.as_ref()
    }

    pub fn forwarder_rt(&self) -> Option<&tokio::runtime::Handle> {
        self.forwarder_rt.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn set_metric_peers(&self) {
        self.metrics.set_peers(
            &self
                .cfg
                .peers
                .iter()
                .map(|p| p.id)
                .filter(|id| *id != self.cfg.node_id)
                .collect::<Vec<_>>(),
        );
    }

    // ===== inputs =====

    pub fn handle(&mut self, ev: Event) {
        let now = self.clock.now();
        let actions = self.node.handle(now, ev);
        // Before any VIP operation of this batch reaches the worker.
        self.gate.set(self.node.vip_hold_until());
        self.apply(actions);
    }

    /// An authenticated datagram from a peer.
    pub fn message(&mut self, from: NodeId, msg: Message) {
        if self.cfg.peers.iter().any(|p| p.id == from) {
            self.metrics.heartbeat_received(from);
        } else {
            // Authenticated but not a member (a removed node still running): the
            // election ignores it (Rule M1); count it as such.
            self.metrics.heartbeat_rejected_reason("unknown_peer");
        }
        self.handle(Event::Message { from, msg });
    }

    /// The next instant anything is due: the node's timer, a state-file retry, the
    /// drill's deadline, the shutdown's. None: nothing until an input arrives.
    pub fn next_wake(&self) -> Option<Instant> {
        [
            self.node.next_timer(),
            self.state_fault.retry_at,
            self.drill.as_ref().map(|d| d.started + DRILL_TIMEOUT),
            self.stopping.map(|s| s + SHUTDOWN_HANDOVER),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whatever is due now.
    pub fn wake(&mut self) {
        let now = self.clock.now();
        if self.lower_floor_after_silence && self.node.status(now).silent_remaining.is_none() {
            // Every promise of the previous run has run out: the floor may come down to
            // this run's own.
            self.lower_floor_after_silence = false;
            let promise = self.node.config().timing.election_min;
            if let Err(e) = self.store.record_promise(promise) {
                tracing::debug!(error = %e, "cannot lower the promise floor (harmless: a longer silence after the next start)");
            }
        }
        if self.state_fault.retry_at.is_some_and(|t| now >= t) {
            self.retry_state();
        }
        if self.node.next_timer().is_some_and(|t| now >= t) {
            self.handle(Event::Timer);
        }
        self.expire_drill(now);
    }

    pub fn vip_done(&mut self, done: VipDone) {
        match done {
            VipDone::Applied(Ok(())) => {
                self.metrics.set_vip_held(true);
                self.handle(Event::VipApplied { ok: true });
            }
            VipDone::Applied(Err(f)) => {
                self.metrics.vip_failed(f.reason);
                self.metrics.set_vip_held(false);
                self.last_vip_error = Some(f.message);
                self.handle(Event::VipApplied { ok: false });
            }
            VipDone::Expired => {
                self.metrics.set_vip_held(false);
                self.handle(Event::VipApplied { ok: false });
            }
            VipDone::Released => {
                self.metrics.set_vip_held(false);
                self.close_vip_sessions();
                self.handle(Event::VipReleased);
            }
        }
    }

    /// Connections the forwarder accepted on the VIP end with it: the address now leads
    /// to another node, where their packets would only meet a reset.
    fn close_vip_sessions(&self) {
        let ip = self
            .cfg
            .vip
            .as_ref()
            .and_then(|v| crate::config::parse_vip(&v.address).ok())
            .map(|(ip, _)| ip);
        if let (Some(f), Some(ip)) = (&self.forwarder, ip) {
            f.close_accepted_on(ip);
        }
    }

    pub fn vip_event(&mut self, ev: VipEvent) {
        match ev {
            VipEvent::Removed => {
                if matches!(self.node.vip(), VipState::Held | VipState::Claiming)
                    && let Some(held) = self.vip_log.allow()
                {
                    tracing::warn!(
                        held_back = held,
                        "the VIP was removed from the kernel by someone else (or its lifetime ran out, or its device vanished): putting it back while the lease holds"
                    );
                }
                self.metrics.set_vip_held(false);
                self.handle(Event::VipLost);
            }
            VipEvent::LinkDown => {
                tracing::warn!(interface = %self.vip_report.interface, "VIP interface went down");
                self.handle(Event::Link(false));
            }
            VipEvent::LinkUp => {
                tracing::info!(interface = %self.vip_report.interface, "VIP interface is up");
                self.handle(Event::Link(true));
            }
        }
    }

    /// A change in the local checks. The election hears only whether this node may lead;
    /// the log says which check flipped, so a hand-over for a dead BGP speaker does not
    /// read as an apiserver fault.
    pub fn health(&mut self, h: LocalHealth) {
        let prev = std::mem::replace(&mut self.local_health, h);
        let now = &self.local_health;
        self.metrics.set_apiserver_healthy(now.apiserver);
        if prev.apiserver != now.apiserver {
            tracing::info!(healthy = now.apiserver, "local apiserver health changed");
        }
        match (&prev.speaker_down, &now.speaker_down) {
            (None, Some(why)) => tracing::info!(
                reason = %why,
                "BGP speaker cannot announce the VIP: this node may not lead"
            ),
            (Some(_), None) => {
                tracing::info!("BGP speaker can announce the VIP: this node may lead")
            }
            _ => {}
        }
        let ready = now.ready();
        if prev.ready() != ready {
            self.handle(Event::Health(ready));
        }
    }

    // ===== outputs =====

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                // While a write is failing, the retry timer writes whatever the node
                // holds then: no attempt per action, so a failing disk is tried at the
                // back-off's pace and not once per message.
                Action::Persist(_) if self.state_fault.error.is_some() => {}
                Action::Persist(p) => self.persist(p),
                Action::Send { to, msg } => {
                    if self.state_fault.error.is_none() || stateless(&msg) {
                        self.out.send(to, &msg);
                        self.metrics.heartbeat_sent();
                    }
                }
                Action::ClaimVip { lifetime } => self.vip_op(VipOp::Claim(lifetime)),
                Action::RefreshVip { lifetime } => self.vip_op(VipOp::Refresh(lifetime)),
                Action::ReleaseVip => self.vip_op(VipOp::Release),
                // The node's own next_timer() is the one armed timer (see next_wake).
                Action::SetTimer(_) => {}
                Action::Notice(n) => self.notice(n),
            }
        }
    }

    fn vip_op(&mut self, op: VipOp) {
        if self.vip_ops.send(op).is_err()
            && let Some(held) = self.vip_log.allow()
        {
            tracing::error!(?op, held_back = held, "the VIP worker is gone");
        }
    }

    fn persist(&mut self, p: Persisted) {
        match self.store.persist(p) {
            Ok(()) => self.state_recovered(),
            Err(e) => self.state_failed(e.to_string()),
        }
    }

    fn state_failed(&mut self, error: String) {
        let now = self.clock.now();
        let f = &mut self.state_fault;
        let backoff = f.backoff.get_or_insert_with(|| {
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
        });
        let pause = backoff.next_delay();
        f.retry_at = Some(now + pause);
        if f.error.is_none() {
            self.readiness.set_state_writable(false);
        }
        f.error = Some(error.clone());
        self.metrics.set_state_failing(true);
        if let Some(held) = self.state_log.allow() {
            tracing::error!(error = %error, retry_in = ?pause, held_back = held, "cannot persist term and vote: holding back votes and acks (pre-votes still answered), retrying");
        }
    }

    fn state_recovered(&mut self) {
        if self.state_fault.error.take().is_some() {
            tracing::info!("state file writable again: answering votes and acks");
            self.readiness.set_state_writable(true);
            self.metrics.set_state_failing(false);
        }
        self.state_fault = StateFault::default();
    }

    /// Writes what the node holds now (later changes may have superseded the write
    /// that failed).
    fn retry_state(&mut self) {
        self.state_fault.retry_at = None;
        let p = self.node.persisted();
        self.persist(p);
    }

    fn notice(&mut self, n: Notice) {
        let now = self.clock.now();
        match n {
            Notice::Role { role, term, leader } => {
                tracing::info!(role = role.as_str(), term, leader = ?leader, "role changed");
                self.metrics.set_role(Some(role));
                self.metrics.set_term(term);
            }
            Notice::Holder { id, term } => {
                let prev = self.holder.replace(id);
                if prev != Some(id) {
                    tracing::info!(holder = id, term, previous = ?prev, "VIP holder changed");
                    self.metrics.leader_changed();
                }
                if id == self.cfg.node_id
                    && let Some(p) = prev.filter(|p| *p != id)
                    && let Some(heard) = self
                        .node
                        .status(now)
                        .members
                        .iter()
                        .find(|m| m.id == p)
                        .and_then(|m| m.last_heard)
                {
                    // Takeover time as this node saw it: last word from the old holder
                    // until our VIP is in place.
                    self.last_failover_ms = Some(heard.as_secs_f64() * 1e3);
                    self.metrics.failover_completed(heard);
                }
                if id != self.cfg.node_id
                    && let Some(dr) = self.drill.take()
                {
                    let millis = now.saturating_since(dr.started).as_secs_f64() * 1e3;
                    self.last_failover_ms = Some(millis);
                    self.metrics
                        .failover_completed(now.saturating_since(dr.started));
                    tracing::info!(from = self.cfg.node_id, to = id, millis, "drill: VIP moved");
                    if let Some(r) = dr.reply {
                        let _ = r.send(Response::Drilled(DrillReport {
                            from: self.cfg.node_id,
                            to: id,
                            millis,
                        }));
                    }
                }
            }
            Notice::TransferStarted { to, reason } => {
                // The election knows only "not ready"; the local checks know which one.
                let why = match reason {
                    TransferReason::Unhealthy => self.local_health.reason(),
                    _ => None,
                }
                .unwrap_or_else(|| reason.as_str().to_string());
                tracing::info!(to = ?to, reason = %why, "handing over the VIP");
            }
            Notice::TransferRefused { reason } => {
                tracing::warn!(%reason, "handover refused");
                if let Some(dr) = self.drill.take()
                    && let Some(r) = dr.reply
                {
                    let _ = r.send(Response::Error { message: reason });
                }
            }
            Notice::ShutdownReady => self.shutdown_ready = true,
            Notice::NonMember { id } => {
                if self.warned_non_members.insert(id) {
                    tracing::warn!(
                        peer = id,
                        "heard from a node outside the member list (a removed node still running?); ignoring it"
                    );
                }
            }
            Notice::VipFailing { failures, bench } => {
                tracing::error!(
                    failures,
                    last_error = self.last_vip_error.as_deref().unwrap_or("-"),
                    out_of_elections_for = ?bench,
                    "the kernel keeps refusing the VIP: handing it over"
                );
            }
            Notice::TermRefused { from, term } => {
                self.terms_refused = self.terms_refused.saturating_add(1);
                self.metrics.term_refused();
                if let Some(held) = self.term_log.allow() {
                    tracing::warn!(
                        peer = from,
                        term,
                        ours = self.node.term(),
                        held_back = held,
                        "ignoring a message with a term far beyond ours (is that node's state file corrupt? move it away on that node)"
                    );
                }
            }
        }
    }

    // ===== control, drills, shutdown =====

    pub fn control(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        match req {
            Request::Status => {
                let _ = reply.send(Response::Status(Box::new(self.status())));
            }
            Request::Drill { to } => self.start_drill(to, Some(reply)),
        }
    }

    pub fn start_drill(&mut self, to: Option<u32>, reply: Option<oneshot::Sender<Response>>) {
        let now = self.clock.now();
        let refuse = |reply: Option<oneshot::Sender<Response>>, message: String| {
            tracing::warn!(%message, "drill not started");
            if let Some(r) = reply {
                let _ = r.send(Response::Error { message });
            }
        };
        if self.drill.is_some() {
            return refuse(reply, "a drill is already running".into());
        }
        if self.node.role() != RoleName::Leader {
            let holder = self
                .holder
                .map_or("no node".to_string(), |h| format!("node {h}"));
            return refuse(
                reply,
                format!(
                    "node {} does not hold the VIP ({holder} does): run the drill there",
                    self.cfg.node_id
                ),
            );
        }
        if let Some(t) = to
            && (t == self.cfg.node_id || !self.cfg.peers.iter().any(|p| p.id == t))
        {
            return refuse(
                reply,
                format!("--to {t}: not another member of this cluster"),
            );
        }
        self.drill = Some(Drill {
            started: now,
            reply,
        });
        self.handle(Event::Admin(Admin::Transfer { to }));
    }

    fn expire_drill(&mut self, now: Instant) {
        if self
            .drill
            .as_ref()
            .is_some_and(|d| now >= d.started + DRILL_TIMEOUT)
            && let Some(dr) = self.drill.take()
        {
            let message = format!(
                "no other node announced the VIP within {} s",
                DRILL_TIMEOUT.as_secs()
            );
            tracing::warn!(%message, "drill failed");
            if let Some(r) = dr.reply {
                let _ = r.send(Response::Error { message });
            }
        }
    }

    pub fn begin_stop(&mut self, why: &str) {
        if self.stopping.is_some() {
            tracing::warn!("{why} again: stopping now");
            self.shutdown_ready = true;
            return;
        }
        tracing::info!("{why}: handing over and stopping");
        self.stopping = Some(self.clock.now());
        self.handle(Event::Admin(Admin::Shutdown));
    }

    /// The loop may end: the handover is done, or it took too long.
    pub fn stopped(&self) -> bool {
        self.stopping.is_some_and(|since| {
            self.shutdown_ready || self.clock.now().saturating_since(since) >= SHUTDOWN_HANDOVER
        })
    }

    /// Closes the gate, so nothing more is claimed or announced, and queues the release.
    pub fn release_for_exit(&mut self) {
        self.gate.set(None);
        self.vip_op(VipOp::Release);
    }

    // ===== reload =====

    /// SIGHUP: read the config again. Anything wrong keeps the running config (and the
    /// VIP) untouched.
    pub fn reload(&mut self) {
        let new = match crate::config::load(&self.sources) {
            Ok(l) => l.config,
            Err(e) => {
                tracing::error!("config reload rejected, keeping the running config:\n{e}");
                return;
            }
        };
        if let Err(e) = self.reload_config(new) {
            tracing::error!("config reload rejected, keeping the running config: {e:#}");
        }
    }

    /// Applies a new config as SIGHUP does; an error leaves everything as it was.
    pub fn reload_config(&mut self, new: Config) -> Result<()> {
        let diff = reload_diff(&self.cfg, &new);
        if let Some((field, a, b)) = diff.refused.first() {
            bail!(
                "{field} changed from {a} to {b}: that needs a restart (move the VIP off this node first with `apivip drill`)"
            );
        }
        let node_cfg = node_config(&new)?;
        let (old_t, new_t) = (self.cfg.election.timing(), new.election.timing());
        if old_t != new_t {
            self.timing_change_allowed()?;
            // A longer promise is on disk before the first ack makes it.
            if new_t.election_min > old_t.election_min {
                self.store
                    .record_promise(new_t.election_min)
                    .map_err(|e| anyhow!("cannot record the longer promise: {e}"))?;
            }
        }
        let keys = load_keys_checked(&new)?;
        if let Some(f) = &self.forwarder {
            let health = crate::forward::settings::health(&new);
            let change = (health != crate::forward::settings::health(&self.cfg)).then_some(health);
            // The forwarder's probers belong on its runtime, not on the election thread.
            let _rt = self.forwarder_rt.as_ref().map(|h| h.enter());
            f.update_backends(crate::forward::settings::backends(&new), change)
                .map_err(|e| anyhow!("forward: {e}"))?;
        }
        self.out.reconfigure(peer_addrs(&new), keys);
        self.cfg = new;
        self.set_metric_peers();
        self.handle(Event::Reconfigure(node_cfg));
        for (field, a, b) in &diff.not_applied {
            tracing::warn!(field = %field, running = %a, configured = %b, "config reload: this field takes effect only at the next restart");
            self.restart_needed.insert(field.clone());
        }
        tracing::info!(
            members = ?self.cfg.peers.iter().map(|p| p.id).collect::<Vec<_>>(),
            applied = diff.applied.len(),
            need_restart = diff.not_applied.len(),
            "config reloaded"
        );
        Ok(())
    }

    /// A timing change is safe once every acker states its promise (protocol 2): until
    /// then a leader must assume its own timing for everyone's acks.
    fn timing_change_allowed(&self) -> Result<()> {
        if self.cfg.election.protocol < 2 {
            bail!(
                "election timing changed, but this node runs election.protocol = {}: timing changes need protocol 2 on every node (a version-1 ack carries no promise)",
                self.cfg.election.protocol
            );
        }
        let versions = self.out.peer_versions();
        let behind: Vec<u32> = self
            .cfg
            .peers
            .iter()
            .map(|p| p.id)
            .filter(|id| *id != self.cfg.node_id)
            .filter(|id| versions.get(id).copied().unwrap_or(1) < 2)
            .collect();
        // A follower hears only its leader; the leader hears everyone and says so.
        let leader_says = self
            .node
            .leader()
            .filter(|l| *l != self.cfg.node_id)
            .is_some_and(|l| self.out.says_all_speak_2(l));
        if !behind.is_empty() && !leader_says {
            bail!(
                "election timing changed: refused until every member speaks protocol 2, and node(s) {behind:?} have not been heard speaking it (a leader would assume its own timing for their acks; upgrade them first, see docs/operations.md, \"Upgrades and timing changes\")"
            );
        }
        Ok(())
    }

    // ===== status =====

    pub fn status(&self) -> StatusReport {
        let now = self.clock.now();
        let st = self.node.status(now);
        let versions = self.out.peer_versions();
        let peers = st
            .members
            .iter()
            .map(|m| PeerReport {
                id: m.id,
                address: self
                    .cfg
                    .peers
                    .iter()
                    .find(|p| p.id == m.id)
                    .map_or("-".into(), |p| p.address.to_string()),
                priority: m.priority,
                is_self: m.is_self,
                last_heard_ms: m.last_heard.map(ms),
                healthy: m.healthy,
                can_lead: m.can_lead,
                protocol: if m.is_self {
                    Some(self.cfg.election.protocol)
                } else {
                    versions.get(&m.id).copied()
                },
            })
            .collect();
        let mut vip = self.vip_report.clone();
        vip.state = st.vip.as_str().into();
        StatusReport {
            node_id: self.cfg.node_id,
            cluster: self.cfg.cluster.clone(),
            role: st.role.as_str().into(),
            term: st.term,
            leader: st.leader,
            holder: st.holder,
            vip: Some(vip),
            lease_remaining_ms: st.lease_remaining.map(ms),
            promise_remaining_ms: st.promise_remaining.map(ms),
            silent_remaining_ms: st.silent_remaining.map(ms),
            healthy: st.healthy,
            not_ready: self.local_health.reason(),
            link_up: st.link_up,
            profile: self.cfg.election.profile.name().into(),
            protocol: self.cfg.election.protocol,
            quorum: match self.cfg.election.quorum {
                Quorum::Majority => "majority".into(),
                Quorum::TwoNode => "two-node".into(),
            },
            uptime_s: now.as_duration().as_secs(),
            epoch: self.out.epoch(),
            peers,
            non_members: st.non_members_heard,
            heartbeats: self.out.stats(),
            last_failover_ms: self.last_failover_ms,
            backends: self
                .forwarder
                .as_ref()
                .map(|f| {
                    f.snapshot()
                        .iter()
                        .filter_map(|b| serde_json::to_value(b).ok())
                        .collect()
                })
                .unwrap_or_default(),
            forwarder: self.forwarder.as_ref().map(|f| f.totals()),
            faults: FaultReport {
                vip_failures: st.vip_failures,
                last_vip_error: self.last_vip_error.clone(),
                benched_remaining_ms: st.benched_remaining.map(ms),
                state_error: self.state_fault.error.clone(),
                terms_refused: self.terms_refused,
                open_files_limit: crate::fds::nofile(),
                restart_needed: self.restart_needed.iter().cloned().collect(),
            },
        }
    }
}

/// What a reload changes, field by field: `(field, running, configured)`.
#[derive(Debug, Default)]
pub struct ReloadDiff {
    /// Changes that need a restart; the reload is refused.
    pub refused: Vec<(String, String, String)>,
    /// Changes SIGHUP applies.
    pub applied: Vec<(String, String, String)>,
    /// Changes that are kept in the config but take effect only at the next restart.
    pub not_applied: Vec<(String, String, String)>,
}

/// Fields a running daemon cannot change: its identity, where its state lives, and the
/// VIP itself.
const REFUSED: &[&str] = &[
    "election.protocol",
    "node_id",
    "cluster",
    "port",
    "state_dir",
    "control.socket",
    "vip.address",
    "vip.interface",
    "vip.placement",
    "vip.device",
];
/// Fields SIGHUP applies (prefixes).
const APPLIED: &[&str] = &[
    "allow_insecure_permissions",
    "peers",
    "election.",
    "key_file",
    "forward.backends",
    "forward.local_backend",
    "forward.peer_backends",
    "forward.check.",
];

pub fn reload_diff(old: &Config, new: &Config) -> ReloadDiff {
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    leaves("", &serde_json::to_value(old).unwrap_or_default(), &mut a);
    leaves("", &serde_json::to_value(new).unwrap_or_default(), &mut b);
    let mut out = ReloadDiff::default();
    let own = |c: &Config| c.me().map_or("-".to_string(), |p| p.address.to_string());
    if own(old) != own(new) {
        out.refused
            .push(("own peer address".into(), own(old), own(new)));
    }
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (va, vb) = (
            a.get(k).cloned().unwrap_or_else(|| "unset".into()),
            b.get(k).cloned().unwrap_or_else(|| "unset".into()),
        );
        if va == vb {
            continue;
        }
        let entry = (k.clone(), va, vb);
        if REFUSED.iter().any(|r| k == r) {
            out.refused.push(entry);
        } else if APPLIED.iter().any(|p| k.starts_with(p)) {
            out.applied.push(entry);
        } else {
            out.not_applied.push(entry);
        }
    }
    out
}

fn leaves(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&p, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}
