//! The wire format: turns [`Message`]s into authenticated UDP datagrams and back.
//!
//! Every datagram is a 46-byte header, a fixed-size body per message kind, and an
//! HMAC-SHA256 over both. The byte layout, the checks and their order, and the test
//! vectors are in docs/protocol.md; this module is the reference implementation of it.
//!
//! A [`Codec`] belongs to one node. It stamps outgoing datagrams with the node's id, boot
//! epoch and a counter, and rejects incoming ones that are not for this cluster and node,
//! not signed with a key of the ring, malformed, or already seen.
//!
//! ```
//! use apivip_proto::message::{Body, Flags, Heartbeat, Message};
//! use apivip_proto::wire::{ClusterId, Codec, DecodeError, Keyring};
//!
//! let cluster = ClusterId::from_name("prod-eu1");
//! let keys = Keyring::parse("# rotated 2024-05\nq9bFv8Tz1Kp0wXc3Lr7yN2mDh5Gs4Ju6Ae8Vi0Ot1Z=\n")?;
//! let mut leader = Codec::new(cluster, 1, 1_700_000_000_000, keys.clone());
//! let mut follower = Codec::new(cluster, 2, 1_700_000_000_500, keys);
//!
//! let msg = Message {
//!     term: 7,
//!     body: Body::Heartbeat(Heartbeat {
//!         seq: 1,
//!         flags: Flags(Flags::HEALTHY | Flags::HOLDS_VIP),
//!         priority: 100,
//!         members_hash: 0x1234_5678,
//!     }),
//! };
//! let datagram = leader.encode(0, &msg); // 0: to every member
//! let got = follower.decode(&datagram)?;
//! assert_eq!((got.from, got.to, got.counter), (1, 0, 1));
//! assert_eq!(got.msg, msg);
//!
//! // The same bytes again are a replay.
//! let err = follower.decode(&datagram).unwrap_err();
//! assert_eq!(err.reason(), "replayed");
//! assert!(matches!(err, DecodeError::Replayed { from: 1, counter: 1 }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod body;
mod cluster;
mod error;
mod keys;
mod replay;

use std::collections::BTreeMap;

use hmac::Mac;

use crate::message::{Message, MessageKind, NodeId};

pub use body::{ALL_SPEAK_2, SPEAKS_2, body_len};
pub use cluster::ClusterId;
pub use error::DecodeError;
pub use keys::{Key, KeyError, Keyring, MAX_KEYS, MIN_KEY_LEN};
pub use replay::REPLAY_WINDOW;

use body::Reader;
use replay::{Verdict, Window};

/// The first two bytes of every datagram: "AV".
pub const MAGIC: [u8; 2] = *b"AV";
/// The oldest protocol version this build speaks (the previous release's).
pub const VERSION_MIN: u8 = 1;
/// The newest protocol version this build speaks.
pub const VERSION_MAX: u8 = 2;
/// The version a node speaks to a peer it has not heard yet: the oldest, so a rolling
/// upgrade never sends an old node something it must reject; the first datagram of an
/// upgraded peer carries [`body::SPEAKS_2`] and lifts it.
pub const VERSION_UNHEARD: u8 = VERSION_MIN;
/// Header length: magic, version, type, cluster, from, to, epoch, counter, term, body
/// length.
pub const HEADER_LEN: usize = 46;
/// HMAC-SHA256 tag length, at the end of every datagram.
pub const MAC_LEN: usize = 32;
/// The shortest possible datagram (an empty body), so the shortest worth parsing.
pub const MIN_DATAGRAM: usize = HEADER_LEN + MAC_LEN;
/// The longest datagram a receiver accepts. Version 1's longest is 100 bytes; the rest
/// is headroom for later versions that must still fit a receive buffer of this size.
pub const MAX_DATAGRAM: usize = 256;
/// How many distinct senders a codec keeps replay windows for. Far above any control
/// plane; it exists so that even a key holder inventing ids cannot grow memory forever.
pub const MAX_SENDERS: usize = 1024;

