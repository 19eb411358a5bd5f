//! Per-client limits: how many connections one source may hold and how fast it may open
//! them, and the TCP keepalive that finds clients (and backends) that vanished without a
//! FIN or a reset.
//!
//! The global `max_connections` alone lets one host that reaches VIP:8443 take every
//! slot; the per-source cap keeps it to its share. The cap bounds open connections, not
//! their churn: a host that opens and closes connections fast leaves a TIME_WAIT per
//! backend connection on this node and can use up its source ports towards the
//! apiservers, so the rate is bounded too. Loopback sources are exempt: on a worker every
//! client (kubelet, kube-proxy) comes from 127.0.0.1, and on a control-plane node a local
//! client is the node itself.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// What is known of one source: its open connections and, when the rate is limited, its
/// theoretical arrival time (GCRA): the instant at which its bucket is full again.
#[derive(Clone, Copy, Debug)]
struct Entry {
    open: u32,
    full_at: Option<Instant>,
}

/// Why a connection was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The source already holds `max_per_source` connections.
    Open,
    /// The source opened more than `max_new_per_source` in the last second.
    Rate,
}

/// A sweep (one pass over the map) runs at most this often, so its cost is spread over
/// at least a second of accepts.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Below this many entries the map is not swept at all.
const SWEEP_ABOVE: usize = 1024;

struct Sources {
    map: HashMap<SourceKey, Entry>,
    swept_at: Option<Instant>,
}

/// Open connections per source, capped, and new connections per source, rate-limited.
pub(crate) struct SourceCap {
    max: u32,
    /// One new connection per `interval` on average, with a burst of `per_second`
    /// (a whole second's worth): `None` when the rate is not limited.
    rate: Option<Rate>,
    sources: Mutex<Sources>,
}

#[derive(Clone, Copy, Debug)]
struct Rate {
    interval: Duration,
    /// How far ahead of now a source's `full_at` may run before it is refused:
    /// (burst - 1) intervals.
    tolerance: Duration,
}

/// One connection counted against its source while alive.
pub(crate) struct SourceGuard {
    cap: Arc<SourceCap>,
    key: Option<SourceKey>,
}

impl SourceCap {
    /// `max` 0 means no cap on open connections; `per_second` 0 no limit on new ones.
    pub(crate) fn new(max: u32, per_second: u32) -> Arc<SourceCap> {
        let rate = (per_second > 0).then(|| {
            let interval = Duration::from_secs(1) / per_second;
            Rate {
                interval,
                tolerance: interval * (per_second - 1),
            }
        });
        Arc::new(SourceCap {
            max,
            rate,
            sources: Mutex::new(Sources {
                map: HashMap::new(),
                swept_at: None,
            }),
        })
    }

    /// Counts a connection from `ip`, or says why it is refused. `clock` is read only for
    /// a source whose rate is limited: loopback clients (every client of a worker's proxy)
    /// and a config without the rate limit cost no clock read.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        clock: impl FnOnce() -> Instant,
    ) -> Result<SourceGuard, Refusal> {
        let key = match key(ip) {
            Some(k) if self.max > 0 || self.rate.is_some() => k,
            _ => {
                return Ok(SourceGuard {
                    cap: self.clone(),
                    key: None,
                });
            }
        };
        let now = self.rate.map(|r| (r, clock()));
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, now)) = now {
            s.sweep(now);
        }
        let e = s.map.entry(key).or_insert(Entry {
            open: 0,
            full_at: None,
        });
        if self.max > 0 && e.open >= self.max {
            return Err(Refusal::Open);
        }
        if let Some((r, now)) = now {
            let at = e.full_at.map_or(now, |f| f.max(now));
            if at.saturating_duration_since(now) > r.tolerance {
                return Err(Refusal::Rate);
            }
            e.full_at = Some(at + r.interval);
        }
        e.open += 1;
        Ok(SourceGuard {
            cap: self.clone(),
            key: Some(key),
        })
    }

    /// Sources tracked now: those with a connection open, and those whose rate bucket
    /// has not refilled yet.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }
}

