//! Prometheus metrics and the probe endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! The daemon owns one [`Metrics`] behind an `Arc` and calls its setters from wherever the
//! event happens; nothing here polls the daemon. Values that are ages (how long since a
//! peer was heard) are computed at scrape time so a wedged daemon shows growing ages rather
//! than the last value it happened to write.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use apivip_proto::election::RoleName;
use apivip_proto::wire::DecodeError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Every metric name starts with this.
pub const PREFIX: &str = "apivip";

/// The content type of OpenMetrics text, which Prometheus negotiates and prefers.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Role label values of `apivip_role`. `proxy` is a node without a VIP (no election).
pub const ROLES: [&str; 5] = ["follower", "pre-candidate", "candidate", "leader", "proxy"];

/// Reasons a datagram is rejected outside the codec: the codec's own reasons
/// ([`DecodeError::REASONS`]) plus these.
pub const EXTRA_REJECT_REASONS: [&str; 2] = ["unknown_peer", "other"];

/// Labels of `apivip_vip_failures_total`: the errno a refused claim or refresh carried
/// (a fixed set, so the label set stays small), `timeout` for a netlink request that
/// never answered, `other` for the rest.
pub const VIP_FAILURE_REASONS: [&str; 7] = [
    "enodev", "eperm", "eacces", "eexist", "enobufs", "timeout", "other",
];

/// How many scrapes or probes may be in flight at once; more wait for a slot, so a
/// misbehaving scraper cannot make the daemon spawn without bound.
const MAX_CONNECTIONS: usize = 32;
/// A client that has not sent its request headers by then is dropped (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// One forwarder backend as the forwarder reports it; counters are totals since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendSample {
    /// A stable name, e.g. `local` or `192.0.2.12:6443`.
    pub name: String,
    pub active: u64,
    pub total: u64,
    pub failures: u64,
    /// Bytes from clients to the backend.
    pub bytes_in: u64,
    /// Bytes from the backend to clients.
    pub bytes_out: u64,
    pub healthy: bool,
}

/// Values that are replaced wholesale (backends) or turned into ages at scrape time
/// (peers); a `Collector` encodes them so vanished backends also vanish from the output.
#[derive(Debug, Default)]
struct Dynamic {
    backends: Mutex<Vec<BackendSample>>,
    forward: Mutex<Option<crate::forward::ForwardTotals>>,
    /// Node id -> when a valid datagram from it last arrived (None: never).
    peers: Mutex<BTreeMap<u32, Option<Instant>>>,
}

