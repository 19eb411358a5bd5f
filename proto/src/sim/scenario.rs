//! Families of random schedules, each built from a seed, and what each must show.
//!
//! The broad families (faults, freeze, handover, bootstrap, replace, two-node) are the
//! safety and liveness checks; the narrow ones aim at one rule each, so that turning that
//! rule off makes some seed fail (tests/rules.rs).

use std::time::Duration;

use super::*;
use crate::election::{Admin, Quorum, Rules};
use crate::timing::{Profile, Timing};

/// The longest VIP gap a planned handover may cause: release, TimeoutNow, a vote round,
/// a heartbeat round and the add, on a LAN with a busy netlink.
pub const HANDOVER_GAP: Duration = Duration::from_millis(60);

/// A schedule and the properties it must have.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub family: Family,
    pub seed: u64,
    pub config: SimConfig,
    pub scripts: Vec<(Duration, Script)>,
    pub end: Duration,
    /// Overlap tolerated (frozen or killed leaders whose kernel keeps the VIP).
    pub overlap_allowed: Duration,
    /// After the last MarkHeal, exactly one holder within this long.
    pub heal_bound: Option<Duration>,
    /// No moment without a holder once the first hold began.
    pub no_gap: bool,
    /// After the last MarkHeal, no single gap longer than this (instead of the handover
    /// gap): a fault that makes the VIP move is measured from the moment it starts.
    pub max_gap: Option<Duration>,
    /// At most this many claims and refreshes refused by a faulty kernel in the run: a
    /// failing node backs off instead of re-claiming on every ack round.
    pub max_refused: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Partitions, one-way cuts, loss, duplicates, long delays, crash/restart, link and
    /// health flaps, drills: 3 or 5 nodes, process-owned device.
    Faults,
    /// Frozen and killed leaders with the VIP on the interface.
    Freeze,
    /// Drills, shutdowns, unhealthy leaders and preemption over a hostile network.
    Handover,
    /// One node alone, then joins minutes apart with config reloads.
    Bootstrap,
    /// A member replaced by a new one; the old one sometimes keeps running.
    Replace,
    /// Two nodes in two-node quorum mode, partitioned and healed.
    TwoNode,
    /// Rule-aimed: a pair of nodes that cannot hear each other, and followers restarting.
    PartialPartition,
    /// Rule-aimed: a follower's pre-vote round overlaps the return of the leader.
    SlowPrevote,
    /// Rule-aimed: handover messages held back for a long time.
    StaleTransfer,
    /// Rule-aimed: drills while netlink is slower than the network.
    SlowRelease,
    /// Rule-aimed (strict profile): acks arrive late, then the leader freezes.
    LateAcks,
    /// Rule-aimed: a voter restarts after voting in a newer term.
    ForgetfulVoter,
    /// The holder's kernel refuses the VIP (device deleted, EPERM): it must hand over,
    /// back off, and not win the VIP straight back.
    VipFailure,
    /// A follower restarts with a stored term the cluster never reached: no VIP gap.
    StaleTerm,
    /// Every node moves from the profile's timing to another profile's, one at a time
    /// (a reload or a restart each), while leaders are cut off from their peers.
    RollingTiming,
    /// Every node moves from protocol 1 to 2 one at a time (SIGTERM, a new binary, a
    /// start) with faults in between; then a rolling timing change.
    RollingUpgrade,
    /// Protocol 2 back to 1, one node at a time, the timing unchanged.
    RollingDowngrade,
    /// Restarts that land in elections: the holder dies or hands over, and the first
    /// node to stand in the vote round that follows is told to stop (SIGTERM) just then.
    StopInElection,
}

impl Family {
    pub const AIMED: [Family; 6] = [
        Family::PartialPartition,
        Family::SlowPrevote,
        Family::StaleTransfer,
        Family::SlowRelease,
        Family::LateAcks,
        Family::ForgetfulVoter,
    ];

    pub const BROAD: [Family; 12] = [
        Family::Faults,
        Family::Freeze,
        Family::Handover,
        Family::Bootstrap,
        Family::Replace,
        Family::TwoNode,
        Family::VipFailure,
        Family::StaleTerm,
        Family::RollingTiming,
        Family::RollingUpgrade,
        Family::RollingDowngrade,
        Family::StopInElection,
    ];

    pub const ALL: [Family; 18] = [
        Family::Faults,
        Family::Freeze,
        Family::Handover,
        Family::Bootstrap,
        Family::Replace,
        Family::TwoNode,
        Family::PartialPartition,
        Family::SlowPrevote,
        Family::StaleTransfer,
        Family::SlowRelease,
        Family::LateAcks,
        Family::ForgetfulVoter,
        Family::VipFailure,
        Family::StaleTerm,
        Family::RollingTiming,
        Family::RollingUpgrade,
        Family::RollingDowngrade,
        Family::StopInElection,
    ];

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Faults => "faults",
            Family::Freeze => "freeze",
            Family::Handover => "handover",
            Family::Bootstrap => "bootstrap",
            Family::Replace => "replace",
            Family::TwoNode => "two-node",
            Family::PartialPartition => "partial-partition",
            Family::SlowPrevote => "slow-prevote",
            Family::StaleTransfer => "stale-transfer",
            Family::SlowRelease => "slow-release",
            Family::LateAcks => "late-acks",
            Family::ForgetfulVoter => "forgetful-voter",
            Family::VipFailure => "vip-failure",
            Family::StaleTerm => "stale-term",
            Family::RollingTiming => "rolling-timing",
            Family::RollingUpgrade => "rolling-upgrade",
            Family::RollingDowngrade => "rolling-downgrade",
            Family::StopInElection => "stop-in-election",
        }
    }
}

