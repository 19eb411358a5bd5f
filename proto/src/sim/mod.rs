//! A deterministic cluster simulator for the election (feature `sim`).
//!
//! Real time is virtual; each node sees it through its own drifting clock. The network
//! loses, duplicates, delays and reorders messages and can be partitioned; processes can
//! crash, restart and freeze; the kernel's VIP is modelled apart from what the process
//! believes (netlink latency, address lifetimes with the kernel's slack, a process-owned
//! device that vanishes with the process). After every step the simulator checks that no
//! two kernels hold the VIP at once.

pub mod scenario;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use crate::Instant;
use crate::election::{
    Action, Admin, Event, Member, Node, NodeConfig, Notice, Persisted, Quorum, Rules,
};
use crate::message::{Message, NodeId, Priority, Term};
use crate::rng::Rng;
use crate::timing::Timing;

/// Network behaviour, applied to every message independently.
#[derive(Clone, Debug, PartialEq)]
pub struct NetParams {
    pub base_delay: Duration,
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a message is held back by up to `long_delay_max` (reordering).
    pub long_delay: f64,
    pub long_delay_max: Duration,
}

impl NetParams {
    /// A quiet LAN: 0.1-0.5 ms, nothing lost.
    pub fn lan() -> NetParams {
        NetParams {
            base_delay: Duration::from_micros(100),
            jitter: Duration::from_micros(400),
            loss: 0.0,
            duplicate: 0.0,
            long_delay: 0.0,
            long_delay_max: Duration::ZERO,
        }
    }

    /// The hostile network of the design sketch's model.
    pub fn hostile(loss: f64) -> NetParams {
        NetParams {
            loss,
            duplicate: 0.05,
            long_delay: 0.01,
            long_delay_max: Duration::from_secs(5),
            ..NetParams::lan()
        }
    }
}

/// How long netlink operations take.
#[derive(Clone, Debug)]
pub struct NetlinkParams {
    pub min: Duration,
    pub max: Duration,
}