/// Every metric apivip exports, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    role: Family<RoleLabel, Gauge>,
    term: Gauge,
    leader_changes: Counter,
    vip_held: Gauge,
    last_failover: Gauge<f64, AtomicU64>,
    heartbeats_sent: Counter,
    heartbeats_received: Counter,
    heartbeats_rejected: Family<ReasonLabel, Counter>,
    apiserver_healthy: Gauge,
    vip_failures: Family<ReasonLabel, Counter>,
    state_failing: Gauge,
    state_failures: Counter,
    terms_refused: Counter,
    fd_limit: Gauge,
    placement_fallback: Gauge,
    dynamic: Arc<Dynamic>,
    started: Instant,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let role = Family::<RoleLabel, Gauge>::default();
        registry.register(
            "role",
            "This node's election role: 1 for the current role, 0 for the others",
            role.clone(),
        );
        let term = Gauge::default();
        registry.register("term", "The current election term", term.clone());
        let leader_changes = Counter::default();
        registry.register(
            "leader_changes",
            "Times this node saw the leader change (including to no leader)",
            leader_changes.clone(),
        );
        let vip_held = Gauge::default();
        registry.register(
            "vip_held",
            "1 while this node holds the VIP in its kernel",
            vip_held.clone(),
        );
        let last_failover = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_failover_seconds",
            "How long the last VIP move took, from the old holder's loss to this node announcing it",
            last_failover.clone(),
        );
        let heartbeats_sent = Counter::default();
        registry.register(
            "heartbeats_sent",
            "Election datagrams sent",
            heartbeats_sent.clone(),
        );
        let heartbeats_received = Counter::default();
        registry.register(
            "heartbeats_received",
            "Election datagrams received and accepted",
            heartbeats_received.clone(),
        );
        let heartbeats_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "heartbeats_rejected",
            "Datagrams received on the heartbeat port and dropped, by reason",
            heartbeats_rejected.clone(),
        );
        let apiserver_healthy = Gauge::default();
        registry.register(
            "apiserver_healthy",
            "1 while the local apiserver passes its health check",
            apiserver_healthy.clone(),
        );
        let vip_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "vip_failures",
            "Claims or refreshes of the VIP the kernel refused, by errno",
            vip_failures.clone(),
        );
        let state_failing = Gauge::default();
        registry.register(
            "state_persist_failing",
            "1 while term and vote cannot be written to the state file (only pre-votes are answered)",
            state_failing.clone(),
        );
        let state_failures = Counter::default();
        registry.register(
            "state_persist_failures",
            "Failed writes of the state file",
            state_failures.clone(),
        );
        let terms_refused = Counter::default();
        registry.register(
            "terms_refused",
            "Authenticated messages ignored for a term beyond what this node follows",
            terms_refused.clone(),
        );
        let fd_limit = Gauge::default();
        registry.register(
            "open_files_limit",
            "RLIMIT_NOFILE after start-up raised it to the hard limit",
            fd_limit.clone(),
        );
        let placement_fallback = Gauge::default();
        registry.register(
            "vip_placement_fallback",
            "1 when vip.placement = auto put the VIP on the interface because /dev/net/tun could not be opened",
            placement_fallback.clone(),
        );
        registry.register(
            "build",
            "The running apivip version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        let dynamic = Arc::new(Dynamic::default());
        registry.register_collector(Box::new(Arc::clone(&dynamic)));

        // Every label value is created up front: a rate() over a series that appears only
        // on its first increment misses that increment.
        for r in ROLES {
            let _ = role.get_or_create(&RoleLabel { role: r });
        }
        for r in DecodeError::REASONS.iter().chain(&EXTRA_REJECT_REASONS) {
            let _ = heartbeats_rejected.get_or_create(&ReasonLabel { reason: r });
        }
        for r in VIP_FAILURE_REASONS {
            let _ = vip_failures.get_or_create(&ReasonLabel { reason: r });
        }
        Arc::new(Metrics {
            registry,
            role,
            term,
            leader_changes,
            vip_held,
            last_failover,
            heartbeats_sent,
            heartbeats_received,
            heartbeats_rejected,
            apiserver_healthy,
            vip_failures,
            state_failing,
            state_failures,
            terms_refused,
            fd_limit,
            placement_fallback,
            dynamic,
            started: Instant::now(),
        })
    }

    /// Sets the role; `None` means proxy-only (no election on this node).
    pub fn set_role(&self, role: Option<RoleName>) {
        let current = role.map_or("proxy", RoleName::as_str);
        for r in ROLES {
            self.role
                .get_or_create(&RoleLabel { role: r })
                .set(i64::from(r == current));
        }
    }

    pub fn set_term(&self, term: u64) {
        self.term.set(i64::try_from(term).unwrap_or(i64::MAX));
    }

    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    pub fn set_vip_held(&self, held: bool) {
        self.vip_held.set(i64::from(held));
    }

    /// Records how long the last VIP move took.
    pub fn failover_completed(&self, took: Duration) {
        self.last_failover.set(took.as_secs_f64());
    }

    pub fn heartbeat_sent(&self) {
        self.heartbeats_sent.inc();
    }

    /// A valid datagram from `peer` arrived: counts it and resets the peer's age.
    pub fn heartbeat_received(&self, peer: u32) {
        self.heartbeats_received.inc();
        lock(&self.dynamic.peers).insert(peer, Some(Instant::now()));
    }

    /// The codec rejected a datagram.
    pub fn heartbeat_rejected(&self, err: &DecodeError) {
        self.heartbeat_rejected_reason(err.reason());
    }

    /// A datagram dropped outside the codec, e.g. `unknown_peer`; a reason not in
    /// [`DecodeError::REASONS`] or [`EXTRA_REJECT_REASONS`] counts as `other`, so the
    /// label set stays fixed.
    pub fn heartbeat_rejected_reason(&self, reason: &str) {
        let known = DecodeError::REASONS
            .iter()
            .chain(&EXTRA_REJECT_REASONS)
            .find(|r| **r == reason)
            .copied()
            .unwrap_or("other");
        self.heartbeats_rejected
            .get_or_create(&ReasonLabel { reason: known })
            .inc();
    }

    /// The members this node expects to hear from (itself excluded); a peer listed here
    /// but never heard is exported with age +Inf, which alerts fire on.
    pub fn set_peers(&self, ids: &[u32]) {
        let mut peers = lock(&self.dynamic.peers);
        peers.retain(|id, _| ids.contains(id));
        for id in ids {
            peers.entry(*id).or_insert(None);
        }
    }

    pub fn set_apiserver_healthy(&self, healthy: bool) {
        self.apiserver_healthy.set(i64::from(healthy));
    }

    /// The kernel refused a claim or refresh; `reason` is one of [`VIP_FAILURE_REASONS`]
    /// (anything else counts as `other`).
    pub fn vip_failed(&self, reason: &str) {
        let known = VIP_FAILURE_REASONS
            .iter()
            .find(|r| **r == reason)
            .copied()
            .unwrap_or("other");
        self.vip_failures
            .get_or_create(&ReasonLabel { reason: known })
            .inc();
    }

    /// A write of the state file failed (`true`) or one worked again (`false`).
    pub fn set_state_failing(&self, failing: bool) {
        if failing {
            self.state_failures.inc();
        }
        self.state_failing.set(i64::from(failing));
    }

    pub fn term_refused(&self) {
        self.terms_refused.inc();
    }

    pub fn set_fd_limit(&self, limit: u64) {
        self.fd_limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub fn set_vip_placement_fallback(&self, fallback: bool) {
        self.placement_fallback.set(i64::from(fallback));
    }

    /// Replaces the forwarder's per-backend figures with a fresh snapshot.
    pub fn update_backends(&self, samples: &[BackendSample]) {
        *lock(&self.dynamic.backends) = samples.to_vec();
    }

    /// Replaces the forwarder-wide totals with a fresh snapshot.
    pub fn update_forward(&self, totals: crate::forward::ForwardTotals) {
        *lock(&self.dynamic.forward) = Some(totals);
    }

    /// The OpenMetrics text of every metric, as `/metrics` serves it.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A poisoned lock here only means a panic elsewhere mid-update of plain numbers; the
/// numbers are still usable, and metrics must never take the daemon down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Collector for Dynamic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let peers: Vec<(String, f64)> = lock(&self.peers)
            .iter()
            .map(|(id, at)| {
                let age = at.map_or(f64::INFINITY, |t| now.duration_since(t).as_secs_f64());
                (id.to_string(), age)
            })
            .collect();
        let mut m = encoder.encode_descriptor(
            "peer_last_heard_seconds",
            "Seconds since a valid datagram from this peer arrived (+Inf: never)",
            None,
            MetricType::Gauge,
        )?;
        for (peer, age) in &peers {
            let labels = [("peer", peer.as_str())];
            ConstGauge::new(*age).encode(m.encode_family(&labels)?)?;
        }

        if let Some(t) = *lock(&self.forward) {
            for (name, help, v) in [
                (
                    "forward_max_connections",
                    "The connection cap in force: forward.max_connections, or lower when RLIMIT_NOFILE allows fewer",
                    t.max_connections,
                ),
                (
                    "forward_open_connections",
                    "Connections open through the forwarder",
                    t.open,
                ),
            ] {
                let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(m)?;
            }
            let mut m = encoder.encode_descriptor(
                "forward_closed",
                "Connections the forwarder closed or turned away, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in [
                ("idle", t.idle_closed),
                ("silent", t.silent_closed),
                ("source_cap", t.source_capped),
                ("source_rate", t.source_rate_limited),
                ("backend_down", t.backend_down_closed),
                ("vip_released", t.vip_released_closed),
                ("no_backend", t.refused),
                ("local_error", t.local_errors),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }

        let backends = lock(&self.backends).clone();
        type Field = fn(&BackendSample) -> u64;
        let gauges: [(&str, &str, Field); 2] = [
            (
                "forward_active_connections",
                "Connections open through the forwarder to this backend",
                |b| b.active,
            ),
            (
                "forward_backend_healthy",
                "1 while the forwarder's health check passes for this backend",
                |b| u64::from(b.healthy),
            ),
        ];
        for (name, help, field) in gauges {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for b in &backends {
                let labels = [("backend", b.name.as_str())];
                let v = i64::try_from(field(b)).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        let counters: [(&str, &str, Field); 2] = [
            (
                "forward_connections",
                "Connections the forwarder sent to this backend",
                |b| b.total,
            ),
            (
                "forward_failures",
                "Connection attempts to this backend that failed",
                |b| b.failures,
            ),
        ];
        for (name, help, field) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for b in &backends {
                let labels = [("backend", b.name.as_str())];
                ConstCounter::new(field(b)).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "forward_bytes",
            "Bytes forwarded, by backend and direction (in: client to backend)",
            None,
            MetricType::Counter,
        )?;
        for b in &backends {
            for (dir, v) in [("in", b.bytes_in), ("out", b.bytes_out)] {
                let labels = [("backend", b.name.as_str()), ("direction", dir)];
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// What `/readyz` waits for. The daemon flips these; the static pod's readiness probe
/// reads them.
#[derive(Debug)]
pub struct Readiness {
    election_required: bool,
    election_running: AtomicBool,
    /// Cleared while the state file cannot be written: the node then answers pre-votes
    /// only, which an operator should see.
    state_writable: AtomicBool,
    forwarder_listening: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Readiness {
    /// A control-plane node: ready once the election runs and the forwarder listens.
    pub fn new() -> Arc<Readiness> {
        Arc::new(Readiness {
            election_required: true,
            election_running: AtomicBool::new(false),
            state_writable: AtomicBool::new(true),
            forwarder_listening: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// A proxy-only node (no VIP): ready once the forwarder listens.
    pub fn proxy_only() -> Arc<Readiness> {
        Arc::new(Readiness {
            election_required: false,
            election_running: AtomicBool::new(false),
            state_writable: AtomicBool::new(true),
            forwarder_listening: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn set_election_running(&self, running: bool) {
        self.election_running.store(running, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn set_state_writable(&self, writable: bool) {
        self.state_writable.store(writable, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn set_forwarder_listening(&self, listening: bool) {
        self.forwarder_listening.store(listening, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Completes once ready, e.g. to send systemd READY=1 at the moment /readyz turns 200:
    /// `readiness.ready().await; manifest::notify_ready()`.
    pub async fn ready(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a flip between the two is not missed.
            changed.as_mut().enable();
            if self.check().is_ok() {
                return;
            }
            changed.await;
        }
    }

    /// `Ok` when ready, else what is missing, in words for the probe's body.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if self.election_required && !self.election_running.load(Ordering::Acquire) {
            missing.push("election not running");
        }
        if !self.forwarder_listening.load(Ordering::Acquire) {
            missing.push("forwarder not listening");
        }
        if self.election_required && !self.state_writable.load(Ordering::Acquire) {
            missing.push("state file not writable (votes held back; see the log)");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.address = {value}: must be ip:port (or empty to disable)")]
    BadAddress { value: String },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// `metrics.address` as the config holds it: empty disables the endpoint.
pub fn parse_address(value: &str) -> Result<Option<SocketAddr>, MetricsError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| MetricsError::BadAddress {
            value: value.to_owned(),
        })
}

/// Starts the endpoint `metrics.address` names, or nothing when it is empty.
pub async fn serve_configured(
    config: &crate::config::MetricsConfig,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<Server>, MetricsError> {
    match parse_address(&config.address)? {
        None => Ok(None),
        Some(addr) => serve(addr, metrics, readiness, shutdown).await.map(Some),
    }
}

/// A running metrics endpoint.
#[derive(Debug)]
pub struct Server {
    /// The address actually bound (differs from the requested one for port 0).
    pub local_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Binds `addr` now, so a taken port fails at start-up rather than silently later, and
/// serves until `shutdown` completes; connections still open then are cut.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(accept_loop(listener, metrics, readiness, shutdown));
    Ok(Server { local_addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut log = crate::backoff::LogThrottle::default();
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff.reset();
                    c
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    let pause = backoff.next_delay();
                    if let Some(held) = log.allow() {
                        tracing::warn!(error = %e, retry_in = ?pause, held_back = held, "metrics: accept failed");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let metrics = Arc::clone(&metrics);
        let readiness = Arc::clone(&readiness);
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let resp = respond(&req, &metrics, &readiness);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection ended with an error");
            }
        });
    }
    conns.shutdown().await;
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path {
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(CONTENT_TYPE),
                );
                r
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => match readiness.check() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(missing) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {missing}\n"),
            ),
        },
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let r = Readiness::new();
        assert_eq!(
            r.check().unwrap_err(),
            "election not running, forwarder not listening"
        );
        r.set_election_running(true);
        assert_eq!(r.check().unwrap_err(), "forwarder not listening");
        r.set_forwarder_listening(true);
        assert!(r.check().is_ok());
        let p = Readiness::proxy_only();
        p.set_forwarder_listening(true);
        assert!(p.check().is_ok());
    }

    #[tokio::test]
    async fn ready_completes_when_both_flags_are_set() {
        let r = Readiness::new();
        let waiter = tokio::spawn({
            let r = Arc::clone(&r);
            async move { r.ready().await }
        });
        r.set_election_running(true);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        r.set_forwarder_listening(true);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("").unwrap(), None);
        assert_eq!(
            parse_address("127.0.0.1:9405").unwrap(),
            Some("127.0.0.1:9405".parse().unwrap())
        );
        assert!(parse_address("localhost").is_err());
    }

    #[test]
    fn unknown_reasons_count_as_other() {
        let m = Metrics::new();
        m.heartbeat_rejected_reason("no such reason");
        let text = m.encode().unwrap();
        assert!(
            text.contains("apivip_heartbeats_rejected_total{reason=\"other\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn forwarder_totals_are_exported_with_the_cap_in_force() {
        let m = Metrics::new();
        assert!(!m.encode().unwrap().contains("forward_max_connections"));
        m.update_forward(crate::forward::ForwardTotals {
            open: 7,
            silent_closed: 3,
            vip_released_closed: 2,
            max_connections: 128,
            ..Default::default()
        });
        let text = m.encode().unwrap();
        for line in [
            "apivip_forward_max_connections 128",
            "apivip_forward_open_connections 7",
            "apivip_forward_closed_total{reason=\"silent\"} 3",
            "apivip_forward_closed_total{reason=\"vip_released\"} 2",
            "apivip_forward_closed_total{reason=\"source_cap\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