fn s(secs: f64) -> Duration {
    Duration::from_secs_f64(secs)
}

/// Uniform in [lo, hi) seconds.
fn between(rng: &mut Rng, lo: f64, hi: f64) -> Duration {
    s(lo + (hi - lo) * rng.unit())
}

impl Scenario {
    /// The schedule of `family` for `seed`, with `rules` and `profile`.
    pub fn build(family: Family, seed: u64, rules: Rules, profile: Profile) -> Scenario {
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ family as u64);
        let timing = profile.timing();
        let mut sc = match family {
            Family::Faults => faults(&mut rng, timing),
            Family::Freeze => freeze(&mut rng, timing),
            Family::Handover => handover(&mut rng, timing),
            Family::Bootstrap => bootstrap(&mut rng, timing),
            Family::Replace => replace(&mut rng, timing),
            Family::TwoNode => two_node(&mut rng, timing),
            Family::PartialPartition => partial_partition(&mut rng, timing),
            Family::SlowPrevote => slow_prevote(&mut rng, timing),
            Family::StaleTransfer => stale_transfer(&mut rng, timing),
            Family::SlowRelease => slow_release(&mut rng, timing),
            Family::LateAcks => late_acks(&mut rng, timing),
            Family::ForgetfulVoter => forgetful_voter(&mut rng, timing),
            Family::VipFailure => vip_failure(&mut rng, timing),
            Family::StaleTerm => stale_term(&mut rng, timing),
            Family::RollingTiming => rolling_timing(&mut rng, profile, seed),
            Family::RollingUpgrade => rolling_upgrade(&mut rng, profile, seed),
            Family::RollingDowngrade => rolling_downgrade(&mut rng, timing),
            Family::StopInElection => stop_in_election(&mut rng, timing),
        };
        sc.family = family;
        sc.seed = seed;
        sc.config.seed = seed;
        sc.config.rules = rules;
        sc
    }

    pub fn run(&self) -> Report {
        let mut sim = Sim::new(self.config.clone());
        for (at, sc) in &self.scripts {
            sim.script(*at, sc.clone());
        }
        sim.run_until(self.end);
        sim.finish()
    }

    /// Every property the scenario promises, as one error text if any fails.
    pub fn check(&self, r: &Report) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Some(at) = r.livelock_at {
            errs.push(format!("livelock at {}: time stopped advancing", ms(at)));
        }
        // A bounded fault (a frozen leader) may overlap, each incident within the bound.
        let over = if self.overlap_allowed.is_zero() {
            r.overlap
        } else {
            r.max_overlap
        };
        if over > self.overlap_allowed {
            errs.push(format!(
                "two holders for {} in {} incidents (longest {}, allowed per incident {})",
                ms(r.overlap),
                r.overlap_incidents,
                ms(r.max_overlap),
                ms(self.overlap_allowed)
            ));
        }
        if let Some(bound) = self.heal_bound {
            match r.heal_to_holder {
                None => errs.push("no single holder after the faults healed".into()),
                Some(d) if d > bound => errs.push(format!(
                    "single holder only {} after healing (bound {})",
                    ms(d),
                    ms(bound)
                )),
                _ => {}
            }
            // After settling, the only gaps allowed are handovers (preemption of a better
            // node that came back): release, then claim, a few milliseconds.
            if self.max_gap.is_none() && r.max_gap_after_heal > HANDOVER_GAP {
                errs.push(format!(
                    "VIP missing for {} at once after it settled",
                    ms(r.max_gap_after_heal)
                ));
            }
        }
        if let Some(bound) = self.max_gap
            && r.max_gap_after_heal > bound
        {
            errs.push(format!(
                "VIP missing for {} at once after the fault began (bound {})",
                ms(r.max_gap_after_heal),
                ms(bound)
            ));
        }
        if let Some(bound) = self.max_refused
            && r.vip_ops_refused > bound
        {
            errs.push(format!(
                "{} claims or refreshes refused by a faulty kernel (bound {bound}): no back-off",
                r.vip_ops_refused
            ));
        }
        if r.after_shutdown_ready > 0 {
            errs.push(format!(
                "{} leads or claims by a node after it reported ShutdownReady",
                r.after_shutdown_ready
            ));
        }
        if self.no_gap && r.gap_total > Duration::ZERO {
            errs.push(format!(
                "VIP missing for {} after the first hold",
                ms(r.gap_total)
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} seed {}: {}",
                self.family.name(),
                self.seed,
                errs.join("; ")
            ))
        }
    }

    fn new(config: SimConfig, end: Duration) -> Scenario {
        Scenario {
            family: Family::Faults,
            seed: 0,
            config,
            scripts: Vec::new(),
            end,
            overlap_allowed: Duration::ZERO,
            heal_bound: None,
            no_gap: false,
            max_gap: None,
            max_refused: None,
        }
    }

    fn at(&mut self, t: Duration, s: Script) {
        self.scripts.push((t, s));
    }

    /// Clears every fault at `t` and measures from there, expecting one holder again within
    /// the usual liveness bound (scenarios with slower recovery set a wider one after).
    fn heal_all(&mut self, t: Duration, ids: &[NodeId]) {
        self.heal_bound = Some(heal_bound(&self.config.timing));
        self.at(t, Script::Heal);
        self.at(t, Script::SetNet(NetParams::lan()));
        for &id in ids {
            self.at(t, Script::Start(Target::Node(id)));
            self.at(t, Script::Health(Target::Node(id), true));
            self.at(t, Script::Link(Target::Node(id), true));
        }
        self.at(t, Script::MarkHeal);
    }
}

