//! `apivip run`: the event loop that feeds the election state machine with heartbeats,
//! timers, VIP outcomes, health, control requests and signals, and carries out what it
//! answers. Every decision is the state machine's; this module only does I/O.

pub mod apiserver;
pub mod clock;
pub mod vipctl;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use apivip_proto::election::{
    Action, Admin, Event, Member, Node, NodeConfig, Notice, Quorum as ElQuorum, RoleName, Rules,
    VipState,
};
use apivip_proto::wire::ClusterId;
use apivip_proto::{Codec, Instant, Keyring};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, Loaded, Quorum, Sources};
use crate::control::{
    self, Call, DrillReport, PeerReport, Request, Response, StatusReport, VipReport,
};
use crate::forward::ForwarderHandle;
use crate::heartbeat::{self, Inbound, Transport};
use crate::metrics::{Metrics, Readiness};
use crate::state::Store;
use clock::Clock;
use vipctl::{VipDone, VipOp};

/// How long a drill may take before it is reported as failed.
const DRILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the handover before releasing anyway.
const SHUTDOWN_HANDOVER: Duration = Duration::from_secs(3);
/// The loop wakes at least this often, so a suspended machine's BOOTTIME jump is noticed
/// even when tokio's monotonic timer has not fired.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// How the VIP is held, and what `status` says about it.
pub struct VipSetup {
    pub backend: vipctl::Backend,
    pub report: VipReport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipEvent {
    /// Someone (or the lifetime) removed the VIP from the kernel.
    Removed,
    LinkDown,
    LinkUp,
}

/// Everything `run` needs besides the config.
pub struct Setup {
    /// Where the config came from, to read it again on SIGHUP.
    pub sources: Sources,
    pub vip: VipSetup,
    /// The local apiserver's readiness.
    pub health: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The embedded forwarder, when it runs on this node.
    pub forwarder: Option<Arc<ForwarderHandle>>,
}

/// Reads the key file, naming it in every error.
pub fn load_keys(path: &std::path::Path) -> Result<Keyring> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("key_file {}: cannot read it", path.display()))?;
    Keyring::parse(&text).map_err(|e| anyhow!("key_file {}: {e}", path.display()))
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
    n.rules = Rules::ALL;
    n.validate().map_err(|e| anyhow!("election config: {e}"))?;
    Ok(n)
}

fn peer_addrs(cfg: &Config) -> BTreeMap<u32, std::net::SocketAddr> {
    heartbeat::peer_addrs(
        cfg.peers.iter().map(|p| (p.id, p.address)),
        cfg.node_id,
        cfg.port,
    )
}

struct Drill {
    started: Instant,
    reply: Option<oneshot::Sender<Response>>,
}

