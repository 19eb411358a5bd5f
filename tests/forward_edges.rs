//! The forwarder at its edges (issue 11), on loopback: clients that never speak, backends
//! that close on a client that never finishes, a backend the check marks down while its
//! clients stream, and connections on an address this node lets go. Per-source caps and
//! clients that vanish without a FIN need other hosts: netns-tests/forward_edges.rs.

mod forward_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use apivip::forward::ForwarderHandle;
use apivip::health::{CheckKind, HealthSpec};
use forward_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Reads until EOF or reset; panics if the connection stays open past `limit`.
async fn closed_within(c: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), c.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

async fn open_is(h: &ForwarderHandle, n: u64) {
    eventually(&format!("{n} connections open"), || h.totals().open == n).await;
}

#[tokio::test]
async fn silent_clients_are_closed_and_no_backend_is_dialled_for_them() {
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[e.addr]);
    rt.first_byte_timeout = Duration::from_millis(300);
    let (h, front) = start(rt).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(front).await.unwrap());
    }
    // A client that speaks is served meanwhile: its byte goes first, then the greeting.
    let mut talker = TcpStream::connect(front).await.unwrap();
    talker.write_all(b"x").await.unwrap();
    let mut got = [0u8; 2];
    tokio::time::timeout(LIMIT, talker.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"Ex");
    for c in &mut silent {
        let took = closed_within(c, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let t = h.totals();
    assert_eq!(t.silent_closed, 20, "{t:?}");
    // Only the talker reached the backend: silent clients cost it nothing.
    assert_eq!(stats_of(&h, e.addr).total, 1);
    // Hanging up before a byte (a port scan, a TCP health check) dials nothing either.
    drop(TcpStream::connect(front).await.unwrap());
    eventually("the hang-up counted", || h.totals().silent_closed == 21).await;
    assert_eq!(stats_of(&h, e.addr).total, 1);
}

/// With the first-byte wait on, the client's first bytes go out with the connect and the
/// send reports a refused backend (no SO_ERROR check): the backend is blamed, the client
/// is retried elsewhere with its bytes intact, and the byte counters include them.
#[tokio::test]
async fn a_refused_backend_is_found_by_the_first_send_and_the_client_served_elsewhere() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[refused, e.addr]);
    rt.first_byte_timeout = Duration::from_secs(5);
    let (h, front) = start(rt).await;
    // Least connections with both idle takes them in turn, so some clients try the
    // refused backend first.
    for i in 0..6u8 {
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(&[b'a' + i, b'b' + i]).await.unwrap();
        let mut got = [0u8; 3];
        tokio::time::timeout(LIMIT, c.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [b'E', b'a' + i, b'b' + i]);
    }
    let dead = stats_of(&h, refused);
    assert!(dead.failures >= 1, "{dead:?}");
    assert_eq!(dead.total, 0, "{dead:?}");
    let live = stats_of(&h, e.addr);
    assert_eq!(live.total, 6, "{live:?}");
    eventually("the first bytes counted", || {
        stats_of(&h, e.addr).bytes_in == 12
    })
    .await;
    assert!(h.totals().retries >= 1, "{:?}", h.totals());
}

/// A backend that reads what the client sends and closes after `after` without a word,
/// like an apiserver's TLS handshake timeout on a client that never finishes its hello.
async fn closing_backend(after: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            conns.spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(after, async {
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backend_that_closes_on_a_stuck_client_frees_the_slot_within_fin_timeout() {
    let addr = closing_backend(Duration::from_millis(200)).await;
    let mut rt = runtime(&[addr]);
    rt.idle_timeout = Duration::from_secs(600);
    rt.fin_timeout = Duration::from_millis(500);
    let (h, front) = start(rt).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(front).await.unwrap();
        c.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // a ClientHello's first bytes
        clients.push(c);
    }
    // The backend's FIN reaches each client; the clients never close their side. The
    // forwarder gives them fin_timeout, not the 10 minutes of idle_timeout.
    for c in &mut clients {
        closed_within(c, Duration::from_secs(5)).await;
    }
    let start = Instant::now();
    open_is(&h, 0).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(h.totals().idle_closed, 20);
    // The backend closed early but did answer the handshake: no ejection for it.
    assert_eq!(stats_of(&h, addr).failures, 0);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_once_its_backend_has_closed() {
    let addr = closing_backend(Duration::from_millis(200)).await;
    let mut rt = runtime(&[addr]);
    rt.fin_timeout = Duration::from_secs(5);
    let (h, front) = start(rt).await;
    let mut c = TcpStream::connect(front).await.unwrap();
    // One byte every 100 ms, forever: after the backend's close each byte meets a socket
    // nobody reads, so the relay ends on the error, well before fin_timeout.
    let start = Instant::now();
    let cut = loop {
        if c.write_all(b"G").await.is_err() {
            break start.elapsed();
        }
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                // EOF passed on from the backend; keep dribbling until cut.
            }
            _ => {}
        }
        assert!(start.elapsed() < LIMIT, "slowloris still connected");
    };
    open_is(&h, 0).await;
    assert!(cut < Duration::from_secs(5), "{cut:?}");
}

/// Streams a line every 50 ms on every connection. `kill()` closes only the listener, so
/// the TCP check fails (refused) while the open streams still flow: the forwarder alone
/// decides to cut them.
struct Streamer {
    addr: SocketAddr,
    listener: tokio::task::JoinHandle<()>,
}

impl Streamer {
    async fn start(name: u8) -> Streamer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let listener = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    for _ in 0..2000 {
                        if s.write_all(&[name]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
            }
        });
        Streamer { addr, listener }
    }

    fn kill_listener(&self) {
        self.listener.abort();
    }
}