/// The liveness bound after faults heal: a restarted node is silent for E_max, then
/// times out within E_max, then needs a few round trips; a leader whose lease lapsed
/// may hold on for E_max before it gives up.
fn heal_bound(t: &Timing) -> Duration {
    t.election_max * 3 + Duration::from_millis(200)
}

fn net(rng: &mut Rng) -> NetParams {
    match rng.below(4) {
        0 => NetParams::lan(),
        1 => NetParams::hostile(0.0),
        2 => NetParams::hostile(0.1),
        _ => NetParams::hostile(0.3),
    }
}

fn random_target(rng: &mut Rng, n: u32) -> Target {
    match rng.below(3) {
        0 => Target::Holder,
        1 => Target::Follower(rng.below(u64::from(n - 1)) as usize),
        _ => Target::Node(1 + rng.below(u64::from(n)) as NodeId),
    }
}

/// 3 nodes (70 %) or 5, on process-owned devices, each with a priority drawn from
/// `priorities`.
fn mixed_cluster(rng: &mut Rng, timing: &Timing, priorities: [Priority; 4]) -> SimConfig {
    let n = if rng.chance(0.7) { 3 } else { 5 };
    let mut cfg = SimConfig::cluster(n, timing.clone(), 0);
    cfg.device_placement = true;
    for spec in &mut cfg.nodes {
        spec.priority = priorities[rng.below(4) as usize];
    }
    cfg
}

/// A LAN, or one with 5 % loss and the usual reordering, at even odds.
fn lan_or_lossy(rng: &mut Rng) -> NetParams {
    if rng.chance(0.5) {
        NetParams::lan()
    } else {
        NetParams::hostile(0.05)
    }
}

fn faults(rng: &mut Rng, timing: Timing) -> Scenario {
    let cfg = mixed_cluster(rng, &timing, [100, 100, 150, 50]);
    let n = cfg.nodes.len() as u32;
    let fault_end = 20.0;
    let mut sc = Scenario::new(cfg, s(fault_end + 10.0));
    sc.at(s(0.0), Script::SetNet(net(rng)));
    let mut t = 2.0 + rng.unit() * 2.0;
    while t < fault_end {
        let dur = 0.05 + rng.unit() * 4.0;
        let target = random_target(rng, n);
        match rng.below(11) {
            0 => sc.at(s(t), Script::Isolate(Target::Holder)),
            1 => {
                let cut = 1 + rng.below(u64::from(n - 1)) as u32;
                let a: Vec<NodeId> = (1..=cut).collect();
                let b: Vec<NodeId> = (cut + 1..=n).collect();
                sc.at(s(t), Script::Partition(a, b));
            }
            2 => sc.at(s(t), Script::Cut(target, random_target(rng, n))),
            3 => sc.at(s(t), Script::Restart(target, between(rng, 0.001, 3.0))),
            4 => {
                sc.at(s(t), Script::Crash(Target::Holder));
            }
            5 => {
                sc.at(s(t), Script::Link(target, false));
                sc.at(s(t + dur), Script::Link(target, true));
            }
            6 => {
                sc.at(s(t), Script::Health(target, false));
                sc.at(s(t + dur), Script::Health(target, true));
            }
            7 => sc.at(
                s(t),
                Script::Admin(Target::Holder, Admin::Transfer { to: None }),
            ),
            8 => sc.at(s(t), Script::DelayFrom(target, between(rng, 0.0, 1.5))),
            9 => sc.at(s(t), Script::SetNet(net(rng))),
            _ => sc.at(s(t), Script::Heal),
        }
        if rng.chance(0.3) {
            sc.at(s(t + dur), Script::Heal);
        }
        t += 0.3 + rng.unit() * 2.5;
    }
    let ids: Vec<NodeId> = (1..=n).collect();
    sc.heal_all(s(fault_end), &ids);
    sc
}

fn freeze(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = false;
    let end = 25.0;
    let mut sc = Scenario::new(cfg, s(end + 10.0));
    sc.at(s(0.0), Script::SetNet(lan_or_lossy(rng)));
    let mut t = 2.5;
    loop {
        let d = between(rng, 0.1, 4.0).as_secs_f64();
        if t + d > end - 1.0 {
            break;
        }
        match rng.below(3) {
            0 | 1 => sc.at(s(t), Script::Freeze(Target::Holder, s(d))),
            _ => {
                // A SIGKILL with the VIP on the interface: the kernel keeps it until its
                // lifetime runs out, like a freeze that never ends.
                sc.at(s(t), Script::Crash(Target::Holder));
                sc.at(s(t + d), Script::Start(Target::Node(1)));
                sc.at(s(t + d), Script::Start(Target::Node(2)));
                sc.at(s(t + d), Script::Start(Target::Node(3)));
            }
        }
        t += d + between(rng, 0.5, 3.0).as_secs_f64();
    }
    sc.heal_all(s(end), &[1, 2, 3]);
    sc.overlap_allowed = timing.freeze_overlap_bound();
    sc.heal_bound =
        Some(heal_bound(&timing) + timing.vip_lifetime + crate::timing::KERNEL_LIFETIME_SLACK);
    sc
}