impl Default for NetlinkParams {
    fn default() -> Self {
        NetlinkParams {
            min: Duration::from_micros(500),
            max: Duration::from_millis(5),
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: NodeId,
    pub priority: Priority,
    /// The member list it starts with (bootstraps start small).
    pub members: Vec<NodeId>,
    /// When it first starts; `None` = only when a script starts it.
    pub start_at: Option<Duration>,
    /// Its own timing (a rolling change); `None`: the cluster's.
    pub timing: Option<Timing>,
    /// The newest protocol it speaks (1: the previous release).
    pub protocol: u8,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: Vec<NodeSpec>,
    pub timing: Timing,
    pub quorum: Quorum,
    pub rules: Rules,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// The VIP lives on a process-owned device: a crash removes it at once.
    pub device_placement: bool,
    pub net: NetParams,
    pub netlink: NetlinkParams,
    /// Each clock runs at a rate in [1 - drift, 1 + drift]; defaults to the timing's bound.
    pub drift: Option<f64>,
    /// Keep a trace of the last lines (for failure reports).
    pub trace: bool,
}

impl SimConfig {
    /// `n` nodes with ids 1..=n, all members from the start, equal priority.
    pub fn cluster(n: u32, timing: Timing, seed: u64) -> SimConfig {
        let ids: Vec<NodeId> = (1..=n).collect();
        SimConfig {
            seed,
            nodes: ids
                .iter()
                .map(|&id| NodeSpec {
                    id,
                    priority: 100,
                    members: ids.clone(),
                    start_at: Some(Duration::ZERO),
                    timing: None,
                    protocol: crate::wire::VERSION_MAX,
                })
                .collect(),
            timing,
            quorum: Quorum::Majority,
            rules: Rules::ALL,
            preempt: true,
            preempt_delay: Duration::from_secs(3),
            device_placement: false,
            net: NetParams::lan(),
            netlink: NetlinkParams::default(),
            drift: None,
            trace: false,
        }
    }
}

/// Whom a scripted fault hits, resolved when it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Node(NodeId),
    /// The node whose kernel holds the VIP (else the latest leader; else node 1).
    Holder,
    /// The k-th running node (by id) that neither holds the VIP nor last led.
    Follower(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Script {
    Start(Target),
    Crash(Target),
    /// Crash and start again after the given downtime.
    Restart(Target, Duration),
    Freeze(Target, Duration),
    /// Drop every message between the two groups (both directions).
    Partition(Vec<NodeId>, Vec<NodeId>),
    /// Drop messages from `from` to `to` only.
    Block(NodeId, NodeId),
    /// Add this much delay to every message from `from` to `to` (zero removes it).
    Delay(NodeId, NodeId, Duration),
    /// Isolate the target from every other node.
    Isolate(Target),
    /// Drop messages from one to the other (resolved when it happens).
    Cut(Target, Target),
    /// Delay every message sent to the target by this much.
    DelayTo(Target, Duration),
    /// Delay every message the target sends by this much.
    DelayFrom(Target, Duration),
    Heal,
    SetNet(NetParams),
    Health(Target, bool),
    Link(Target, bool),
    Admin(Target, Admin),
    /// Give the node this member list (a config reload).
    Members(NodeId, Vec<NodeId>),
    /// From here on, measure how long until exactly one node holds the VIP.
    MarkHeal,
    /// The node's kernel refuses every claim and refresh (true) or accepts them again.
    VipFault(Target, bool),
    /// Crash the node, add this much to the term in its state file, and start it again
    /// after the downtime: a restart with a term the cluster never reached.
    RestartWithTerm(Target, Duration, Term),
    /// Reload the node with this timing (SIGHUP).
    Retime(NodeId, Timing),
    /// The timing and protocol the node runs from its next start (a new config or a new
    /// binary, in place before a restart).
    Respec(NodeId, Option<Timing>, u8),
    /// SIGTERM the first node to stand in a vote round before `until`, the moment it
    /// does; it exits 50 ms later and starts again after `down`: an operator's restart
    /// that lands in an election.
    StopNextCandidate {
        down: Duration,
        until: Duration,
    },
}

#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: Message,
    },
    Timer {
        node: NodeId,
        inc: u64,
        generation: u64,
    },
    NetlinkDone {
        node: NodeId,
        inc: u64,
        op: VipOp,
    },
    KernelExpire {
        node: NodeId,
        generation: u64,
    },
    Unfreeze {
        node: NodeId,
        inc: u64,
    },
    Script(Script),
}

struct Queued {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VipOp {
    Claim(Duration),
    Refresh(Duration),
    Release,
}

#[derive(Default)]
struct Kernel {
    held: bool,
    generation: u64,
}

struct SimNode {
    spec: NodeSpec,
    cfg: NodeConfig,
    proc: Option<Node>,
    /// Bumped at every start: events of a dead incarnation are dropped.
    inc: u64,
    persisted: Persisted,
    rate: f64,
    offset: u64,
    frozen: bool,
    /// Events that reached a frozen process, delivered when it thaws.
    pending: VecDeque<Event>,
    timer_gen: u64,
    timer_fired_while_frozen: bool,
    ops: VecDeque<VipOp>,
    op_busy: bool,
    kernel: Kernel,
    healthy: bool,
    link_up: bool,
    /// Claims and refreshes fail (the kernel refuses the VIP).
    vip_fault: bool,
    /// The longest promise (E_min, its own clock) it may have given: kept across
    /// restarts, as the daemon keeps it in its state file.
    promise_floor: Duration,
    /// This incarnation reported ShutdownReady: the daemon would be exiting.
    exiting: bool,
}

impl SimNode {
    /// Rounds up, as `real` does, so that a timer armed for local time x fires at a real
    /// instant the node reads as x or later.
    fn local(&self, real: Instant) -> Instant {
        Instant::from_nanos(self.offset + (real.as_nanos() as f64 * self.rate).ceil() as u64)
    }

    fn real(&self, local: Instant) -> Instant {
        let since = local.as_nanos().saturating_sub(self.offset);
        Instant::from_nanos((since as f64 / self.rate).ceil() as u64)
    }

