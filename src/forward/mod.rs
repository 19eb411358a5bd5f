//! The embedded L4 forwarder: accepts TCP connections on the frontends and relays each to
//! one apiserver, chosen by least connections among healthy backends, retrying the
//! connect on the next backend when one fails. docs/forwarder.md explains the design.
//!
//! The daemon starts it with [`Forwarder::start`] and keeps the [`ForwarderHandle`]:
//! `snapshot()` for metrics and `apivip status`, `update_backends()` on reload,
//! `drain()` on shutdown.

mod drain;
pub mod limits;
mod listener;
mod pool;
pub mod proxy;
mod relay;
pub mod settings;
mod splice;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::backoff::{Backoff, LogThrottle};

pub use crate::config::SpliceMode;
use crate::health::{HealthError, HealthSpec, Prober};
use drain::Cut;
pub use drain::DrainReport;
use limits::{Keepalive, Refusal, SourceCap, SourceGuard};
use pool::{ActiveGuard, Backend};
pub use pool::{BackendHealth, BackendSpec, BackendStats};
use relay::{End, RelayOpts, Side};

/// Everything the forwarder needs, resolved from the config (see `settings`).
#[derive(Clone, Debug)]
pub struct ForwardRuntime {
    pub listen: Vec<SocketAddr>,
    pub backends: Vec<BackendSpec>,
    pub prefer_local: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long a new client may stay silent; the backend is dialled only once it has
    /// spoken (an apiserver's clients speak first: the TLS ClientHello). Zero dials at
    /// once and never times out (for protocols where the server speaks first).
    pub first_byte_timeout: Duration,
    /// Once one direction has ended (a FIN), the inactivity limit for the rest.
    pub fin_timeout: Duration,
    pub max_connections: u32,
    /// Open connections per source address (IPv6: per /64); 0 = no cap. Loopback is exempt.
    pub max_per_source: u32,
    /// New connections per second per source (IPv6: per /64), with a second's worth as
    /// burst; 0 = no limit. Loopback is exempt.
    pub max_new_per_source: u32,
    /// TCP keepalive on both sides; `None` leaves the kernel's default (off).
    pub keepalive: Option<Keepalive>,
    /// Close the sessions of a backend the active check marks down (haproxy's
    /// `on-marked-down shutdown-sessions`), so its clients reconnect to a live one.
    pub shutdown_on_down: bool,
    pub eject_backoff: Duration,
    pub eject_backoff_max: Duration,
    pub splice: SpliceMode,
    pub pipe_size: usize,
    /// 1: accept and relay on the caller's runtime. N > 1: also on N-1 dedicated threads,
    /// each with a single-threaded runtime and its own SO_REUSEPORT listener per address
    /// (the kernel spreads connections; no task ever moves between threads).
    pub threads: usize,
    /// Active checks; `None` relies on passive ejection alone.
    pub health: Option<HealthSpec>,
}

impl ForwardRuntime {
    /// Defaults matching the config's, for `listen` → `backends`.
    pub fn new(listen: Vec<SocketAddr>, backends: Vec<BackendSpec>) -> ForwardRuntime {
        ForwardRuntime {
            listen,
            backends,
            prefer_local: false,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(600),
            first_byte_timeout: Duration::from_secs(10),
            fin_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_per_source: 1024,
            max_new_per_source: 200,
            keepalive: Some(Keepalive {
                idle: Duration::from_secs(30),
            }),
            shutdown_on_down: true,
            eject_backoff: Duration::from_secs(1),
            eject_backoff_max: Duration::from_secs(30),
            splice: SpliceMode::Auto,
            pipe_size: 256 * 1024,
            threads: 1,
            health: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("no listen address configured")]
    NoListener,
    #[error("backend {addr}: {source}")]
    Health {
        addr: SocketAddr,
        source: HealthError,
    },
    #[error("max_connections must be 1 or more")]
    NoCapacity,
}

/// Forwarder-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ForwardTotals {
    pub open: u64,
    pub accepted: u64,
    /// Clients closed because every backend refused or timed out.
    pub refused: u64,
    /// Connects retried on another backend after a failure.
    pub retries: u64,
    /// Closed after `idle_timeout` with no byte either way, or `fin_timeout` after one
    /// direction ended.
    pub idle_closed: u64,
    /// Clients that sent nothing within `first_byte_timeout` (or hung up first): no
    /// backend was dialled for them.
    pub silent_closed: u64,
    /// Clients turned away because their source already had `max_per_source` open.
    pub source_capped: u64,
    /// Clients turned away because their source opened more than `max_new_per_source`
    /// in the last second.
    #[serde(default)]
    pub source_rate_limited: u64,
    /// Sessions closed because the active check marked their backend down.
    pub backend_down_closed: u64,
    /// Sessions accepted on the VIP, closed when this node released it.
    pub vip_released_closed: u64,
    /// Clients dropped because this process was out of descriptors or buffers.
    pub local_errors: u64,
    /// The connection cap in force: forward.max_connections, lowered to what
    /// RLIMIT_NOFILE allows with a reserve kept for the rest of the daemon.
    pub max_connections: u64,
}