fn handover(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = mixed_cluster(rng, &timing, [100, 150, 50, 100]);
    let n = cfg.nodes.len() as u32;
    cfg.preempt_delay = between(rng, 0.0, 3.0);
    let end = 25.0;
    let mut sc = Scenario::new(cfg, s(end + 10.0));
    sc.at(s(0.0), Script::SetNet(net(rng)));
    let mut t = 2.0;
    while t < end - 1.0 {
        match rng.below(6) {
            0 | 1 => {
                let to = if rng.chance(0.5) {
                    None
                } else {
                    Some(1 + rng.below(u64::from(n)) as NodeId)
                };
                sc.at(s(t), Script::Admin(Target::Holder, Admin::Transfer { to }));
            }
            2 => {
                // SIGTERM: hand over, then the process exits a little later.
                sc.at(s(t), Script::Admin(Target::Holder, Admin::Shutdown));
                sc.at(s(t + 0.05), Script::Crash(Target::Holder));
            }
            3 => {
                let d = between(rng, 0.2, 3.0);
                sc.at(s(t), Script::Health(Target::Holder, false));
                sc.at(s(t) + d, Script::Heal);
            }
            4 => sc.at(
                s(t),
                Script::Restart(random_target(rng, n), between(rng, 0.01, 2.0)),
            ),
            _ => sc.at(
                s(t),
                Script::DelayFrom(Target::Holder, between(rng, 0.0, 2.0)),
            ),
        }
        t += between(rng, 0.2, 3.0).as_secs_f64();
    }
    let ids: Vec<NodeId> = (1..=n).collect();
    sc.heal_all(s(end), &ids);
    sc
}

fn bootstrap(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing, 0);
    cfg.device_placement = true;
    cfg.nodes[0].members = vec![1];
    cfg.nodes[1].members = vec![1, 2];
    cfg.nodes[2].members = vec![1, 2, 3];
    cfg.nodes[1].start_at = None;
    cfg.nodes[2].start_at = None;
    // Lossless: the property is that the join procedure itself never opens a gap. (Under
    // loss a lease of five heartbeats can lapse for a few milliseconds, 1 in ~10^7
    // heartbeat rounds at 1%; the faults family covers loss.)
    // The documented procedure: start the new node with the grown list, then reload the
    // others one at a time, and only then add the next node (lists of any two running
    // nodes differ by at most one member).
    let t2 = between(rng, 5.0, 180.0);
    let r12 = t2 + between(rng, 0.05, 10.0);
    let t3 = r12 + between(rng, 5.0, 180.0);
    let mut sc = Scenario::new(cfg, t3 + s(30.0));
    sc.at(t2, Script::Start(Target::Node(2)));
    sc.at(r12, Script::Members(1, vec![1, 2]));
    sc.at(t3, Script::Start(Target::Node(3)));
    let r1 = t3 + between(rng, 0.05, 10.0);
    let r2 = t3 + between(rng, 0.05, 10.0);
    sc.at(r1, Script::Members(1, vec![1, 2, 3]));
    sc.at(r2, Script::Members(2, vec![1, 2, 3]));
    sc.no_gap = true;
    sc
}

fn replace(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(4, timing.clone(), 0);
    cfg.device_placement = true;
    for spec in &mut cfg.nodes {
        spec.members = vec![1, 2, 3];
    }
    cfg.nodes[3].members = vec![1, 2, 4];
    cfg.nodes[3].start_at = None;
    if rng.chance(0.5) {
        cfg.net = NetParams::hostile(0.05);
    }
    let old_keeps_running = rng.chance(0.5);
    let mut t = between(rng, 3.0, 10.0);
    let mut sc = Scenario::new(cfg, s(60.0));
    // Move leadership off node 3 first, as the guide says; a forgetful operator skips it.
    if rng.chance(0.7) {
        sc.at(
            t,
            Script::Admin(Target::Node(3), Admin::Transfer { to: None }),
        );
        t += between(rng, 0.5, 2.0);
    }
    if !old_keeps_running {
        sc.at(t, Script::Crash(Target::Node(3)));
    }
    // Remove, then add: each step changes the list by one member.
    t += between(rng, 0.5, 5.0);
    sc.at(t, Script::Members(1, vec![1, 2]));
    t += between(rng, 0.05, 5.0);
    sc.at(t, Script::Members(2, vec![1, 2]));
    t += between(rng, 1.0, 10.0);
    sc.at(t, Script::Start(Target::Node(4)));
    t += between(rng, 0.05, 5.0);
    let (first, second) = if rng.chance(0.5) { (1, 2) } else { (2, 1) };
    sc.at(t, Script::Members(first, vec![1, 2, 4]));
    t += between(rng, 0.05, 5.0);
    sc.at(t, Script::Members(second, vec![1, 2, 4]));
    // Faults in the new shape.
    t += between(rng, 1.0, 5.0);
    sc.at(t, Script::Isolate(Target::Holder));
    t += between(rng, 0.5, 3.0);
    sc.at(t, Script::Heal);
    t += s(2.0);
    sc.at(s(t.as_secs_f64().max(50.0)), Script::MarkHeal);
    sc.at(s(50.0), Script::SetNet(NetParams::lan()));
    sc.end = s(t.as_secs_f64().max(50.0) + 10.0);
    sc.heal_bound = Some(heal_bound(&timing));
    sc
}

fn two_node(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(2, timing.clone(), 0);
    cfg.quorum = Quorum::TwoNode;
    cfg.device_placement = true;
    cfg.nodes[0].priority = [100, 150][rng.below(2) as usize];
    let mut sc = Scenario::new(cfg, s(40.0));
    if rng.chance(0.5) {
        // Both start alone: each elects itself in the same term.
        sc.at(s(0.0), Script::Partition(vec![1], vec![2]));
    }
    let mut t = 3.0;
    while t < 25.0 {
        let d = between(rng, 0.2, 4.0);
        sc.at(s(t), Script::Heal);
        sc.at(
            s(t) + between(rng, 0.5, 3.0),
            Script::Partition(vec![1], vec![2]),
        );
        t += d.as_secs_f64() + 3.0;
    }
    // Both hold during a partition: that is the trade two-node mode makes. What must hold
    // is that one of them gives the VIP up once they hear each other again.
    sc.heal_all(s(28.0), &[1, 2]);
    sc.overlap_allowed = Duration::MAX;
    sc.heal_bound = Some(timing.election_max * 2);
    sc
}

