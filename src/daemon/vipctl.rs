//! The VIP worker: carries out the election's claims, refreshes and releases one after
//! another on its own thread, and keeps the daemon's view of the kernel true.
//!
//! The election needs each operation confirmed in order (a release queued behind a slow
//! add must not overtake it, Rule 7), and a netlink call that takes 50 ms must not delay
//! heartbeats; so one thread owns the VIP and answers each operation with its outcome.
//!
//! Around that, every way the kernel can fail ends somewhere safe without a person:
//! - a request that never answers times out after [`NETLINK_TIMEOUT`] and the netlink
//!   connection is rebuilt, so a wedged request cannot hold up a release behind it;
//! - ENODEV (the TUN device deleted, the interface re-created with a new index) looks the
//!   devices up again and retries once; any other refusal goes back to the election
//!   with its errno, which backs off and hands over after a few;
//! - netlink notifications are hints, never facts: each one (and an overrun, and a watch
//!   that ended, and a slow timer) makes the worker ask the kernel whether the VIP is
//!   still there and the link up. A late DELADDR of our own release cannot mark a new
//!   claim lost, and a lost LinkDown is found at the next resync;
//! - before every claim, refresh and announcement the worker checks the hold gate (the
//!   lease the election last granted, against the clock): a process resumed after a
//!   freeze neither re-adds nor announces a VIP whose lease ran out while it was stopped.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apivip_proto::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::clock::Clock;
use crate::announce::{self, AnnounceConfig, Announcement, Announcer};
use crate::backoff::{Backoff, LogThrottle};
use crate::vip::{Hint, Vip, VipError, VipSpec};

/// The longest a netlink request may take before the connection is rebuilt.
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the worker asks the kernel even without a hint.
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipOp {
    Claim(Duration),
    Refresh(Duration),
    Release,
}

