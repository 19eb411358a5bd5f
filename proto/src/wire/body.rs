//! Message bodies: one fixed layout per message kind (docs/protocol.md, "Bodies").

use crate::message::{
    Ack, Ballot, Body, Candidacy, Flags, Heartbeat, MessageKind, Resign, TimeoutNow, Transfer,
    VoteReason, VoteRequest,
};

use super::DecodeError;

/// The body length of each kind in `version`. Bodies are fixed-size so a receiver can
/// tell a truncated or padded body from a valid one without trusting any field inside
/// it. Version 2 adds the acker's promise (4 bytes) to the ack.
pub const fn body_len(kind: MessageKind, version: u8) -> usize {
    match kind {
        MessageKind::Heartbeat => 14,
        MessageKind::Ack if version >= 2 => 19,
        MessageKind::Ack => 15,
        MessageKind::PreVoteRequest | MessageKind::PreVote | MessageKind::Vote => 2,
        MessageKind::VoteRequest => 22,
        MessageKind::TimeoutNow | MessageKind::Resign => 8,
    }
}

/// The wire's flag bit "the sender speaks protocol 2", set on every flags byte a node that
/// speaks 2 sends, whatever the datagram's version: a protocol-1 datagram can carry it
/// (version-1 receivers ignore unknown flag bits), which is how two upgraded nodes that
/// still talk version 1 to each other find out. Receivers strip it before the election
/// sees the flags.
pub const SPEAKS_2: u8 = 0x80;

/// On a heartbeat: the leader has heard every member of its list say [`SPEAKS_2`].
/// Followers hear only their leader, so this is how they learn that a timing change is
/// safe to accept. Stripped like [`SPEAKS_2`].
pub const ALL_SPEAK_2: u8 = 0x40;

/// The wire-only flag bits a receiver found, before the election saw the flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireFlags {
    pub speaks_2: bool,
    pub all_speak_2: bool,
}

/// The promise field: whole milliseconds, rounded down (a shorter promise is the safe
/// side), saturating.
fn promise_ms(p: Option<std::time::Duration>) -> u32 {
    p.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
}

/// Appends the body of `body` to `out` in `version`, with `extra` flag bits (and
/// `heartbeat_extra` besides on a heartbeat).
pub(super) fn encode(body: &Body, version: u8, extra: u8, heartbeat_extra: u8, out: &mut Vec<u8>) {
    match body {
        Body::Heartbeat(h) => {
            out.extend_from_slice(&h.seq.to_be_bytes());
            out.extend_from_slice(&[h.flags.0 | extra | heartbeat_extra, h.priority]);
            out.extend_from_slice(&h.members_hash.to_be_bytes());
        }
        Body::Ack(a) => {
            out.extend_from_slice(&a.seq.to_be_bytes());
            out.extend_from_slice(&[u8::from(a.accepted), a.flags.0 | extra, a.priority]);
            out.extend_from_slice(&a.members_hash.to_be_bytes());
            if version >= 2 {
                out.extend_from_slice(&promise_ms(a.promise).to_be_bytes());
            }
        }
        Body::PreVoteRequest(c) => out.extend_from_slice(&[c.priority, c.flags.0 | extra]),
        Body::PreVote(b) | Body::Vote(b) => {
            out.extend_from_slice(&[u8::from(b.granted), b.reason as u8]);
        }
        Body::VoteRequest(v) => {
            out.extend_from_slice(&[v.priority, v.flags.0 | extra]);
            let t = v.transfer.unwrap_or(Transfer {
                from: 0,
                term: 0,
                last_seq: 0,
            });
            out.extend_from_slice(&t.from.to_be_bytes());
            out.extend_from_slice(&t.term.to_be_bytes());
            out.extend_from_slice(&t.last_seq.to_be_bytes());
        }
        Body::TimeoutNow(t) => out.extend_from_slice(&t.last_seq.to_be_bytes()),
        Body::Resign(r) => out.extend_from_slice(&r.last_seq.to_be_bytes()),
    }
}

