//! Per-client limits: how many connections one source may hold, and the TCP keepalive
//! that finds clients (and backends) that vanished without a FIN or a reset.
//!
//! The global `max_connections` alone lets one host that reaches VIP:8443 take every
//! slot; the per-source cap keeps it to its share. Loopback sources are exempt: on a
//! worker every client (kubelet, kube-proxy) comes from 127.0.0.1, and on a control-plane
//! node a local client is the node itself.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Keepalive probes after the idle time; with TCP_USER_TIMEOUT at idle + probes × interval,
/// a peer that stops answering (or stops acknowledging data) is dropped by then.
pub const KEEPALIVE_PROBES: u32 = 3;
/// The gap between probes: 5 s, or the idle time when that is shorter (tests use 1 s).
pub const KEEPALIVE_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// TCP keepalive for both sides of every forwarded connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Silence before the first probe.
    pub idle: Duration,
}

impl Keepalive {
    pub fn interval(&self) -> Duration {
        self.idle.min(KEEPALIVE_INTERVAL_MAX)
    }

    /// When a peer that vanished is given up: the idle time and every probe unanswered.
    pub fn dead_after(&self) -> Duration {
        self.idle + self.interval() * KEEPALIVE_PROBES
    }

    /// Sets keepalive and TCP_USER_TIMEOUT on a socket. On a listener, Linux copies both
    /// to every accepted socket, which saves two syscalls per connection.
    pub fn apply(&self, sock: SockRef<'_>) -> io::Result<()> {
        let ka = TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval())
            .with_retries(KEEPALIVE_PROBES);
        sock.set_tcp_keepalive(&ka)?;
        // Keepalive alone does not cover a peer that vanishes while we have unacknowledged
        // data queued to it (retransmissions run ~15 minutes): the user timeout does.
        sock.set_tcp_user_timeout(Some(self.dead_after()))
    }
}

/// The key a source is counted under: its IPv4 address, or its IPv6 /64 (one host on
/// IPv6 usually has a whole /64 to pick addresses from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

fn key(ip: IpAddr) -> Option<SourceKey> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
        IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
    })
}

/// Open connections per source, capped.
pub(crate) struct SourceCap {
    max: u32,
    open: Mutex<HashMap<SourceKey, u32>>,
}

/// One connection counted against its source while alive.
pub(crate) struct SourceGuard {
    cap: Arc<SourceCap>,
    key: Option<SourceKey>,
}

impl SourceCap {
    /// `max` 0 means no cap.
    pub(crate) fn new(max: u32) -> Arc<SourceCap> {
        Arc::new(SourceCap {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `ip`, or `None` when its source is at the cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        let key = match key(ip) {
            Some(k) if self.max > 0 => k,
            _ => {
                return Some(SourceGuard {
                    cap: self.clone(),
                    key: None,
                });
            }
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceGuard {
            cap: self.clone(),
            key: Some(key),
        })
    }

    /// Sources with a connection open now (the map never holds more).
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.cap.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Removed at zero, so a scan from many addresses leaves no entries behind.
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_each_source_and_frees_on_drop() {
        let cap = SourceCap::new(2);
        let a1 = cap.admit(ip("192.0.2.1")).unwrap();
        let _a2 = cap.admit(ip("192.0.2.1")).unwrap();
        assert!(cap.admit(ip("192.0.2.1")).is_none());
        let _b = cap.admit(ip("192.0.2.2")).unwrap();
        drop(a1);
        assert!(cap.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn map_empties_when_connections_close() {
        let cap = SourceCap::new(5);
        let guards: Vec<_> = (1..=50)
            .map(|i| cap.admit(ip(&format!("198.51.100.{i}"))).unwrap())
            .collect();
        assert_eq!(cap.sources(), 50);
        drop(guards);
        assert_eq!(cap.sources(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let cap = SourceCap::new(1);
        let _a = cap.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(cap.admit(ip("2001:db8:1:2::ffff")).is_none(), "same /64");
        assert!(cap.admit(ip("2001:db8:1:3::1")).is_some(), "another /64");
        let _v4 = cap.admit(ip("192.0.2.9")).unwrap();
        assert!(cap.admit(ip("::ffff:192.0.2.9")).is_none());
    }

    #[test]
    fn loopback_and_no_cap_are_exempt() {
        let cap = SourceCap::new(1);
        let _g: Vec<_> = (0..10)
            .map(|_| cap.admit(ip("127.0.0.1")).unwrap())
            .collect();
        let _h: Vec<_> = (0..10).map(|_| cap.admit(ip("::1")).unwrap()).collect();
        assert_eq!(cap.sources(), 0);
        let none = SourceCap::new(0);
        let _x: Vec<_> = (0..10)
            .map(|_| none.admit(ip("192.0.2.1")).unwrap())
            .collect();
    }

    #[test]
    fn keepalive_gives_up_after_idle_and_probes() {
        let k = Keepalive {
            idle: Duration::from_secs(30),
        };
        assert_eq!(k.interval(), Duration::from_secs(5));
        assert_eq!(k.dead_after(), Duration::from_secs(45));
        let short = Keepalive {
            idle: Duration::from_secs(1),
        };
        assert_eq!(short.dead_after(), Duration::from_secs(4));
    }
}