struct Settings {
    prefer_local: bool,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    keepalive: Option<Keepalive>,
    /// Probe backends with keepalive too; off when active checks cut the sessions of a
    /// dead backend anyway, which saves four syscalls per connection (TCP_USER_TIMEOUT
    /// stays, for data stuck in flight).
    backend_probes: bool,
    shutdown_on_down: bool,
    eject_backoff: Duration,
    eject_backoff_max: Duration,
    relay: RelayOpts,
}

struct Shared {
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    health: Mutex<Option<HealthSpec>>,
    settings: Settings,
    rr: AtomicUsize,
    permits: Arc<Semaphore>,
    max: u32,
    switches: Arc<drain::Switches>,
    /// Connections being served (the permits also count accept loops waiting for one).
    open: Arc<AtomicUsize>,
    accepted: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
    idle_closed: AtomicU64,
    silent_closed: AtomicU64,
    source_capped: AtomicU64,
    source_rate_limited: AtomicU64,
    backend_down_closed: AtomicU64,
    vip_released_closed: AtomicU64,
    local_errors: AtomicU64,
    sources: Arc<SourceCap>,
    refused_log: Mutex<LogThrottle>,
    capped_log: Mutex<LogThrottle>,
}

pub struct Forwarder;

/// A running forwarder. Dropping it does not stop it: call [`ForwarderHandle::drain`].
#[derive(Clone)]
pub struct ForwarderHandle {
    shared: Arc<Shared>,
    local: Vec<SocketAddr>,
}

