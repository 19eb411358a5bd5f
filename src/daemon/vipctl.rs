//! Carrying out the election's VIP actions one after another, off the event loop.
//!
//! The election needs each claim, refresh and release confirmed in order (a release
//! queued behind a slow add must not overtake it, Rule 7), and a netlink call that takes
//! 50 ms must not delay heartbeats. So one worker thread owns the VIP, takes operations
//! from a queue and answers each with its outcome.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::VipEvent;
use crate::announce::{AnnounceConfig, Announcement, Announcer};
use crate::vip::{self, Vip, VipSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipOp {
    Claim(Duration),
    Refresh(Duration),
    Release,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipDone {
    /// A claim or refresh finished (ok = the kernel has the VIP).
    Applied { ok: bool },
    /// The kernel no longer has the VIP.
    Released,
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

    fn claim(&self, lifetime: Duration) -> Result<(), String> {
        std::fs::write(&self.path, format!("{}\n", lifetime.as_secs()))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn release(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }
}

/// The real VIP: an address through rtnetlink, announced by gratuitous ARP / NA.
pub struct KernelVip {
    pub spec: VipSpec,
    pub announce: AnnounceConfig,
}

pub enum Backend {
    Marker(MarkerVip),
    Kernel(KernelVip),
}

/// An opened backend, living on the worker's runtime.
enum Open {
    Marker(MarkerVip),
    Kernel {
        vip: Box<Vip>,
        announcer: Option<Announcer>,
        announcement: Option<Announcement>,
        ip: IpAddr,
    },
}

impl Open {
    async fn open(b: Backend, events: mpsc::UnboundedSender<VipEvent>) -> Result<Open, String> {
        match b {
            Backend::Marker(m) => Ok(Open::Marker(m)),
            Backend::Kernel(k) => {
                let ip = k.spec.addr;
                let interface = k.spec.interface.clone();
                let vip = Vip::open(k.spec).await.map_err(|e| e.to_string())?;
                // Rule 8: a VIP left by an earlier run (on the interface or our device)
                // goes before this node takes part in any election.
                match vip.remove_stale().await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        removed = n,
                        "removed a VIP left on this node by an earlier run"
                    ),
                    Err(e) => return Err(format!("cannot remove a stale VIP: {e}")),
                }
                // A missing announcer (no AF_PACKET permission) leaves the VIP reachable
                // once caches expire: worth running, worth a loud log line.
                let announcer = match Announcer::new(&interface, k.announce) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot announce the VIP (gratuitous ARP / NA): clients move only when their neighbour entries expire");
                        None
                    }
                };
                let mut watch = vip.watch().await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    while let Some(ev) = watch.next().await {
                        let ev = match ev {
                            vip::VipEvent::VipRemoved => VipEvent::Removed,
                            vip::VipEvent::LinkDown => VipEvent::LinkDown,
                            vip::VipEvent::LinkUp => VipEvent::LinkUp,
                            vip::VipEvent::VipAdded => continue,
                        };
                        if events.send(ev).is_err() {
                            break;
                        }
                    }
                });
                Ok(Open::Kernel {
                    vip: Box::new(vip),
                    announcer,
                    announcement: None,
                    ip,
                })
            }
        }
    }

    async fn claim(&mut self, lifetime: Duration) -> Result<(), String> {
        match self {
            Open::Marker(m) => m.claim(lifetime),
            Open::Kernel {
                vip,
                announcer,
                announcement,
                ip,
            } => {
                vip.install(lifetime).await.map_err(|e| e.to_string())?;
                // The first announcement leaves now, before the election even hears the
                // add succeeded: clients switch as early as possible.
                *announcement = announcer.as_ref().map(|a| a.announce(*ip));
                Ok(())
            }
        }
    }

    async fn refresh(&mut self, lifetime: Duration) -> Result<(), String> {
        match self {
            Open::Marker(m) => m.claim(lifetime),
            Open::Kernel { vip, .. } => vip.refresh(lifetime).await.map_err(|e| e.to_string()),
        }
    }

    async fn release(&mut self) -> Result<(), String> {
        match self {
            Open::Marker(m) => m.release(),
            Open::Kernel {
                vip, announcement, ..
            } => {
                *announcement = None;
                vip.remove().await.map_err(|e| e.to_string())
            }
        }
    }
}

/// Retry pause for a release the kernel refused: the election waits for it (no vote
/// until the VIP is gone), so it is retried until it works.
const RELEASE_RETRY: Duration = Duration::from_millis(100);

/// The worker's handles: where to queue operations, where outcomes and kernel events come.
pub struct Worker {
    pub ops: mpsc::UnboundedSender<VipOp>,
    pub done: mpsc::UnboundedReceiver<VipDone>,
    pub events: mpsc::UnboundedReceiver<VipEvent>,
}

/// Starts the worker thread with its own single-threaded runtime (netlink connections
/// and the announcer's repeats run there), opens the backend and returns once it is open,
/// so a missing interface fails the start with its own message.
pub async fn spawn(backend: Backend) -> Result<Worker, String> {
    let (op_tx, mut op_rx) = mpsc::unbounded_channel::<VipOp>();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
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
            let mut open = match Open::open(backend, ev_tx).await {
                Ok(o) => {
                    let _ = opened_tx.send(Ok(()));
                    o
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            while let Some(op) = op_rx.recv().await {
                let done = match op {
                    VipOp::Claim(l) | VipOp::Refresh(l) => {
                        let r = if matches!(op, VipOp::Claim(_)) { open.claim(l).await } else { open.refresh(l).await };
                        if let Err(e) = &r {
                            tracing::error!(error = %e, "cannot put the VIP in place");
                        }
                        VipDone::Applied { ok: r.is_ok() }
                    }
                    VipOp::Release => {
                        let mut tries = 0u32;
                        while let Err(e) = open.release().await {
                            tries += 1;
                            if tries == 1 || tries.is_multiple_of(50) {
                                tracing::error!(error = %e, tries, "cannot remove the VIP; retrying (no vote until it is gone)");
                            }
                            tokio::time::sleep(RELEASE_RETRY).await;
                        }
                        VipDone::Released
                    }
                };
                if done_tx.send(done).is_err() {
                    break;
                }
            }
            // The daemon's loop is gone (exit): the VIP must not outlive it.
            if let Err(e) = open.release().await {
                tracing::error!(error = %e, "cannot remove the VIP at exit");
            }
        });
    };
    std::thread::Builder::new()
        .name("apivip-vip".into())
        .spawn(worker)
        .map_err(|e| format!("cannot start the VIP worker thread: {e}"))?;
    match opened_rx.await {
        Ok(Ok(())) => Ok(Worker {
            ops: op_tx,
            done: done_rx,
            events: ev_rx,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the VIP worker stopped while opening the VIP".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn operations_are_answered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let w = spawn(Backend::Marker(MarkerVip::new(dir.path().into(), 3)))
            .await
            .unwrap();
        let (tx, mut rx) = (w.ops, w.done);
        tx.send(VipOp::Claim(Duration::from_secs(1))).unwrap();
        tx.send(VipOp::Refresh(Duration::from_secs(1))).unwrap();
        tx.send(VipOp::Release).unwrap();
        assert_eq!(rx.recv().await, Some(VipDone::Applied { ok: true }));
        assert_eq!(rx.recv().await, Some(VipDone::Applied { ok: true }));
        assert_eq!(rx.recv().await, Some(VipDone::Released));
        assert!(!dir.path().join("holder-3").exists());
    }
}