/// One node's encoder and decoder: identity, boot epoch, outgoing counter, keys and the
/// replay windows of every sender heard from.
#[derive(Debug, Clone)]
pub struct Codec {
    cluster: ClusterId,
    me: NodeId,
    epoch: u64,
    /// Counter of the next datagram sent; starts at 1.
    next_counter: u64,
    keys: Keyring,
    windows: BTreeMap<NodeId, Window>,
    /// The newest version this codec speaks and accepts (protocol 1 behaves as the
    /// previous release: for rolling upgrades and their tests).
    max_version: u8,
    /// The newest version each peer said it speaks, in its latest datagram.
    peer_versions: BTreeMap<NodeId, u8>,
    /// Set [`ALL_SPEAK_2`] on heartbeats (the caller knows the member list).
    all_speak_2: bool,
}

/// An authenticated, fresh message and the header fields around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's node id (never 0, never this node's).
    pub from: NodeId,
    /// The addressee: this node's id, or 0 for "any member".
    pub to: NodeId,
    /// The sender's boot epoch.
    pub epoch: u64,
    /// The sender's message counter within `epoch`.
    pub counter: u64,
    /// The datagram's protocol version.
    pub version: u8,
    /// A heartbeat whose sender has heard every member of its list speak 2.
    pub all_speak_2: bool,
    /// The newest version the sender speaks (the datagram's, or 2 from its flags).
    pub speaks: u8,
    /// The message.
    pub msg: Message,
}

/// The header fields a receiver needs after the header checks passed.
struct Header {
    version: u8,
    kind: MessageKind,
    from: NodeId,
    to: NodeId,
    epoch: u64,
    counter: u64,
    term: u64,
    body_len: usize,
}

impl Codec {
    /// A codec for node `me` of `cluster`, in boot epoch `epoch`.
    ///
    /// `me` must not be 0 (config validation refuses it; every peer would reject this
    /// node's datagrams as `zero_sender`). `epoch` must be greater than in any earlier
    /// run of this node, or peers drop its datagrams as stale until it is: the daemon
    /// uses max(persisted epoch + 1, Unix time in ms).
    pub fn new(cluster: ClusterId, me: NodeId, epoch: u64, keys: Keyring) -> Codec {
        Codec {
            cluster,
            me,
            epoch,
            next_counter: 1,
            keys,
            windows: BTreeMap::new(),
            max_version: VERSION_MAX,
            peer_versions: BTreeMap::new(),
            all_speak_2: false,
        }
    }

    /// Whether heartbeats say that every member speaks 2 (see [`ALL_SPEAK_2`]).
    pub fn set_all_speak_2(&mut self, all: bool) {
        self.all_speak_2 = all && self.max_version >= 2;
    }

    /// Speaks and accepts versions up to `v` only (clamped to what this build knows).
    pub fn set_max_version(&mut self, v: u8) {
        self.max_version = v.clamp(VERSION_MIN, VERSION_MAX);
    }

    /// The newest version this codec speaks and accepts.
    pub fn max_version(&self) -> u8 {
        self.max_version
    }

    /// The version this codec sends to `to`: the newest both sides speak, as far as the
    /// peer's latest datagram said ([`VERSION_UNHEARD`] until then; `to` 0: our own).
    pub fn version_for(&self, to: NodeId) -> u8 {
        if to == 0 {
            return self.max_version;
        }
        let peer = self
            .peer_versions
            .get(&to)
            .copied()
            .unwrap_or(VERSION_UNHEARD);
        peer.min(self.max_version)
    }

    /// The newest version each peer heard from says it speaks.
    pub fn peer_versions(&self) -> &BTreeMap<NodeId, u8> {
        &self.peer_versions
    }

    /// Replaces the key ring (config reload). Replay windows are kept: a new key must not
    /// make old datagrams acceptable again.
    pub fn set_keys(&mut self, keys: Keyring) {
        self.keys = keys;
    }