impl Forwarder {
    /// Binds every listen address and starts accepting on the current tokio runtime.
    /// Fails without side effects if any address cannot be bound.
    pub async fn start(rt: ForwardRuntime) -> Result<ForwarderHandle, ForwardError> {
        if rt.listen.is_empty() {
            return Err(ForwardError::NoListener);
        }
        if rt.max_connections == 0 {
            return Err(ForwardError::NoCapacity);
        }
        // The cap the descriptor limit allows, with a reserve for the rest of the daemon.
        let limit = crate::fds::nofile();
        let splice = !matches!(rt.splice, crate::config::SpliceMode::Off);
        let budget = crate::fds::budget(limit, splice);
        splice::set_limit(budget.pipes);
        let max_connections = rt.max_connections.min(budget.connections);
        if max_connections < rt.max_connections {
            tracing::warn!(
                target: "apivip::forward",
                configured = rt.max_connections,
                effective = max_connections,
                open_files_limit = limit,
                reserve = crate::fds::RESERVE,
                splice_pipes = budget.pipes,
                "forward.max_connections lowered to what RLIMIT_NOFILE allows (raise LimitNOFILE to serve more)"
            );
        }
        let threads = rt.threads.max(1);
        let mut listeners: Vec<TcpListener> = Vec::new();
        // For each dedicated thread: its own listener per address.
        let mut extra: Vec<Vec<std::net::TcpListener>> = (1..threads).map(|_| Vec::new()).collect();
        let mut local = Vec::new();
        for addr in &rt.listen {
            let bind_err = |addr: SocketAddr| move |source| ForwardError::Bind { addr, source };
            let first =
                listener::bind(*addr, threads > 1, rt.keepalive).map_err(bind_err(*addr))?;
            // With port 0 the siblings must share the port the kernel picked.
            let bound = first.local_addr().map_err(bind_err(*addr))?;
            listeners.push(first);
            for set in extra.iter_mut() {
                set.push(listener::bind_std(bound, true, rt.keepalive).map_err(bind_err(bound))?);
            }
            local.push(bound);
        }
        let switches = Arc::new(drain::Switches::new());
        let backends = build_backends(&rt.backends, rt.health.as_ref(), &[], &switches)?;
        let shared = Arc::new(Shared {
            backends: RwLock::new(Arc::new(backends)),
            health: Mutex::new(rt.health.clone()),
            settings: Settings {
                prefer_local: rt.prefer_local,
                connect_timeout: rt.connect_timeout,
                first_byte_timeout: rt.first_byte_timeout,
                keepalive: rt.keepalive,
                backend_probes: !(rt.shutdown_on_down && rt.health.is_some()),
                shutdown_on_down: rt.shutdown_on_down,
                eject_backoff: rt.eject_backoff,
                eject_backoff_max: rt.eject_backoff_max,
                relay: RelayOpts {
                    idle: rt.idle_timeout,
                    fin: rt.fin_timeout.min(rt.idle_timeout),
                    splice: rt.splice,
                    pipe_size: rt.pipe_size,
                },
            },
            rr: AtomicUsize::new(0),
            permits: Arc::new(Semaphore::new(max_connections as usize)),
            max: max_connections,
            switches,
            open: Arc::new(AtomicUsize::new(0)),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            silent_closed: AtomicU64::new(0),
            source_capped: AtomicU64::new(0),
            source_rate_limited: AtomicU64::new(0),
            backend_down_closed: AtomicU64::new(0),
            vip_released_closed: AtomicU64::new(0),
            local_errors: AtomicU64::new(0),
            sources: SourceCap::new(rt.max_per_source, rt.max_new_per_source),
            refused_log: Mutex::new(LogThrottle::default()),
            capped_log: Mutex::new(LogThrottle::default()),
        });
        for l in listeners {
            tokio::spawn(accept_loop(shared.clone(), l));
        }
        for (i, set) in extra.into_iter().enumerate() {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("apivip-fwd-{}", i + 1))
                .spawn(move || dedicated_thread(shared, set));
            if let Err(e) = spawned {
                // The listeners of that thread close with it; the others carry the load.
                tracing::error!(target: "apivip::forward", error = %e, "cannot start a forwarder thread");
            }
        }
        tracing::info!(
            target: "apivip::forward",
            listen = ?local,
            backends = ?rt.backends.iter().map(|b| b.address).collect::<Vec<_>>(),
            max_connections,
            max_per_source = rt.max_per_source,
            max_new_per_source = rt.max_new_per_source,
            "forwarder started"
        );
        Ok(ForwarderHandle { shared, local })
    }
}

impl ForwarderHandle {
    /// The bound addresses (with the real port where 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Per-backend counters and health, in configured order.
    pub fn snapshot(&self) -> Vec<BackendStats> {
        self.current().iter().map(|b| b.stats()).collect()
    }