struct Daemon {
    cfg: Config,
    sources: Sources,
    clock: Clock,
    node: Node,
    transport: Transport,
    store: Store,
    vip_ops: mpsc::UnboundedSender<VipOp>,
    vip_report: VipReport,
    timer: Option<Instant>,
    drill: Option<Drill>,
    holder: Option<u32>,
    /// When each member was last heard, for the takeover time of a failover.
    last_failover_ms: Option<f64>,
    warned_non_members: BTreeSet<u32>,
    shutdown_ready: bool,
    /// A failed fsync: stop answering until a later write works (an unpersisted vote
    /// must never leave).
    persist_broken: bool,
    metrics: Arc<Metrics>,
    forwarder: Option<Arc<ForwarderHandle>>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(loaded: Loaded, setup: Setup) -> Result<()> {
    let cfg = loaded.config;
    let me = cfg
        .me()
        .ok_or_else(|| {
            anyhow!(
                "node_id {} is not in peers: add this node to the peer list",
                cfg.node_id
            )
        })?
        .clone();
    let node_cfg = node_config(&cfg)?;
    let keys = load_keys(&cfg.key_file)?;
    let mut store = Store::open(&cfg.state_dir)?;
    let epoch = store.begin_epoch()?;
    let codec = Codec::new(ClusterId::from_name(&cfg.cluster), cfg.node_id, epoch, keys);
    let local = std::net::SocketAddr::new(me.address, cfg.port);
    let transport = Transport::bind(local, codec, peer_addrs(&cfg))?;
    let worker = vipctl::spawn(setup.vip.backend)
        .await
        .map_err(|e| anyhow!("VIP {}: {e}", setup.vip.report.address))?;
    let (vip_ops, mut vip_done, mut vip_events) = (worker.ops, worker.done, worker.events);
    let mut health = setup.health;

    let (call_tx, mut calls) = mpsc::channel::<Call>(16);
    let _control = control::serve(&cfg.control.socket, call_tx).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;

    let clock = Clock::start();
    let now = clock.now();
    let healthy = *health.borrow_and_update();
    let seed = epoch ^ (u64::from(cfg.node_id) << 32);
    let node = Node::new(node_cfg, store.state().election, healthy, seed, now);
    tracing::info!(
        node = cfg.node_id,
        cluster = %cfg.cluster,
        heartbeat = %local,
        epoch,
        term = store.state().election.term,
        vip = %setup.vip.report.address,
        placement = %setup.vip.report.placement,
        reason = %setup.vip.report.placement_reason,
        "apivip starting: silent for one election timeout before voting"
    );
    let mut d = Daemon {
        cfg,
        sources: setup.sources,
        clock,
        node,
        transport,
        store,
        vip_ops,
        vip_report: setup.vip.report,
        timer: None,
        drill: None,
        holder: None,
        last_failover_ms: None,
        warned_non_members: BTreeSet::new(),
        shutdown_ready: false,
        persist_broken: false,
        metrics: setup.metrics,
        forwarder: setup.forwarder,
    };
    let reporter = d.forwarder.as_ref().map(|f| f.report_to(d.metrics.clone()));
    d.metrics.set_peers(
        &d.cfg
            .peers
            .iter()
            .map(|p| p.id)
            .filter(|id| *id != d.cfg.node_id)
            .collect::<Vec<_>>(),
    );
    d.metrics.set_apiserver_healthy(healthy);
    d.metrics.set_role(Some(RoleName::Follower));
    let first = d.node.start(now);
    d.apply(first);
    setup.readiness.set_election_running(true);
    // systemd (Type=notify) learns we are up; outside systemd this does nothing.
    if let Err(e) = crate::manifest::notify_ready() {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
    let mut stopping: Option<Instant> = None;

    loop {
        let sleep = d.next_wake(stopping);
        tokio::select! {
            r = d.transport.recv() => match r {
                Ok(Inbound::Message(m)) => {
                    if d.cfg.peers.iter().any(|p| p.id == m.from) {
                        d.metrics.heartbeat_received(m.from);
                    } else {
                        // Authenticated but not a member (a removed node still running):
                        // the election ignores it (Rule M1); count it as such.
                        d.metrics.heartbeat_rejected_reason("unknown_peer");
                    }
                    d.handle(Event::Message { from: m.from, msg: m.msg })
                }
                Ok(Inbound::Rejected { from, error }) => {
                    d.metrics.heartbeat_rejected(&error);
                    tracing::debug!(%from, reason = error.reason(), "heartbeat datagram rejected");
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat socket receive failed"),
            },
            _ = tokio::time::sleep(sleep) => {
                let now = d.clock.now();
                if d.timer.is_some_and(|t| now >= t) {
                    d.handle(Event::Timer);
                }
                d.expire_drill(now);
            }
            Some(done) = vip_done.recv() => match done {
                VipDone::Applied { ok } => {
                    d.metrics.set_vip_held(ok);
                    d.handle(Event::VipApplied { ok })
                }
                VipDone::Released => {
                    d.metrics.set_vip_held(false);
                    d.handle(Event::VipReleased)
                }
            },
            Some(ev) = vip_events.recv() => match ev {
                VipEvent::Removed => {
                    // Our own releases show up here too; only a VIP we believe held is news.
                    if matches!(d.node.vip(), VipState::Held | VipState::Claiming) {
                        tracing::warn!("the VIP was removed from the kernel by someone else (or its lifetime ran out): putting it back while the lease holds");
                    }
                    d.handle(Event::VipLost);
                }
                VipEvent::LinkDown => {
                    tracing::warn!(interface = %d.vip_report.interface, "VIP interface went down");
                    d.handle(Event::Link(false));
                }
                VipEvent::LinkUp => {
                    tracing::info!(interface = %d.vip_report.interface, "VIP interface is up");
                    d.handle(Event::Link(true));
                }
            },
            Ok(()) = health.changed() => {
                let h = *health.borrow_and_update();
                d.metrics.set_apiserver_healthy(h);
                tracing::info!(healthy = h, "local apiserver health changed");
                d.handle(Event::Health(h));
            }
            Some((req, reply)) = calls.recv() => d.control(req, reply),
            _ = sigterm.recv() => d.begin_stop(&mut stopping, "SIGTERM"),
            _ = sigint.recv() => d.begin_stop(&mut stopping, "SIGINT"),
            _ = sigusr1.recv() => {
                tracing::info!("SIGUSR1: failover drill");
                d.start_drill(None, None);
            }
            _ = sighup.recv() => d.reload(),
        }
        if let Some(since) = stopping {
            let waited = d.clock.now().saturating_since(since);
            if d.shutdown_ready || waited >= SHUTDOWN_HANDOVER {
                break;
            }
        }
    }
    setup.readiness.set_election_running(false);
    let _ = crate::manifest::notify_stopping();
    if let Some(r) = reporter {
        r.abort();
    }
    d.release_for_exit(&mut vip_done).await;
    d.metrics.set_vip_held(false);
    tracing::info!("apivip stopped");
    Ok(())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl Daemon {
    fn next_wake(&self, stopping: Option<Instant>) -> Duration {
        let mut wake = MAX_SLEEP;
        if let Some(t) = self.timer {
            wake = wake.min(self.clock.until(t));
        }
        if let Some(dr) = &self.drill {
            wake = wake.min(self.clock.until(dr.started + DRILL_TIMEOUT));
        }
        if let Some(s) = stopping {
            wake = wake.min(self.clock.until(s + SHUTDOWN_HANDOVER));
        }
        wake
    }

    fn handle(&mut self, ev: Event) {
        let now = self.clock.now();
        let actions = self.node.handle(now, ev);
        self.apply(actions);
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Persist(p) => match self.store.persist(p) {
                    Ok(()) => self.persist_broken = false,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot persist term and vote: not answering until it works");
                        self.persist_broken = true;
                    }
                },
                Action::Send { to, msg } => {
                    if !self.persist_broken {
                        self.transport.send(to, &msg);
                        self.metrics.heartbeat_sent();
                    }
                }
                Action::ClaimVip { lifetime } => self.vip_op(VipOp::Claim(lifetime)),
                Action::RefreshVip { lifetime } => self.vip_op(VipOp::Refresh(lifetime)),
                Action::ReleaseVip => self.vip_op(VipOp::Release),
                Action::SetTimer(t) => self.timer = Some(t),
                Action::Notice(n) => self.notice(n),
            }
        }
    }

    fn vip_op(&mut self, op: VipOp) {
        if self.vip_ops.send(op).is_err() {
            tracing::error!(?op, "the VIP worker is gone");
        }
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
                tracing::info!(to = ?to, reason = reason.as_str(), "handing over the VIP");
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
        }
    }

