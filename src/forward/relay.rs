//! Moves bytes both ways between a client and a backend until both sides are done.
//!
//! Each direction is a pump that ends at EOF by half-closing the other side
//! (`shutdown(SHUT_WR)`), so a client that sends its request and then shuts down its
//! write side still gets the whole answer. The relay ends when both pumps have ended, on
//! the first error, after `idle` with no byte either way, or, once one direction has
//! ended, after `fin` with no byte (a backend that closed on a silent client must not
//! leave the client's half open for the whole idle timeout).
//!
//! A pump holds no buffer while it waits for data: buffers come from a per-thread pool
//! only for the read → write step, so 10,000 idle watch connections cost no buffer
//! memory. Bulk transfers move to splice(2) (see `SpliceMode`).

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::SpliceMode;
use super::pool::now_ms;
use super::splice::Pipe;

/// Big enough for the apiserver's typical answers in one read, small enough that the
/// pool stays small; bulk data goes through splice instead.
pub(crate) const BUF_SIZE: usize = 16 * 1024;
const BUF_POOL_MAX: usize = 256;

thread_local! {
    static BUFS: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Buffers taken and not given back on this thread.
    static LENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn take_buf() -> Box<[u8]> {
    #[cfg(test)]
    LENT.with(|l| l.set(l.get() + 1));
    BUFS.with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    #[cfg(test)]
    LENT.with(|l| l.set(l.get() - 1));
    BUFS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < BUF_POOL_MAX {
            b.push(buf);
        }
    });
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct RelayOpts {
    pub idle: Duration,
    /// The inactivity limit once one direction has ended; at most `idle`.
    pub fin: Duration,
    pub splice: SpliceMode,
    pub pipe_size: usize,
}

/// Which socket an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Backend,
}

#[derive(Debug)]
pub(crate) enum End {
    /// Both directions reached EOF.
    Done,
    Idle,
    Error(Side, io::Error),
}

#[derive(Debug)]
pub(crate) struct Outcome {
    /// Bytes backend → client.
    pub down: u64,
    pub end: End,
}

/// Counters the pumps add to as bytes move (the backend's, for live stats).
pub(crate) struct Counters<'a> {
    pub up: &'a AtomicU64,
    pub down: &'a AtomicU64,
}

pub(crate) async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    opts: RelayOpts,
    counters: Counters<'_>,
) -> Outcome {
    let last = AtomicU64::new(now_ms());
    let down_total = AtomicU64::new(0);
    let one_ended = AtomicBool::new(false);
    // Pinned in place, not moved into a join: a future held in a local and then moved
    // takes space twice in this future's state, and every connection's task is allocated
    // at that size.
    let up = pump(
        client,
        backend,
        Side::Client,
        &opts,
        PumpShared {
            counter: counters.up,
            last: &last,
            total_out: None,
            one_ended: &one_ended,
        },
    );
    let down = pump(
        backend,
        client,
        Side::Backend,
        &opts,
        PumpShared {
            counter: counters.down,
            last: &last,
            total_out: Some(&down_total),
            one_ended: &one_ended,
        },
    );
    tokio::pin!(up, down);
    let first = tokio::select! {
        r = &mut up => Some((Side::Client, r)),
        r = &mut down => Some((Side::Backend, r)),
        _ = idle(&last, opts.idle) => None,
    };
    let end = match first {
        None => End::Idle,
        Some((_, Err((side, e)))) => End::Error(side, e),
        Some((ended, Ok(_))) => {
            // One direction is over: the other gets `fin` of inactivity, not `idle`. The
            // two waits are one after the other, so they share their space in this state.
            let rest = match ended {
                Side::Client => down,
                Side::Backend => up,
            };
            tokio::select! {
                r = rest => match r {
                    Ok(_) => End::Done,
                    Err((side, e)) => End::Error(side, e),
                },
                _ = idle(&last, opts.fin) => End::Idle,
            }
        }
    };
    Outcome {
        down: down_total.load(Ordering::Relaxed),
        end,
    }
}