    /// Copies the backend counters into `metrics` once a second (the forwarder's own path
    /// never touches the metrics), until the returned task is aborted.
    pub fn report_to(
        &self,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> tokio::task::JoinHandle<()> {
        let handle = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let samples: Vec<crate::metrics::BackendSample> = handle
                    .snapshot()
                    .into_iter()
                    .map(|b| crate::metrics::BackendSample {
                        name: b.address.to_string(),
                        active: b.active,
                        total: b.total,
                        failures: b.failures,
                        bytes_in: b.bytes_in,
                        bytes_out: b.bytes_out,
                        healthy: b.health == BackendHealth::Healthy,
                    })
                    .collect();
                metrics.update_backends(&samples);
                metrics.update_forward(handle.totals());
            }
        })
    }

    pub fn totals(&self) -> ForwardTotals {
        let s = &self.shared;
        ForwardTotals {
            open: s.open.load(Ordering::Relaxed) as u64,
            accepted: s.accepted.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            idle_closed: s.idle_closed.load(Ordering::Relaxed),
            silent_closed: s.silent_closed.load(Ordering::Relaxed),
            source_capped: s.source_capped.load(Ordering::Relaxed),
            source_rate_limited: s.source_rate_limited.load(Ordering::Relaxed),
            backend_down_closed: s.backend_down_closed.load(Ordering::Relaxed),
            vip_released_closed: s.vip_released_closed.load(Ordering::Relaxed),
            local_errors: s.local_errors.load(Ordering::Relaxed),
            max_connections: u64::from(s.max),
        }
    }

    /// Replaces the backend list (SIGHUP reload, a peer replaced). Backends whose spec is
    /// unchanged keep their counters, health and ejection; open connections to removed
    /// ones run on. `health` replaces the check spec when given. Must be called within the
    /// tokio runtime (it starts probers).
    pub fn update_backends(
        &self,
        specs: Vec<BackendSpec>,
        health: Option<Option<HealthSpec>>,
    ) -> Result<(), ForwardError> {
        let mut current_health = self
            .shared
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep: Vec<Arc<Backend>> = match &health {
            Some(h) if h != &*current_health => Vec::new(),
            _ => self.current().iter().cloned().collect(),
        };
        let new_health = health.unwrap_or_else(|| current_health.clone());
        let list = build_backends(&specs, new_health.as_ref(), &keep, &self.shared.switches)?;
        *current_health = new_health;
        let mut w = self
            .shared
            .backends
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *w = Arc::new(list);
        tracing::info!(
            target: "apivip::forward",
            backends = ?specs.iter().map(|b| b.address).collect::<Vec<_>>(),
            "backends updated"
        );
        Ok(())
    }

    /// This node no longer holds `ip`: closes every connection accepted on it. Their
    /// clients' next packets would reach the new holder and be reset there anyway; closed
    /// now, they reconnect at once instead of at their next write or their own timeout.
    pub fn close_accepted_on(&self, ip: IpAddr) {
        self.shared.switches.cut(|c| {
            c.released = Some((c.released.map_or(1, |(generation, _)| generation + 1), ip));
        });
    }

    /// Stops accepting, waits up to `deadline` for open connections to finish, then
    /// closes the rest.
    pub async fn drain(&self, deadline: Duration) -> DrainReport {
        let s = &self.shared;
        let r = drain::drain(&s.switches, &s.permits, s.max, &s.open, deadline).await;
        tracing::info!(
            target: "apivip::forward",
            open = r.open_at_start,
            forced = r.forced,
            took_ms = r.took_ms,
            "forwarder drained"
        );
        r
    }

    fn current(&self) -> Arc<Vec<Arc<Backend>>> {
        self.shared.current()
    }
}

impl Shared {
    fn current(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

fn build_backends(
    specs: &[BackendSpec],
    health: Option<&HealthSpec>,
    keep: &[Arc<Backend>],
    switches: &Arc<drain::Switches>,
) -> Result<Vec<Arc<Backend>>, ForwardError> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        if let Some(b) = keep.iter().find(|b| &b.spec == spec) {
            out.push(b.clone());
            continue;
        }
        let probe = match health {
            Some(h) => Some(Prober::spawn(spec.address, h.clone()).map_err(|source| {
                ForwardError::Health {
                    addr: spec.address,
                    source,
                }
            })?),
            None => None,
        };
        let backend = Backend::new(spec.clone(), probe);
        if let Some(verdicts) = backend.verdicts() {
            tokio::spawn(drain::announce_downs(
                switches.clone(),
                backend.downs.clone(),
                verdicts,
            ));
        }
        out.push(Arc::new(backend));
    }
    Ok(out)
}