/// Why the kernel did not take a claim or refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipFault {
    /// A metrics label ([`crate::metrics::VIP_FAILURE_REASONS`]).
    pub reason: &'static str,
    pub errno: Option<i32>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VipDone {
    /// A claim or refresh finished: in place, or refused.
    Applied(Result<(), VipFault>),
    /// A claim or refresh not even tried: the lease it was for had run out by the time
    /// the worker got to it (a process resumed after a freeze).
    Expired,
    /// The kernel no longer has the VIP.
    Released,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipEvent {
    /// The VIP is no longer in the kernel although this node holds it (someone deleted
    /// it, its lifetime ran out, its device vanished).
    Removed,
    LinkDown,
    LinkUp,
}

/// Until when this process may hold and announce the VIP: the election sets it from its
/// lease before each batch of actions, the worker reads it before each kernel request
/// and each announcement round.
pub struct HoldGate {
    clock: Arc<dyn Clock>,
    /// Nanoseconds of the clock; 0 = closed.
    until: AtomicU64,
}

impl HoldGate {
    pub fn new(clock: Arc<dyn Clock>) -> HoldGate {
        HoldGate {
            clock,
            until: AtomicU64::new(0),
        }
    }

    pub fn set(&self, until: Option<Instant>) {
        self.until
            .store(until.map_or(0, Instant::as_nanos), Ordering::Release);
    }

    pub fn until(&self) -> Option<Instant> {
        match self.until.load(Ordering::Acquire) {
            0 => None,
            n => Some(Instant::from_nanos(n)),
        }
    }
}

impl announce::Gate for HoldGate {
    fn open(&self) -> bool {
        self.until().is_some_and(|u| self.clock.now() < u)
    }
}

/// What the worker needs from the kernel. [`KernelDevice`] is the real one; tests put a
/// scripted one in its place to inject ENODEV, EPERM, requests that never answer and
/// overruns.
#[allow(async_fn_in_trait)]
pub trait Device {
    async fn install(&mut self, lifetime: Duration) -> Result<(), VipError>;
    /// Absent is not an error.
    async fn remove(&mut self) -> Result<(), VipError>;
    async fn is_installed(&mut self) -> Result<bool, VipError>;
    /// Up with a carrier; follows an interface re-created under the same name.
    async fn link_up(&mut self) -> Result<bool, VipError>;
    async fn remove_stale(&mut self) -> Result<usize, VipError>;
    /// A new netlink connection (after a request that never answered).
    fn reconnect(&mut self) -> Result<(), VipError>;
    /// A new connection, the devices looked up again (after ENODEV).
    async fn reopen(&mut self) -> Result<(), VipError>;
    /// (Re)starts the watch that sends hints.
    fn watch(&mut self, hints: mpsc::UnboundedSender<Hint>) -> Result<(), VipError>;
    /// Starts announcing the VIP (first round at once, each round only while `gate` is
    /// open); None when this device cannot announce.
    fn announce(&mut self, gate: Arc<HoldGate>) -> Option<Announcement>;
}

/// The stand-in for tests without root: "holding" the VIP is a marker file named after the
/// node in a shared directory, so a test sees every node's hold at once.
pub struct MarkerVip {
    path: PathBuf,
}

impl MarkerVip {
    pub fn new(dir: PathBuf, node: u32) -> MarkerVip {
        MarkerVip {
            path: dir.join(format!("holder-{node}")),
        }
    }

    fn io(&self, source: std::io::Error) -> VipError {
        VipError::Tun {
            name: self.path.display().to_string(),
            source,
        }
    }
}

impl Device for MarkerVip {
    async fn install(&mut self, lifetime: Duration) -> Result<(), VipError> {
        std::fs::write(&self.path, format!("{}\n", lifetime.as_secs())).map_err(|e| self.io(e))
    }

    async fn remove(&mut self) -> Result<(), VipError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    async fn is_installed(&mut self) -> Result<bool, VipError> {
        Ok(self.path.exists())
    }

    async fn link_up(&mut self) -> Result<bool, VipError> {
        Ok(true)
    }

    async fn remove_stale(&mut self) -> Result<usize, VipError> {
        let was = self.path.exists();
        self.remove().await?;
        Ok(usize::from(was))
    }

    fn reconnect(&mut self) -> Result<(), VipError> {
        Ok(())
    }

    async fn reopen(&mut self) -> Result<(), VipError> {
        Ok(())
    }

    fn watch(&mut self, _hints: mpsc::UnboundedSender<Hint>) -> Result<(), VipError> {
        Ok(())
    }

    fn announce(&mut self, _gate: Arc<HoldGate>) -> Option<Announcement> {
        None
    }
}

/// The real VIP: an address through rtnetlink, announced by gratuitous ARP / NA (none
/// in `vip.mode = "bgp"`, where a BGP speaker exports the device's route).
pub struct KernelVip {
    pub spec: VipSpec,
    pub announce: Option<AnnounceConfig>,
}

/// An opened [`KernelVip`], living on the worker's runtime.
pub struct KernelDevice {
    vip: Vip,
    ip: IpAddr,
    announce_cfg: Option<AnnounceConfig>,
    /// The announcer and the interface index it was opened for.
    announcer: Option<(Announcer, u32)>,
    announcer_log: LogThrottle,
    watch: Option<JoinHandle<()>>,
}

impl KernelDevice {
    pub async fn open(k: KernelVip) -> Result<KernelDevice, VipError> {
        let ip = k.spec.addr;
        let vip = Vip::open(k.spec).await?;
        let mut dev = KernelDevice {
            vip,
            ip,
            announce_cfg: k.announce,
            announcer: None,
            announcer_log: LogThrottle::default(),
            watch: None,
        };
        dev.ensure_announcer();
        Ok(dev)
    }

    /// An announcer for the interface as it is now: a re-created interface has a new
    /// index (and maybe a new MAC), and frames sent to the old index go nowhere.
    fn ensure_announcer(&mut self) {
        let Some(cfg) = self.announce_cfg.clone() else {
            return;
        };
        let index = self.vip.interface_index();
        if self.announcer.as_ref().is_some_and(|(_, i)| *i == index) {
            return;
        }
        self.announcer = None;
        match Announcer::new(&self.vip.spec().interface, cfg) {
            Ok(a) => self.announcer = Some((a, index)),
            Err(e) => {
                // A missing announcer (no AF_PACKET permission) leaves the VIP reachable
                // once caches expire: worth running, worth a loud log line.
                if let Some(held) = self.announcer_log.allow() {
                    tracing::error!(error = %e, held_back = held, "cannot announce the VIP (gratuitous ARP / NA): clients move only when their neighbour entries expire");
                }
            }
        }
    }
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
    }
}