    /// The current key ring.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's cluster id.
    pub fn cluster(&self) -> ClusterId {
        self.cluster
    }

    /// This node's boot epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many senders this codec keeps a replay window for (at most [`MAX_SENDERS`]).
    pub fn tracked_senders(&self) -> usize {
        self.windows.len()
    }

    /// The counter the next encoded datagram will carry.
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Encodes `msg` for node `to` (0: any member) into a new buffer.
    pub fn encode(&mut self, to: NodeId, msg: &Message) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_DATAGRAM + body_len(msg.body.kind(), VERSION_MAX));
        self.encode_into(to, msg, &mut out);
        out
    }

    /// Encodes `msg` for node `to` (0: any member), replacing the contents of `out`, so a
    /// sender can reuse one buffer. Each call uses up one counter value, whether or not
    /// the datagram is then sent.
    ///
    /// A [`crate::message::Ballot`] whose `granted` disagrees with its reason, or a
    /// [`crate::message::Transfer`] from node 0, is a bug of the caller that receivers
    /// reject as malformed (a transfer from 0 with term and seq 0 would even read as "no
    /// transfer"). Debug builds assert instead of sending it.
    pub fn encode_into(&mut self, to: NodeId, msg: &Message, out: &mut Vec<u8>) {
        debug_assert!(well_formed(msg), "encoding an invalid message: {msg:?}");
        let kind = msg.body.kind();
        let version = self.version_for(to);
        let extra = if self.max_version >= 2 {
            body::SPEAKS_2
        } else {
            0
        };
        let counter = self.next_counter;
        // 2^64 datagrams never happen; saturating keeps encode total without wrapping
        // to counters peers have already seen.
        self.next_counter = self.next_counter.saturating_add(1);

        out.clear();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[version, kind as u8]);
        out.extend_from_slice(&self.cluster.0.to_be_bytes());
        out.extend_from_slice(&self.me.to_be_bytes());
        out.extend_from_slice(&to.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&msg.term.to_be_bytes());
        // Every body is at most 22 bytes, so the length always fits.
        let len = u16::try_from(body_len(kind, version)).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        let all = if self.all_speak_2 {
            body::ALL_SPEAK_2
        } else {
            0
        };
        body::encode(&msg.body, version, extra, all, out);

        let mut mac = self.keys.signing().mac();
        mac.update(out);
        out.extend_from_slice(&mac.finalize().into_bytes());
    }

    /// Checks and parses one datagram. The checks run in the order of docs/protocol.md:
    /// the cheap ones first, the MAC before anything inside the body is trusted, and the
    /// replay window last, so that only authentic, well-formed datagrams move it.
    pub fn decode(&mut self, datagram: &[u8]) -> Result<Received, DecodeError> {
        let header = self.check_header(datagram)?;
        let signed_len = HEADER_LEN + header.body_len;
        let (signed, tag) =
            datagram
                .split_at_checked(signed_len)
                .ok_or(DecodeError::Truncated {
                    len: datagram.len(),
                    need: signed_len + MAC_LEN,
                })?;
        self.verify_mac(signed, tag)?;
        let (body, wire) = body::decode(
            header.kind,
            header.version,
            signed.get(HEADER_LEN..).unwrap_or_default(),
        )?;
        check_range(&header)?;
        self.check_fresh(header.from, header.epoch, header.counter)?;
        let speaks = if wire.speaks_2 {
            header.version.max(2)
        } else {
            header.version
        };
        // Only authentic, fresh datagrams move what we speak to the sender.
        self.peer_versions.insert(header.from, speaks);
        Ok(Received {
            from: header.from,
            to: header.to,
            epoch: header.epoch,
            counter: header.counter,
            version: header.version,
            all_speak_2: wire.all_speak_2,
            speaks,
            msg: Message {
                term: header.term,
                body,
            },
        })
    }

    /// Size, magic, version, kind, cluster, recipient, sender and length checks.
    fn check_header(&self, datagram: &[u8]) -> Result<Header, DecodeError> {
        let len = datagram.len();
        if len < MIN_DATAGRAM {
            return Err(DecodeError::Truncated {
                len,
                need: MIN_DATAGRAM,
            });
        }
        if len > MAX_DATAGRAM {
            return Err(DecodeError::Oversized { len });
        }
        let mut r = Reader { bytes: datagram };
        let magic = [r.u8(), r.u8()];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { got: magic });
        }
        let version = r.u8();
        if !(VERSION_MIN..=self.max_version).contains(&version) {
            return Err(DecodeError::UnsupportedVersion {
                got: version,
                max: self.max_version,
            });
        }
        let code = r.u8();
        let kind = MessageKind::from_u8(code).ok_or(DecodeError::UnknownKind { code })?;
        let cluster = ClusterId(r.u64());
        if cluster != self.cluster {
            return Err(DecodeError::WrongCluster {
                got: cluster,
                ours: self.cluster,
            });
        }
        let from = r.u32();
        let to = r.u32();
        if to != 0 && to != self.me {
            return Err(DecodeError::WrongRecipient { to });
        }
        if from == 0 {
            return Err(DecodeError::ZeroSender);
        }
        if from == self.me {
            return Err(DecodeError::FromSelf);
        }
        let epoch = r.u64();
        let counter = r.u64();
        let term = r.u64();
        let body_len = usize::from(r.u16());
        let need = MIN_DATAGRAM + body_len;
        if len < need {
            return Err(DecodeError::Truncated { len, need });
        }
        if len > need {
            return Err(DecodeError::LengthMismatch {
                len,
                expected: need,
            });
        }
        Ok(Header {
            version,
            kind,
            from,
            to,
            epoch,
            counter,
            term,
            body_len,
        })
    }

    /// Accepts the datagram if any key of the ring produced `tag`. `verify_slice` compares
    /// in constant time, so timing does not reveal how much of a forged tag was right.
    fn verify_mac(&self, signed: &[u8], tag: &[u8]) -> Result<(), DecodeError> {
        let ok = self.keys.verifying().any(|key| {
            let mut mac = key.mac();
            mac.update(signed);
            mac.verify_slice(tag).is_ok()
        });
        if ok { Ok(()) } else { Err(DecodeError::BadMac) }
    }

    /// Runs the sender's replay window and records the datagram when it is fresh.
    fn check_fresh(&mut self, from: NodeId, epoch: u64, counter: u64) -> Result<(), DecodeError> {
        let known = self.windows.get(&from).copied();
        if known.is_none() && self.windows.len() >= MAX_SENDERS {
            return Err(DecodeError::TooManySenders { from });
        }
        let mut window = known.unwrap_or_else(|| Window::new(epoch));
        match window.accept(epoch, counter) {
            Verdict::Fresh => {
                self.windows.insert(from, window);
                Ok(())
            }
            Verdict::Replayed => Err(DecodeError::Replayed { from, counter }),
            Verdict::Stale => Err(DecodeError::Stale {
                from,
                epoch,
                counter,
            }),
        }
    }
}

/// Term and epoch bounds, checked after the MAC (only a key holder gets this far) and
/// before the replay window, so an out-of-range datagram never moves it.
fn check_range(h: &Header) -> Result<(), DecodeError> {
    use crate::message::{MAX_EPOCH, MAX_TERM};
    for (field, value, max) in [("term", h.term, MAX_TERM), ("epoch", h.epoch, MAX_EPOCH)] {
        if value > max {
            return Err(DecodeError::OutOfRange {
                from: h.from,
                field,
                value,
                max,
            });
        }
    }
    Ok(())
}

/// The invariants the message types cannot express but the wire format requires.
fn well_formed(msg: &Message) -> bool {
    use crate::message::{Body, VoteReason};
    match &msg.body {
        Body::PreVote(b) | Body::Vote(b) => b.granted == (b.reason == VoteReason::Granted),
        Body::VoteRequest(v) => v.transfer.is_none_or(|t| t.from != 0),
        _ => true,
    }
}