fn dedicated_thread(shared: Arc<Shared>, listeners: Vec<std::net::TcpListener>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "apivip::forward", error = %e, "cannot start a forwarder thread's runtime");
            return;
        }
    };
    rt.block_on(async move {
        for l in listeners {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(accept_loop(shared.clone(), l));
                }
                Err(e) => {
                    tracing::error!(target: "apivip::forward", error = %e, "cannot adopt a listener")
                }
            }
        }
        let mut finished = shared.switches.finished.subscribe();
        switched_on(&mut finished).await;
    });
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.switches.stop_accepting.subscribe();
    let cut = shared.switches.cut_channel();
    // One wait for the whole loop: a new one per accept would register and unregister a
    // waiter on the watch (a lock shared by every forwarder thread) on every connection.
    let stop = switched_on(&mut stop);
    tokio::pin!(stop);
    let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    let mut log = LogThrottle::default();
    let listen_ip = listener
        .local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    loop {
        // Take the permit first: over the cap, connections wait in the kernel backlog
        // (as with haproxy's maxconn) instead of being accepted and dropped.
        let permit = tokio::select! {
            _ = &mut stop => return,
            p = shared.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (sock, peer) = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS leave the client in the backlog, so accept
                    // fails again at once: back off instead of spinning on the error.
                    drop(permit);
                    let pause = backoff.next_delay();
                    if let Some(held) = log.allow() {
                        tracing::warn!(target: "apivip::forward", error = %e, retry_in = ?pause, held_back = held, "accept failed");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let source = match shared.sources.admit(peer.ip(), std::time::Instant::now) {
            Ok(g) => g,
            Err(why) => {
                let (counter, field) = match why {
                    Refusal::Open => (&shared.source_capped, "forward.max_per_source"),
                    Refusal::Rate => (&shared.source_rate_limited, "forward.max_new_per_source"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(held) = shared
                    .capped_log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .allow()
                {
                    tracing::warn!(target: "apivip::forward", source = %peer.ip(), held_back = held, "connection refused: its source is over {field}");
                }
                continue;
            }
        };
        // The address the client reached, for closing its sessions when this node lets the
        // VIP go: the listener's own, unless it listens on the wildcard.
        let local_ip = match listen_ip {
            Some(ip) => ip,
            None => match sock.local_addr() {
                Ok(a) => a.ip(),
                Err(_) => continue,
            },
        };
        // No set_nodelay or keepalive here: Linux copies TCP_NODELAY, SO_KEEPALIVE, the
        // keepalive timings and TCP_USER_TIMEOUT from the listener at accept.
        tokio::spawn(serve(
            shared.clone(),
            sock,
            local_ip,
            cut.clone(),
            (permit, source),
        ));
    }
}

/// Resolves once the switch is on. The watch guard is dropped inside, so callers stay Send.
async fn switched_on(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|on| *on).await;
}

async fn serve(
    shared: Arc<Shared>,
    client: TcpStream,
    local_ip: IpAddr,
    mut cut: watch::Receiver<Cut>,
    _held: (OwnedSemaphorePermit, SourceGuard),
) {
    let _open = drain::OpenGuard::new(shared.open.clone());
    let released_before = cut.borrow().generation();
    let backend_cut = OnceLock::new();
    tokio::select! {
        biased;
        c = cut_for(&mut cut, local_ip, released_before, &backend_cut) => match c {
            CutReason::Drain => {}
            CutReason::Released => {
                shared.vip_released_closed.fetch_add(1, Ordering::Relaxed);
            }
            CutReason::BackendDown(addr) => {
                shared.backend_down_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "apivip::forward", backend = %addr, "session closed: backend marked down");
            }
        },
        _ = async {
            if let Some(first) = first_bytes(&shared, &client).await {
                connect_and_relay(&shared, client, &first, &backend_cut).await;
            }
        } => {}
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutReason {
    Drain,
    Released,
    BackendDown(SocketAddr),
}

/// The backend a connection is cut for when its check marks it down: that backend's count
/// of downs, and the count when the connection was made. Set only when the backend was up
/// then: with every backend down, a client sent to one as a last resort stays.
///
/// The count is read before the verdict, and `announce_downs` counts a down only after
/// the verdict turned, so a connection that saw the backend up either counted that down
/// already (and is not cut for it) or meets the bump that follows.
struct BackendCut {
    addr: SocketAddr,
    downs: Arc<AtomicU64>,
    seen: u64,
}

/// Resolves when this connection must close: the drain's deadline passed, this node
/// released the address the client reached (after `released_before`, so a connection
/// accepted after the VIP came back is not closed by an old release), or the check marked
/// its backend down after it connected.
async fn cut_for(
    rx: &mut watch::Receiver<Cut>,
    local_ip: IpAddr,
    released_before: u64,
    backend: &OnceLock<BackendCut>,
) -> CutReason {
    let mut reason = CutReason::Drain;
    let _ = rx
        .wait_for(|c| {
            if c.all {
                return true;
            }
            if let Some((generation, ip)) = c.released
                && generation > released_before
                && ip == local_ip
            {
                reason = CutReason::Released;
                return true;
            }
            if let Some(b) = backend.get()
                && b.downs.load(Ordering::SeqCst) > b.seen
            {
                reason = CutReason::BackendDown(b.addr);
                return true;
            }
            false
        })
        .await;
    reason
}

/// The client's first bytes, waited for up to `first_byte_timeout` (empty without that
/// limit: the backend is dialled at once). `None` when it stayed silent or hung up first:
/// no backend is dialled for it.
async fn first_bytes(shared: &Shared, client: &TcpStream) -> Option<Box<[u8]>> {
    let limit = shared.settings.first_byte_timeout;
    if limit.is_zero() {
        return Some(Box::default());
    }
    match tokio::time::timeout(limit, relay::read_first(client)).await {
        Ok(Ok(first)) if !first.is_empty() => Some(first),
        // Timed out, EOF before a byte (a port scan, a load balancer's TCP check), or reset.
        _ => {
            shared.silent_closed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

async fn connect_and_relay(
    shared: &Shared,
    client: TcpStream,
    first: &[u8],
    cut_when_down: &OnceLock<BackendCut>,
) {
    let s = &shared.settings;
    let order = pool::order(&shared.current(), s.prefer_local, &shared.rr);
    let mut tried = 0;
    for b in order {
        if tried > 0 {
            shared.retries.fetch_add(1, Ordering::Relaxed);
        }
        tried += 1;
        let guard = ActiveGuard::new(b);
        let addr = guard.0.spec.address;
        let upstream = match tokio::time::timeout(
            s.connect_timeout,
            dial(addr, s.keepalive, s.backend_probes, first),
        )
        .await
        {
            Ok(Ok(u)) => u,
            Ok(Err(e)) if crate::backoff::is_local_exhaustion(&e) => {
                // Our own shortage: no backend is to blame.
                shared.local_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "apivip::forward", backend = %addr, error = %e, "connect failed locally");
                // Out of source ports towards this backend (the TIME_WAITs of a client
                // churning connections): another backend's address has ports of its own.
                // Any other shortage would fail the next one the same way: drop the client.
                if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                    continue;
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(target: "apivip::forward", backend = %addr, error = %e, "connect failed");
                guard.0.failed(s.eject_backoff, s.eject_backoff_max);
                continue;
            }
            Err(_) => {
                tracing::debug!(target: "apivip::forward", backend = %addr, "connect timed out");
                guard.0.failed(s.eject_backoff, s.eject_backoff_max);
                continue;
            }
        };
        guard.0.connected();
        guard
            .0
            .bytes_in
            .fetch_add(first.len() as u64, Ordering::Relaxed);
        if s.shutdown_on_down {
            // The count before the verdict: see `BackendCut`.
            let seen = guard.0.downs.load(Ordering::SeqCst);
            if guard.0.checked_healthy() == Some(true) {
                let _ = cut_when_down.set(BackendCut {
                    addr,
                    downs: guard.0.downs.clone(),
                    seen,
                });
            }
        }
        let out = relay::relay(
            &client,
            &upstream,
            s.relay,
            relay::Counters {
                up: &guard.0.bytes_in,
                down: &guard.0.bytes_out,
            },
        )
        .await;
        match out.end {
            End::Idle => {
                shared.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            End::Error(Side::Backend, e) if out.down == 0 => {
                // A reset before the backend said anything: it accepted and died (an
                // apiserver shutting down). Too late to retry this client, but the next
                // ones should go elsewhere.
                tracing::debug!(target: "apivip::forward", backend = %addr, error = %e, "backend reset");
                guard.0.failed(s.eject_backoff, s.eject_backoff_max);
            }
            _ => {}
        }
        return;
    }
    shared.refused.fetch_add(1, Ordering::Relaxed);
    // Every client of a dead backend set would otherwise log a line: at most one per 5 s.
    if let Some(held) = shared
        .refused_log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow()
    {
        tracing::warn!(target: "apivip::forward", tried, held_back = held, "no backend accepted the connection");
    }
}

/// Connects to a backend with TCP_NODELAY and keepalive (or only its user timeout) set
/// before the SYN, and passes on the client's first bytes. A refused or unreachable
/// backend fails the first send the way it would fail the SO_ERROR check after the
/// connect, so with bytes to send that check (one syscall per connection) is skipped.
async fn dial(
    addr: SocketAddr,
    keepalive: Option<Keepalive>,
    probes: bool,
    first: &[u8],
) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    if let Some(k) = keepalive {
        if probes {
            k.apply(socket2::SockRef::from(&sock))?;
        } else {
            sock.set_tcp_user_timeout(Some(k.dead_after()))?;
        }
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    if first.is_empty() {
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    } else {
        relay::write_all(&stream, first).await?;
    }
    Ok(stream)
}