fn tcp_check(interval: Duration, fall: u32) -> HealthSpec {
    HealthSpec {
        kind: CheckKind::Tcp,
        interval,
        timeout: interval,
        rise: 1,
        fall,
        jitter: 0.0,
        start_healthy: true,
    }
}

async fn first_byte(c: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    tokio::time::timeout(LIMIT, c.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    b[0]
}

#[tokio::test]
async fn streams_to_a_backend_marked_down_are_cut_and_reconnect_elsewhere() {
    marked_down_streams_are_cut(1).await;
}

/// Each forwarder thread has its own cut channel: a down reaches all of them.
#[tokio::test]
async fn streams_to_a_backend_marked_down_are_cut_on_every_forwarder_thread() {
    marked_down_streams_are_cut(3).await;
}

async fn marked_down_streams_are_cut(threads: usize) {
    let a = Streamer::start(b'A').await;
    let b = Streamer::start(b'B').await;
    let mut rt = runtime(&[a.addr, b.addr]);
    rt.threads = threads;
    let interval = Duration::from_millis(200);
    rt.health = Some(tcp_check(interval, 2));
    let (h, front) = start(rt).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..6 {
        let mut c = TcpStream::connect(front).await.unwrap();
        match first_byte(&mut c).await {
            b'A' => on_a.push(c),
            _ => on_b.push(c),
        }
    }
    assert!(!on_a.is_empty() && !on_b.is_empty());
    a.kill_listener();
    // fall × interval, plus one interval for the check in flight and the jitter-free
    // first check, plus 1 s of slack for a loaded machine.
    let bound = interval * 3 + Duration::from_secs(1);
    for c in &mut on_a {
        let took = closed_within(c, Duration::from_secs(10)).await;
        assert!(took <= bound, "cut after {took:?}, bound {bound:?}");
    }
    assert_eq!(h.totals().backend_down_closed, on_a.len() as u64);
    // Their reconnects land on the live backend, and its streams were never touched.
    let mut again = TcpStream::connect(front).await.unwrap();
    assert_eq!(first_byte(&mut again).await, b'B');
    for c in &mut on_b {
        assert_eq!(first_byte(c).await, b'B');
    }
}

#[tokio::test]
async fn streams_stay_when_shutdown_on_down_is_off() {
    let a = Streamer::start(b'A').await;
    let mut rt = runtime(&[a.addr]);
    rt.health = Some(tcp_check(Duration::from_millis(100), 1));
    rt.shutdown_on_down = false;
    let (h, front) = start(rt).await;
    let mut c = TcpStream::connect(front).await.unwrap();
    assert_eq!(first_byte(&mut c).await, b'A');
    a.kill_listener();
    eventually("marked down", || {
        stats_of(&h, a.addr).health == apivip::forward::BackendHealth::Down
    })
    .await;
    for _ in 0..5 {
        assert_eq!(first_byte(&mut c).await, b'A');
    }
    assert_eq!(h.totals().backend_down_closed, 0);
}

#[tokio::test]
async fn connections_on_a_released_address_are_closed_and_later_ones_kept() {
    let e = Echo::start(b'E').await;
    let (h, front) = start(runtime(&[e.addr])).await;
    let (mut before, _) = connect(front).await;
    // Another address is released: nothing here is touched.
    h.close_accepted_on("192.0.2.100".parse().unwrap());
    before.write_all(b"1").await.unwrap();
    assert_eq!(first_byte(&mut before).await, b'1');
    h.close_accepted_on(front.ip());
    closed_within(&mut before, LIMIT).await;
    assert_eq!(h.totals().vip_released_closed, 1);
    // Accepted after the release (the VIP came back): an old release does not cut it.
    let (mut after, _) = connect(front).await;
    after.write_all(b"2").await.unwrap();
    assert_eq!(first_byte(&mut after).await, b'2');
    assert_eq!(h.totals().vip_released_closed, 1);
}

/// Each forwarder thread has its own cut channel: a release reaches all of them, and a
/// release after the VIP came back cuts what every thread accepted since.
#[tokio::test]
async fn a_release_closes_what_every_forwarder_thread_accepted() {
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[e.addr]);
    rt.threads = 3;
    let (h, front) = start(rt).await;
    // The second round is accepted after the first release (the VIP came back).
    for round in 1..=2u64 {
        let mut conns = Vec::new();
        for _ in 0..12 {
            conns.push(connect(front).await.0);
        }
        h.close_accepted_on(front.ip());
        for c in &mut conns {
            closed_within(c, LIMIT).await;
        }
        assert_eq!(h.totals().vip_released_closed, 12 * round);
    }
}
