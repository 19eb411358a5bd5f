//! The messages peers exchange, as the state machine sees them (already authenticated).
//!
//! [`crate::wire`] turns these into bytes and back; the byte layout is in docs/protocol.md.

/// A node's identity inside one cluster. `0` is reserved on the wire for "any node".
pub type NodeId = u32;

/// An election term. Terms only grow; every message carries its sender's current term.
pub type Term = u64;

/// The largest term any node uses or accepts. Terms grow by one per election round, so a
/// real cluster stays far below it (one election per millisecond for 8,900 years); the
/// bound exists so that `term + 1` can never wrap, whatever a state file or an
/// authenticated datagram says.
pub const MAX_TERM: Term = 1 << 48;

/// How far ahead of its own term a node follows another. A pre-vote lets a node raise its
/// term only with a majority behind it, so live members are never more than a few terms
/// apart; a term a million ahead comes from a corrupted state file or a bug, and adopting
/// it would drag the whole cluster toward [`MAX_TERM`], where nobody can campaign.
pub const MAX_TERM_LEAP: Term = 1 << 20;

/// The largest boot epoch a datagram or state file may carry. Epochs are Unix
/// milliseconds (about 2^41 today); the bound keeps `epoch + 1` from wrapping, which would
/// make every peer reject the node's datagrams as stale forever.
pub const MAX_EPOCH: u64 = 1 << 53;

/// A node's preference to hold the VIP: higher wins. `0` means "never lead" (a voter-only
/// witness, e.g. the third node that gives a two-node control plane a quorum).
pub type Priority = u8;

/// One message, with the sender's term. The sender and receiver ids travel in the wire
/// header, next to the term, and are handed to the state machine beside the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub term: Term,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Leader → followers, every heartbeat interval.
    Heartbeat(Heartbeat),
    /// Follower → leader: the answer to one heartbeat (accepted or refused).
    Ack(Ack),
    /// Would-be candidate → members: "would you vote for me in `term`?" (nothing changes).
    PreVoteRequest(Candidacy),
    /// Member → would-be candidate.
    PreVote(Ballot),
    /// Candidate → members, after its pre-vote won: `term` is the new term.
    VoteRequest(VoteRequest),
    /// Member → candidate.
    Vote(Ballot),
    /// Leader that has released the VIP → the follower it hands over to: campaign now.
    TimeoutNow(TimeoutNow),
    /// Leader that has released the VIP and hands over to nobody (no eligible follower):
    /// followers may drop their promise to it at once.
    Resign(Resign),
}

/// Bit flags carried by heartbeats and acks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(pub u8);

