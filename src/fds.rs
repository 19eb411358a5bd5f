//! The process's descriptor budget: raise RLIMIT_NOFILE to the hard limit at start, and
//! keep the forwarder far enough below it that the election, the health checks, netlink,
//! the control socket and /metrics always find a descriptor.
//!
//! Without a budget, ~500 idle connections through VIP:8443 at the common soft limit of
//! 1024 made the local health check fail with EMFILE (the VIP moved), stopped /metrics,
//! and spun the control socket's accept loop.

use std::io;

/// Descriptors kept back for everything that is not a forwarded connection: the state
/// file, the heartbeat socket, netlink, the TUN device, the announcer, health checks
/// (one per backend per check), up to 32 metrics scrapes and 16 control clients.
pub const RESERVE: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to the hard limit (a systemd unit's default soft limit
/// is 1024 with a hard limit of 512K). Returns the soft limit in force afterwards.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid pointer given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit; raising soft to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

/// The soft RLIMIT_NOFILE now (u64::MAX when unlimited or unreadable).
pub fn nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in raise_nofile.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    lim.rlim_cur
}

/// Kernel pipes for splice(2) never take more than this many (each is 2 descriptors and
/// up to `forward.pipe_size` of kernel memory while full).
pub const PIPES_MAX: u64 = 1024;

/// How the forwarder may spend the descriptors above [`RESERVE`]: two per connection
/// (client and backend sockets), and, with splice, two per pipe. Pipes get a quarter and
/// are optional: when they are spent a connection copies instead, so a long-lived watch
/// that once moved bulk data cannot starve new connections of descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub connections: u32,
    pub pipes: u64,
}

pub fn budget(limit: u64, splice: bool) -> Budget {
    let avail = limit.saturating_sub(RESERVE);
    let pipes = if splice {
        (avail / 8).min(PIPES_MAX)
    } else {
        0
    };
    let n = avail.saturating_sub(pipes * 2) / 2;
    Budget {
        connections: u32::try_from(n).unwrap_or(u32::MAX).max(1),
        pipes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_reserve() {
        // 1024: 768 above the reserve; a quarter of it (96 pipes) for splice.
        let b = budget(1024, true);
        assert_eq!(
            b,
            Budget {
                connections: 288,
                pipes: 96
            }
        );
        assert_eq!(2 * u64::from(b.connections) + 2 * b.pipes + RESERVE, 1024);
        assert_eq!(
            budget(1024, false),
            Budget {
                connections: 384,
                pipes: 0
            }
        );
        assert_eq!(budget(100, true).connections, 1);
        assert_eq!(budget(20_000, true).pipes, PIPES_MAX);
        assert_eq!(budget(u64::MAX, true).connections, u32::MAX);
    }

    #[test]
    fn raising_never_lowers() {
        let before = nofile();
        let after = raise_nofile().unwrap();
        assert!(after >= before);
    }
}