impl Device for KernelDevice {
    async fn install(&mut self, lifetime: Duration) -> Result<(), VipError> {
        self.vip.install(lifetime).await
    }

    async fn remove(&mut self) -> Result<(), VipError> {
        self.vip.remove().await
    }

    async fn is_installed(&mut self) -> Result<bool, VipError> {
        self.vip.is_installed().await
    }

    async fn link_up(&mut self) -> Result<bool, VipError> {
        self.vip.link_state().await
    }

    async fn remove_stale(&mut self) -> Result<usize, VipError> {
        self.vip.remove_stale().await
    }

    fn reconnect(&mut self) -> Result<(), VipError> {
        self.vip.reconnect()
    }

    async fn reopen(&mut self) -> Result<(), VipError> {
        self.vip.reopen().await?;
        self.ensure_announcer();
        Ok(())
    }

    fn watch(&mut self, hints: mpsc::UnboundedSender<Hint>) -> Result<(), VipError> {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        self.watch = Some(self.vip.watch(hints)?);
        Ok(())
    }

    fn announce(&mut self, gate: Arc<HoldGate>) -> Option<Announcement> {
        self.ensure_announcer();
        let (a, _) = self.announcer.as_ref()?;
        Some(a.announce(self.ip, gate))
    }
}

pub enum Backend {
    Marker(MarkerVip),
    Kernel(KernelVip),
}

/// The worker's handles: where to queue operations, where outcomes and kernel events come.
pub struct Worker {
    pub ops: mpsc::UnboundedSender<VipOp>,
    pub done: mpsc::UnboundedReceiver<VipDone>,
    pub events: mpsc::UnboundedReceiver<VipEvent>,
    /// The interface's state when the worker started, before the election does.
    pub link_up: bool,
}

/// A netlink request's outcome, with "never answered" told apart.
enum Failure {
    Kernel(VipError),
    Timeout,
}

impl Failure {
    fn fault(&self, what: &str) -> VipFault {
        match self {
            Failure::Timeout => VipFault {
                reason: "timeout",
                errno: None,
                message: format!(
                    "{what}: no answer from netlink within {} s (connection rebuilt)",
                    NETLINK_TIMEOUT.as_secs()
                ),
            },
            Failure::Kernel(e) => VipFault {
                reason: errno_label(e.errno()),
                errno: e.errno(),
                message: format!("{what}: {e}"),
            },
        }
    }

    fn no_device(&self) -> bool {
        matches!(self, Failure::Kernel(e) if e.is_no_device())
    }
}

fn errno_label(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::ENODEV | libc::ENXIO) => "enodev",
        Some(libc::EPERM) => "eperm",
        Some(libc::EACCES) => "eacces",
        Some(libc::EEXIST) => "eexist",
        Some(libc::ENOBUFS) => "enobufs",
        _ => "other",
    }
}