fn partial_partition(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = true;
    let mut sc = Scenario::new(cfg, s(30.0));
    let mut t = 3.0;
    while t < 20.0 {
        // The holder and one follower stop hearing each other; the other follower still
        // hears both, and sometimes restarts in a flash.
        sc.at(s(t), Script::Cut(Target::Holder, Target::Follower(0)));
        sc.at(s(t), Script::Cut(Target::Follower(0), Target::Holder));
        let mut u = t + between(rng, 0.0, 1.5).as_secs_f64();
        for _ in 0..rng.below(4) {
            sc.at(
                s(u),
                Script::Restart(Target::Follower(1), between(rng, 0.001, 0.05)),
            );
            u += between(rng, 0.05, 1.0).as_secs_f64();
        }
        t += between(rng, 1.0, 4.0).as_secs_f64();
        sc.at(s(t), Script::Heal);
        t += between(rng, 0.5, 2.0).as_secs_f64();
    }
    sc.heal_all(s(20.0), &[1, 2, 3]);
    sc
}

fn slow_prevote(rng: &mut Rng, timing: Timing) -> Scenario {
    // Node 1 leads (best priority), node 2 may take over, node 3 is a witness that votes
    // but never stands, so the only campaigner is node 2.
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = true;
    cfg.preempt = false;
    cfg.nodes[0].priority = 150;
    cfg.nodes[2].priority = 0;
    let mut sc = Scenario::new(cfg, s(40.0));
    let e_min = timing.election_min.as_secs_f64();
    let e_max = timing.election_max.as_secs_f64();
    let mut t = 3.0;
    while t < 24.0 {
        // The witness stops hearing the leader for good and node 2 for a while, so node 2
        // runs a pre-vote round whose grant from the witness crawls. The leader comes
        // back to node 2 in the middle of that round: node 2 acks it (a fresh promise),
        // and must not campaign when the slow grant completes its majority.
        let delta = between(rng, 0.01, 0.15);
        sc.at(s(t), Script::Cut(Target::Node(1), Target::Node(3)));
        sc.at(s(t), Script::Cut(Target::Node(1), Target::Node(2)));
        sc.at(s(t), Script::Delay(3, 2, delta));
        // Node 2 ranks second of two candidates, so its round starts in the upper half
        // of [E_min, E_max] after its last ack; the leader returns within that round.
        let back =
            t + (e_min + e_max) / 2.0 + ((e_max - e_min) / 2.0 + delta.as_secs_f64()) * rng.unit();
        sc.at(s(back), Script::Heal);
        sc.at(s(back), Script::Cut(Target::Node(1), Target::Node(3)));
        sc.at(s(back), Script::Delay(3, 2, delta));
        // Node 2's first acks reach the leader; its later refusals do not, so the leader
        // keeps the lease those acks built instead of stepping down at once.
        sc.at(
            s(back) + between(rng, 0.02, 0.15),
            Script::Cut(Target::Node(2), Target::Node(1)),
        );
        t = back + 2.0;
        sc.at(s(t), Script::Heal);
        // Give leadership back to node 1 for the next round.
        sc.at(
            s(t + 0.5),
            Script::Admin(Target::Holder, Admin::Transfer { to: Some(1) }),
        );
        t += 2.0;
    }
    sc.heal_all(s(30.0), &[1, 2, 3]);
    sc
}

/// Rule-aimed: a node votes in a new term, crashes and comes back (term and vote lost if
/// not persisted) while the deposed leader still talks to it.
fn forgetful_voter(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = true;
    cfg.preempt = false;
    cfg.nodes[0].priority = 150;
    cfg.nodes[2].priority = 0;
    let mut sc = Scenario::new(cfg, s(40.0));
    let e_max = timing.election_max.as_secs_f64();
    let mut t = 3.0;
    while t < 26.0 {
        // Node 1 (leader) is cut off; nodes 2 and 3 elect node 2 in a newer term; node 3
        // restarts (forgetting that term unless it was persisted) and then hears node 1
        // again before node 1 gives up for want of a quorum (lease + E_max after its
        // last ack): node 3 must refuse node 1's older term.
        sc.at(s(t), Script::Isolate(Target::Node(1)));
        let restart = t + e_max + 0.05;
        sc.at(
            s(restart),
            Script::Restart(Target::Node(3), between(rng, 0.001, 0.02)),
        );
        let back = restart + 0.05 + between(rng, 0.0, 0.3).as_secs_f64();
        sc.at(s(back), Script::Heal);
        sc.at(s(back), Script::Partition(vec![1], vec![2]));
        let u = back + 1.5;
        t = u + 1.0;
        sc.at(s(t), Script::Heal);
        sc.at(
            s(t + 0.5),
            Script::Admin(Target::Holder, Admin::Transfer { to: Some(1) }),
        );
        t += 3.0;
    }
    sc.heal_all(s(30.0), &[1, 2, 3]);
    sc
}