    fn alive(&self) -> bool {
        self.proc.is_some()
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Real time during which two or more kernels held the VIP.
    pub overlap: Duration,
    pub overlap_incidents: u32,
    pub max_overlap: Duration,
    pub first_hold: Option<Duration>,
    /// Time without any holder after the first hold.
    pub gap_total: Duration,
    /// Time from the last MarkHeal until exactly one node held the VIP.
    pub heal_to_holder: Option<Duration>,
    /// Time without a holder after that point, and the longest single gap.
    pub gap_after_heal: Duration,
    pub max_gap_after_heal: Duration,
    /// Each crash of the holder → the next hold by another node.
    pub failovers: Vec<Duration>,
    /// Each admin handover → the VIP on another node.
    pub handovers: Vec<Duration>,
    pub holder_changes: u32,
    /// When the first gap after the first hold and the first overlap began.
    pub first_gap_at: Option<Duration>,
    pub first_overlap_at: Option<Duration>,
    pub events: u64,
    /// The instant at which the run spun without time advancing, if it did.
    pub livelock_at: Option<Duration>,
    /// Claims and refreshes a faulty kernel refused, in all.
    pub vip_ops_refused: u64,
    /// Leads won and claims made by a node after it reported ShutdownReady: the daemon
    /// exits on that notice, so such a node would leave with the lead and no handover.
    pub after_shutdown_ready: u32,
    /// Candidates told to stop by [`Script::StopNextCandidate`].
    pub stopped_candidates: u32,
    pub trace: String,
}

pub struct Sim {
    cfg: SimConfig,
    now: Instant,
    rng: Rng,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    extra_delay: BTreeMap<(NodeId, NodeId), Duration>,
    net: NetParams,
    holders: BTreeSet<NodeId>,
    overlap_since: Option<Instant>,
    gap_since: Option<Instant>,
    heal_mark: Option<Instant>,
    last_leader: Option<NodeId>,
    /// Armed by [`Script::StopNextCandidate`]: its downtime and deadline.
    stop_next_candidate: Option<(Duration, Duration)>,
    /// Pending measurements: (kind, start, old holder).
    waiting: Vec<(bool, Instant, Option<NodeId>)>,
    report: Report,
    trace: VecDeque<String>,
}

const TRACE_LINES: usize = 400;

/// An operator's restart of node `id` at `at`: SIGTERM (the node hands over), the exit
/// 50 ms later, and a start after `down`. `at_exit` goes in at the exit, before the start
/// (the new config or binary of a rolling change).
pub(crate) fn sigterm_restart(
    at: Duration,
    id: NodeId,
    down: Duration,
    at_exit: Option<Script>,
) -> Vec<(Duration, Script)> {
    let exit = at + Duration::from_millis(50);
    let mut steps = vec![
        (at, Script::Admin(Target::Node(id), Admin::Shutdown)),
        (exit, Script::Crash(Target::Node(id))),
    ];
    steps.extend(at_exit.map(|s| (exit, s)));
    steps.push((exit + down, Script::Start(Target::Node(id))));
    steps
}
const LIVELOCK_EVENTS: u32 = 100_000;

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let drift = cfg.drift.unwrap_or(f64::from(cfg.timing.drift_ppm) / 1e6);
        let mut nodes = BTreeMap::new();
        for spec in &cfg.nodes {
            let rate = 1.0 + drift * (2.0 * rng.unit() - 1.0);
            let offset = rng.below(1_000_000_000_000);
            let ncfg = node_config(&cfg, spec, &spec.members);
            nodes.insert(
                spec.id,
                SimNode {
                    spec: spec.clone(),
                    cfg: ncfg,
                    proc: None,
                    inc: 0,
                    persisted: Persisted::default(),
                    rate,
                    offset,
                    frozen: false,
                    pending: VecDeque::new(),
                    timer_gen: 0,
                    timer_fired_while_frozen: false,
                    ops: VecDeque::new(),
                    op_busy: false,
                    kernel: Kernel::default(),
                    healthy: true,
                    link_up: true,
                    vip_fault: false,
                    promise_floor: Duration::ZERO,
                    exiting: false,
                },
            );
        }
        let mut sim = Sim {
            net: cfg.net.clone(),
            now: Instant::ZERO,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            blocked: BTreeSet::new(),
            extra_delay: BTreeMap::new(),
            holders: BTreeSet::new(),
            overlap_since: None,
            gap_since: None,
            heal_mark: None,
            last_leader: None,
            stop_next_candidate: None,
            waiting: Vec::new(),
            report: Report::default(),
            trace: VecDeque::new(),
            cfg,
        };
        let starts: Vec<(NodeId, Duration)> = sim
            .cfg
            .nodes
            .iter()
            .filter_map(|s| s.start_at.map(|t| (s.id, t)))
            .collect();
        for (id, at) in starts {
            sim.script(at, Script::Start(Target::Node(id)));
        }
        sim
    }