impl Sources {
    /// Forgets sources with nothing open whose bucket is full again: one that comes back
    /// starts from a full bucket, which is what it would have anyway. So the map holds
    /// the open connections' sources plus those seen within the last second or so,
    /// whatever the number of addresses a scan comes from.
    fn sweep(&mut self, now: Instant) {
        if self.map.len() <= SWEEP_ABOVE
            || self
                .swept_at
                .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.swept_at = Some(now);
        self.map
            .retain(|_, e| e.open > 0 || e.full_at.is_some_and(|f| f > now));
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut s = self.cap.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = s.map.get_mut(&key) {
            e.open = e.open.saturating_sub(1);
            // Removed once nothing is open and the bucket is full; otherwise the entry
            // keeps the rate's memory (a churning client closes each connection at once)
            // and a later sweep removes it.
            if e.open == 0 && e.full_at.is_none_or(|f| f <= Instant::now()) {
                s.map.remove(&key);
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
        let cap = SourceCap::new(2, 0);
        let a1 = cap.admit(ip("192.0.2.1"), Instant::now).unwrap();
        let _a2 = cap.admit(ip("192.0.2.1"), Instant::now).unwrap();
        assert_eq!(
            cap.admit(ip("192.0.2.1"), Instant::now).err(),
            Some(Refusal::Open)
        );
        let _b = cap.admit(ip("192.0.2.2"), Instant::now).unwrap();
        drop(a1);
        assert!(cap.admit(ip("192.0.2.1"), Instant::now).is_ok());
    }

    #[test]
    fn map_empties_when_connections_close() {
        let cap = SourceCap::new(5, 0);
        let guards: Vec<_> = (1..=50)
            .map(|i| {
                cap.admit(ip(&format!("198.51.100.{i}")), Instant::now)
                    .unwrap()
            })
            .collect();
        assert_eq!(cap.sources(), 50);
        drop(guards);
        assert_eq!(cap.sources(), 0);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let cap = SourceCap::new(1, 0);
        let _a = cap.admit(ip("2001:db8:1:2::1"), Instant::now).unwrap();
        assert!(
            cap.admit(ip("2001:db8:1:2::ffff"), Instant::now).is_err(),
            "same /64"
        );
        assert!(
            cap.admit(ip("2001:db8:1:3::1"), Instant::now).is_ok(),
            "another /64"
        );
        let _v4 = cap.admit(ip("192.0.2.9"), Instant::now).unwrap();
        assert!(cap.admit(ip("::ffff:192.0.2.9"), Instant::now).is_err());
    }

    #[test]
    fn loopback_and_no_limits_are_exempt() {
        let cap = SourceCap::new(1, 1);
        let _g: Vec<_> = (0..10)
            .map(|_| cap.admit(ip("127.0.0.1"), Instant::now).unwrap())
            .collect();
        let _h: Vec<_> = (0..10)
            .map(|_| cap.admit(ip("::1"), Instant::now).unwrap())
            .collect();
        assert_eq!(cap.sources(), 0);
        let none = SourceCap::new(0, 0);
        let _x: Vec<_> = (0..10)
            .map(|_| none.admit(ip("192.0.2.1"), Instant::now).unwrap())
            .collect();
        assert_eq!(none.sources(), 0);
        // The clock is read only where a rate is kept: not for loopback, not for the
        // open-connection cap alone.
        let no_clock = || -> Instant { panic!("the clock was read") };
        assert!(cap.admit(ip("127.0.0.1"), no_clock).is_ok());
        let cap_only = SourceCap::new(1, 0);
        let g = cap_only.admit(ip("192.0.2.1"), no_clock).unwrap();
        assert_eq!(
            cap_only.admit(ip("192.0.2.1"), no_clock).err(),
            Some(Refusal::Open)
        );
        drop(g);
        assert_eq!(cap_only.sources(), 0);
    }

    /// A second's worth at once, then one per interval: the 11th of a burst at 10/s is
    /// refused, one more is let in 100 ms later, and closing connections gives nothing
    /// back (the rate counts connections opened, not open).
    #[test]
    fn new_connections_are_limited_per_source_with_a_second_of_burst() {
        let cap = SourceCap::new(0, 10);
        let t0 = Instant::now();
        for i in 0..10 {
            let g = cap.admit(ip("192.0.2.1"), || t0);
            assert!(g.is_ok(), "connection {i} of the burst");
        }
        assert_eq!(cap.admit(ip("192.0.2.1"), || t0).err(), Some(Refusal::Rate));
        assert!(cap.admit(ip("192.0.2.2"), || t0).is_ok(), "another source");
        let later = t0 + Duration::from_millis(99);
        assert_eq!(
            cap.admit(ip("192.0.2.1"), || later).err(),
            Some(Refusal::Rate)
        );
        let later = t0 + Duration::from_millis(100);
        assert!(cap.admit(ip("192.0.2.1"), || later).is_ok());
        assert_eq!(
            cap.admit(ip("192.0.2.1"), || later).err(),
            Some(Refusal::Rate)
        );
        // After a quiet second the whole burst is back.
        let quiet = later + Duration::from_secs(1);
        for i in 0..10 {
            assert!(
                cap.admit(ip("192.0.2.1"), || quiet).is_ok(),
                "{i} after quiet"
            );
        }
    }

    /// A churning client's entry outlives its connections (else each connect would find
    /// a fresh bucket), and entries of sources gone quiet are swept once the map is
    /// large, so a scan from many addresses cannot grow it without bound.
    #[test]
    fn the_rate_is_remembered_across_closes_and_quiet_sources_are_swept() {
        let cap = SourceCap::new(0, 2);
        let t0 = Instant::now();
        for _ in 0..2 {
            drop(cap.admit(ip("192.0.2.1"), || t0).unwrap());
        }
        assert!(
            cap.admit(ip("192.0.2.1"), || t0).is_err(),
            "forgot the rate"
        );
        for i in 0..3000u32 {
            let [a, b] = (i as u16).to_be_bytes();
            drop(cap.admit(ip(&format!("198.51.{a}.{b}")), || t0).unwrap());
        }
        assert!(cap.sources() > SWEEP_ABOVE);
        // Two seconds on, every bucket is full: the next admit sweeps them all.
        let later = t0 + Duration::from_secs(2);
        drop(cap.admit(ip("192.0.2.7"), || later).unwrap());
        assert!(cap.sources() <= 2, "{} left", cap.sources());
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
