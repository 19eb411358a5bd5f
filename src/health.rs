//! Active health checks of one apiserver: HTTPS `GET /readyz` (or any path), a plain TCP
//! connect, or none. Used by the forwarder for each backend and by the daemon for the
//! local apiserver whose health feeds the election.
//!
//! A check passes on a 200 answer (HTTPS) or an accepted connection (TCP) within the
//! timeout. The state flips to healthy after `rise` consecutive passes and to unhealthy
//! after `fall` consecutive failures, so one lost packet does not move traffic or the VIP.
//! Every interval is jittered so that thousands of workers started together (a rollout, a
//! power cut) do not probe the control plane in lock-step.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// TLS handshake, then `GET path`; a 200 status passes.
    Https {
        path: String,
        /// Verify the server against these CAs; `None` accepts any certificate (the check
        /// asks "is it ready", and the target is a configured address, not a name).
        ca_file: Option<PathBuf>,
        /// SNI and certificate name; by default the target's IP address.
        server_name: Option<String>,
    },
    /// A TCP connect that completes.
    Tcp,
    /// No active check: always healthy (passive ejection only, in the forwarder).
    None,
}

/// How often and how strictly to check.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Each interval is drawn from `interval * (1 ± jitter)`; 0.0 disables.
    pub jitter: f64,
    /// The state before the first verdict. The forwarder starts healthy (traffic must flow
    /// at once; passive ejection covers a dead backend); the election starts unhealthy.
    pub start_healthy: bool,
}

impl HealthSpec {
    /// Defaults for an HTTPS `/readyz` check.
    pub fn https_readyz(interval: Duration) -> HealthSpec {
        HealthSpec {
            kind: CheckKind::Https {
                path: "/readyz".into(),
                ca_file: None,
                server_name: None,
            },
            interval,
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: 0.1,
            start_healthy: false,
        }
    }
}

/// The latest verdict, published on a watch channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthState {
    pub healthy: bool,
    /// Consecutive results that agree with the last one (passes or failures).
    pub streak: u32,
    /// Why the last check failed, if it did.
    pub last_error: Option<String>,
}

/// Counters since the prober started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeCounters {
    pub checks: u64,
    pub failures: u64,
    pub transitions: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health check CA file {path}: {problem}")]
    CaFile { path: PathBuf, problem: String },
    #[error("health check server name '{0}' is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("health check TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("health check spec: {0}")]
    Spec(String),
}

#[derive(Default)]
struct Shared {
    healthy: AtomicBool,
    checks: AtomicU64,
    failures: AtomicU64,
    transitions: AtomicU64,
}

/// A running prober; dropping it stops the checks.
pub struct Prober {
    rx: watch::Receiver<HealthState>,
    /// Changes only when the verdict flips (the state channel also changes with every
    /// streak step), so a forwarded connection waiting for "down" wakes once, not per check.
    verdict_rx: watch::Receiver<bool>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// Starts checking `target` on the current tokio runtime.
    pub fn spawn(target: SocketAddr, spec: HealthSpec) -> Result<Prober, HealthError> {
        if spec.interval.is_zero() || spec.timeout.is_zero() || spec.rise == 0 || spec.fall == 0 {
            return Err(HealthError::Spec(
                "interval, timeout, rise and fall must all be above 0".into(),
            ));
        }
        let check = Check::new(target, &spec.kind)?;
        let initial = HealthState {
            healthy: spec.start_healthy,
            streak: 0,
            last_error: None,
        };
        let (tx, rx) = watch::channel(initial);
        let (verdict_tx, verdict_rx) = watch::channel(spec.start_healthy);
        let shared = Arc::new(Shared::default());
        shared.healthy.store(spec.start_healthy, Ordering::Relaxed);
        let task = tokio::spawn(run(
            check,
            spec,
            (tx, verdict_tx),
            shared.clone(),
            seed(target),
        ));
        Ok(Prober {
            rx,
            verdict_rx,
            shared,
            task,
        })
    }

    /// A receiver that changes only when the verdict flips (true = healthy).
    pub fn verdicts(&self) -> watch::Receiver<bool> {
        self.verdict_rx.clone()
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.rx.clone()
    }

    /// The verdict now, without touching the channel's lock (the forwarder asks this per
    /// connection).
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> HealthState {
        self.rx.borrow().clone()
    }

    pub fn counters(&self) -> ProbeCounters {
        ProbeCounters {
            checks: self.shared.checks.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            transitions: self.shared.transitions.load(Ordering::Relaxed),
        }
    }
}

/// One check, ready to run repeatedly.
enum Check {
    Https {
        target: SocketAddr,
        connector: TlsConnector,
        name: ServerName<'static>,
        request: Vec<u8>,
    },
    Tcp(SocketAddr),
    None,
}