    pub fn script(&mut self, at: Duration, s: Script) {
        self.push(Instant::from_duration(at), Ev::Script(s));
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    pub fn now(&self) -> Duration {
        self.now.as_duration()
    }

    /// Which nodes' kernels hold the VIP right now.
    pub fn holders(&self) -> Vec<NodeId> {
        self.holders.iter().copied().collect()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id).and_then(|n| n.proc.as_ref())
    }

    pub fn run_until(&mut self, end: Duration) {
        let end = Instant::from_duration(end);
        let mut same_instant = 0u32;
        while let Some(Reverse(q)) = self.queue.peek() {
            if q.at > end {
                break;
            }
            let Some(Reverse(q)) = self.queue.pop() else {
                break;
            };
            // A node that answers a timer by re-arming it for the same instant would spin
            // the daemon's event loop: report it instead of hanging the test.
            same_instant = if q.at == self.now {
                same_instant + 1
            } else {
                0
            };
            if same_instant > LIVELOCK_EVENTS {
                self.report.livelock_at = Some(q.at.as_duration());
                self.log(|| format!("livelock: more than {LIVELOCK_EVENTS} events at one instant"));
                break;
            }
            if same_instant > LIVELOCK_EVENTS - 5 {
                let ev = format!("{:?}", q.ev);
                self.log(|| format!("spinning on {ev}"));
            }
            self.now = q.at;
            self.report.events += 1;
            self.step(q.ev);
        }
        self.now = end;
    }

    pub fn finish(mut self) -> Report {
        self.account();
        if let Some(s) = self.overlap_since.take() {
            self.close_overlap(s);
        }
        if let Some(s) = self.gap_since.take() {
            let d = self.now.saturating_since(s);
            self.report.gap_total += d;
            if self.report.heal_to_holder.is_some() {
                self.report.gap_after_heal += d;
                self.report.max_gap_after_heal = self.report.max_gap_after_heal.max(d);
            }
        }
        if self.cfg.trace {
            for l in &self.trace {
                self.report.trace.push_str(l);
                self.report.trace.push('\n');
            }
        }
        self.report
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            if self.trace.len() == TRACE_LINES {
                self.trace.pop_front();
            }
            let l = format!("{:>10.6} {}", self.now.as_nanos() as f64 / 1e9, line());
            self.trace.push_back(l);
        }
    }