impl Flags {
    /// The sender's local apiserver is healthy.
    pub const HEALTHY: u8 = 0x01;
    /// Heartbeat: the leader has the VIP installed in its kernel.
    pub const HOLDS_VIP: u8 = 0x02;
    /// Ack: the sender could take over now (healthy, priority > 0, past its start-up
    /// silence, and a member of its own list). Leaders only pick such followers for
    /// handovers.
    pub const CAN_LEAD: u8 = 0x04;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    pub fn with(self, bit: u8, on: bool) -> Flags {
        if on {
            Flags(self.0 | bit)
        } else {
            Flags(self.0 & !bit)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Per-term sequence number, from 1; acks name it back.
    pub seq: u64,
    pub flags: Flags,
    pub priority: Priority,
    /// Hash of the sender's member list, so `status` can show nodes whose lists differ.
    pub members_hash: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    /// `false`: the heartbeat was refused (the message's term says why, when it is newer).
    pub accepted: bool,
    pub flags: Flags,
    pub priority: Priority,
    pub members_hash: u32,
    /// How long, in real time, the acker promises not to vote for anyone else: its own
    /// E_min(1 − rho). The leader's lease from this ack is bounded by it, so a follower
    /// already running a faster timing than the leader (a rolling change) is never
    /// outlived. Protocol 2; `None` from a protocol-1 acker (the leader then assumes its
    /// own timing, which is why timing changes wait until every node speaks 2).
    pub promise: Option<std::time::Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidacy {
    pub priority: Priority,
    pub flags: Flags,
}

/// A (pre-)vote answer, with the reason so operators can see why an election stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ballot {
    pub granted: bool,
    pub reason: VoteReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum VoteReason {
    Granted = 0,
    /// The candidate's term is not newer than the voter's.
    StaleTerm = 1,
    /// The voter already voted for another node in that term.
    AlreadyVoted = 2,
    /// The voter acknowledged a leader recently and its promise has not expired.
    PromiseActive = 3,
    /// The voter is a leader whose lease is still valid.
    LeaseActive = 4,
    /// The voter restarted less than one maximum election timeout ago.
    Silent = 5,
    /// The candidate is not in the voter's member list.
    NotMember = 6,
    /// The voter is still removing the VIP from its kernel.
    Releasing = 7,
}

impl VoteReason {
    pub fn from_u8(v: u8) -> Option<VoteReason> {
        Some(match v {
            0 => VoteReason::Granted,
            1 => VoteReason::StaleTerm,
            2 => VoteReason::AlreadyVoted,
            3 => VoteReason::PromiseActive,
            4 => VoteReason::LeaseActive,
            5 => VoteReason::Silent,
            6 => VoteReason::NotMember,
            7 => VoteReason::Releasing,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VoteReason::Granted => "granted",
            VoteReason::StaleTerm => "stale term",
            VoteReason::AlreadyVoted => "already voted",
            VoteReason::PromiseActive => "promised to a live leader",
            VoteReason::LeaseActive => "voter holds a valid lease",
            VoteReason::Silent => "voter restarted recently",
            VoteReason::NotMember => "candidate not a member",
            VoteReason::Releasing => "voter still releasing the VIP",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    pub priority: Priority,
    pub flags: Flags,
    /// Set when the campaign follows a TimeoutNow: voters whose promise is to exactly this
    /// leader and term may ignore that promise.
    pub transfer: Option<Transfer>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub from: NodeId,
    pub term: Term,
    /// The last heartbeat seq the old leader sent in `term`.
    pub last_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    pub last_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resign {
    pub last_seq: u64,
}

impl Body {
    /// The wire type code (docs/protocol.md).
    pub fn kind(&self) -> MessageKind {
        match self {
            Body::Heartbeat(_) => MessageKind::Heartbeat,
            Body::Ack(_) => MessageKind::Ack,
            Body::PreVoteRequest(_) => MessageKind::PreVoteRequest,
            Body::PreVote(_) => MessageKind::PreVote,
            Body::VoteRequest(_) => MessageKind::VoteRequest,
            Body::Vote(_) => MessageKind::Vote,
            Body::TimeoutNow(_) => MessageKind::TimeoutNow,
            Body::Resign(_) => MessageKind::Resign,
        }
    }
}

/// Message type codes, as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    Heartbeat = 1,
    Ack = 2,
    PreVoteRequest = 3,
    PreVote = 4,
    VoteRequest = 5,
    Vote = 6,
    TimeoutNow = 7,
    Resign = 8,
}

impl MessageKind {
    pub const ALL: [MessageKind; 8] = [
        MessageKind::Heartbeat,
        MessageKind::Ack,
        MessageKind::PreVoteRequest,
        MessageKind::PreVote,
        MessageKind::VoteRequest,
        MessageKind::Vote,
        MessageKind::TimeoutNow,
        MessageKind::Resign,
    ];

    pub fn from_u8(v: u8) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| *k as u8 == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Ack => "ack",
            MessageKind::PreVoteRequest => "pre_vote_request",
            MessageKind::PreVote => "pre_vote",
            MessageKind::VoteRequest => "vote_request",
            MessageKind::Vote => "vote",
            MessageKind::TimeoutNow => "timeout_now",
            MessageKind::Resign => "resign",
        }
    }
}