impl Check {
    fn new(target: SocketAddr, kind: &CheckKind) -> Result<Check, HealthError> {
        Ok(match kind {
            CheckKind::Tcp => Check::Tcp(target),
            CheckKind::None => Check::None,
            CheckKind::Https {
                path,
                ca_file,
                server_name,
            } => {
                let config = client_config(ca_file.as_ref())?;
                let name = match server_name {
                    Some(n) => ServerName::try_from(n.clone())
                        .map_err(|_| HealthError::ServerName(n.clone()))?,
                    None => ServerName::IpAddress(target.ip().into()),
                };
                let host = match server_name {
                    Some(n) => n.clone(),
                    None => match target.ip() {
                        IpAddr::V4(ip) => ip.to_string(),
                        IpAddr::V6(ip) => format!("[{ip}]"),
                    },
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: apivip-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                Check::Https {
                    target,
                    connector: TlsConnector::from(Arc::new(config)),
                    name,
                    request,
                }
            }
        })
    }

    async fn once(&self) -> Result<(), Probe> {
        // Out of descriptors or buffers here says nothing about the apiserver: with the
        // process at its fd limit, counting it as a failure moved the VIP off a node
        // whose apiserver was fine.
        let connect_err = |target: &SocketAddr, e: std::io::Error| {
            let what = format!("connect {target}: {e}");
            if crate::backoff::is_local_exhaustion(&e) {
                Probe::Local(what)
            } else {
                Probe::Failed(what)
            }
        };
        match self {
            Check::None => Ok(()),
            Check::Tcp(target) => TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|e| connect_err(target, e)),
            Check::Https {
                target,
                connector,
                name,
                request,
            } => {
                let tcp = TcpStream::connect(target)
                    .await
                    .map_err(|e| connect_err(target, e))?;
                let _ = tcp.set_nodelay(true);
                let mut tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Probe::Failed(format!("TLS handshake with {target}: {e}")))?;
                tls.write_all(request)
                    .await
                    .map_err(|e| Probe::Failed(format!("send to {target}: {e}")))?;
                // The status line is all we need; 64 bytes always hold it.
                let mut head = [0u8; 64];
                let mut got = 0;
                while got < 12 {
                    let n = tls
                        .read(&mut head[got..])
                        .await
                        .map_err(|e| Probe::Failed(format!("read from {target}: {e}")))?;
                    if n == 0 {
                        return Err(Probe::Failed(format!("{target} closed before answering")));
                    }
                    got += n;
                }
                let line = String::from_utf8_lossy(&head[..got]);
                let status = line.split_whitespace().nth(1).unwrap_or("");
                if line.starts_with("HTTP/1.") && status == "200" {
                    Ok(())
                } else {
                    let first = line.lines().next().unwrap_or_default();
                    Err(Probe::Failed(format!("{target} answered '{first}'")))
                }
            }
        }
    }
}

