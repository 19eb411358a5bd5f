//! The heartbeat transport: one UDP socket, unicast to each peer, every datagram sealed
//! and checked by the wire codec.
//!
//! Sends never wait: a full socket buffer drops the datagram (counted), exactly like a
//! lost packet, which the election already tolerates. Blocking the state machine on a
//! send would delay its releases, which safety depends on.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use apivip_proto::message::{Message, NodeId};
use apivip_proto::{Codec, DecodeError, Keyring, Received};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tokio::net::UdpSocket;

/// DSCP CS6 ("network control"), as VRRP and routing protocols mark theirs: switches
/// that honour it keep heartbeats ahead of bulk traffic.
const TOS_CS6: u32 = 0xc0;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("cannot bind the heartbeat socket to {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Counters for `status` and metrics.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub sent: u64,
    /// Datagrams the kernel would not take at once (buffer full, no route).
    pub send_failed: u64,
    pub received: u64,
    /// Rejected datagrams by reason (the wire codec's names).
    pub rejected: BTreeMap<String, u64>,
}

/// What one datagram turned out to be.
#[derive(Debug)]
pub enum Inbound {
    Message(Received),
    Rejected {
        from: SocketAddr,
        error: DecodeError,
    },
}

pub struct Transport {
    socket: UdpSocket,
    /// The same socket for sends: tokio's `try_send_to` answers WouldBlock until its
    /// reactor has seen the socket writable, which would drop the first heartbeats; a
    /// plain non-blocking send only fails when the kernel buffer is really full.
    sender: std::net::UdpSocket,
    codec: Codec,
    peers: BTreeMap<NodeId, SocketAddr>,
    /// Each sender's latest heartbeat said every member of its list speaks 2.
    all_speak_2: BTreeMap<NodeId, bool>,
    out: Vec<u8>,
    buf: Box<[u8]>,
    stats: Stats,
}