/// Parses the body of a `kind` message in `version`. `bytes` is exactly the body the
/// header declared. Also returns the wire-only flag bits it found (and stripped).
pub(super) fn decode(
    kind: MessageKind,
    version: u8,
    bytes: &[u8],
) -> Result<(Body, WireFlags), DecodeError> {
    let malformed = |what| DecodeError::Malformed { kind, what };
    if bytes.len() != body_len(kind, version) {
        return Err(malformed("wrong body length for this message type"));
    }
    let mut r = Reader { bytes };
    let mut wire = WireFlags::default();
    let mut flags = |b: u8| {
        wire.speaks_2 |= b & SPEAKS_2 != 0;
        wire.all_speak_2 |= b & ALL_SPEAK_2 != 0 && kind == MessageKind::Heartbeat;
        let strip = if kind == MessageKind::Heartbeat {
            SPEAKS_2 | ALL_SPEAK_2
        } else {
            SPEAKS_2
        };
        Flags(b & !strip)
    };
    let mut body = match kind {
        MessageKind::Heartbeat => Body::Heartbeat(Heartbeat {
            seq: r.u64(),
            flags: flags(r.u8()),
            priority: r.u8(),
            members_hash: r.u32(),
        }),
        MessageKind::Ack => Body::Ack(Ack {
            seq: r.u64(),
            accepted: bool_field(r.u8()).ok_or_else(|| malformed("accepted is not 0 or 1"))?,
            flags: flags(r.u8()),
            priority: r.u8(),
            members_hash: r.u32(),
            promise: (version >= 2).then(|| std::time::Duration::from_millis(u64::from(r.u32()))),
        }),
        MessageKind::PreVoteRequest => Body::PreVoteRequest(Candidacy {
            priority: r.u8(),
            flags: flags(r.u8()),
        }),
        MessageKind::PreVote => Body::PreVote(ballot(&mut r).map_err(malformed)?),
        MessageKind::Vote => Body::Vote(ballot(&mut r).map_err(malformed)?),
        MessageKind::VoteRequest => Body::VoteRequest(vote_request(&mut r).map_err(malformed)?),
        MessageKind::TimeoutNow => Body::TimeoutNow(TimeoutNow { last_seq: r.u64() }),
        MessageKind::Resign => Body::Resign(Resign { last_seq: r.u64() }),
    };
    if let Body::VoteRequest(v) = &mut body {
        v.flags = flags(v.flags.0);
    }
    Ok((body, wire))
}

fn bool_field(v: u8) -> Option<bool> {
    match v {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn ballot(r: &mut Reader<'_>) -> Result<Ballot, &'static str> {
    let granted = bool_field(r.u8()).ok_or("granted is not 0 or 1")?;
    let reason = VoteReason::from_u8(r.u8()).ok_or("unknown vote reason")?;
    // A ballot that says "granted" with a refusal reason (or the reverse) has no single
    // meaning; refusing it keeps every node's reading of a vote the same.
    if granted != (reason == VoteReason::Granted) {
        return Err("granted disagrees with the vote reason");
    }
    Ok(Ballot { granted, reason })
}

fn vote_request(r: &mut Reader<'_>) -> Result<VoteRequest, &'static str> {
    let priority = r.u8();
    let flags = Flags(r.u8());
    let from = r.u32();
    let term = r.u64();
    let last_seq = r.u64();
    let transfer = if from == 0 {
        // One encoding per meaning: "no transfer" is all zeros, so no two datagrams
        // differ only in ignored bytes.
        if term != 0 || last_seq != 0 {
            return Err("transfer term or seq set without a transfer sender");
        }
        None
    } else {
        Some(Transfer {
            from,
            term,
            last_seq,
        })
    };
    Ok(VoteRequest {
        priority,
        flags,
        transfer,
    })
}

/// Big-endian reads from a slice whose length the caller has already checked against the
/// layout. A read past the end yields zeros instead of panicking; it cannot happen while
/// [`body_len`] matches the layouts above, which the round-trip tests pin.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some((head, rest)) = self.bytes.split_at_checked(N) {
            out.copy_from_slice(head);
            self.bytes = rest;
        } else {
            self.bytes = &[];
        }
        out
    }

    pub(super) fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }

    pub(super) fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }

    pub(super) fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
}