    fn control(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        match req {
            Request::Status => {
                let _ = reply.send(Response::Status(Box::new(self.status())));
            }
            Request::Drill { to } => self.start_drill(to, Some(reply)),
        }
    }

    fn start_drill(&mut self, to: Option<u32>, reply: Option<oneshot::Sender<Response>>) {
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

    fn begin_stop(&mut self, stopping: &mut Option<Instant>, why: &str) {
        if stopping.is_some() {
            tracing::warn!("{why} again: stopping now");
            self.shutdown_ready = true;
            return;
        }
        tracing::info!("{why}: handing over and stopping");
        *stopping = Some(self.clock.now());
        self.handle(Event::Admin(Admin::Shutdown));
    }

    /// Makes sure the VIP is gone before the process exits (the worker also releases
    /// when its queue closes, but waiting here lets the exit code mean "released").
    async fn release_for_exit(&mut self, done: &mut mpsc::UnboundedReceiver<VipDone>) {
        self.vip_op(VipOp::Release);
        let wait = async {
            while let Some(d) = done.recv().await {
                if d == VipDone::Released {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(Duration::from_secs(2), wait).await {
            Ok(true) => tracing::info!("VIP released"),
            _ => tracing::error!("could not confirm the VIP was released before exit"),
        }
    }

    /// SIGHUP: read the config again. Anything wrong keeps the running config (and the
    /// VIP) untouched.
    fn reload(&mut self) {
        let new = match crate::config::load(&self.sources) {
            Ok(l) => l.config,
            Err(e) => {
                tracing::error!("config reload rejected, keeping the running config:\n{e}");
                return;
            }
        };
        if let Err(e) = self.try_reload(new) {
            tracing::error!("config reload rejected, keeping the running config: {e:#}");
        }
    }

    fn try_reload(&mut self, new: Config) -> Result<()> {
        let old = &self.cfg;
        let fixed = [
            ("node_id", old.node_id.to_string(), new.node_id.to_string()),
            ("cluster", old.cluster.clone(), new.cluster.clone()),
            ("port", old.port.to_string(), new.port.to_string()),
            (
                "state_dir",
                old.state_dir.display().to_string(),
                new.state_dir.display().to_string(),
            ),
            (
                "control.socket",
                old.control.socket.display().to_string(),
                new.control.socket.display().to_string(),
            ),
            (
                "vip",
                format!(
                    "{:?}",
                    old.vip
                        .as_ref()
                        .map(|v| (&v.address, &v.interface, v.placement))
                ),
                format!(
                    "{:?}",
                    new.vip
                        .as_ref()
                        .map(|v| (&v.address, &v.interface, v.placement))
                ),
            ),
            (
                "own peer address",
                format!("{:?}", old.me().map(|p| p.address)),
                format!("{:?}", new.me().map(|p| p.address)),
            ),
        ];
        for (field, a, b) in fixed {
            if a != b {
                bail!(
                    "{field} changed from {a} to {b}: that needs a restart (move the VIP off this node first with `apivip drill`)"
                );
            }
        }
        let node_cfg = node_config(&new)?;
        let keys = load_keys(&new.key_file)?;
        if let Some(f) = &self.forwarder {
            let health = crate::forward::settings::health(&new);
            let change = (health != crate::forward::settings::health(&self.cfg)).then_some(health);
            f.update_backends(crate::forward::settings::backends(&new), change)
                .map_err(|e| anyhow!("forward: {e}"))?;
        }
        self.transport.reconfigure(peer_addrs(&new), keys);
        self.cfg = new;
        self.metrics.set_peers(
            &self
                .cfg
                .peers
                .iter()
                .map(|p| p.id)
                .filter(|id| *id != self.cfg.node_id)
                .collect::<Vec<_>>(),
        );
        self.handle(Event::Reconfigure(node_cfg));
        tracing::info!(members = ?self.cfg.peers.iter().map(|p| p.id).collect::<Vec<_>>(), "config reloaded");
        Ok(())
    }

    fn status(&self) -> StatusReport {
        let now = self.clock.now();
        let st = self.node.status(now);
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
            link_up: st.link_up,
            profile: self.cfg.election.profile.name().into(),
            quorum: match self.cfg.election.quorum {
                Quorum::Majority => "majority".into(),
                Quorum::TwoNode => "two-node".into(),
            },
            uptime_s: now.as_duration().as_secs(),
            epoch: self.transport.epoch(),
            peers,
            non_members: st.non_members_heard,
            heartbeats: self.transport.stats().clone(),
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
        }
    }
}

/// The stand-in VIP for tests without root (`--fake-vip-dir`).
pub fn marker_vip(dir: PathBuf, cfg: &Config) -> VipSetup {
    VipSetup {
        backend: vipctl::Backend::Marker(vipctl::MarkerVip::new(dir.clone(), cfg.node_id)),
        report: VipReport {
            address: cfg.vip.as_ref().map_or("-".into(), |v| v.address.clone()),
            interface: "-".into(),
            placement: "marker".into(),
            placement_reason: format!("test stand-in: a file in {}", dir.display()),
            state: String::new(),
        },
    }
}

/// The kernel VIP from the config: the interface (configured, or the one routing to the
/// first peer), the placement and why.
pub async fn kernel_vip(cfg: &Config) -> Result<VipSetup> {
    let v = cfg
        .vip
        .as_ref()
        .ok_or_else(|| anyhow!("vip: not configured"))?;
    let (addr, prefix) = crate::config::parse_vip(&v.address)
        .map_err(|e| anyhow!("vip.address {:?}: {e}", v.address))?;
    let interface = match &v.interface {
        Some(i) => i.clone(),
        None => {
            let peer = cfg
                .peers
                .iter()
                .find(|p| p.id != cfg.node_id)
                .or_else(|| cfg.me())
                .ok_or_else(|| anyhow!("vip.interface: not set and no peer to find it from"))?;
            crate::vip::interface_for(peer.address).await.map_err(|e| {
                anyhow!(
                    "vip.interface: not set, and the route to peer {} ({}) does not tell: {e}",
                    peer.id,
                    peer.address
                )
            })?
        }
    };
    let (placement, reason) =
        crate::vip::resolve_placement(v.placement, addr, &interface, &v.device);
    let placement_name = match &placement {
        crate::vip::Placement::Interface => "interface".to_string(),
        crate::vip::Placement::Device { name } => format!("device {name}"),
    };
    let spec = crate::vip::VipSpec {
        addr,
        prefix,
        interface: interface.clone(),
        placement,
        label: v.label.clone(),
    };
    Ok(VipSetup {
        backend: vipctl::Backend::Kernel(vipctl::KernelVip {
            spec,
            announce: crate::announce::AnnounceConfig {
                count: v.announce_count,
                interval: v.announce_interval,
                refresh: v.announce_refresh,
            },
        }),
        report: VipReport {
            address: v.address.clone(),
            interface,
            placement: placement_name,
            placement_reason: reason,
            state: String::new(),
        },
    })
}