async fn timed<T>(f: impl Future<Output = Result<T, VipError>>) -> Result<T, Failure> {
    match tokio::time::timeout(NETLINK_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Kernel(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

/// The worker's state around its device.
pub struct Shell<D: Device> {
    dev: D,
    gate: Arc<HoldGate>,
    events: mpsc::UnboundedSender<VipEvent>,
    hints: mpsc::UnboundedSender<Hint>,
    /// This worker put the VIP in and has not taken it out (nor seen it vanish).
    installed: bool,
    link_up: Option<bool>,
    announcement: Option<Announcement>,
    apply_log: LogThrottle,
    release_log: LogThrottle,
    resync_log: LogThrottle,
    watch_backoff: Backoff,
}

impl<D: Device> Shell<D> {
    /// Opens the worker around an opened device: removes a VIP an earlier run left
    /// (Rule 8), starts the watch and learns the link state before anything else.
    pub async fn start(
        mut dev: D,
        gate: Arc<HoldGate>,
        events: mpsc::UnboundedSender<VipEvent>,
        hints: mpsc::UnboundedSender<Hint>,
    ) -> Result<Shell<D>, String> {
        match timed(dev.remove_stale()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                removed = n,
                "removed a VIP left on this node by an earlier run"
            ),
            Err(f) => {
                return Err(format!(
                    "cannot remove a stale VIP: {}",
                    f.fault("").message
                ));
            }
        }
        dev.watch(hints.clone()).map_err(|e| e.to_string())?;
        let mut sh = Shell {
            dev,
            gate,
            events,
            hints,
            installed: false,
            link_up: None,
            announcement: None,
            apply_log: LogThrottle::default(),
            release_log: LogThrottle::default(),
            resync_log: LogThrottle::default(),
            watch_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        };
        sh.resync().await;
        Ok(sh)
    }

    pub fn link_up(&self) -> Option<bool> {
        self.link_up
    }

    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    fn gate_open(&self) -> bool {
        announce::Gate::open(&*self.gate)
    }

    /// After a request failed: a timeout rebuilds the connection, ENODEV looks the
    /// devices up again. True when a retry may work.
    async fn recover(&mut self, f: &Failure) -> bool {
        match f {
            Failure::Timeout => {
                if let Err(e) = self.dev.reconnect() {
                    tracing::debug!(error = %e, "netlink reconnect failed");
                }
                false
            }
            _ if f.no_device() => match timed(self.dev.reopen()).await {
                Ok(()) => {
                    tracing::info!("VIP device or interface was replaced: looked them up again");
                    // The old watch followed the old indices' names too, but restart
                    // it anyway: its connection may be the one that went bad.
                    if let Err(e) = self.dev.watch(self.hints.clone()) {
                        tracing::debug!(error = %e, "netlink watch restart failed");
                    }
                    true
                }
                Err(e) => {
                    tracing::debug!(error = %e.fault("reopen").message, "reopen failed");
                    false
                }
            },
            _ => false,
        }
    }

    /// Carries out one operation.
    pub async fn apply(&mut self, op: VipOp) -> VipDone {
        match op {
            VipOp::Claim(lifetime) => self.put(lifetime, true).await,
            VipOp::Refresh(lifetime) => self.put(lifetime, false).await,
            VipOp::Release => self.release().await,
        }
    }

    async fn put(&mut self, lifetime: Duration, claim: bool) -> VipDone {
        if !self.gate_open() {
            return VipDone::Expired;
        }
        let mut r = timed(self.dev.install(lifetime)).await;
        if let Err(f) = &r
            && self.recover(f).await
        {
            if !self.gate_open() {
                return VipDone::Expired;
            }
            r = timed(self.dev.install(lifetime)).await;
        }
        match r {
            Ok(()) => {
                self.installed = true;
                if claim {
                    // The first announcement leaves now, before the election even hears
                    // the add succeeded: clients switch as early as possible.
                    self.announcement = None;
                    self.announcement = self.dev.announce(self.gate.clone());
                }
                VipDone::Applied(Ok(()))
            }
            Err(f) => {
                let fault = f.fault(if claim { "claim" } else { "refresh" });
                if let Some(held) = self.apply_log.allow() {
                    tracing::error!(error = %fault.message, held_back = held, "cannot put the VIP in place");
                }
                VipDone::Applied(Err(fault))
            }
        }
    }

    /// Retried until the kernel confirms: the election sends no vote until the VIP is
    /// gone (Rule 3), so giving up is not an option; the pauses grow instead.
    async fn release(&mut self) -> VipDone {
        self.announcement = None;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut tries = 0u32;
        loop {
            match timed(self.dev.remove()).await {
                Ok(()) => break,
                Err(f) => {
                    tries = tries.saturating_add(1);
                    self.recover(&f).await;
                    let pause = backoff.next_delay();
                    if let Some(held) = self.release_log.allow() {
                        tracing::error!(error = %f.fault("release").message, tries, retry_in = ?pause, held_back = held, "cannot remove the VIP; retrying (no vote until it is gone)");
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        self.installed = false;
        VipDone::Released
    }

    /// Asks the kernel how things are, and reports what changed.
    pub async fn resync(&mut self) {
        match timed(self.dev.link_up()).await {
            Ok(up) => {
                let before = self.link_up.replace(up);
                // The first reading is the start state, handed over with the worker.
                if before.is_some_and(|b| b != up) {
                    let _ = self.events.send(if up {
                        VipEvent::LinkUp
                    } else {
                        VipEvent::LinkDown
                    });
                }
            }
            Err(f) => {
                self.recover(&f).await;
                if let Some(held) = self.resync_log.allow() {
                    tracing::warn!(error = %f.fault("link state").message, held_back = held, "cannot read the interface's state");
                }
            }
        }
        if !self.installed {
            return;
        }
        match timed(self.dev.is_installed()).await {
            Ok(true) => {}
            Ok(false) => {
                self.installed = false;
                self.announcement = None;
                let _ = self.events.send(VipEvent::Removed);
            }
            Err(f) => {
                self.recover(&f).await;
                if let Some(held) = self.resync_log.allow() {
                    tracing::warn!(error = %f.fault("VIP check").message, held_back = held, "cannot check the VIP");
                }
            }
        }
    }

    /// Hints, coalesced: one resync answers any number of them; an ended watch is
    /// started again first (with back-off, so a broken netlink cannot spin us).
    pub async fn on_hints(&mut self, first: Hint, more: &mut mpsc::UnboundedReceiver<Hint>) {
        let mut ended = first == Hint::Ended;
        let mut overrun = first == Hint::Overrun;
        while let Ok(h) = more.try_recv() {
            ended |= h == Hint::Ended;
            overrun |= h == Hint::Overrun;
        }
        if overrun && let Some(held) = self.resync_log.allow() {
            tracing::warn!(
                held_back = held,
                "netlink dropped notifications (overrun): asking the kernel"
            );
        }
        if ended {
            match self.dev.watch(self.hints.clone()) {
                Ok(()) => self.watch_backoff.reset(),
                Err(e) => {
                    let pause = self.watch_backoff.next_delay();
                    if let Some(held) = self.resync_log.allow() {
                        tracing::warn!(error = %e, retry_in = ?pause, held_back = held, "cannot restart the netlink watch");
                    }
                    tokio::time::sleep(pause).await;
                    let _ = self.hints.send(Hint::Ended);
                }
            }
        }
        self.resync().await;
    }
}

/// Serves operations, hints and the resync timer until the daemon closes the queue,
/// then releases the VIP (it must not outlive the daemon's loop).
pub async fn serve<D: Device>(
    mut sh: Shell<D>,
    mut ops: mpsc::UnboundedReceiver<VipOp>,
    done: mpsc::UnboundedSender<VipDone>,
    mut hints: mpsc::UnboundedReceiver<Hint>,
) {
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            biased;
            op = ops.recv() => {
                let Some(op) = op else { break };
                let d = sh.apply(op).await;
                if done.send(d).is_err() {
                    break;
                }
            }
            Some(h) = hints.recv() => sh.on_hints(h, &mut hints).await,
            _ = tick.tick() => sh.resync().await,
        }
    }
    if let Err(e) = timed(sh.dev.remove()).await {
        tracing::error!(error = %e.fault("release").message, "cannot remove the VIP at exit");
    }
}

/// Starts the worker thread with its own single-threaded runtime (netlink connections
/// and the announcer's repeats run there), opens the backend and returns once it is open,
/// so a missing interface fails the start with its own message.
pub async fn spawn(backend: Backend, gate: Arc<HoldGate>) -> Result<Worker, String> {
    let (op_tx, op_rx) = mpsc::unbounded_channel::<VipOp>();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<Result<bool, String>>();
    let worker = move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = opened_tx.send(Err(format!("cannot start the VIP worker's runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let (hint_tx, hint_rx) = mpsc::unbounded_channel();
            macro_rules! run {
                ($dev:expr) => {
                    match Shell::start($dev, gate, ev_tx, hint_tx).await {
                        Ok(sh) => {
                            let _ = opened_tx.send(Ok(sh.link_up().unwrap_or(true)));
                            serve(sh, op_rx, done_tx, hint_rx).await;
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                        }
                    }
                };
            }
            match backend {
                Backend::Marker(m) => run!(m),
                Backend::Kernel(k) => match KernelDevice::open(k).await {
                    Ok(d) => run!(d),
                    Err(e) => {
                        let _ = opened_tx.send(Err(e.to_string()));
                    }
                },
            }
        });
    };
    std::thread::Builder::new()
        .name("apivip-vip".into())
        .spawn(worker)
        .map_err(|e| format!("cannot start the VIP worker thread: {e}"))?;
    match opened_rx.await {
        Ok(Ok(link_up)) => Ok(Worker {
            ops: op_tx,
            done: done_rx,
            events: ev_rx,
            link_up,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the VIP worker stopped while opening the VIP".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::clock::ManualClock;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// What the scripted device does on the next request of a kind.
    #[derive(Clone, Copy, Debug)]
    enum Act {
        Ok,
        Fail(i32),
        /// Never answers (a wedged netlink request).
        Hang,
    }

    #[derive(Default)]
    struct Script {
        install: VecDeque<Act>,
        remove: VecDeque<Act>,
        /// The kernel's truth.
        present: bool,
        link: bool,
        reopens: u32,
        reconnects: u32,
        installs: u32,
        announced: u32,
        /// Filled by `watch`: the test sends hints through it as the kernel would.
        hints: Option<mpsc::UnboundedSender<Hint>>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Script>>);

    impl Fake {
        fn with<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
            f(&mut self.0.lock().unwrap())
        }
    }

    fn err(errno: i32) -> VipError {
        VipError::Tun {
            name: "fake0".into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    async fn act(a: Act) -> Result<(), VipError> {
        match a {
            Act::Ok => Ok(()),
            Act::Fail(e) => Err(err(e)),
            Act::Hang => std::future::pending().await,
        }
    }

    impl Device for Fake {
        async fn install(&mut self, _: Duration) -> Result<(), VipError> {
            let a = self.with(|s| {
                s.installs += 1;
                s.install.pop_front().unwrap_or(Act::Ok)
            });
            act(a).await?;
            self.with(|s| s.present = true);
            Ok(())
        }
        async fn remove(&mut self) -> Result<(), VipError> {
            let a = self.with(|s| s.remove.pop_front().unwrap_or(Act::Ok));
            act(a).await?;
            self.with(|s| s.present = false);
            Ok(())
        }
        async fn is_installed(&mut self) -> Result<bool, VipError> {
            Ok(self.with(|s| s.present))
        }
        async fn link_up(&mut self) -> Result<bool, VipError> {
            Ok(self.with(|s| s.link))
        }
        async fn remove_stale(&mut self) -> Result<usize, VipError> {
            Ok(usize::from(self.with(|s| std::mem::take(&mut s.present))))
        }
        fn reconnect(&mut self) -> Result<(), VipError> {
            self.with(|s| s.reconnects += 1);
            Ok(())
        }
        async fn reopen(&mut self) -> Result<(), VipError> {
            self.with(|s| s.reopens += 1);
            Ok(())
        }
        fn watch(&mut self, hints: mpsc::UnboundedSender<Hint>) -> Result<(), VipError> {
            self.with(|s| s.hints = Some(hints));
            Ok(())
        }
        fn announce(&mut self, gate: Arc<HoldGate>) -> Option<Announcement> {
            if announce::Gate::open(&*gate) {
                self.with(|s| s.announced += 1);
            }
            None
        }
    }

    struct Rig {
        fake: Fake,
        clock: Arc<ManualClock>,
        gate: Arc<HoldGate>,
        sh: Shell<Fake>,
        events: mpsc::UnboundedReceiver<VipEvent>,
        hints: mpsc::UnboundedReceiver<Hint>,
    }

    async fn rig(link: bool) -> Rig {
        let fake = Fake::default();
        fake.with(|s| s.link = link);
        let clock = Arc::new(ManualClock::new(Instant::from_nanos(1)));
        let gate = Arc::new(HoldGate::new(clock.clone()));
        let (ev_tx, events) = mpsc::unbounded_channel();
        let (hint_tx, hints) = mpsc::unbounded_channel();
        let sh = Shell::start(fake.clone(), gate.clone(), ev_tx, hint_tx)
            .await
            .unwrap();
        Rig {
            fake,
            clock,
            gate,
            sh,
            events,
            hints,
        }
    }

    impl Rig {
        fn lease(&self, ms: u64) {
            self.gate
                .set(Some(self.clock.now() + Duration::from_millis(ms)));
        }
    }

    const L: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn the_interface_state_is_known_before_the_election_starts() {
        assert_eq!(rig(false).await.sh.link_up(), Some(false));
        assert_eq!(rig(true).await.sh.link_up(), Some(true));
    }

    /// The TUN device deleted, or the interface re-created with a new index: ENODEV
    /// makes the worker look the devices up again and retry, instead of failing every
    /// claim until a person restarts the daemon.
    #[tokio::test]
    async fn enodev_reopens_and_retries() {
        let mut r = rig(true).await;
        r.lease(500);
        r.fake
            .with(|s| s.install.push_back(Act::Fail(libc::ENODEV)));
        assert_eq!(r.sh.apply(VipOp::Claim(L)).await, VipDone::Applied(Ok(())));
        r.fake.with(|s| {
            assert_eq!((s.reopens, s.installs, s.present), (1, 2, true));
            assert_eq!(s.announced, 1);
        });
    }

    /// Any other refusal goes back with its errno (the election backs off and hands
    /// over); the worker does not retry on its own.
    #[tokio::test]
    async fn eperm_is_reported_with_its_errno() {
        let mut r = rig(true).await;
        r.lease(500);
        r.fake.with(|s| s.install.push_back(Act::Fail(libc::EPERM)));
        match r.sh.apply(VipOp::Claim(L)).await {
            VipDone::Applied(Err(f)) => {
                assert_eq!((f.reason, f.errno), ("eperm", Some(libc::EPERM)));
                assert!(f.message.contains("claim"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
        r.fake.with(|s| assert_eq!((s.reopens, s.installs), (0, 1)));
    }

    /// A request that never answers: timed out, the connection rebuilt, and the release
    /// queued behind it still goes through.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_request_times_out_and_the_release_behind_it_works() {
        let mut r = rig(true).await;
        r.lease(60_000);
        r.fake.with(|s| s.install.push_back(Act::Hang));
        let started = tokio::time::Instant::now();
        match r.sh.apply(VipOp::Claim(L)).await {
            VipDone::Applied(Err(f)) => assert_eq!(f.reason, "timeout"),
            other => panic!("{other:?}"),
        }
        assert_eq!(started.elapsed(), NETLINK_TIMEOUT);
        r.fake.with(|s| assert_eq!(s.reconnects, 1));
        r.fake.with(|s| s.remove.push_back(Act::Hang));
        assert_eq!(r.sh.apply(VipOp::Release).await, VipDone::Released);
        r.fake.with(|s| assert_eq!(s.reconnects, 2));
    }

    /// A release the kernel keeps refusing is retried with growing pauses, not in a
    /// tight loop.
    #[tokio::test(start_paused = true)]
    async fn a_refused_release_backs_off() {
        let mut r = rig(true).await;
        r.fake.with(|s| {
            for _ in 0..6 {
                s.remove.push_back(Act::Fail(libc::EBUSY));
            }
        });
        let started = tokio::time::Instant::now();
        assert_eq!(r.sh.apply(VipOp::Release).await, VipDone::Released);
        // 50 + 100 + 200 + 400 + 800 + 1600 ms of pauses for six refusals.
        assert_eq!(started.elapsed(), Duration::from_millis(3150));
    }

    /// A process resumed after its lease ran out (SIGSTOP, a paused VM) finds a claim or
    /// refresh still queued: the gate, read against the clock, turns it down before it
    /// reaches the kernel, and no announcement leaves.
    #[tokio::test]
    async fn a_resumed_process_neither_claims_nor_announces_an_expired_lease() {
        let mut r = rig(true).await;
        r.lease(500);
        assert_eq!(r.sh.apply(VipOp::Claim(L)).await, VipDone::Applied(Ok(())));
        r.clock.advance(Duration::from_secs(3));
        assert_eq!(r.sh.apply(VipOp::Refresh(L)).await, VipDone::Expired);
        assert_eq!(r.sh.apply(VipOp::Claim(L)).await, VipDone::Expired);
        r.fake
            .with(|s| assert_eq!((s.installs, s.announced), (1, 1)));
    }

    /// Notifications are hints: a late DELADDR (the echo of our own release) arriving
    /// after the next claim put the VIP back must not be reported as a loss. A real
    /// deletion is.
    #[tokio::test]
    async fn a_late_deladdr_of_our_own_release_is_not_a_loss() {
        let mut r = rig(true).await;
        r.lease(60_000);
        r.sh.apply(VipOp::Claim(L)).await;
        r.sh.apply(VipOp::Release).await;
        r.sh.apply(VipOp::Claim(L)).await;
        // The echo of the release arrives now.
        r.sh.on_hints(Hint::Address, &mut r.hints).await;
        assert!(r.events.try_recv().is_err(), "reported a loss");
        // Someone really deletes it.
        r.fake.with(|s| s.present = false);
        r.sh.on_hints(Hint::Address, &mut r.hints).await;
        assert_eq!(r.events.try_recv().ok(), Some(VipEvent::Removed));
    }

    /// ENOBUFS on the watch: the notifications of a link going down were lost. The
    /// overrun makes the worker ask, and the change is reported.
    #[tokio::test]
    async fn an_overrun_resyncs_the_link_and_the_vip() {
        let mut r = rig(true).await;
        r.lease(60_000);
        r.sh.apply(VipOp::Claim(L)).await;
        r.fake.with(|s| {
            s.link = false;
            s.present = false;
        });
        r.sh.on_hints(Hint::Overrun, &mut r.hints).await;
        let got: Vec<VipEvent> = std::iter::from_fn(|| r.events.try_recv().ok()).collect();
        assert_eq!(got, [VipEvent::LinkDown, VipEvent::Removed]);
    }

    /// An ended watch is started again, then resynced.
    #[tokio::test]
    async fn an_ended_watch_is_restarted() {
        let mut r = rig(true).await;
        r.fake.with(|s| s.hints = None);
        r.fake.with(|s| s.link = false);
        r.sh.on_hints(Hint::Ended, &mut r.hints).await;
        assert!(r.fake.with(|s| s.hints.is_some()), "watch not restarted");
        assert_eq!(r.events.try_recv().ok(), Some(VipEvent::LinkDown));
    }

    /// Through the thread and queue: operations are answered in order.
    #[tokio::test]
    async fn operations_are_answered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Instant::from_nanos(1)));
        let gate = Arc::new(HoldGate::new(clock.clone()));
        gate.set(Some(Instant::MAX));
        let w = spawn(Backend::Marker(MarkerVip::new(dir.path().into(), 3)), gate)
            .await
            .unwrap();
        assert!(w.link_up);
        let (tx, mut rx) = (w.ops, w.done);
        tx.send(VipOp::Claim(Duration::from_secs(1))).unwrap();
        tx.send(VipOp::Refresh(Duration::from_secs(1))).unwrap();
        tx.send(VipOp::Release).unwrap();
        assert_eq!(rx.recv().await, Some(VipDone::Applied(Ok(()))));
        assert_eq!(rx.recv().await, Some(VipDone::Applied(Ok(()))));
        assert_eq!(rx.recv().await, Some(VipDone::Released));
        assert!(!dir.path().join("holder-3").exists());
    }
}
