//! Message bodies: one fixed layout per message kind (docs/protocol.md, "Bodies").

use crate::message::{
    Ack, Ballot, Body, Candidacy, Flags, Heartbeat, MessageKind, Resign, TimeoutNow, Transfer,
    VoteReason, VoteRequest,
};

use super::DecodeError;

/// The body length of each kind. Bodies are fixed-size so a receiver can tell a truncated
/// or padded body from a valid one without trusting any field inside it.
pub const fn body_len(kind: MessageKind) -> usize {
    match kind {
        MessageKind::Heartbeat => 14,
        MessageKind::Ack => 15,
        MessageKind::PreVoteRequest | MessageKind::PreVote | MessageKind::Vote => 2,
        MessageKind::VoteRequest => 22,
        MessageKind::TimeoutNow | MessageKind::Resign => 8,
    }
}

/// Appends the body of `body` to `out`.
pub(super) fn encode(body: &Body, out: &mut Vec<u8>) {
    match body {
        Body::Heartbeat(h) => {
            out.extend_from_slice(&h.seq.to_be_bytes());
            out.extend_from_slice(&[h.flags.0, h.priority]);
            out.extend_from_slice(&h.members_hash.to_be_bytes());
        }
        Body::Ack(a) => {
            out.extend_from_slice(&a.seq.to_be_bytes());
            out.extend_from_slice(&[u8::from(a.accepted), a.flags.0, a.priority]);
            out.extend_from_slice(&a.members_hash.to_be_bytes());
        }
        Body::PreVoteRequest(c) => out.extend_from_slice(&[c.priority, c.flags.0]),
        Body::PreVote(b) | Body::Vote(b) => {
            out.extend_from_slice(&[u8::from(b.granted), b.reason as u8]);
        }
        Body::VoteRequest(v) => {
            out.extend_from_slice(&[v.priority, v.flags.0]);
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

/// Parses the body of a `kind` message. `bytes` is exactly the body the header declared.
pub(super) fn decode(kind: MessageKind, bytes: &[u8]) -> Result<Body, DecodeError> {
    let malformed = |what| DecodeError::Malformed { kind, what };
    if bytes.len() != body_len(kind) {
        return Err(malformed("wrong body length for this message type"));
    }
    let mut r = Reader { bytes };
    let body = match kind {
        MessageKind::Heartbeat => Body::Heartbeat(Heartbeat {
            seq: r.u64(),
            flags: Flags(r.u8()),
            priority: r.u8(),
            members_hash: r.u32(),
        }),
        MessageKind::Ack => Body::Ack(Ack {
            seq: r.u64(),
            accepted: bool_field(r.u8()).ok_or_else(|| malformed("accepted is not 0 or 1"))?,
            flags: Flags(r.u8()),
            priority: r.u8(),
            members_hash: r.u32(),
        }),
        MessageKind::PreVoteRequest => Body::PreVoteRequest(Candidacy {
            priority: r.u8(),
            flags: Flags(r.u8()),
        }),
        MessageKind::PreVote => Body::PreVote(ballot(&mut r).map_err(malformed)?),
        MessageKind::Vote => Body::Vote(ballot(&mut r).map_err(malformed)?),
        MessageKind::VoteRequest => Body::VoteRequest(vote_request(&mut r).map_err(malformed)?),
        MessageKind::TimeoutNow => Body::TimeoutNow(TimeoutNow { last_seq: r.u64() }),
        MessageKind::Resign => Body::Resign(Resign { last_seq: r.u64() }),
    };
    Ok(body)
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