    // ===== events =====

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, from, msg } => {
                if self.blocked.contains(&(from, to)) {
                    return;
                }
                self.log(|| format!("{from}->{to} t{} {:?}", msg.term, msg.body));
                self.deliver(to, Event::Message { from, msg });
            }
            Ev::Timer {
                node,
                inc,
                generation,
            } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return;
                };
                if n.inc != inc || n.timer_gen != generation || !n.alive() {
                    return;
                }
                if n.frozen {
                    n.timer_fired_while_frozen = true;
                    return;
                }
                self.deliver(node, Event::Timer);
            }
            Ev::NetlinkDone { node, inc, op } => self.netlink_done(node, inc, op),
            Ev::KernelExpire { node, generation } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return;
                };
                if n.kernel.generation == generation && n.kernel.held {
                    n.kernel.held = false;
                    self.log(|| format!("n{node} kernel lifetime expired"));
                    self.account();
                    self.deliver(node, Event::VipLost);
                }
            }
            Ev::Unfreeze { node, inc } => self.thaw(node, inc),
            Ev::Script(s) => self.run_script(s),
        }
    }

    /// Hands an event to a node's process (queued if it is frozen).
    fn deliver(&mut self, id: NodeId, ev: Event) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.alive() {
            return;
        }
        if n.frozen {
            n.pending.push_back(ev);
            return;
        }
        let local = n.local(self.now);
        let Some(p) = n.proc.as_mut() else { return };
        let actions = p.handle(local, ev);
        self.apply(id, actions);
    }

    fn apply(&mut self, id: NodeId, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send { to, msg } => self.send(id, to, msg),
                Action::Persist(p) => {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.persisted = p;
                    }
                }
                Action::ClaimVip { lifetime } => {
                    self.count_if_exiting(id);
                    self.queue_op(id, VipOp::Claim(lifetime));
                }
                Action::RefreshVip { lifetime } => self.queue_op(id, VipOp::Refresh(lifetime)),
                Action::ReleaseVip => self.queue_op(id, VipOp::Release),
                Action::SetTimer(local) => {
                    let Some(n) = self.nodes.get_mut(&id) else {
                        continue;
                    };
                    n.timer_gen += 1;
                    let mut at = n.real(local).max(self.now);
                    while n.local(at) < local {
                        at += Duration::from_nanos(1);
                    }
                    let ev = Ev::Timer {
                        node: id,
                        inc: n.inc,
                        generation: n.timer_gen,
                    };
                    self.push(at, ev);
                }
                Action::Notice(notice) => self.notice(id, notice),
            }
        }
    }

    fn notice(&mut self, id: NodeId, notice: Notice) {
        match notice {
            Notice::Role {
                role: crate::election::RoleName::Leader,
                ..
            } => {
                self.count_if_exiting(id);
                self.last_leader = Some(id);
            }
            Notice::Role {
                role: crate::election::RoleName::Candidate,
                ..
            } => self.stop_if_armed(id),
            Notice::ShutdownReady => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.exiting = true;
                }
            }
            _ => {}
        }
        self.log(|| format!("n{id} {notice:?}"));
    }

    fn stop_if_armed(&mut self, id: NodeId) {
        let Some((down, until)) = self.stop_next_candidate.take() else {
            return;
        };
        let now = self.now.as_duration();
        if now >= until {
            return;
        }
        self.report.stopped_candidates += 1;
        // Queued behind the actions being applied, ahead of any answer to its requests.
        for (at, s) in sigterm_restart(now, id, down, None) {
            self.script(at, s);
        }
    }

    fn count_if_exiting(&mut self, id: NodeId) {
        if self.nodes.get(&id).is_some_and(|n| n.exiting) {
            self.report.after_shutdown_ready += 1;
            self.log(|| format!("n{id} leads or claims after ShutdownReady"));
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Message) {
        let link_up = |s: &Sim, id| s.nodes.get(&id).is_some_and(|n| n.link_up);
        if !link_up(self, from) || !link_up(self, to) || self.blocked.contains(&(from, to)) {
            return;
        }
        if self.rng.chance(self.net.loss) {
            self.log(|| format!("{from}->{to} LOST {:?}", msg.body.kind()));
            return;
        }
        let copies = if self.rng.chance(self.net.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.net.base_delay
                + self.rand_dur(self.net.jitter)
                + self
                    .extra_delay
                    .get(&(from, to))
                    .copied()
                    .unwrap_or_default();
            if self.rng.chance(self.net.long_delay) {
                delay += self.rand_dur(self.net.long_delay_max);
            }
            self.push(
                self.now + delay,
                Ev::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn rand_dur(&mut self, max: Duration) -> Duration {
        Duration::from_nanos(
            self.rng
                .below(u64::try_from(max.as_nanos()).unwrap_or(0).max(1)),
        )
    }

    // ===== the kernel =====

    fn queue_op(&mut self, id: NodeId, op: VipOp) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.ops.push_back(op);
        self.next_op(id);
    }

    fn next_op(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.op_busy || n.frozen || !n.alive() {
            return;
        }
        let Some(op) = n.ops.pop_front() else { return };
        n.op_busy = true;
        let inc = n.inc;
        let span = self.cfg.netlink.max.saturating_sub(self.cfg.netlink.min);
        let lat = self.cfg.netlink.min + self.rand_dur(span);
        self.push(self.now + lat, Ev::NetlinkDone { node: id, inc, op });
    }

    fn netlink_done(&mut self, id: NodeId, inc: u64, op: VipOp) {
        let device = self.cfg.device_placement;
        let slack = crate::timing::KERNEL_LIFETIME_SLACK;
        let slack = self.rand_dur(slack);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let current = n.inc == inc && n.alive();
        // A request already in the kernel completes even if its process died, unless the
        // device it targets died with the process.
        if !current && device {
            return;
        }
        let refused = n.vip_fault && matches!(op, VipOp::Claim(_) | VipOp::Refresh(_));
        match op {
            // A refused claim adds nothing; a refused refresh leaves the address to run
            // out its old lifetime.
            VipOp::Claim(_) | VipOp::Refresh(_) if refused => {
                self.report.vip_ops_refused += 1;
            }
            VipOp::Claim(lifetime) | VipOp::Refresh(lifetime) => {
                n.kernel.held = true;
                n.kernel.generation += 1;
                let g = n.kernel.generation;
                // The kernel counts the lifetime on this node's clock.
                let life = Duration::from_secs_f64(lifetime.as_secs_f64() / n.rate) + slack;
                self.push(
                    self.now + life,
                    Ev::KernelExpire {
                        node: id,
                        generation: g,
                    },
                );
            }
            VipOp::Release => {
                n.kernel.held = false;
                n.kernel.generation += 1;
            }
        }
        self.log(|| format!("n{id} kernel {op:?} done"));
        self.account();
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !current {
            return;
        }
        n.op_busy = false;
        let ev = match op {
            VipOp::Claim(_) | VipOp::Refresh(_) => Event::VipApplied { ok: !refused },
            VipOp::Release => Event::VipReleased,
        };
        self.deliver(id, ev);
        self.next_op(id);
    }

    /// Updates overlap and gap accounting after any change to a kernel.
    fn account(&mut self) {
        let held: BTreeSet<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.kernel.held)
            .map(|(id, _)| *id)
            .collect();
        if held == self.holders {
            return;
        }
        let now = self.now;
        // A new holder appeared: complete pending failover/handover measurements.
        for h in held.difference(&self.holders).copied().collect::<Vec<_>>() {
            if self.report.first_hold.is_none() {
                self.report.first_hold = Some(now.as_duration());
            }
            self.report.holder_changes += 1;
            let mut keep = Vec::new();
            for (handover, start, old) in std::mem::take(&mut self.waiting) {
                if old != Some(h) {
                    let d = now.saturating_since(start);
                    if handover {
                        self.report.handovers.push(d);
                    } else {
                        self.report.failovers.push(d);
                    }
                } else {
                    keep.push((handover, start, old));
                }
            }
            self.waiting = keep;
        }
        match (held.len() >= 2, self.overlap_since) {
            (true, None) => {
                self.overlap_since = Some(now);
                self.report
                    .first_overlap_at
                    .get_or_insert(now.as_duration());
            }
            (false, Some(s)) => {
                self.overlap_since = None;
                self.close_overlap(s);
            }
            _ => {}
        }
        match (
            held.is_empty() && self.report.first_hold.is_some(),
            self.gap_since,
        ) {
            (true, None) => {
                self.gap_since = Some(now);
                self.report.first_gap_at.get_or_insert(now.as_duration());
            }
            (false, Some(s)) => {
                self.gap_since = None;
                let d = now.saturating_since(s);
                self.report.gap_total += d;
                if self.report.heal_to_holder.is_some() {
                    self.report.gap_after_heal += d;
                    self.report.max_gap_after_heal = self.report.max_gap_after_heal.max(d);
                }
            }
            _ => {}
        }
        if held.len() == 1
            && let Some(m) = self.heal_mark.take()
        {
            self.report.heal_to_holder = Some(now.saturating_since(m));
        }
        self.holders = held;
    }

    fn close_overlap(&mut self, since: Instant) {
        let d = self.now.saturating_since(since);
        self.report.overlap += d;
        self.report.overlap_incidents += 1;
        self.report.max_overlap = self.report.max_overlap.max(d);
        let line = format!("OVERLAP of {d:?} ending now");
        self.log(|| line);
    }

    // ===== scripted faults =====

    fn resolve(&self, t: Target) -> Option<NodeId> {
        match t {
            Target::Node(id) => Some(id),
            Target::Holder => self
                .holders
                .iter()
                .next()
                .copied()
                .or(self.last_leader)
                .or_else(|| self.nodes.keys().next().copied()),
            Target::Follower(k) => {
                let holder = self.resolve(Target::Holder);
                self.nodes
                    .iter()
                    .filter(|(id, n)| n.alive() && Some(**id) != holder)
                    .nth(k)
                    .map(|(id, _)| *id)
            }
        }
    }

    fn run_script(&mut self, s: Script) {
        self.log(|| format!("SCRIPT {s:?}"));
        match s {
            Script::Start(t) => {
                if let Some(id) = self.resolve(t) {
                    self.start(id);
                }
            }
            Script::Crash(t) => {
                if let Some(id) = self.resolve(t) {
                    self.crash(id);
                }
            }
            Script::Restart(t, down) => {
                if let Some(id) = self.resolve(t) {
                    self.crash(id);
                    self.script(
                        self.now.as_duration() + down,
                        Script::Start(Target::Node(id)),
                    );
                }
            }
            Script::Freeze(t, d) => {
                if let Some(id) = self.resolve(t)
                    && let Some(n) = self.nodes.get_mut(&id)
                    && n.alive()
                    && !n.frozen
                {
                    n.frozen = true;
                    let inc = n.inc;
                    self.push(self.now + d, Ev::Unfreeze { node: id, inc });
                }
            }
            Script::Partition(a, b) => {
                for x in &a {
                    for y in &b {
                        self.blocked.insert((*x, *y));
                        self.blocked.insert((*y, *x));
                    }
                }
            }
            Script::Block(a, b) => {
                self.blocked.insert((a, b));
            }
            Script::Isolate(t) => {
                if let Some(id) = self.resolve(t) {
                    let others: Vec<NodeId> =
                        self.nodes.keys().copied().filter(|o| *o != id).collect();
                    self.run_script(Script::Partition(vec![id], others));
                }
            }
            Script::Delay(a, b, d) => {
                if d.is_zero() {
                    self.extra_delay.remove(&(a, b));
                } else {
                    self.extra_delay.insert((a, b), d);
                }
            }
            Script::Cut(a, b) => {
                if let (Some(a), Some(b)) = (self.resolve(a), self.resolve(b)) {
                    self.blocked.insert((a, b));
                }
            }
            Script::DelayTo(t, d) => {
                if let Some(id) = self.resolve(t) {
                    let others: Vec<NodeId> =
                        self.nodes.keys().copied().filter(|o| *o != id).collect();
                    for o in others {
                        self.run_script(Script::Delay(o, id, d));
                    }
                }
            }
            Script::DelayFrom(t, d) => {
                if let Some(id) = self.resolve(t) {
                    let others: Vec<NodeId> =
                        self.nodes.keys().copied().filter(|o| *o != id).collect();
                    for o in others {
                        self.run_script(Script::Delay(id, o, d));
                    }
                }
            }
            Script::StopNextCandidate { down, until } => {
                self.stop_next_candidate = Some((down, until));
            }
            Script::Heal => {
                self.blocked.clear();
                self.extra_delay.clear();
            }
            Script::SetNet(p) => self.net = p,
            Script::Health(t, h) => {
                if let Some(id) = self.resolve(t) {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.healthy = h;
                    }
                    self.deliver(id, Event::Health(h));
                }
            }
            Script::Link(t, up) => {
                if let Some(id) = self.resolve(t) {
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.link_up = up;
                    }
                    self.deliver(id, Event::Link(up));
                }
            }
            Script::Admin(t, a) => {
                if let Some(id) = self.resolve(t) {
                    if matches!(a, Admin::Transfer { .. }) && self.holders.contains(&id) {
                        self.waiting.push((true, self.now, Some(id)));
                    }
                    self.deliver(id, Event::Admin(a));
                }
            }
            Script::Members(id, members) => {
                let Some(n) = self.nodes.get(&id) else { return };
                let cfg = node_config(&self.cfg, &n.spec, &members);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.cfg = cfg.clone();
                }
                self.deliver(id, Event::Reconfigure(cfg));
            }
            Script::VipFault(t, on) => {
                if let Some(id) = self.resolve(t)
                    && let Some(n) = self.nodes.get_mut(&id)
                {
                    n.vip_fault = on;
                }
            }
            Script::RestartWithTerm(t, down, bump) => {
                if let Some(id) = self.resolve(t) {
                    self.crash(id);
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.persisted.term = n.persisted.term.saturating_add(bump);
                        n.persisted.voted_for = None;
                    }
                    self.script(
                        self.now.as_duration() + down,
                        Script::Start(Target::Node(id)),
                    );
                }
            }
            Script::Retime(id, timing) => {
                let Some(n) = self.nodes.get_mut(&id) else {
                    return;
                };
                n.spec.timing = Some(timing);
                let members: Vec<NodeId> = n.cfg.members.iter().map(|m| m.id).collect();
                let cfg = node_config(&self.cfg, &n.spec, &members);
                if let Some(n) = self.nodes.get_mut(&id) {
                    if n.alive() {
                        n.promise_floor = n.promise_floor.max(cfg.timing.election_min);
                    }
                    n.cfg = cfg.clone();
                }
                self.deliver(id, Event::Reconfigure(cfg));
            }
            Script::Respec(id, timing, protocol) => {
                let Some(n) = self.nodes.get_mut(&id) else {
                    return;
                };
                n.spec.timing = timing;
                n.spec.protocol = protocol;
                let members: Vec<NodeId> = n.cfg.members.iter().map(|m| m.id).collect();
                let cfg = node_config(&self.cfg, &n.spec, &members);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.cfg = cfg;
                }
            }
            Script::MarkHeal => {
                self.heal_mark = Some(self.now);
                self.report.heal_to_holder = None;
                self.report.gap_after_heal = Duration::ZERO;
                self.report.max_gap_after_heal = Duration::ZERO;
                if self.holders.len() == 1 {
                    self.report.heal_to_holder = Some(Duration::ZERO);
                    self.heal_mark = None;
                }
            }
        }
    }

    fn start(&mut self, id: NodeId) {
        let seed = self.rng.next_u64();
        let rules = self.cfg.rules;
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.alive() {
            return;
        }
        n.inc += 1;
        n.frozen = false;
        n.pending.clear();
        n.ops.clear();
        n.op_busy = false;
        n.timer_fired_while_frozen = false;
        n.exiting = false;
        let persisted = if rules.persist {
            n.persisted
        } else {
            Persisted::default()
        };
        let local = n.local(self.now);
        let mut cfg = n.cfg.clone();
        cfg.silence_floor = n.promise_floor;
        n.promise_floor = n.promise_floor.max(cfg.timing.election_min);
        let mut node = Node::new(cfg, persisted, n.healthy, seed, local);
        let mut actions = node.start(local);
        if !n.link_up {
            actions.extend(node.handle(local, Event::Link(false)));
        }
        n.proc = Some(node);
        self.apply(id, actions);
    }

    fn crash(&mut self, id: NodeId) {
        let device = self.cfg.device_placement;
        let holder = self.holders.contains(&id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if !n.alive() {
            return;
        }
        n.proc = None;
        n.frozen = false;
        n.pending.clear();
        n.ops.clear();
        n.op_busy = false;
        if device && n.kernel.held {
            n.kernel.held = false;
            n.kernel.generation += 1;
        }
        if holder {
            self.waiting.push((false, self.now, Some(id)));
        }
        self.account();
    }

    fn thaw(&mut self, id: NodeId, inc: u64) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.inc != inc || !n.frozen {
            return;
        }
        n.frozen = false;
        let mut evs: Vec<Event> = n.pending.drain(..).collect();
        if std::mem::take(&mut n.timer_fired_while_frozen) {
            evs.push(Event::Timer);
        }
        for ev in evs {
            self.deliver(id, ev);
        }
        self.next_op(id);
    }
}

fn node_config(sim: &SimConfig, spec: &NodeSpec, members: &[NodeId]) -> NodeConfig {
    let prio = |id: NodeId| {
        sim.nodes
            .iter()
            .find(|s| s.id == id)
            .map_or(100, |s| s.priority)
    };
    NodeConfig {
        id: spec.id,
        members: members
            .iter()
            .map(|&id| Member {
                id,
                priority: prio(id),
            })
            .collect(),
        timing: spec.timing.clone().unwrap_or_else(|| sim.timing.clone()),
        quorum: sim.quorum,
        preempt: sim.preempt,
        preempt_delay: sim.preempt_delay,
        rules: sim.rules,
        protocol: spec.protocol,
        silence_floor: Duration::ZERO,
    }
}

/// Percentiles of a sample, for reports.
pub fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * p).round() as usize;
    samples.get(i).copied()
}

/// `12.3 ms`-style text.
pub fn ms(d: Duration) -> String {
    let mut s = String::new();
    let _ = write!(s, "{:.1} ms", d.as_secs_f64() * 1e3);
    s
}