fn stale_transfer(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = true;
    let mut sc = Scenario::new(cfg, s(30.0));
    let mut t = 3.0;
    while t < 20.0 {
        // The handover message (and its retransmission) crawl; the old leader may give up
        // waiting before they arrive.
        let d = between(rng, 0.1, 2.0);
        sc.at(s(t), Script::DelayFrom(Target::Holder, d));
        sc.at(
            s(t + 0.01),
            Script::Admin(Target::Holder, Admin::Transfer { to: None }),
        );
        sc.at(
            s(t + 0.05),
            Script::DelayFrom(Target::Holder, Duration::ZERO),
        );
        t += between(rng, 2.0, 4.0).as_secs_f64();
        sc.at(s(t), Script::Heal);
    }
    sc.heal_all(s(21.0), &[1, 2, 3]);
    sc
}

fn slow_release(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = true;
    // Netlink slower than a LAN round trip (a busy host), still within the margin d.
    cfg.netlink = NetlinkParams {
        min: Duration::from_millis(2),
        max: timing.margin,
    };
    let mut sc = Scenario::new(cfg, s(30.0));
    let mut t = 3.0;
    while t < 20.0 {
        sc.at(
            s(t),
            Script::Admin(Target::Holder, Admin::Transfer { to: None }),
        );
        t += between(rng, 1.0, 2.0).as_secs_f64();
    }
    sc.heal_all(s(21.0), &[1, 2, 3]);
    sc
}

fn late_acks(rng: &mut Rng, timing: Timing) -> Scenario {
    let mut cfg = SimConfig::cluster(3, timing.clone(), 0);
    cfg.device_placement = false;
    let mut sc = Scenario::new(cfg, s(45.0));
    let mut t = 3.0;
    while t < 30.0 {
        // The last acks reach the leader late (an ack round that is no longer fresh),
        // its heartbeats stop reaching the followers, and it freezes before its lease
        // runs out. A kernel lifetime renewed from those stale acks outlives the
        // followers' promises, which date from the acks themselves.
        let d = between(rng, 0.15, timing.lease.as_secs_f64() * 0.9);
        sc.at(s(t), Script::DelayTo(Target::Holder, d));
        sc.at(s(t + 0.1), Script::Cut(Target::Holder, Target::Follower(0)));
        sc.at(s(t + 0.1), Script::Cut(Target::Holder, Target::Follower(1)));
        sc.at(
            s(t + 0.1) + d + between(rng, 0.002, 0.03),
            Script::Freeze(Target::Holder, s(5.0)),
        );
        t += 6.0;
        sc.at(s(t), Script::Heal);
        t += 2.0;
    }
    sc.heal_all(s(35.0), &[1, 2, 3]);
    sc.overlap_allowed = timing.freeze_overlap_bound();
    sc
}

/// The holder's kernel starts refusing the VIP; sometimes the next holder's too. Each
/// time, another node must hold the VIP within a lease, the failures' back-off and a
/// handover (an election when no follower is eligible), and the failing node must not
/// hammer its kernel.
fn vip_failure(rng: &mut Rng, timing: Timing) -> Scenario {
    let cfg = mixed_cluster(rng, &timing, [100, 100, 150, 50]);
    let n = cfg.nodes.len() as u32;
    let mut sc = Scenario::new(cfg, s(40.0));
    sc.at(s(0.0), Script::SetNet(lan_or_lossy(rng)));
    let start = between(rng, 3.0, 6.0);
    let fault = between(rng, 5.0, 25.0);
    sc.at(start, Script::VipFault(Target::Holder, true));
    sc.at(start, Script::MarkHeal);
    if rng.chance(0.4) {
        // The node it hands over to fails as well, a little later: the third must win.
        let later = start + between(rng, 0.0, 2.0);
        sc.at(later, Script::VipFault(Target::Holder, true));
    }
    let end = start + fault;
    for id in 1..=n {
        sc.at(end, Script::VipFault(Target::Node(id), false));
    }
    // Up to three refusals, a handover, then the next node's claim (an election when no
    // follower was eligible).
    let bound = timing.lease + timing.election_max * 2 + Duration::from_millis(500);
    sc.heal_bound = Some(bound);
    sc.max_gap = Some(bound);
    // Each failing node: a few refusals per leadership, then benched for 2 s, 4 s, ...;
    // without the back-off a leader refuses about ten claims a second.
    let secs = fault.as_secs_f64();
    sc.max_refused = Some(2 * (3 * (secs / 2.0).ceil() as u64 + 6));
    sc
}

/// A follower restarts with a stored term far above the cluster's: it refuses the
/// leader's heartbeats, and the leader must keep the VIP (no gap) while its lease runs.
fn stale_term(rng: &mut Rng, timing: Timing) -> Scenario {
    let n = if rng.chance(0.7) { 3 } else { 5 };
    let mut cfg = SimConfig::cluster(n, timing, 0);
    cfg.device_placement = true;
    cfg.preempt = false;
    let mut sc = Scenario::new(cfg, s(30.0));
    if rng.chance(0.5) {
        sc.at(s(0.0), Script::SetNet(NetParams::hostile(0.0)));
    }
    let mut t = between(rng, 3.0, 5.0).as_secs_f64();
    // A node restarted beyond the leap stays out until a person clears its state (the
    // cluster refuses its term, it refuses the cluster's): once, and only where the
    // others still make a majority while another follower restarts.
    let mut beyond_leap = n < 5;
    while t < 20.0 {
        let bump = match rng.below(3) {
            0 => 1 + rng.below(3),
            1 if beyond_leap => 1 + rng.below(1_000_000),
            1 => {
                beyond_leap = true;
                crate::message::MAX_TERM_LEAP + 1 + rng.below(1 << 40)
            }
            _ => 1 + rng.below(1_000_000),
        };
        let k = rng.below(u64::from(n - 1)) as usize;
        sc.at(
            s(t),
            Script::RestartWithTerm(Target::Follower(k), between(rng, 0.001, 2.0), bump),
        );
        t += between(rng, 3.0, 6.0).as_secs_f64();
    }
    sc.no_gap = true;
    sc
}

