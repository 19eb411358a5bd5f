//! The control socket: a unix socket (mode 0600, so root only) that serves `apivip
//! status` and `apivip drill`. One JSON request line in, one JSON response line out.

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Longest request line accepted; requests are tiny, anything longer is not ours.
const MAX_REQUEST: usize = 4096;
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Move the VIP off this node (to `to`, or the best follower) and report the move.
    Drill {
        #[serde(default)]
        to: Option<u32>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<StatusReport>),
    Drilled(DrillReport),
    Error { message: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillReport {
    pub from: u32,
    pub to: u32,
    /// From the request until the new holder announced that it holds the VIP.
    pub millis: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub node_id: u32,
    pub cluster: String,
    pub role: String,
    pub term: u64,
    pub leader: Option<u32>,
    pub holder: Option<u32>,
    pub vip: Option<VipReport>,
    pub lease_remaining_ms: Option<u64>,
    pub promise_remaining_ms: Option<u64>,
    pub silent_remaining_ms: Option<u64>,
    pub healthy: bool,
    /// Why this node may not lead (the local apiserver, or in BGP mode its speaker).
    #[serde(default)]
    pub not_ready: Option<String>,
    pub link_up: bool,
    pub profile: String,
    pub quorum: String,
    /// The newest wire protocol this node speaks (`election.protocol`).
    #[serde(default)]
    pub protocol: u8,
    pub uptime_s: u64,
    pub epoch: u64,
    pub peers: Vec<PeerReport>,
    /// Nodes outside the member list still heard from (a removed node still running).
    pub non_members: Vec<u32>,
    pub heartbeats: crate::heartbeat::Stats,
    pub last_failover_ms: Option<f64>,
    #[serde(default)]
    pub backends: Vec<serde_json::Value>,
    /// The forwarder's totals, with the connection cap in force.
    #[serde(default)]
    pub forwarder: Option<crate::forward::ForwardTotals>,
    /// Local faults and what the daemon is doing about them.
    #[serde(default)]
    pub faults: FaultReport,
}

/// The shell around the election: what failed locally, and the way out being taken.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultReport {
    /// Claims or refreshes the kernel refused in a row (the leader hands over after a few).
    pub vip_failures: u32,
    /// The last refusal, e.g. "add 192.0.2.100/32 on apivip0: No such device (os error 19)".
    pub last_vip_error: Option<String>,
    /// This node stays out of elections this much longer after handing over for failures.
    pub benched_remaining_ms: Option<u64>,
    /// Set while term and vote cannot be written: the error, retried with back-off.
    pub state_error: Option<String>,
    /// Messages ignored for a term beyond what this node follows.
    pub terms_refused: u64,
    /// RLIMIT_NOFILE after start-up raised it.
    pub open_files_limit: u64,
    /// Config fields a reload could not apply: they take effect at the next restart.
    #[serde(default)]
    pub restart_needed: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VipReport {
    pub address: String,
    pub interface: String,
    pub placement: String,
    /// Why this placement (e.g. "arp_ignore=1 on eth0").
    pub placement_reason: String,
    /// The election's view: released, claiming, held, releasing.
    pub state: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerReport {
    pub id: u32,
    pub address: String,
    pub priority: u8,
    pub is_self: bool,
    pub last_heard_ms: Option<u64>,
    pub healthy: Option<bool>,
    pub can_lead: Option<bool>,
    /// The newest wire protocol it speaks, as its latest datagram said (None: not heard).
    #[serde(default)]
    pub protocol: Option<u8>,
}

#[derive(Debug, Error)]
pub enum ControlError {
    // `error`, not `source`: the message already says it, and a `source` would make
    // anyhow's `{:#}` print it twice.
    #[error("control socket {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "control socket {path} is in use by a running apivip (stop it first, or set control.socket)"
    )]
    InUse { path: PathBuf },
    #[error(
        "cannot reach apivip at {path}: {error} (is the daemon running on this node, and are you root?)"
    )]
    Connect { path: PathBuf, error: io::Error },
    #[error("apivip at {path} did not answer within {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
    #[error("apivip at {path} sent an answer this client cannot read: {problem}")]
    BadAnswer { path: PathBuf, problem: String },
}

/// A request and where its answer goes.
pub type Call = (Request, oneshot::Sender<Response>);

/// Binds the socket (0600, in a 0700 directory it creates) and answers requests by
/// handing them to the daemon over `calls`. A leftover socket file from a dead daemon is
/// replaced; one that still answers is refused.
pub async fn serve(
    path: &Path,
    calls: mpsc::Sender<Call>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let io_err = |error| ControlError::Io {
        path: path.into(),
        error,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse { path: path.into() });
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(tokio::spawn(accept_loop(listener, calls)))
}

