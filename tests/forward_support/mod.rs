//! Helpers shared by the forwarder's integration tests: loopback backends that say who
//! they are, and polling with a deadline (every wait is bounded).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use apivip::forward::{
    BackendSpec, BackendStats, ForwardRuntime, Forwarder, ForwarderHandle, SpliceMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub const LIMIT: Duration = Duration::from_secs(10);

/// A backend that greets each connection with its one-letter name and then echoes.
/// Dropping it closes the listener and every connection (a killed apiserver).
pub struct Echo {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    pub async fn start(name: u8) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (mut s, _) = tokio::select! {
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                conns.spawn(async move {
                    if s.write_all(&[name]).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 65536];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Echo { addr, task }
    }
}

pub fn runtime(backends: &[SocketAddr]) -> ForwardRuntime {
    let mut rt = ForwardRuntime::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        backends.iter().map(|a| BackendSpec::new(*a)).collect(),
    );
    rt.connect_timeout = Duration::from_millis(500);
    // `Echo` speaks first (its greeting), so these tests dial at once; the default
    // first-byte wait is tested in forward_edges.rs.
    rt.first_byte_timeout = Duration::ZERO;
    rt.eject_backoff = Duration::from_secs(5);
    rt.splice = SpliceMode::Auto;
    rt
}

pub async fn start(rt: ForwardRuntime) -> (ForwarderHandle, SocketAddr) {
    let h = Forwarder::start(rt).await.unwrap();
    let a = h.local_addrs()[0];
    (h, a)
}

/// Connects through the forwarder and returns the stream and the greeting byte.
pub async fn connect(front: SocketAddr) -> (TcpStream, u8) {
    let mut s = tokio::time::timeout(LIMIT, TcpStream::connect(front))
        .await
        .expect("connect timed out")
        .expect("connect failed");
    let mut b = [0u8; 1];
    tokio::time::timeout(LIMIT, s.read_exact(&mut b))
        .await
        .expect("no greeting in time")
        .expect("connection closed before the greeting");
    (s, b[0])
}

/// Polls `f` until it holds, or panics after `LIMIT` with `what`.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        if start.elapsed() > LIMIT {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn stats_of(h: &ForwarderHandle, a: SocketAddr) -> BackendStats {
    h.snapshot()
        .into_iter()
        .find(|s| s.address == a)
        .expect("backend in snapshot")
}