/// Every few seconds an election, by a crash of the holder or a drill, with the first
/// node to stand in its vote round told to stop as it does: each candidate that wins
/// after it reported ready to exit fails the check, as would a cluster that stays
/// without a holder once the stopped nodes are back.
fn stop_in_election(rng: &mut Rng, timing: Timing) -> Scenario {
    let cfg = mixed_cluster(rng, &timing, [100, 100, 150, 50]);
    let n = cfg.nodes.len() as u32;
    let mut sc = Scenario::new(cfg, s(30.0));
    sc.at(s(0.0), Script::SetNet(lan_or_lossy(rng)));
    let mut t = between(rng, 3.0, 5.0);
    while t < s(20.0) {
        let gap = between(rng, 3.0, 6.0);
        let down = between(rng, 0.01, 1.0);
        sc.at(
            t,
            Script::StopNextCandidate {
                down,
                until: t + gap,
            },
        );
        if rng.chance(0.5) {
            sc.at(t, Script::Restart(Target::Holder, between(rng, 0.01, 2.0)));
        } else {
            sc.at(
                t,
                Script::Admin(Target::Holder, Admin::Transfer { to: None }),
            );
        }
        t += gap;
    }
    let ids: Vec<NodeId> = (1..=n).collect();
    sc.heal_all(t + s(3.0), &ids);
    sc.end = t + s(13.0);
    sc
}

/// The profile a rolling change from `from` goes to: the next one for even seeds, the
/// one before for odd seeds, so every ordered pair of profiles gets half the seeds.
pub fn rolling_target(from: Profile, seed: u64) -> Profile {
    let all = Profile::ALL;
    let i = all.iter().position(|p| *p == from).unwrap_or(0);
    let step = if seed.is_multiple_of(2) {
        1
    } else {
        all.len() - 1
    };
    all[(i + step) % all.len()]
}

/// The heal bound of a cluster whose nodes may run either of two timings.
fn mixed_heal_bound(a: &Timing, b: &Timing) -> Duration {
    heal_bound(if a.election_max >= b.election_max {
        a
    } else {
        b
    })
}

/// SIGTERM (a handover), exit, the new config or binary in place, and a start after
/// `down`: one node's step of a rolling change.
fn restart_as(
    sc: &mut Scenario,
    t: Duration,
    id: NodeId,
    down: Duration,
    timing: Option<Timing>,
    protocol: u8,
) {
    let respec = Script::Respec(id, timing, protocol);
    for (at, s) in sigterm_restart(t, id, down, Some(respec)) {
        sc.at(at, s);
    }
}

/// Faults between the steps of a rolling change: the holder cut from its peers (not
/// from clients: the case where a lease outliving a faster follower's promise shows),
/// a follower crashing and restarting, or nothing.
fn rolling_fault(sc: &mut Scenario, rng: &mut Rng, t: Duration) {
    match rng.below(4) {
        0 | 1 => {
            sc.at(t, Script::Isolate(Target::Holder));
            sc.at(t + between(rng, 0.5, 3.0), Script::Heal);
        }
        2 => sc.at(
            t,
            Script::Restart(Target::Follower(0), between(rng, 0.001, 1.0)),
        ),
        _ => {}
    }
}

/// Each node in a random order moves from `from`'s timing to another profile's, by a
/// reload or a restart, with leaders cut from their peers in between.
fn rolling_timing(rng: &mut Rng, from: Profile, seed: u64) -> Scenario {
    let to = rolling_target(from, seed);
    let (a, b) = (from.timing(), to.timing());
    let mut cfg = mixed_cluster(rng, &a, [100, 100, 150, 50]);
    let n = cfg.nodes.len() as u32;
    for spec in &mut cfg.nodes {
        spec.timing = Some(a.clone());
    }
    let mut sc = Scenario::new(cfg, s(60.0));
    sc.at(s(0.0), Script::SetNet(lan_or_lossy(rng)));
    let mut order: Vec<NodeId> = (1..=n).collect();
    rng.shuffle(&mut order);
    let mut t = between(rng, 4.0, 6.0);
    for id in order {
        rolling_fault(&mut sc, rng, t);
        t += between(rng, 1.0, 4.0);
        if rng.chance(0.5) {
            sc.at(t, Script::Retime(id, b.clone()));
        } else {
            restart_as(&mut sc, t, id, between(rng, 0.01, 1.0), Some(b.clone()), 2);
        }
        t += between(rng, 1.0, 4.0);
    }
    // The probe's case once more, with every node on the new timing.
    rolling_fault(&mut sc, rng, t);
    let ids: Vec<NodeId> = (1..=n).collect();
    sc.heal_all(t + s(5.0), &ids);
    sc.heal_bound = Some(mixed_heal_bound(&a, &b));
    sc
}