/// Requests in flight at once; more wait in the backlog (the socket is root-only, this
/// only bounds what a runaway script can cost).
const MAX_CLIENTS: usize = 16;

async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    let mut log = crate::backoff::LogThrottle::default();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                let calls = calls.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = answer(stream, calls).await {
                        tracing::debug!(error = %e, "control connection ended early");
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends leave the connection in the backlog, so accept
                // fails again at once: without a pause this loop spun a core.
                let pause = backoff.next_delay();
                if let Some(held) = log.allow() {
                    tracing::warn!(error = %e, retry_in = ?pause, held_back = held, "control socket: accept failed");
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn answer(stream: UnixStream, calls: mpsc::Sender<Call>) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(
        CLIENT_IO_TIMEOUT,
        BufReader::new(r)
            .take(MAX_REQUEST as u64)
            .read_line(&mut line),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request line"))??;
    let resp = if n == 0 {
        return Ok(());
    } else if !line.ends_with('\n') && n >= MAX_REQUEST {
        Response::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        }
    } else {
        match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::Error {
                message: format!("bad request {:?}: {e}", line.trim()),
            },
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    Response::Error {
                        message: "the daemon is shutting down".into(),
                    }
                } else {
                    rx.await.unwrap_or(Response::Error {
                        message: "the daemon dropped the request".into(),
                    })
                }
            }
        }
    };
    let mut out = serde_json::to_string(&resp)
        .unwrap_or_else(|e| format!("{{\"result\":\"error\",\"message\":\"{e}\"}}"));
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    w.shutdown().await
}

use tokio::io::AsyncReadExt as _;

/// Sends one request and waits up to `timeout` for the answer.
pub async fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|error| ControlError::Connect {
            path: path.into(),
            error,
        })?;
    let work = async {
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_string(req).map_err(|e| io::Error::other(e.to_string()))?;
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(r).read_line(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ControlError::Timeout {
            path: path.into(),
            secs: timeout.as_secs(),
        })?
        .map_err(|error| ControlError::Io {
            path: path.into(),
            error,
        })?;
    serde_json::from_str(answer.trim()).map_err(|e| ControlError::BadAnswer {
        path: path.into(),
        problem: e.to_string(),
    })
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or("-".into(), |ms| format!("{ms} ms"))
}