/// A rustls client with the ring provider: verifying against `ca_file` or not at all.
pub fn client_config(ca_file: Option<&PathBuf>) -> Result<ClientConfig, HealthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| HealthError::CaFile {
                    path: path.clone(),
                    problem: e.to_string(),
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HealthError::CaFile {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(HealthError::CaFile {
                    path: path.clone(),
                    problem: "holds no PEM certificate".into(),
                });
            }
            for c in certs {
                roots.add(c).map_err(|e| HealthError::CaFile {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts any certificate but still checks the handshake signatures, so the session is a
/// real TLS session with whoever holds the key.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Folds check results into a verdict with rise/fall hysteresis.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    healthy: bool,
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    pub fn new(start_healthy: bool, rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            healthy: start_healthy,
            streak: 0,
            rise,
            fall,
        }
    }

    /// Records one result; true when the verdict changed.
    pub fn record(&mut self, pass: bool) -> bool {
        if pass == self.healthy {
            // A result that agrees with the verdict clears any streak against it.
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let need = if pass { self.rise } else { self.fall };
        if self.streak >= need {
            self.healthy = pass;
            self.streak = 0;
            true
        } else {
            false
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }
}

/// Why one check did not pass.
enum Probe {
    /// The target failed the check.
    Failed(String),
    /// This process could not even try (EMFILE, ENOBUFS, ...): no verdict either way.
    Local(String),
}

async fn run(
    check: Check,
    spec: HealthSpec,
    (tx, verdict_tx): (watch::Sender<HealthState>, watch::Sender<bool>),
    shared: Arc<Shared>,
    mut rng: u64,
) {
    let mut verdict = Hysteresis::new(spec.start_healthy, spec.rise, spec.fall);
    // The first check comes at a random point of the first interval's jitter window, not at
    // once, so a fleet restarted together spreads out from the start.
    let first = spec
        .interval
        .mul_f64(spec.jitter.clamp(0.0, 1.0) * unit(&mut rng));
    tokio::time::sleep(first).await;
    let mut local_log = crate::backoff::LogThrottle::default();
    loop {
        let started = Instant::now();
        let result = match tokio::time::timeout(spec.timeout, check.once()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Probe::Failed(e))) => Err(e),
            Ok(Err(Probe::Local(e))) => {
                if let Some(held) = local_log.allow() {
                    tracing::warn!(target: "apivip::health", check = %describe(&check), error = %e, held_back = held, "check skipped: this process is out of a local resource (no verdict)");
                }
                let next = spec.interval.saturating_sub(started.elapsed());
                tokio::time::sleep(next).await;
                continue;
            }
            Err(_) => Err(format!(
                "no answer within {}",
                crate::duration::format(spec.timeout)
            )),
        };
        shared.checks.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            shared.failures.fetch_add(1, Ordering::Relaxed);
        }
        let changed = verdict.record(result.is_ok());
        if changed {
            shared.transitions.fetch_add(1, Ordering::Relaxed);
            shared.healthy.store(verdict.healthy(), Ordering::Relaxed);
            verdict_tx.send_replace(verdict.healthy());
            match &result {
                Ok(()) => {
                    tracing::info!(target: "apivip::health", check = %describe(&check), "healthy")
                }
                Err(e) => {
                    tracing::warn!(target: "apivip::health", check = %describe(&check), error = %e, "unhealthy")
                }
            }
        }
        let last_error = result.err();
        let streak = if changed { 0 } else { verdict.streak };
        tx.send_if_modified(|s| {
            let new = HealthState {
                healthy: verdict.healthy(),
                streak,
                last_error,
            };
            if *s != new {
                *s = new;
                true
            } else {
                false
            }
        });
        let factor = 1.0 + spec.jitter.clamp(0.0, 1.0) * (2.0 * unit(&mut rng) - 1.0);
        let next = spec.interval.mul_f64(factor);
        let elapsed = started.elapsed();
        tokio::time::sleep(next.saturating_sub(elapsed)).await;
    }
}

fn describe(c: &Check) -> String {
    match c {
        Check::Https { target, .. } => format!("https {target}"),
        Check::Tcp(t) => format!("tcp {t}"),
        Check::None => "none".into(),
    }
}

fn seed(target: SocketAddr) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // RandomState is seeded per process from the OS: different on every worker.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    target.hash(&mut h);
    Instant::now().hash(&mut h);
    h.finish() | 1
}

/// xorshift64*: jitter needs spread, not cryptographic quality.
fn unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (r >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stand-in apiserver the tests and the demo use passes a verifying https check:
    /// its written certificate names it, and the PEM file is usable as `ca_file`.
    #[tokio::test]
    async fn https_check_verifies_the_standins_written_certificate() {
        use apivip_testkit::standin::{Standin, StandinArgs};
        let dir = tempfile::tempdir().unwrap();
        let a = StandinArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            sans: vec![],
            cert_out: Some(dir.path().join("ca.pem")),
            unready_file: None,
            plain: false,
            name: "t".into(),
        };
        let s = Standin::start(&a).await.unwrap();
        assert!(s.cert_pem().unwrap().contains("BEGIN CERTIFICATE"));
        let mut spec = HealthSpec::https_readyz(std::time::Duration::from_millis(50));
        spec.kind = CheckKind::Https {
            path: "/readyz".into(),
            ca_file: a.cert_out.clone(),
            server_name: None,
        };
        spec.rise = 1;
        let p = Prober::spawn(s.local_addr(), spec).unwrap();
        let mut rx = p.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            rx.wait_for(|h| h.healthy),
        )
        .await
        .unwrap()
        .unwrap();
    }

    #[test]
    fn hysteresis_needs_rise_and_fall_in_a_row() {
        let mut h = Hysteresis::new(true, 2, 3);
        assert!(!h.record(false));
        assert!(!h.record(false));
        assert!(!h.record(true), "a pass resets the failure streak");
        assert!(!h.record(false));
        assert!(!h.record(false));
        assert!(h.record(false));
        assert!(!h.healthy());
        assert!(!h.record(true));
        assert!(h.record(true));
        assert!(h.healthy());
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut s = 0x1234_5678_9abc_def1;
        for _ in 0..10_000 {
            let u = unit(&mut s);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[tokio::test]
    async fn tcp_check_goes_down_and_up() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let spec = HealthSpec {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
            jitter: 0.2,
            start_healthy: false,
        };
        let p = Prober::spawn(addr, spec).unwrap();
        let mut rx = p.subscribe();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.healthy))
            .await
            .unwrap()
            .unwrap();
        drop(l);
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| !s.healthy))
            .await
            .unwrap()
            .unwrap();
        assert!(!p.is_healthy());
        let c = p.counters();
        assert!(
            c.checks >= 4 && c.failures >= 2 && c.transitions == 2,
            "{c:?}"
        );
    }
}
