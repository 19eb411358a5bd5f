//! Byte moving: half-close both ways, idle timeout, connection cap, drain, bulk integrity
//! through both the copy and the splice paths.

mod forward_support;

use std::time::Duration;

use apivip::forward::SpliceMode;
use forward_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[tokio::test]
async fn client_half_close_still_gets_the_whole_answer() {
    // A backend that answers only after the request side has ended (EOF).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let answer = format!("read {} bytes", got.len());
        s.write_all(answer.as_bytes()).await.unwrap();
    });
    let (_h, front) = start(runtime(&[addr])).await;
    let mut c = TcpStream::connect(front).await.unwrap();
    c.write_all(&[7u8; 5000]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(LIMIT, c.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "read 5000 bytes");
}

#[tokio::test]
async fn backend_half_close_still_receives_the_client() {
    // A backend that sends, shuts its write side, then keeps reading.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = tx.send(got);
    });
    let (_h, front) = start(runtime(&[addr])).await;
    let mut c = TcpStream::connect(front).await.unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(LIMIT, c.read_to_end(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, b"hello", "EOF from the backend reaches the client");
    c.write_all(b"still talking").await.unwrap();
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(LIMIT, rx).await.unwrap().unwrap();
    assert_eq!(got, b"still talking");
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[e.addr]);
    rt.idle_timeout = Duration::from_millis(500);
    let (h, front) = start(rt).await;
    let (mut idle, _) = connect(front).await;
    let (mut busy, _) = connect(front).await;
    // Busy: a byte every 100 ms for 1.2 s, more than two idle periods in all.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        busy.write_all(b"k").await.unwrap();
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).await.unwrap();
    }
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut b))
        .await
        .expect("idle connection was not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(h.totals().idle_closed, 1);
}

#[tokio::test]
async fn over_the_cap_connections_wait_until_one_closes() {
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[e.addr]);
    rt.max_connections = 2;
    let (h, front) = start(rt).await;
    let c1 = connect(front).await;
    let _c2 = connect(front).await;
    // The third completes the TCP handshake (kernel backlog) but is not served.
    let mut c3 = TcpStream::connect(front).await.unwrap();
    let mut b = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(400), c3.read(&mut b)).await;
    assert!(early.is_err(), "served over the cap: {early:?}");
    assert_eq!(h.totals().open, 2);
    drop(c1);
    tokio::time::timeout(LIMIT, c3.read_exact(&mut b))
        .await
        .expect("not served after a slot freed")
        .unwrap();
    assert_eq!(b[0], b'E');
}

#[tokio::test]
async fn drain_stops_accepting_and_waits_for_open_connections() {
    let e = Echo::start(b'E').await;
    let (h, front) = start(runtime(&[e.addr])).await;
    let (mut c, _) = connect(front).await;
    let h2 = h.clone();
    let drain = tokio::spawn(async move { h2.drain(Duration::from_secs(5)).await });
    eventually("listener closed", || {
        std::net::TcpStream::connect(front).is_err()
    })
    .await;
    // The open connection still works during the drain...
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    assert!(!drain.is_finished());
    // ...and the drain ends as soon as it closes, with nothing forced.
    drop(c);
    let r = tokio::time::timeout(LIMIT, drain).await.unwrap().unwrap();
    assert_eq!((r.open_at_start, r.forced), (1, 0));
    assert!(r.took_ms < 4000, "{r:?}");
}

#[tokio::test]
async fn drain_closes_what_is_left_at_the_deadline() {
    let e = Echo::start(b'E').await;
    let (h, front) = start(runtime(&[e.addr])).await;
    let (mut c, _) = connect(front).await;
    let r = h.drain(Duration::from_millis(300)).await;
    assert_eq!(r.forced, 1);
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(LIMIT, c.read(&mut b)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

async fn bulk(mode: SpliceMode) {
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[e.addr]);
    rt.splice = mode;
    rt.pipe_size = 64 * 1024;
    let (h, front) = start(rt).await;
    let (c, _) = connect(front).await;
    let (mut r, mut w) = c.into_split();
    const N: usize = 8 << 20;
    let writer = tokio::spawn(async move {
        let mut x: u32 = 1;
        let mut sent = Vec::with_capacity(N);
        for _ in 0..N {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            sent.push(x as u8);
        }
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
        sent
    });
    let mut got = Vec::with_capacity(N);
    tokio::time::timeout(LIMIT, r.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let sent = writer.await.unwrap();
    assert_eq!(got.len(), N);
    assert!(got == sent, "bytes differ through {mode:?}");
    let s = stats_of(&h, e.addr);
    assert_eq!((s.bytes_in, s.bytes_out), (N as u64, N as u64 + 1));
}

#[tokio::test]
async fn bulk_bytes_arrive_intact_by_copy() {
    bulk(SpliceMode::Off).await;
}

#[tokio::test]
async fn bulk_bytes_arrive_intact_by_splice() {
    bulk(SpliceMode::On).await;
}

#[tokio::test]
async fn bulk_bytes_arrive_intact_switching_to_splice() {
    bulk(SpliceMode::Auto).await;
}

#[tokio::test]
async fn dedicated_threads_serve_and_drain() {
    let e = Echo::start(b'E').await;
    let mut rt = runtime(&[e.addr]);
    rt.threads = 3;
    let (h, front) = start(rt).await;
    let mut held = Vec::new();
    for _ in 0..30 {
        let (mut c, n) = connect(front).await;
        assert_eq!(n, b'E');
        c.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        held.push(c);
    }
    assert_eq!(h.totals().open, 30);
    let r = h.drain(Duration::from_millis(200)).await;
    assert_eq!(r.forced, 30);
    for mut c in held {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(LIMIT, c.read(&mut b)).await.unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    assert!(std::net::TcpStream::connect(front).is_err());
}

/// A backend that sends everything at once and closes while the client is not reading:
/// the data then waits in the forwarder's socket with no further readiness edge to come,
/// and the pipe fills up on the way (a splice into a full pipe says EAGAIN too).
async fn download_with_a_stalled_reader(mode: SpliceMode, pipe_size: usize) {
    const N: usize = 4 << 20;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        // Small writes make small segments: each takes a pipe slot of its own, so the
        // pipe fills with far fewer bytes than its size.
        s.set_nodelay(true).unwrap();
        let chunk = vec![0x5au8; 700];
        let mut sent = 0;
        while sent < N {
            let k = chunk.len().min(N - sent);
            s.write_all(&chunk[..k]).await.unwrap();
            sent += k;
        }
        s.shutdown().await.unwrap();
    });
    let mut rt = runtime(&[addr]);
    rt.splice = mode;
    rt.pipe_size = pipe_size;
    let (_h, front) = start(rt).await;
    let mut c = TcpStream::connect(front).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 4096];
    let read_all = async {
        loop {
            let n = c.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|b| *b == 0x5a));
            got += n;
        }
    };
    tokio::time::timeout(LIMIT, read_all)
        .await
        .unwrap_or_else(|_| panic!("download stalled at {got} of {N} bytes ({mode:?})"));
    assert_eq!(got, N);
}

#[tokio::test]
async fn stalled_download_completes_by_splice_small_pipe() {
    download_with_a_stalled_reader(SpliceMode::On, 64 * 1024).await;
}

#[tokio::test]
async fn stalled_download_completes_by_splice_large_pipe() {
    download_with_a_stalled_reader(SpliceMode::Auto, 1 << 20).await;
}

#[tokio::test]
async fn stalled_download_completes_by_copy() {
    download_with_a_stalled_reader(SpliceMode::Off, 64 * 1024).await;
}
