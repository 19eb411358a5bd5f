//! Why a datagram was rejected.

use crate::message::{MessageKind, NodeId};

use super::ClusterId;

/// Why [`super::Codec::decode`] rejected a datagram. Each variant is one check of
/// docs/protocol.md, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than header + MAC, or than the body length the header declares.
    #[error("truncated datagram: {len} bytes, need {need}")]
    Truncated {
        /// The datagram's length.
        len: usize,
        /// The length it needs to have.
        need: usize,
    },
    /// Longer than any valid datagram ([`super::MAX_DATAGRAM`] bytes).
    #[error("oversized datagram: {len} bytes, at most {max}", max = super::MAX_DATAGRAM)]
    Oversized {
        /// The datagram's length.
        len: usize,
    },
    /// Not an apivip datagram at all (another protocol on the same port).
    #[error("bad magic {got:02x?}, expected \"AV\" (not an apivip datagram)")]
    BadMagic {
        /// The first two bytes.
        got: [u8; 2],
    },
    /// An apivip datagram of a protocol version this node does not speak.
    #[error("unsupported protocol version {got}, this node speaks {min} to {max}", min = super::VERSION_MIN)]
    UnsupportedVersion {
        /// The version byte.
        got: u8,
        /// The newest version this node speaks.
        max: u8,
    },
    /// A message type code this version does not define.
    #[error("unknown message type {code}")]
    UnknownKind {
        /// The type byte.
        code: u8,
    },
    /// A datagram for another cluster (different cluster name).
    #[error("datagram for cluster {got}, this node is in cluster {ours}; check the cluster name")]
    WrongCluster {
        /// The cluster id in the datagram.
        got: ClusterId,
        /// This node's cluster id.
        ours: ClusterId,
    },
    /// Addressed to another node.
    #[error("datagram addressed to node {to}, not to this node")]
    WrongRecipient {
        /// The addressee in the datagram.
        to: NodeId,
    },
    /// The sender id is this node's own id: a looped-back datagram, or another node
    /// configured with the same id.
    #[error("datagram claims to come from this node's own id; is another node using the same id?")]
    FromSelf,
    /// Sender id 0, which is reserved for "any node".
    #[error("datagram from node id 0, which no node may use")]
    ZeroSender,
    /// Longer than header + MAC + the body length the header declares.
    #[error("datagram is {len} bytes but its header declares {expected}")]
    LengthMismatch {
        /// The datagram's length.
        len: usize,
        /// The length its header declares.
        expected: usize,
    },
    /// No key in the ring produced this MAC: a different key, or a forged or corrupted
    /// datagram.
    #[error("bad MAC: not signed with any of this node's keys")]
    BadMac,
    /// Authentic, but the body breaks the format.
    #[error("malformed {} body: {what}", kind.as_str())]
    Malformed {
        /// The message type from the header.
        kind: MessageKind,
        /// What is wrong with the body.
        what: &'static str,
    },
    /// Authentic, but already received (a duplicate or a replay).
    #[error("replayed datagram from node {from}: counter {counter} already seen")]
    Replayed {
        /// The sender.
        from: NodeId,
        /// The datagram's counter.
        counter: u64,
    },
    /// Authentic, but from an older epoch of the sender than one already seen, or with a
    /// counter below the replay window.
    #[error(
        "stale datagram from node {from}: epoch {epoch} counter {counter} is from an older \
         epoch than seen before or below the replay window"
    )]
    Stale {
        /// The sender.
        from: NodeId,
        /// The datagram's epoch.
        epoch: u64,
        /// The datagram's counter.
        counter: u64,
    },
    /// Authentic, but a term or epoch beyond what any node may use ([`crate::message::MAX_TERM`],
    /// [`crate::message::MAX_EPOCH`]): a corrupted state file on the sender, or a bug.
    /// Refused so that nothing downstream can wrap.
    #[error("datagram from node {from}: {field} {value} is beyond the largest allowed ({max})")]
    OutOfRange {
        /// The sender.
        from: NodeId,
        /// `term` or `epoch`.
        field: &'static str,
        /// The value it carried.
        value: u64,
        /// The bound.
        max: u64,
    },
    /// Authentic, but from a sender id beyond the number of senders a codec tracks. Only
    /// a key holder can cause it; new ids are refused rather than old ones forgotten, so
    /// that no sender's replay window is ever reopened.
    #[error("datagram from node {from}: already tracking {max} senders", max = super::MAX_SENDERS)]
    TooManySenders {
        /// The sender.
        from: NodeId,
    },
}

impl DecodeError {
    /// Every value [`DecodeError::reason`] can return, in check order, so a metrics
    /// registry can create each label up front.
    pub const REASONS: [&'static str; 16] = [
        "truncated",
        "oversized",
        "bad_magic",
        "unsupported_version",
        "unknown_kind",
        "wrong_cluster",
        "wrong_recipient",
        "from_self",
        "zero_sender",
        "length_mismatch",
        "bad_mac",
        "malformed",
        "out_of_range",
        "replayed",
        "stale",
        "too_many_senders",
    ];

    /// A short, stable snake_case label for metrics (it never carries values, so label
    /// cardinality stays fixed).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::BadMagic { .. } => "bad_magic",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::UnknownKind { .. } => "unknown_kind",
            DecodeError::WrongCluster { .. } => "wrong_cluster",
            DecodeError::WrongRecipient { .. } => "wrong_recipient",
            DecodeError::FromSelf => "from_self",
            DecodeError::ZeroSender => "zero_sender",
            DecodeError::LengthMismatch { .. } => "length_mismatch",
            DecodeError::BadMac => "bad_mac",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::Replayed { .. } => "replayed",
            DecodeError::Stale { .. } => "stale",
            DecodeError::TooManySenders { .. } => "too_many_senders",
        }
    }

    /// `true` when the datagram carried a valid MAC, so a key holder signed it (now, or
    /// long ago for a replay): the rejection points at a peer's bug, a restarted peer or
    /// a replay, not at noise or an outsider without the key. Worth logging louder.
    pub fn authenticated(&self) -> bool {
        matches!(
            self,
            DecodeError::Malformed { .. }
                | DecodeError::OutOfRange { .. }
                | DecodeError::Replayed { .. }
                | DecodeError::Stale { .. }
                | DecodeError::TooManySenders { .. }
        )
    }
}
