//! Carrying out the election's VIP actions one after another, off the event loop.
//!
//! The election needs each claim, refresh and release confirmed in order (a release
//! queued behind a slow add must not overtake it, Rule 7), and a netlink call that takes
//! 50 ms must not delay heartbeats. So one worker thread owns the VIP, takes operations
//! from a queue and answers each with its outcome.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

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

/// Something that can put the VIP in place and take it away, synchronously.
pub trait VipControl: Send + 'static {
    fn claim(&mut self, lifetime: Duration) -> Result<(), String>;
    fn refresh(&mut self, lifetime: Duration) -> Result<(), String>;
    fn release(&mut self) -> Result<(), String>;
}

/// A stand-in for tests without root: "holding" the VIP is a marker file named after the
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
}

impl VipControl for MarkerVip {
    fn claim(&mut self, lifetime: Duration) -> Result<(), String> {
        std::fs::write(&self.path, format!("{}\n", lifetime.as_secs()))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
    fn refresh(&mut self, lifetime: Duration) -> Result<(), String> {
        self.claim(lifetime)
    }
    fn release(&mut self) -> Result<(), String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }
}

/// Retry pause for a release the kernel refused: the election waits for it (no vote
/// until the VIP is gone), so it is retried until it works.
const RELEASE_RETRY: Duration = Duration::from_millis(100);

/// Starts the worker thread; returns where to queue operations and where outcomes come.
pub fn spawn(
    mut vip: Box<dyn VipControl>,
) -> (
    mpsc::UnboundedSender<VipOp>,
    mpsc::UnboundedReceiver<VipDone>,
) {
    let (op_tx, mut op_rx) = mpsc::unbounded_channel::<VipOp>();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let worker = move || {
        while let Some(op) = op_rx.blocking_recv() {
            let done = match op {
                VipOp::Claim(l) | VipOp::Refresh(l) => {
                    let r = if matches!(op, VipOp::Claim(_)) {
                        vip.claim(l)
                    } else {
                        vip.refresh(l)
                    };
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "cannot put the VIP in place");
                    }
                    VipDone::Applied { ok: r.is_ok() }
                }
                VipOp::Release => {
                    let mut tries = 0u32;
                    while let Err(e) = vip.release() {
                        tries += 1;
                        if tries == 1 || tries.is_multiple_of(50) {
                            tracing::error!(error = %e, tries, "cannot remove the VIP; retrying (no vote until it is gone)");
                        }
                        std::thread::sleep(RELEASE_RETRY);
                    }
                    VipDone::Released
                }
            };
            if done_tx.send(done).is_err() {
                break;
            }
        }
        // The daemon's loop is gone (exit): the VIP must not outlive it.
        if let Err(e) = vip.release() {
            tracing::error!(error = %e, "cannot remove the VIP at exit");
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("apivip-vip".into())
        .spawn(worker)
    {
        tracing::error!(error = %e, "cannot start the VIP worker thread");
    }
    (op_tx, done_rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn operations_are_answered_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = spawn(Box::new(MarkerVip::new(dir.path().into(), 3)));
        tx.send(VipOp::Claim(Duration::from_secs(1))).unwrap();
        tx.send(VipOp::Refresh(Duration::from_secs(1))).unwrap();
        tx.send(VipOp::Release).unwrap();
        assert_eq!(rx.recv().await, Some(VipDone::Applied { ok: true }));
        assert_eq!(rx.recv().await, Some(VipDone::Applied { ok: true }));
        assert_eq!(rx.recv().await, Some(VipDone::Released));
        assert!(!dir.path().join("holder-3").exists());
    }
}
