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

/// Descriptors one forwarded connection may hold at worst: two sockets, and with
/// splice a pipe (two descriptors) per direction.
pub fn per_connection(splice: bool) -> u64 {
    if splice { 6 } else { 2 }
}

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

/// How many forwarded connections fit under `limit` descriptors with [`RESERVE`] kept
/// back; at least 1.
pub fn connection_budget(limit: u64, splice: bool) -> u32 {
    let n = limit.saturating_sub(RESERVE) / per_connection(splice);
    u32::try_from(n).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_reserve() {
        assert_eq!(connection_budget(1024, true), (1024 - RESERVE as u32) / 6);
        assert_eq!(connection_budget(1024, false), (1024 - RESERVE as u32) / 2);
        assert_eq!(connection_budget(100, true), 1);
        assert_eq!(connection_budget(u64::MAX, true), u32::MAX);
    }

    #[test]
    fn raising_never_lowers() {
        let before = nofile();
        let after = raise_nofile().unwrap();
        assert!(after >= before);
    }
}
