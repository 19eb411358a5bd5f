//! `apivip run`: the election on its own thread, around the sans-IO state machine.
//!
//! The election loop runs on a dedicated thread with a current-thread runtime, its
//! state-file writes included, so neither the internet-facing forwarder nor /metrics can
//! delay a lease decision (they shared a 2-thread runtime before). The loop itself is
//! thin: it waits for the next input and hands it to the [`driver::Driver`], which owns
//! every decision the daemon makes around the election.

pub mod apiserver;
pub mod clock;
pub mod driver;
pub mod vipctl;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use apivip_proto::Codec;
use apivip_proto::wire::ClusterId;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, Loaded, Sources};
use crate::control::{self, Call, VipReport};
use crate::forward::ForwarderHandle;
use crate::heartbeat::{Inbound, Transport};
use crate::metrics::{Metrics, Readiness};
use crate::state::Store;
use apiserver::LocalHealth;
use clock::{BootClock, Clock};
use driver::{Driver, Parts, peer_addrs};
pub use driver::{load_keys, load_keys_checked, node_config};
use vipctl::{HoldGate, VipDone};

/// The loop wakes at least this often, so a suspended machine's BOOTTIME jump is noticed
/// even when tokio's monotonic timer has not fired.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// How long the exit waits for the kernel to confirm the VIP is gone.
const EXIT_RELEASE: Duration = Duration::from_secs(2);

/// How the VIP is held, and what `status` says about it.
pub struct VipSetup {
    pub backend: vipctl::Backend,
    pub report: VipReport,
    /// `auto` fell back to the interface for want of /dev/net/tun.
    pub tun_fallback: bool,
}

/// Everything `run` needs besides the config.
pub struct Setup {
    /// Where the config came from, to read it again on SIGHUP.
    pub sources: Sources,
    pub vip: VipSetup,
    /// The local checks: the apiserver's readiness, and in BGP mode the speaker's.
    pub health: watch::Receiver<LocalHealth>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    /// The embedded forwarder, when it runs on this node.
    pub forwarder: Option<Arc<ForwarderHandle>>,
}

/// Runs the daemon until SIGTERM or SIGINT. The caller's runtime keeps the control
/// socket and the forwarder; the election gets a thread of its own.
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
    node_config(&cfg)?;
    let keys = load_keys_checked(&cfg)?;
    let mut store = Store::open(&cfg.state_dir)?;
    crate::perms::enforce(
        crate::perms::state_dir_problems(&cfg.state_dir, crate::perms::euid()),
        cfg.allow_insecure_permissions,
    )?;
    let epoch = store.begin_epoch()?;
    let mut codec = Codec::new(ClusterId::from_name(&cfg.cluster), cfg.node_id, epoch, keys);
    codec.set_max_version(cfg.election.protocol);
    let silence_floor = Duration::from_millis(store.state().promise_ms);
    let local = std::net::SocketAddr::new(me.address, cfg.port);

    setup
        .metrics
        .set_vip_placement_fallback(setup.vip.tun_fallback);
    let clock: Arc<dyn Clock> = Arc::new(BootClock::start());
    let gate = Arc::new(HoldGate::new(clock.clone()));
    let worker = vipctl::spawn(setup.vip.backend, gate.clone())
        .await
        .map_err(|e| anyhow!("VIP {}: {e}", setup.vip.report.address))?;
    let (call_tx, calls) = mpsc::channel::<Call>(16);
    let control = control::serve(&cfg.control.socket, call_tx).await?;
    let forwarder_rt = tokio::runtime::Handle::current();

    let (result_tx, result_rx) = oneshot::channel::<Result<()>>();
    std::thread::Builder::new()
        .name("apivip-election".into())
        .spawn(move || {
            let r = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the election's runtime")
                .and_then(|rt| {
                    rt.block_on(async move {
                        let transport = Transport::bind(local, codec, peer_addrs(&cfg))?;
                        let health = setup.health.borrow().clone();
                        let seed = epoch ^ (u64::from(cfg.node_id) << 32);
                        let persisted = store.state().election;
                        tracing::info!(
                            node = cfg.node_id,
                            cluster = %cfg.cluster,
                            heartbeat = %local,
                            epoch,
                            term = persisted.term,
                            vip = %setup.vip.report.address,
                            placement = %setup.vip.report.placement,
                            reason = %setup.vip.report.placement_reason,
                            "apivip starting: silent for one election timeout before voting"
                        );
                        let d = Driver::new(Parts {
                            cfg,
                            sources: setup.sources,
                            clock,
                            out: transport,
                            store,
                            persisted,
                            silence_floor,
                            seed,
                            health,
                            link_up: worker.link_up,
                            vip_ops: worker.ops,
                            gate,
                            vip_report: setup.vip.report,
                            metrics: setup.metrics,
                            readiness: setup.readiness,
                            forwarder: setup.forwarder,
                            forwarder_rt: Some(forwarder_rt),
                        })?;
                        election_loop(d, worker.done, worker.events, setup.health, calls).await
                    })
                });
            let _ = result_tx.send(r);
        })
        .context("cannot start the election thread")?;
    let r = result_rx
        .await
        .unwrap_or_else(|_| Err(anyhow!("the election thread stopped without a word")));
    control.abort();
    r
}