/// `apivip status` as a human reads it.
pub fn render_status(s: &StatusReport) -> String {
    let mut o = String::new();
    let who = |v: Option<u32>| v.map_or("none".to_string(), |id| format!("node {id}"));
    let _ = writeln!(
        o,
        "node {}  cluster {}  role {}  term {}  (profile {}, quorum {})",
        s.node_id, s.cluster, s.role, s.term, s.profile, s.quorum
    );
    let _ = writeln!(
        o,
        "leader {}  VIP holder {}  health {}  link {}",
        who(s.leader),
        who(s.holder),
        if s.healthy { "ready" } else { "NOT READY" },
        if s.link_up { "up" } else { "DOWN" }
    );
    if let Some(why) = s.not_ready.as_ref().filter(|_| !s.healthy) {
        let _ = writeln!(o, "NOT READY: {why}");
    }
    if let Some(v) = &s.vip {
        let _ = writeln!(
            o,
            "VIP {} on {} ({}: {})  state {}",
            v.address, v.interface, v.placement, v.placement_reason, v.state
        );
    } else {
        let _ = writeln!(o, "VIP none (proxy-only)");
    }
    let _ = writeln!(
        o,
        "lease {}  promise {}  start-up silence {}  last failover {}",
        opt_ms(s.lease_remaining_ms),
        opt_ms(s.promise_remaining_ms),
        opt_ms(s.silent_remaining_ms),
        s.last_failover_ms
            .map_or("-".into(), |m| format!("{m:.0} ms"))
    );
    let _ = writeln!(
        o,
        "\n{:<6} {:<40} {:>8} {:>12} {:>8} {:>8} {:>8}",
        "PEER", "ADDRESS", "PRIORITY", "LAST HEARD", "HEALTHY", "CAN LEAD", "PROTOCOL"
    );
    for p in &s.peers {
        let yn = |b: Option<bool>| b.map_or("-", |b| if b { "yes" } else { "no" });
        let id = if p.is_self {
            format!("{}*", p.id)
        } else {
            p.id.to_string()
        };
        let _ = writeln!(
            o,
            "{:<6} {:<40} {:>8} {:>12} {:>8} {:>8} {:>8}",
            id,
            p.address,
            p.priority,
            opt_ms(p.last_heard_ms),
            yn(p.healthy),
            yn(p.can_lead),
            if p.is_self {
                s.protocol.to_string()
            } else {
                p.protocol.map_or("-".into(), |v| v.to_string())
            }
        );
    }
    if !s.non_members.is_empty() {
        let _ = writeln!(
            o,
            "\nWARNING: heard from nodes outside the member list: {:?} (a removed node still running? stop it)",
            s.non_members
        );
    }
    let rejected: u64 = s.heartbeats.rejected.values().sum();
    let _ = writeln!(
        o,
        "\nheartbeats sent {}  received {}  rejected {}  send failures {}",
        s.heartbeats.sent, s.heartbeats.received, rejected, s.heartbeats.send_failed
    );
    for (reason, n) in &s.heartbeats.rejected {
        let _ = writeln!(o, "  rejected {reason}: {n}");
    }
    let f = &s.faults;
    if f.vip_failures > 0 || f.last_vip_error.is_some() || f.benched_remaining_ms.is_some() {
        let _ = writeln!(
            o,
            "\nVIP refused {} time(s) in a row; last: {}; out of elections for {}",
            f.vip_failures,
            f.last_vip_error.as_deref().unwrap_or("-"),
            opt_ms(f.benched_remaining_ms)
        );
    }
    if let Some(e) = &f.state_error {
        let _ = writeln!(
            o,
            "\nWARNING: cannot write the state file ({e}): answering pre-votes only, retrying"
        );
    }
    if !f.restart_needed.is_empty() {
        let _ = writeln!(
            o,
            "\nconfig changes waiting for a restart: {}",
            f.restart_needed.join(", ")
        );
    }
    if f.terms_refused > 0 {
        let _ = writeln!(
            o,
            "\nWARNING: {} message(s) ignored for a term far beyond this node's (a peer's state file corrupt?)",
            f.terms_refused
        );
    }
    if let Some(t) = &s.forwarder {
        let _ = writeln!(
            o,
            "\nforwarder: {} open of at most {} (accepted {}); closed: idle {}, silent {}, over max_per_source {}, over max_new_per_source {}, backend down {}, VIP released {}, no backend {}, local errors {}",
            t.open,
            t.max_connections,
            t.accepted,
            t.idle_closed,
            t.silent_closed,
            t.source_capped,
            t.source_rate_limited,
            t.backend_down_closed,
            t.vip_released_closed,
            t.refused,
            t.local_errors
        );
    }
    if !s.backends.is_empty() {
        let _ = writeln!(o, "\nforwarder backends:");
        for b in &s.backends {
            let _ = writeln!(o, "  {b}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_answer_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/apivip.sock");
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        let _server = serve(&path, tx.clone()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        tokio::spawn(async move {
            while let Some((req, reply)) = rx.recv().await {
                let r = match req {
                    Request::Status => Response::Status(Box::new(StatusReport {
                        node_id: 4,
                        ..Default::default()
                    })),
                    Request::Drill { to } => Response::Drilled(DrillReport {
                        from: 4,
                        to: to.unwrap_or(5),
                        millis: 12.5,
                    }),
                };
                let _ = reply.send(r);
            }
        });
        match call(&path, &Request::Status, CLIENT_IO_TIMEOUT)
            .await
            .unwrap()
        {
            Response::Status(s) => assert_eq!(s.node_id, 4),
            other => panic!("{other:?}"),
        }
        match call(&path, &Request::Drill { to: Some(2) }, CLIENT_IO_TIMEOUT)
            .await
            .unwrap()
        {
            Response::Drilled(d) => assert_eq!((d.from, d.to), (4, 2)),
            other => panic!("{other:?}"),
        }
        // A second daemon on the same socket is refused while the first answers.
        assert!(matches!(
            serve(&path, tx).await,
            Err(ControlError::InUse { .. })
        ));
    }

    #[tokio::test]
    async fn garbage_request_gets_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, _rx) = mpsc::channel::<Call>(1);
        let _server = serve(&path, tx).await.unwrap();
        let s = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"cmd\":\"explode\"}\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.unwrap();
        assert!(line.contains("error") && line.contains("explode"), "{line}");
    }

    #[tokio::test]
    async fn missing_socket_says_what_to_check() {
        let e = call(
            Path::new("/nonexistent/apivip.sock"),
            &Request::Status,
            CLIENT_IO_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("is the daemon running"), "{e}");
    }
}