/// Protocol 1 everywhere, then each node restarted on protocol 2 with faults between;
/// once all speak 2, a rolling timing change (what the upgrade makes safe).
fn rolling_upgrade(rng: &mut Rng, from: Profile, seed: u64) -> Scenario {
    let to = rolling_target(from, seed);
    let (a, b) = (from.timing(), to.timing());
    let mut cfg = mixed_cluster(rng, &a, [100, 100, 150, 50]);
    let n = cfg.nodes.len() as u32;
    for spec in &mut cfg.nodes {
        spec.protocol = 1;
    }
    let mut sc = Scenario::new(cfg, s(80.0));
    sc.at(s(0.0), Script::SetNet(lan_or_lossy(rng)));
    let mut order: Vec<NodeId> = (1..=n).collect();
    rng.shuffle(&mut order);
    let mut t = between(rng, 4.0, 6.0);
    for &id in &order {
        rolling_fault(&mut sc, rng, t);
        t += between(rng, 1.0, 4.0);
        restart_as(&mut sc, t, id, between(rng, 0.01, 2.0), None, 2);
        t += between(rng, 2.0, 4.0);
    }
    rng.shuffle(&mut order);
    for &id in &order {
        rolling_fault(&mut sc, rng, t);
        t += between(rng, 1.0, 3.0);
        sc.at(t, Script::Retime(id, b.clone()));
        t += between(rng, 1.0, 3.0);
    }
    let ids: Vec<NodeId> = (1..=n).collect();
    sc.heal_all(t + s(5.0), &ids);
    sc.heal_bound = Some(mixed_heal_bound(&a, &b));
    sc
}

/// Protocol 2 back to 1, one node at a time, with faults between; the timing is the
/// same everywhere (a downgrade with mixed timings is refused by the procedure).
fn rolling_downgrade(rng: &mut Rng, timing: Timing) -> Scenario {
    let cfg = mixed_cluster(rng, &timing, [100, 100, 150, 50]);
    let n = cfg.nodes.len() as u32;
    let mut sc = Scenario::new(cfg, s(50.0));
    sc.at(s(0.0), Script::SetNet(lan_or_lossy(rng)));
    let mut order: Vec<NodeId> = (1..=n).collect();
    rng.shuffle(&mut order);
    let mut t = between(rng, 4.0, 6.0);
    for id in order {
        rolling_fault(&mut sc, rng, t);
        t += between(rng, 1.0, 4.0);
        restart_as(&mut sc, t, id, between(rng, 0.01, 2.0), None, 1);
        t += between(rng, 2.0, 4.0);
    }
    let ids: Vec<NodeId> = (1..=n).collect();
    sc.heal_all(t + s(5.0), &ids);
    sc
}

/// Runs `count` seeds of a family and returns the reports with any failures.
pub fn sweep(family: Family, seeds: std::ops::Range<u64>, rules: Rules, profile: Profile) -> Sweep {
    let mut out = Sweep {
        family,
        ..Sweep::default()
    };
    for seed in seeds {
        let sc = Scenario::build(family, seed, rules, profile);
        let r = sc.run();
        out.runs += 1;
        out.events += r.events;
        out.overlap_total += r.overlap;
        out.max_overlap = out.max_overlap.max(r.max_overlap);
        if r.overlap > Duration::ZERO {
            out.runs_with_overlap += 1;
        }
        // A fault measured from its start (max_gap) reports the gap it caused.
        let heal = if sc.max_gap.is_some() {
            Some(r.max_gap_after_heal)
        } else {
            r.heal_to_holder
        };
        if let Some(h) = heal {
            out.heal.push(h);
        }
        out.gaps += u32::from(r.gap_total > Duration::ZERO);
        out.failovers.extend(r.failovers.iter().copied());
        out.handovers.extend(r.handovers.iter().copied());
        if let Err(e) = sc.check(&r) {
            out.failures.push(e);
        }
    }
    out
}

#[derive(Debug)]
pub struct Sweep {
    pub family: Family,
    pub runs: u32,
    pub events: u64,
    pub runs_with_overlap: u32,
    pub overlap_total: Duration,
    pub max_overlap: Duration,
    pub gaps: u32,
    pub heal: Vec<Duration>,
    pub failovers: Vec<Duration>,
    pub handovers: Vec<Duration>,
    pub failures: Vec<String>,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep {
            family: Family::Faults,
            runs: 0,
            events: 0,
            runs_with_overlap: 0,
            overlap_total: Duration::ZERO,
            max_overlap: Duration::ZERO,
            gaps: 0,
            heal: Vec::new(),
            failovers: Vec::new(),
            handovers: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// A clean failover measurement: a 3-node LAN cluster, the holder is killed (device
/// placement, so its VIP goes with it), and we time the next holder.
pub fn failover_samples(profile: Profile, loss: f64, runs: u64) -> Vec<Duration> {
    (0..runs)
        .flat_map(|seed| failover_run(profile, loss, seed, false).failovers)
        .collect()
}

/// One failover measurement (see [`failover_samples`]).
pub fn failover_run(profile: Profile, loss: f64, seed: u64, trace: bool) -> Report {
    let mut cfg = SimConfig::cluster(3, profile.timing(), seed);
    cfg.device_placement = true;
    cfg.net.loss = loss;
    cfg.trace = trace;
    let mut rng = Rng::new(seed ^ 0xFA11);
    let at = between(&mut rng, 3.0, 4.0);
    let mut sim = Sim::new(cfg);
    sim.script(at, Script::Crash(Target::Holder));
    // A traced run stops soon after the new hold, so the trace shows the failover.
    sim.run_until(at + if trace { s(5.0) } else { s(15.0) });
    sim.finish()
}

/// Drill measurements: request → VIP on the new holder, on a LAN.
pub fn handover_samples(profile: Profile, runs: u64) -> Vec<Duration> {
    let mut out = Vec::new();
    for seed in 0..runs {
        let mut cfg = SimConfig::cluster(3, profile.timing(), seed);
        cfg.device_placement = true;
        let mut sim = Sim::new(cfg);
        sim.script(
            s(3.0),
            Script::Admin(Target::Holder, Admin::Transfer { to: None }),
        );
        sim.run_until(s(6.0));
        out.extend(sim.finish().handovers);
    }
    out
}