async fn idle(last: &AtomicU64, limit: Duration) {
    let limit = limit.as_millis() as u64;
    loop {
        let deadline = last.load(Ordering::Relaxed).saturating_add(limit);
        let now = now_ms();
        if now >= deadline {
            return;
        }
        // Sleeping to the deadline seen now and re-checking costs one timer per idle
        // period instead of a timer reset per read.
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

enum Path {
    Copy,
    Splice(Pipe),
}

type PumpResult = Result<u64, (Side, io::Error)>;

/// What a pump shares with the relay and the other pump.
struct PumpShared<'a> {
    counter: &'a AtomicU64,
    /// Time of the last byte either way, for the idle timeout.
    last: &'a AtomicU64,
    total_out: Option<&'a AtomicU64>,
    /// Set by the first pump to reach EOF.
    one_ended: &'a AtomicBool,
}

/// Moves `src` → `dst` until EOF on `src`, then half-closes `dst`.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    src_side: Side,
    // By reference: each pump's state holds it for the connection's whole life.
    opts: &RelayOpts,
    shared: PumpShared<'_>,
) -> PumpResult {
    let PumpShared {
        counter,
        last,
        total_out,
        one_ended,
    } = shared;
    let dst_side = match src_side {
        Side::Client => Side::Backend,
        Side::Backend => Side::Client,
    };
    let mut total = 0u64;
    let mut path = match opts.splice {
        SpliceMode::On => Pipe::take(opts.pipe_size).map_or(Path::Copy, Path::Splice),
        _ => Path::Copy,
    };
    let mut spliced_once = false;
    let result = loop {
        let n = match &mut path {
            Path::Copy => match copy_once(src, dst, src_side, dst_side).await {
                Ok((n, full)) => {
                    if full
                        && opts.splice == SpliceMode::Auto
                        && let Ok(p) = Pipe::take(opts.pipe_size)
                    {
                        path = Path::Splice(p);
                    }
                    n
                }
                Err(e) => break Err(e),
            },
            // Boxed: only connections that move bulk data splice, and inline its state
            // would make every idle connection's task bigger.
            Path::Splice(pipe) => {
                match Box::pin(splice_step(src, dst, pipe, src_side, dst_side)).await {
                    Ok(n) => {
                        spliced_once = true;
                        n
                    }
                    // The kernel cannot splice this pair (never for TCP on Linux, but a
                    // seccomp filter or an odd kernel might say so): copy instead.
                    Err((_, e))
                        if !spliced_once
                            && matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) =>
                    {
                        if let Path::Splice(p) = std::mem::replace(&mut path, Path::Copy) {
                            p.give(true);
                        }
                        continue;
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        if n == 0 {
            // When the other direction has already ended, both sockets are closed as soon
            // as this pump returns, and that close sends the FIN (both receive queues are
            // empty, so it is a FIN, not a reset): the shutdown would be a wasted syscall
            // on every short-lived connection.
            if !one_ended.swap(true, Ordering::Relaxed) {
                // ENOTCONN when the peer already reset: nothing left to tell it.
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                // The fin timeout counts from here, not from the last byte before.
                last.store(now_ms(), Ordering::Relaxed);
            }
            break Ok(total);
        }
        total += n as u64;
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(t) = total_out {
            t.store(total, Ordering::Relaxed);
        }
        last.store(now_ms(), Ordering::Relaxed);
    };
    if let Path::Splice(p) = path {
        // After an error the pipe may still hold bytes: such a pipe is closed, not reused.
        p.give(result.is_ok());
    }
    result
}

/// One read and the writes that pass it on; (bytes, whether the read filled the buffer).
async fn copy_once(
    src: &TcpStream,
    dst: &TcpStream,
    src_side: Side,
    dst_side: Side,
) -> Result<(usize, bool), (Side, io::Error)> {
    let (buf, n) = read_some(src).await.map_err(|e| (src_side, e))?;
    if n > 0
        && let Err(e) = write_all(dst, &buf[..n]).await
    {
        give_buf(buf);
        return Err((dst_side, e));
    }
    let full = n == buf.len();
    give_buf(buf);
    Ok((n, full))
}

/// The client's first bytes, read through the reactor: waiting for its readiness costs no
/// syscall, where a peek before the relay's first read costs one on every connection.
/// They are copied out at their size, so a client waiting for its backend's handshake
/// holds only what it sent, not a pool buffer. Empty at EOF.
pub(crate) async fn read_first(src: &TcpStream) -> io::Result<Box<[u8]>> {
    let (buf, n) = read_some(src).await?;
    let first = Box::from(&buf[..n]);
    give_buf(buf);
    Ok(first)
}

/// Waits until `src` is readable and reads once into a pool buffer, taken only once there
/// is something to read: (the buffer, bytes read; 0 at EOF). The caller gives it back.
async fn read_some(src: &TcpStream) -> io::Result<(Box<[u8]>, usize)> {
    loop {
        let ready = src.ready(Interest::READABLE).await?;
        let mut buf = take_buf();
        let mut got = None;
        // A read shorter than the buffer almost always emptied the socket. Reporting it
        // as WouldBlock makes tokio clear the readiness now, which saves the read that
        // would only return EAGAIN (one syscall in three on request/response traffic);
        // data that arrives later is a new epoll edge, so nothing is missed. Not when the
        // peer's FIN is already known: that edge has passed, so read on to see the EOF.
        let r = src.try_io(Interest::READABLE, || {
            let n = socket2::SockRef::from(src).recv(as_uninit(&mut buf))?;
            got = Some(n);
            if n > 0 && n < buf.len() && !ready.is_read_closed() {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (r, got) {
            (Ok(n), _) => return Ok((buf, n)),
            (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => return Ok((buf, n)),
            (Err(e), _) => {
                give_buf(buf);
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
        }
    }
}

fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: an initialised byte is a valid MaybeUninit<u8>, and recv only writes.
    unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
}

pub(crate) async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves bytes through the pipe, reading from `src` while the pipe has room and writing
/// to `dst` while it holds bytes, so both sockets stay busy (a fill-then-drain loop would
/// leave the source idle during every drain). Returns the bytes passed on, or 0 at EOF
/// once the pipe is empty.
async fn splice_step(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &mut Pipe,
    src_side: Side,
    dst_side: Side,
) -> Result<usize, (Side, io::Error)> {
    // A pipe holds a limited number of buffers, not bytes: one skb fragment can take a
    // whole slot, so it can be full with fewer than `size` bytes in it. EAGAIN from a fill
    // into a non-empty pipe may then mean "pipe full" rather than "socket empty", and must
    // not clear the socket's readiness (the data already queued would never be signalled
    // again). Such a fill waits for the next drain instead.
    let mut pipe_full = false;
    loop {
        if !pipe.eof && pipe.pending < pipe.size && !pipe_full {
            let room = pipe.size - pipe.pending;
            let nonempty = pipe.pending > 0;
            let r = src.try_io(Interest::READABLE, || {
                match pipe.fill(src.as_raw_fd(), room) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && nonempty => Ok(None),
                    r => r.map(Some),
                }
            });
            match r {
                Ok(Some(0)) => pipe.eof = true,
                Ok(Some(n)) => pipe.pending += n,
                Ok(None) => pipe_full = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err((src_side, e)),
            }
        }
        if pipe.pending > 0 {
            let len = pipe.pending;
            match dst.try_io(Interest::WRITABLE, || pipe.drain(dst.as_raw_fd(), len)) {
                Ok(m) => {
                    pipe.pending -= m;
                    if m > 0 {
                        return Ok(m);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err((dst_side, e)),
            }
        }
        let can_fill = !pipe.eof && pipe.pending < pipe.size && !pipe_full;
        let can_drain = pipe.pending > 0;
        if !can_fill && !can_drain {
            return Ok(0);
        }
        tokio::select! {
            r = src.readable(), if can_fill => r.map_err(|e| (src_side, e))?,
            r = dst.writable(), if can_drain => r.map_err(|e| (dst_side, e))?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    /// 10,000 idle watch connections must cost no buffer memory: a pump or a first read
    /// holds a pool buffer only between readiness and the write that passes the bytes on.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_reads_hold_no_buffer() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, client_side) = pair(&l).await;
        let (backend_side, mut backend) = pair(&l).await;

        client.write_all(b"hello").await.unwrap();
        assert_eq!(&*read_first(&client_side).await.unwrap(), b"hello");
        let silent = tokio::spawn(async move { read_first(&client_side).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(
            LENT.with(|l| l.get()),
            0,
            "a first read waiting on a silent client"
        );
        silent.abort();

        let (mut c2, c2_side) = pair(&l).await;
        let opts = RelayOpts {
            idle: Duration::from_secs(60),
            fin: Duration::from_secs(60),
            splice: SpliceMode::Off,
            pipe_size: 0,
        };
        let relayed = tokio::spawn(async move {
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            relay(
                &c2_side,
                &backend_side,
                opts,
                Counters {
                    up: &up,
                    down: &down,
                },
            )
            .await;
        });
        c2.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        backend.read_exact(&mut got).await.unwrap();
        backend.write_all(b"pong").await.unwrap();
        c2.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        // Both pumps are back to waiting for their next bytes.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(LENT.with(|l| l.get()), 0, "pumps waiting between messages");
        relayed.abort();
        drop(client);
    }
}