impl Transport {
    /// Binds `local`; IP_FREEBIND lets the daemon start before the node's address is up
    /// (boot ordering), the socket simply receives once it is.
    pub fn bind(
        local: SocketAddr,
        codec: Codec,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Transport, TransportError> {
        let err = |source| TransportError::Bind {
            addr: local,
            source,
        };
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        // No SO_REUSEADDR: with it a second process could bind the same address and
        // silently take every heartbeat (the kernel delivers unicast UDP to one of them).
        // A daemon restarted at once still binds: UDP has no TIME_WAIT.
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
        if local.is_ipv4() {
            s.set_freebind_v4(true).map_err(err)?;
            // Best effort: a kernel that refuses the mark still carries the datagram.
            let _ = s.set_tos_v4(TOS_CS6);
        } else {
            s.set_only_v6(true).map_err(err)?;
            s.set_freebind_v6(true).map_err(err)?;
            let _ = s.set_tclass_v6(TOS_CS6);
        }
        s.set_nonblocking(true).map_err(err)?;
        s.bind(&local.into()).map_err(err)?;
        let sender: std::net::UdpSocket = s.try_clone().map_err(err)?.into();
        let socket = UdpSocket::from_std(s.into()).map_err(err)?;
        Ok(Transport {
            socket,
            sender,
            codec,
            peers,
            all_speak_2: BTreeMap::new(),
            out: Vec::with_capacity(apivip_proto::wire::MAX_DATAGRAM),
            buf: vec![0u8; 2048].into_boxed_slice(),
            stats: Stats::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn epoch(&self) -> u64 {
        self.codec.epoch()
    }

    /// The newest wire version each peer heard from says it speaks.
    pub fn peer_versions(&self) -> &BTreeMap<NodeId, u8> {
        self.codec.peer_versions()
    }

    /// The newest wire version this node speaks.
    pub fn max_version(&self) -> u8 {
        self.codec.max_version()
    }

    /// A reload's peer list and keys; replay windows of known senders are kept.
    pub fn reconfigure(&mut self, peers: BTreeMap<NodeId, SocketAddr>, keys: Keyring) {
        self.peers = peers;
        self.codec.set_keys(keys);
        self.update_all_speak_2();
    }

    /// Whether every peer this node has been heard speak 2: its heartbeats then say so.
    pub fn every_peer_speaks_2(&self) -> bool {
        let v = self.codec.peer_versions();
        self.peers
            .keys()
            .all(|id| v.get(id).is_some_and(|v| *v >= 2))
    }

    fn update_all_speak_2(&mut self) {
        let all = self.every_peer_speaks_2();
        self.codec.set_all_speak_2(all);
    }

    /// Whether `id`'s latest heartbeat said every member of its list speaks 2.
    pub fn says_all_speak_2(&self, id: NodeId) -> bool {
        self.all_speak_2.get(&id).copied().unwrap_or(false)
    }

    /// Seals and sends `msg` to `to` without waiting.
    pub fn send(&mut self, to: NodeId, msg: &Message) {
        let Some(&addr) = self.peers.get(&to) else {
            tracing::debug!(peer = to, "no address for peer; message dropped");
            return;
        };
        self.out.clear();
        self.codec.encode_into(to, msg, &mut self.out);
        match self.sender.send_to(&self.out, addr) {
            Ok(_) => self.stats.sent += 1,
            Err(e) => {
                self.stats.send_failed += 1;
                tracing::debug!(peer = to, %addr, error = %e, "heartbeat send failed");
            }
        }
    }

    /// The next datagram, decoded. Cancel-safe (usable in `select!`).
    pub async fn recv(&mut self) -> io::Result<Inbound> {
        let (n, from) = self.socket.recv_from(&mut self.buf).await?;
        let datagram = &self.buf[..n];
        match self.codec.decode(datagram) {
            Ok(r) => {
                // An authenticated datagram from an address other than the peer's is
                // still a member's (NAT, a second address): the MAC decides, not the IP.
                if let Some(a) = self.peers.get(&r.from)
                    && a.ip() != from.ip()
                    && !from.ip().is_loopback()
                {
                    tracing::debug!(peer = r.from, expected = %a.ip(), got = %from.ip(), "peer sent from an unexpected address");
                }
                self.stats.received += 1;
                if matches!(r.msg.body, apivip_proto::Body::Heartbeat(_)) {
                    self.all_speak_2.insert(r.from, r.all_speak_2);
                }
                self.update_all_speak_2();
                Ok(Inbound::Message(r))
            }
            Err(error) => {
                *self
                    .stats
                    .rejected
                    .entry(error.reason().to_string())
                    .or_default() += 1;
                Ok(Inbound::Rejected { from, error })
            }
        }
    }
}

/// Peers' heartbeat addresses (everyone but `me`) on `port`.
pub fn peer_addrs(
    peers: impl IntoIterator<Item = (NodeId, IpAddr)>,
    me: NodeId,
    port: u16,
) -> BTreeMap<NodeId, SocketAddr> {
    peers
        .into_iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, ip)| (id, SocketAddr::new(ip, port)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apivip_proto::message::{Body, Flags, Heartbeat};
    use apivip_proto::wire::ClusterId;

    fn codec(me: NodeId, key: &[u8]) -> Codec {
        Codec::new(
            ClusterId::from_name("test"),
            me,
            1,
            Keyring::single(key).unwrap(),
        )
    }

    /// A second binder of the heartbeat address is refused instead of silently taking a
    /// share of the datagrams.
    #[tokio::test]
    async fn a_second_binder_is_refused() {
        let a = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            codec(1, &[7u8; 32]),
            BTreeMap::new(),
        )
        .unwrap();
        let addr = a.local_addr().unwrap();
        let err = Transport::bind(addr, codec(1, &[7u8; 32]), BTreeMap::new())
            .err()
            .expect("second bind refused");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        drop(a);
        Transport::bind(addr, codec(1, &[7u8; 32]), BTreeMap::new())
            .expect("rebinds at once after the first is gone");
    }

    #[tokio::test]
    async fn round_trip_and_rejects_counted_by_reason() {
        let key = [7u8; 32];
        let mut a = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            codec(1, &key),
            BTreeMap::new(),
        )
        .unwrap();
        let b_addr;
        let mut b = {
            let t = Transport::bind(
                "127.0.0.1:0".parse().unwrap(),
                codec(2, &key),
                BTreeMap::new(),
            )
            .unwrap();
            b_addr = t.local_addr().unwrap();
            t
        };
        a.peers.insert(2, b_addr);
        let msg = Message {
            term: 3,
            body: Body::Heartbeat(Heartbeat {
                seq: 1,
                flags: Flags::default(),
                priority: 100,
                members_hash: 0,
            }),
        };
        a.send(2, &msg);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), b.recv()).await;
        match got.expect("the datagram arrives").unwrap() {
            Inbound::Message(r) => {
                assert_eq!(r.from, 1);
                assert_eq!(r.msg, msg);
            }
            other => panic!("expected a message, got {other:?}"),
        }
        // A forged datagram (wrong key) is rejected, counted, and does not panic.
        let mut forger = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            codec(1, &[9u8; 32]),
            BTreeMap::new(),
        )
        .unwrap();
        forger.peers.insert(2, b_addr);
        forger.send(2, &msg);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), b.recv()).await;
        match got.expect("the forged datagram arrives").unwrap() {
            Inbound::Rejected { error, .. } => assert_eq!(error.reason(), "bad_mac"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        // Garbage of every length up to the buffer never panics.
        let raw = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for len in [0usize, 1, 10, 77, 78, 200, 1500] {
            raw.send_to(&vec![0xA5; len], b_addr).unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), b.recv()).await;
            assert!(
                matches!(got, Ok(Ok(Inbound::Rejected { .. }))),
                "{len} bytes: {got:?}"
            );
        }
        assert!(
            b.stats().rejected.values().sum::<u64>() >= 8,
            "{:?}",
            b.stats()
        );
    }
}
