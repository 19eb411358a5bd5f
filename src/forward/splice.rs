//! splice(2) through a kernel pipe: socket → pipe → socket without copying the bytes into
//! user space. Pipes are kept per thread and reused, since pipe2 + F_SETPIPE_SZ per
//! connection would cost more than it saves on short connections.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Pipes alive in this process (in use or pooled), and how many may be: the descriptor
/// budget's share for splice (`fds::budget`). Past it a pump copies instead.
static PIPES: AtomicU64 = AtomicU64::new(0);
static PIPES_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets the process-wide pipe budget (at forwarder start).
pub(crate) fn set_limit(pipes: u64) {
    PIPES_LIMIT.store(pipes, Ordering::Relaxed);
}

/// A pipe that is empty whenever it is not in use by a pump.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    pub(crate) size: usize,
    /// Bytes in the pipe not yet passed on.
    pub(crate) pending: usize,
    /// The source has reached EOF.
    pub(crate) eof: bool,
}

const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    pub(crate) fn take(size: usize) -> io::Result<Pipe> {
        if let Some(p) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        if !admit(&PIPES, PIPES_LIMIT.load(Ordering::Relaxed)) {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: fds has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            PIPES.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per splice; the kernel may refuse (pipe-max-size,
        // per-user pipe quota) and then the default 64 KiB is still correct, only slower.
        // SAFETY: plain fcntl on a descriptor we own.
        let got =
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        let size = if got > 0 { got as usize } else { 64 * 1024 };
        Ok(Pipe {
            read,
            write,
            size,
            pending: 0,
            eof: false,
        })
    }

    /// Hands an empty pipe back for reuse; a pipe with bytes left in it is closed instead.
    pub(crate) fn give(mut self, clean: bool) {
        if clean && self.pending == 0 {
            self.eof = false;
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(self);
                }
            });
        }
    }

    /// Moves up to `len` bytes from socket `src` into the pipe.
    pub(crate) fn fill(&self, src: RawFd, len: usize) -> io::Result<usize> {
        splice(src, self.write.as_raw_fd(), len)
    }

    /// Moves up to `len` bytes from the pipe into socket `dst`.
    pub(crate) fn drain(&self, dst: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), dst, len)
    }
}

/// Counts one more pipe if the budget has room.
fn admit(count: &AtomicU64, limit: u64) -> bool {
    if count.fetch_add(1, Ordering::Relaxed) >= limit {
        count.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, Ordering::Relaxed);
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets are required for pipes and sockets; the descriptors are open for
    // the whole call (borrowed from live objects by the callers).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn the_budget_admits_up_to_its_limit() {
        let n = AtomicU64::new(0);
        assert!(admit(&n, 2) && admit(&n, 2));
        assert!(!admit(&n, 2));
        assert_eq!(
            n.load(Ordering::Relaxed),
            2,
            "a refusal leaves the count alone"
        );
        n.fetch_sub(1, Ordering::Relaxed);
        assert!(admit(&n, 2));
    }

    #[test]
    fn moves_bytes_between_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        a.write_all(b"hello splice").unwrap();
        let p = Pipe::take(128 * 1024).unwrap();
        assert!(p.size >= 64 * 1024);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n = p.fill(b.as_raw_fd(), p.size).unwrap();
        assert_eq!(n, 12);
        assert_eq!(p.drain(c.as_raw_fd(), n).unwrap(), 12);
        let mut got = [0u8; 12];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello splice");
        p.give(true);
    }
}