async fn election_loop(
    mut d: Driver<Transport, Store>,
    mut vip_done: mpsc::UnboundedReceiver<VipDone>,
    mut vip_events: mpsc::UnboundedReceiver<vipctl::VipEvent>,
    mut health: watch::Receiver<LocalHealth>,
    mut calls: mpsc::Receiver<Call>,
) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let metrics = Arc::clone(d.metrics());
    let readiness = Arc::clone(d.readiness());
    let reporter = d.forwarder().map(|f| {
        let _rt = d.forwarder_rt().map(|h| h.enter());
        f.report_to(metrics.clone())
    });
    readiness.set_election_running(true);
    // systemd (Type=notify) learns we are up; outside systemd this does nothing.
    if let Err(e) = crate::manifest::notify_ready() {
        tracing::debug!(error = %e, "sd_notify READY failed");
    }
    let mut recv_log = crate::backoff::LogThrottle::default();
    loop {
        let sleep = d
            .next_wake()
            .map_or(MAX_SLEEP, |t| d.clock().until(t).min(MAX_SLEEP));
        tokio::select! {
            r = d.out.recv() => match r {
                Ok(Inbound::Message(m)) => d.message(m.from, m.msg),
                Ok(Inbound::Rejected { from, error }) => {
                    metrics.heartbeat_rejected(&error);
                    tracing::debug!(%from, reason = error.reason(), "heartbeat datagram rejected");
                }
                Err(e) => {
                    if let Some(held) = recv_log.allow() {
                        tracing::warn!(error = %e, held_back = held, "heartbeat socket receive failed");
                    }
                    // An error that repeats (EMFILE cannot, ENOMEM can) must not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = tokio::time::sleep(sleep) => d.wake(),
            Some(done) = vip_done.recv() => d.vip_done(done),
            Some(ev) = vip_events.recv() => d.vip_event(ev),
            Ok(()) = health.changed() => {
                let h = health.borrow_and_update().clone();
                d.health(h);
            }
            Some((req, reply)) = calls.recv() => d.control(req, reply),
            _ = sigterm.recv() => d.begin_stop("SIGTERM"),
            _ = sigint.recv() => d.begin_stop("SIGINT"),
            _ = sigusr1.recv() => {
                tracing::info!("SIGUSR1: failover drill");
                d.start_drill(None, None);
            }
            _ = sighup.recv() => d.reload(),
        }
        if d.stopped() {
            break;
        }
    }
    readiness.set_election_running(false);
    let _ = crate::manifest::notify_stopping();
    if let Some(r) = reporter {
        r.abort();
    }
    // The exit code means "released": wait for the kernel to confirm.
    d.release_for_exit();
    let confirmed = tokio::time::timeout(EXIT_RELEASE, async {
        while let Some(done) = vip_done.recv().await {
            if done == VipDone::Released {
                return true;
            }
        }
        false
    })
    .await;
    match confirmed {
        Ok(true) => tracing::info!("VIP released"),
        _ => tracing::error!("could not confirm the VIP was released before exit"),
    }
    metrics.set_vip_held(false);
    tracing::info!("apivip stopped");
    Ok(())
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
        tun_fallback: false,
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
    let bgp = v.mode == crate::config::VipMode::Bgp;
    let crate::vip::Resolved {
        placement,
        reason,
        tun_fallback,
    } = if bgp {
        // Validation refused `interface`; the route must go with the process.
        crate::vip::Resolved {
            placement: crate::vip::Placement::Device {
                name: v.device.clone(),
            },
            reason: "bgp: a host route on the process-owned device, exported by the node's BGP speaker while it exists".to_string(),
            tun_fallback: false,
        }
    } else {
        crate::vip::resolve_placement(v.placement, addr, &interface, &v.device)
    };
    if tun_fallback {
        tracing::warn!(
            reason = %reason,
            "vip.placement = auto: no TUN device, so the VIP goes on the interface; mount {} into the pod to get the process-owned device back",
            crate::vip::TUN_PATH
        );
    }
    if let crate::vip::Placement::Device { name } = &placement
        && let Err(e) = crate::vip::tun_available(std::path::Path::new(crate::vip::TUN_PATH))
    {
        anyhow::bail!(
            "vip.placement = \"device\" ({name}) needs {}, which cannot be opened: {e}; mount it into the pod (hostPath, type CharDevice), or set vip.placement = \"auto\" or \"interface\"",
            crate::vip::TUN_PATH
        );
    }
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
            // Routed: no shared segment to announce on, and nothing to announce.
            announce: (!bgp).then_some(crate::announce::AnnounceConfig {
                count: v.announce_count,
                interval: v.announce_interval,
                refresh: v.announce_refresh,
            }),
        }),
        report: VipReport {
            address: v.address.clone(),
            interface,
            placement: placement_name,
            placement_reason: reason,
            state: String::new(),
        },
        tun_fallback,
    })
}
