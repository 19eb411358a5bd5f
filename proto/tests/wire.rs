//! The wire codec against docs/protocol.md: round trips, the checked-in test vectors (and
//! their copy in the docs), one test per rejection, replay and epoch rules, key rotation,
//! and deterministic fuzzing.

use std::collections::HashMap;

use apivip_proto::message::{
    Ack, Ballot, Body, Candidacy, Flags, Heartbeat, MAX_EPOCH, MAX_TERM, Message, MessageKind,
    NodeId, Resign, TimeoutNow, Transfer, VoteReason, VoteRequest,
};
use apivip_proto::wire::{
    ALL_SPEAK_2, ClusterId, Codec, DecodeError, HEADER_LEN, KeyError, Keyring, MAC_LEN,
    MAX_DATAGRAM, MAX_KEYS, MAX_SENDERS, REPLAY_WINDOW, SPEAKS_2, VERSION_MAX, body_len,
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";
const OTHER_KEY: &[u8] = b"fedcba9876543210fedcba9876543210-other-key";
const CLUSTER: &str = "test-cluster";
const EPOCH: u64 = 1_700_000_000_000;

fn keys(key: &[u8]) -> Keyring {
    Keyring::single(key).expect("test key is long enough")
}

fn codec(me: NodeId, epoch: u64) -> Codec {
    Codec::new(ClusterId::from_name(CLUSTER), me, epoch, keys(KEY))
}

fn heartbeat(seq: u64) -> Message {
    Message {
        term: 3,
        body: Body::Heartbeat(Heartbeat {
            seq,
            flags: Flags(Flags::HEALTHY),
            priority: 100,
            members_hash: 0xabcd_ef01,
        }),
    }
}

/// One message of every kind, with values at the edges of each field.
fn edge_messages() -> Vec<Message> {
    let mut out = Vec::new();
    for term in [0, 1, MAX_TERM] {
        for n in [0u64, 1, u64::MAX] {
            let small = (n % 256) as u8;
            let small = if n == u64::MAX { u8::MAX } else { small };
            let word = if n == u64::MAX { u32::MAX } else { n as u32 };
            let bodies = [
                Body::Heartbeat(Heartbeat {
                    seq: n,
                    flags: Flags(small),
                    priority: small,
                    members_hash: word,
                }),
                Body::Ack(Ack {
                    seq: n,
                    accepted: n != 0,
                    flags: Flags(small),
                    priority: small,
                    members_hash: word,
                    promise: Some(std::time::Duration::from_millis(u64::from(word))),
                }),
                Body::PreVoteRequest(Candidacy {
                    priority: small,
                    flags: Flags(small),
                }),
                Body::VoteRequest(VoteRequest {
                    priority: small,
                    flags: Flags(small),
                    transfer: (n != 0).then_some(Transfer {
                        from: word,
                        term: n,
                        last_seq: n,
                    }),
                }),
                Body::TimeoutNow(TimeoutNow { last_seq: n }),
                Body::Resign(Resign { last_seq: n }),
            ];
            out.extend(bodies.into_iter().map(|body| Message { term, body }));
        }
        for reason in (0..=u8::MAX).filter_map(VoteReason::from_u8) {
            let ballot = Ballot {
                granted: reason == VoteReason::Granted,
                reason,
            };
            out.push(Message {
                term,
                body: Body::PreVote(ballot),
            });
            out.push(Message {
                term,
                body: Body::Vote(ballot),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Round trips

#[test]
fn round_trip_every_kind_with_edge_values() {
    let messages = edge_messages();
    let kinds: std::collections::HashSet<_> = messages.iter().map(|m| m.body.kind()).collect();
    assert_eq!(kinds.len(), MessageKind::ALL.len(), "every kind is covered");

    let mut sender = codec(u32::MAX, MAX_EPOCH);
    let mut receiver = codec(1, 5);
    for (i, msg) in messages.iter().enumerate() {
        // To any member (version 2), and to node 1, not heard yet (version 1).
        let to = if i % 2 == 0 { 0 } else { 1 };
        let version = if to == 0 { VERSION_MAX } else { 1 };
        let bytes = sender.encode(to, msg);
        assert_eq!(
            bytes.len(),
            HEADER_LEN + body_len(msg.body.kind(), version) + MAC_LEN
        );
        assert!(bytes.len() <= MAX_DATAGRAM);
        let got = receiver.decode(&bytes).expect("valid datagram decodes");
        assert_eq!(got.version, version);
        // A version-1 datagram says the sender speaks 2 only through a flags byte.
        let flagged = matches!(
            msg.body,
            Body::Heartbeat(_) | Body::Ack(_) | Body::PreVoteRequest(_) | Body::VoteRequest(_)
        );
        let speaks = if version >= 2 || flagged {
            VERSION_MAX
        } else {
            1
        };
        assert_eq!(got.speaks, speaks);
        assert_eq!(got.msg, as_received(msg, version));
        assert_eq!((got.from, got.to), (u32::MAX, to));
        assert_eq!(got.epoch, MAX_EPOCH);
        assert_eq!(
            got.counter,
            i as u64 + 1,
            "one counter per datagram, from 1"
        );
    }
}

#[test]
fn counter_is_per_sender_across_recipients_and_encode_into_reuses_buffers() {
    let mut sender = codec(1, EPOCH);
    let mut two = codec(2, 9);
    let mut three = codec(3, 9);
    let mut buf = vec![0xee; 300];
    let capacity_before = buf.capacity();
    assert_eq!(sender.next_counter(), 1);

    sender.encode_into(2, &heartbeat(1), &mut buf);
    assert_eq!(two.decode(&buf).map(|r| r.counter), Ok(1));
    sender.encode_into(3, &heartbeat(1), &mut buf);
    assert_eq!(three.decode(&buf).map(|r| r.counter), Ok(2));
    sender.encode_into(0, &heartbeat(2), &mut buf);
    assert_eq!(two.decode(&buf).map(|r| r.counter), Ok(3));
    assert_eq!(three.decode(&buf).map(|r| r.counter), Ok(3));

    assert_eq!(buf.capacity(), capacity_before, "no reallocation");
    assert_eq!(buf, {
        let mut again = codec(1, EPOCH);
        for _ in 0..2 {
            again.encode(0, &heartbeat(0));
        }
        again.encode(0, &heartbeat(2))
    });
    assert_eq!(sender.next_counter(), 4);
}

/// What a receiver gets for `msg` sent in `version` by a sender that speaks 2: the
/// SPEAKS_2 bit stripped from the flags, an ack's promise present only in version 2
/// (in whole milliseconds).
fn as_received(msg: &Message, version: u8) -> Message {
    let strip = |f: Flags| Flags(f.0 & !SPEAKS_2);
    let body = match msg.body.clone() {
        Body::Heartbeat(h) => Body::Heartbeat(Heartbeat {
            flags: Flags(h.flags.0 & !(SPEAKS_2 | ALL_SPEAK_2)),
            ..h
        }),
        Body::Ack(a) => Body::Ack(Ack {
            flags: strip(a.flags),
            promise: (version >= 2).then(|| {
                std::time::Duration::from_millis(
                    a.promise
                        .map_or(0, |p| p.as_millis().min(u128::from(u32::MAX)) as u64),
                )
            }),
            ..a
        }),
        Body::PreVoteRequest(c) => Body::PreVoteRequest(Candidacy {
            flags: strip(c.flags),
            ..c
        }),
        Body::VoteRequest(v) => Body::VoteRequest(VoteRequest {
            flags: strip(v.flags),
            ..v
        }),
        other => other,
    };
    Message {
        term: msg.term,
        body,
    }
}

#[test]
fn unknown_flag_bits_are_kept_and_ignored() {
    let mut sender = codec(1, EPOCH);
    let mut receiver = codec(2, EPOCH);
    let msg = Message {
        term: 1,
        body: Body::Heartbeat(Heartbeat {
            seq: 1,
            flags: Flags(0x30 | Flags::HOLDS_VIP),
            priority: 1,
            members_hash: 0,
        }),
    };
    let got = receiver.decode(&sender.encode(0, &msg)).expect("decodes");
    let Body::Heartbeat(h) = got.msg.body else {
        panic!("not a heartbeat: {got:?}")
    };
    assert!(h.flags.has(Flags::HOLDS_VIP));
    assert!(!h.flags.has(Flags::HEALTHY));
    assert_eq!(
        h.flags.0,
        0x30 | Flags::HOLDS_VIP,
        "SPEAKS_2 is the wire's, not the election's"
    );
}

#[test]
fn cluster_id_is_the_first_8_bytes_of_the_domain_separated_hash() {
    let digest = Sha256::digest(b"apivip-cluster-v1\0prod-eu1");
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    assert_eq!(
        ClusterId::from_name("prod-eu1").0,
        u64::from_be_bytes(first)
    );
    assert_eq!(
        ClusterId::from_name("prod-eu1").to_string(),
        "67a52faa497cd5a2"
    );
    assert_ne!(
        ClusterId::from_name("prod-eu1"),
        ClusterId::from_name("prod-eu2")
    );
}

// ---------------------------------------------------------------------------------------
// Test vectors (proto/tests/vectors.txt, written by proto/tests/vectors.py)

const VECTORS: &str = include_str!("vectors.txt");
const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

#[derive(Debug, Clone, PartialEq, Eq)]
struct Vector {
    name: String,
    /// The datagram's version, and the newest the sender speaks.
    version: u8,
    speaks: u8,
    key: String,
    cluster: String,
    from: NodeId,
    to: NodeId,
    epoch: u64,
    counter: u64,
    term: u64,
    message: String,
    bytes: Vec<u8>,
}

fn strip_comment(line: &str) -> &str {
    line.split_once('#').map_or(line, |(before, _)| before)
}

fn parse_hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits: {digits}"
    );
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn parse_num<T: TryFrom<u64>>(text: &str) -> T {
    let text = text.trim();
    let value = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .unwrap_or_else(|e| panic!("bad number {text:?}: {e}"));
    T::try_from(value).unwrap_or_else(|_| panic!("{text} out of range"))
}

/// Parses the vector format: `field = value` lines, indented continuation lines for
/// `bytes`, `#` comments (except inside `key` and `cluster`, whose values are taken
/// whole), records starting at `vector = NAME`.
fn parse_vectors(text: &str) -> Vec<Vector> {
    let mut records: Vec<HashMap<String, String>> = Vec::new();
    let mut last_field = String::new();
    for raw in text.lines() {
        if raw.starts_with(char::is_whitespace) && !raw.trim().is_empty() {
            let record = records.last_mut().expect("continuation inside a record");
            let value = record.get_mut(&last_field).expect("field to continue");
            value.push(' ');
            value.push_str(strip_comment(raw).trim());
            continue;
        }
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        let (field, value) = raw.split_once('=').expect("`field = value` line");
        let field = field.trim().to_string();
        let value = match field.as_str() {
            "key" | "cluster" => value.trim(),
            _ => strip_comment(value).trim(),
        };
        if field == "vector" {
            records.push(HashMap::new());
        }
        let record = records.last_mut().expect("a record starts with `vector =`");
        record.insert(field.clone(), value.to_string());
        last_field = field;
    }
    records
        .into_iter()
        .map(|r| {
            let get = |f: &str| r.get(f).unwrap_or_else(|| panic!("missing {f}")).clone();
            Vector {
                name: get("vector"),
                version: parse_num(&get("version")),
                speaks: parse_num(&get("speaks")),
                key: get("key"),
                cluster: get("cluster"),
                from: parse_num(&get("from")),
                to: parse_num(&get("to")),
                epoch: parse_num(&get("epoch")),
                counter: parse_num(&get("counter")),
                term: parse_num(&get("term")),
                message: get("message"),
                bytes: parse_hex(&get("bytes")),
            }
        })
        .collect()
}

fn vote_reason(name: &str) -> VoteReason {
    let code = match name {
        "granted" => 0,
        "stale_term" => 1,
        "already_voted" => 2,
        "promise_active" => 3,
        "lease_active" => 4,
        "silent" => 5,
        "not_member" => 6,
        "releasing" => 7,
        other => panic!("unknown reason {other}"),
    };
    VoteReason::from_u8(code).expect("known reason")
}

/// Parses a vector's `message` line, e.g. `heartbeat seq=42 flags=0x03 ...`.
fn parse_message(text: &str, term: u64) -> Message {
    let mut words = text.split_whitespace();
    let kind = words.next().expect("message kind");
    let fields: HashMap<&str, &str> = words
        .map(|w| w.split_once('=').expect("field=value"))
        .collect();
    let num = |f: &str| -> u64 { parse_num(fields.get(f).unwrap_or_else(|| panic!("no {f}"))) };
    let byte = |f: &str| -> u8 { u8::try_from(num(f)).expect("u8 field") };
    let ballot = || Ballot {
        granted: num("granted") == 1,
        reason: vote_reason(fields["reason"]),
    };
    let body = match kind {
        "heartbeat" => Body::Heartbeat(Heartbeat {
            seq: num("seq"),
            flags: Flags(byte("flags")),
            priority: byte("priority"),
            members_hash: u32::try_from(num("members_hash")).expect("u32"),
        }),
        "ack" => Body::Ack(Ack {
            seq: num("seq"),
            accepted: num("accepted") == 1,
            flags: Flags(byte("flags")),
            priority: byte("priority"),
            members_hash: u32::try_from(num("members_hash")).expect("u32"),
            promise: fields
                .get("promise_ms")
                .map(|v| std::time::Duration::from_millis(parse_num(v))),
        }),
        "pre_vote_request" => Body::PreVoteRequest(Candidacy {
            priority: byte("priority"),
            flags: Flags(byte("flags")),
        }),
        "pre_vote" => Body::PreVote(ballot()),
        "vote" => Body::Vote(ballot()),
        "vote_request" => {
            let from = u32::try_from(num("transfer_from")).expect("u32");
            Body::VoteRequest(VoteRequest {
                priority: byte("priority"),
                flags: Flags(byte("flags")),
                transfer: (from != 0).then(|| Transfer {
                    from,
                    term: num("transfer_term"),
                    last_seq: num("transfer_last_seq"),
                }),
            })
        }
        "timeout_now" => Body::TimeoutNow(TimeoutNow {
            last_seq: num("last_seq"),
        }),
        "resign" => Body::Resign(Resign {
            last_seq: num("last_seq"),
        }),
        other => panic!("unknown kind {other}"),
    };
    assert_eq!(body.kind().as_str(), kind);
    Message { term, body }
}

/// A receiver that accepts `v`: addressed to it, or any node other than the sender.
fn receiver_for(v: &Vector) -> Codec {
    let me = match v.to {
        0 if v.from == 1000 => 1001,
        0 => 1000,
        to => to,
    };
    Codec::new(
        ClusterId::from_name(&v.cluster),
        me,
        0,
        keys(v.key.as_bytes()),
    )
}

fn vectors() -> Vec<Vector> {
    let all = parse_vectors(VECTORS);
    assert!(all.len() >= 8, "vectors.txt holds {} vectors", all.len());
    all
}

#[test]
fn vectors_cover_every_kind() {
    let kinds: std::collections::HashSet<_> = vectors()
        .iter()
        .map(|v| parse_message(&v.message, v.term).body.kind())
        .collect();
    assert_eq!(kinds.len(), MessageKind::ALL.len());
}

#[test]
fn encode_produces_the_vector_bytes() {
    for v in vectors() {
        let msg = parse_message(&v.message, v.term);
        let mut sender = Codec::new(
            ClusterId::from_name(&v.cluster),
            v.from,
            v.epoch,
            keys(v.key.as_bytes()),
        );
        sender.set_max_version(v.speaks);
        if v.version >= 2 && v.to != 0 {
            teach(&mut sender, v.to, &v.cluster, v.key.as_bytes());
        }
        for _ in 1..v.counter {
            sender.encode(v.to, &msg);
        }
        let bytes = sender.encode(v.to, &msg);
        assert_eq!(
            hex(&bytes),
            hex(&v.bytes),
            "vector {}: encoder output differs",
            v.name
        );
    }
}

/// Lets `codec` hear from `peer` that it speaks version 2 (a datagram of its).
fn teach(codec: &mut Codec, peer: NodeId, cluster: &str, key: &[u8]) {
    let mut p = Codec::new(ClusterId::from_name(cluster), peer, 1, keys(key));
    let bytes = p.encode(codec.me(), &heartbeat(1));
    codec
        .decode(&bytes)
        .expect("the teacher's datagram decodes");
    assert_eq!(codec.version_for(peer), 2);
}

#[test]
fn decode_gives_back_the_vector_fields() {
    for v in vectors() {
        let got = receiver_for(&v)
            .decode(&v.bytes)
            .unwrap_or_else(|e| panic!("vector {}: {e}", v.name));
        assert_eq!(got.from, v.from, "{}", v.name);
        assert_eq!(got.to, v.to, "{}", v.name);
        assert_eq!(got.epoch, v.epoch, "{}", v.name);
        assert_eq!(got.counter, v.counter, "{}", v.name);
        assert_eq!(
            (got.version, got.speaks),
            (v.version, v.speaks),
            "{}",
            v.name
        );
        assert_eq!(got.msg, parse_message(&v.message, v.term), "{}", v.name);
    }
}

/// The block after the `<!-- test-vectors -->` marker in docs/protocol.md.
fn docs_vector_block() -> &'static str {
    let (_, after) = PROTOCOL_MD
        .split_once("<!-- test-vectors -->")
        .expect("docs/protocol.md has a <!-- test-vectors --> marker");
    let (_, fenced) = after
        .split_once("```text\n")
        .expect("a ```text block follows");
    let (block, _) = fenced.split_once("\n```").expect("the block is closed");
    block
}

#[test]
fn docs_vectors_match_the_vectors_file() {
    let in_docs = parse_vectors(docs_vector_block());
    assert!(in_docs.len() >= 2, "docs show {} vectors", in_docs.len());
    let in_file = vectors();
    for v in &in_docs {
        let same = in_file.iter().find(|f| f.name == v.name);
        assert_eq!(
            same,
            Some(v),
            "vector {} in docs/protocol.md differs from proto/tests/vectors.txt",
            v.name
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Hand-built datagrams, signed independently of the codec, for the rejection tests

/// Every header field of a datagram, so a test can break exactly one.
#[derive(Clone)]
struct Raw {
    magic: [u8; 2],
    version: u8,
    kind: u8,
    cluster: u64,
    from: u32,
    to: u32,
    epoch: u64,
    counter: u64,
    term: u64,
    declared_len: Option<u16>,
    body: Vec<u8>,
}

impl Raw {
    /// A valid heartbeat from node 1 to node 2 (what [`receiver`] accepts).
    fn heartbeat() -> Raw {
        let mut body = Vec::new();
        body.extend_from_slice(&7u64.to_be_bytes());
        body.extend_from_slice(&[Flags::HEALTHY, 100]);
        body.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        Raw {
            magic: *b"AV",
            version: 1,
            kind: 1,
            cluster: ClusterId::from_name(CLUSTER).0,
            from: 1,
            to: 2,
            epoch: EPOCH,
            counter: 1,
            term: 3,
            declared_len: None,
            body,
        }
    }

    fn with_body(kind: MessageKind, body: &[u8]) -> Raw {
        Raw {
            kind: kind as u8,
            body: body.to_vec(),
            ..Raw::heartbeat()
        }
    }

    fn unsigned(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&[self.version, self.kind]);
        out.extend_from_slice(&self.cluster.to_be_bytes());
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.to.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        let len = self
            .declared_len
            .unwrap_or(u16::try_from(self.body.len()).expect("short body"));
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn signed_with(&self, key: &[u8]) -> Vec<u8> {
        sign(self.unsigned(), key)
    }

    fn signed(&self) -> Vec<u8> {
        self.signed_with(KEY)
    }
}

/// Appends HMAC-SHA256(key, bytes), computed here rather than by the codec.
fn sign(mut bytes: Vec<u8>, key: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(&bytes);
    bytes.extend_from_slice(&mac.finalize().into_bytes());
    bytes
}

/// A term or epoch past its bound (u64::MAX in the reported failures) is refused after
/// the MAC and before the replay window: the window neither records the counter nor
/// jumps to the huge epoch, so the sender's next honest datagrams still pass.
#[test]
fn terms_and_epochs_beyond_their_bounds_are_refused_without_moving_the_window() {
    let mut rx = receiver();
    let mut tx = codec(1, EPOCH);
    for term in [MAX_TERM + 1, u64::MAX] {
        let bad = tx.encode(
            2,
            &Message {
                term,
                body: heartbeat(1).body,
            },
        );
        match rx.decode(&bad) {
            Err(e @ DecodeError::OutOfRange { field: "term", .. }) => {
                assert_eq!(e.reason(), "out_of_range");
                assert!(e.authenticated());
                assert!(e.to_string().contains(&term.to_string()), "{e}");
            }
            other => panic!("term {term}: {other:?}"),
        }
    }
    // Counter 1 and 2 went to the refused datagrams; a fresh sender's counter 1 passes.
    let mut again = codec(1, EPOCH);
    assert!(rx.decode(&again.encode(2, &heartbeat(1))).is_ok());
    // An epoch past its bound does not lift the window to it.
    let mut far = codec(1, MAX_EPOCH + 1);
    match rx.decode(&far.encode(2, &heartbeat(1))) {
        Err(DecodeError::OutOfRange { field: "epoch", .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(rx.decode(&again.encode(2, &heartbeat(2))).is_ok());
    // At the bounds themselves, all is well.
    let mut edge = codec(3, MAX_EPOCH);
    let msg = Message {
        term: MAX_TERM,
        body: heartbeat(1).body,
    };
    assert_eq!(
        rx.decode(&edge.encode(2, &msg)).expect("at the bound").msg,
        msg
    );
}

/// Node 2, which [`Raw::heartbeat`] is addressed to.
fn receiver() -> Codec {
    codec(2, 1)
}

fn decode(raw: &Raw) -> Result<apivip_proto::wire::Received, DecodeError> {
    receiver().decode(&raw.signed())
}

#[test]
fn the_hand_built_heartbeat_is_valid() {
    let got = decode(&Raw::heartbeat()).expect("valid");
    assert_eq!(got.from, 1);
    assert_eq!(got.msg.term, 3);
    assert_eq!(
        got.msg.body,
        Body::Heartbeat(Heartbeat {
            seq: 7,
            flags: Flags(Flags::HEALTHY),
            priority: 100,
            members_hash: 0x1234_5678,
        })
    );
}

// ---------------------------------------------------------------------------------------
// One test per DecodeError variant

#[test]
fn rejects_truncated_below_header_and_mac() {
    let full = Raw::heartbeat().signed();
    for len in [0, 1, 45, 46, 77] {
        assert_eq!(
            receiver().decode(&full[..len]),
            Err(DecodeError::Truncated { len, need: 78 })
        );
    }
}

#[test]
fn rejects_truncated_below_declared_body() {
    let full = Raw::heartbeat().signed();
    // A datagram cut after its body: the declared 14-byte body no longer fits.
    assert_eq!(
        receiver().decode(&full[..full.len() - 1]),
        Err(DecodeError::Truncated { len: 91, need: 92 })
    );
    let raw = Raw {
        declared_len: Some(200),
        ..Raw::heartbeat()
    };
    assert_eq!(
        decode(&raw),
        Err(DecodeError::Truncated { len: 92, need: 278 })
    );
}

#[test]
fn rejects_oversized() {
    let mut big = Raw::heartbeat().signed();
    big.resize(MAX_DATAGRAM, 0);
    assert_eq!(
        receiver().decode(&big),
        Err(DecodeError::LengthMismatch {
            len: 256,
            expected: 92
        }),
        "256 bytes is within the size limit"
    );
    big.push(0);
    assert_eq!(
        receiver().decode(&big),
        Err(DecodeError::Oversized { len: 257 })
    );
    assert_eq!(
        receiver().decode(&vec![0u8; 65_535]),
        Err(DecodeError::Oversized { len: 65_535 })
    );
}

#[test]
fn rejects_bad_magic() {
    let raw = Raw {
        magic: *b"VA",
        ..Raw::heartbeat()
    };
    assert_eq!(decode(&raw), Err(DecodeError::BadMagic { got: *b"VA" }));
}

#[test]
fn rejects_unsupported_version() {
    for got in [0, 3, 255] {
        let raw = Raw {
            version: got,
            ..Raw::heartbeat()
        };
        assert_eq!(
            decode(&raw),
            Err(DecodeError::UnsupportedVersion { got, max: 2 })
        );
    }
    // A node held to protocol 1 (the previous release's behaviour) refuses version 2.
    let mut old = receiver();
    old.set_max_version(1);
    let raw = Raw {
        version: 2,
        ..Raw::heartbeat()
    };
    assert_eq!(
        old.decode(&raw.signed()),
        Err(DecodeError::UnsupportedVersion { got: 2, max: 1 })
    );
}

#[test]
fn rejects_unknown_kind() {
    for code in [0, 9, 255] {
        let raw = Raw {
            kind: code,
            ..Raw::heartbeat()
        };
        assert_eq!(decode(&raw), Err(DecodeError::UnknownKind { code }));
    }
}

#[test]
fn rejects_wrong_cluster() {
    let other = ClusterId::from_name("another-cluster");
    let raw = Raw {
        cluster: other.0,
        ..Raw::heartbeat()
    };
    assert_eq!(
        decode(&raw),
        Err(DecodeError::WrongCluster {
            got: other,
            ours: ClusterId::from_name(CLUSTER)
        })
    );
}

#[test]
fn rejects_wrong_recipient() {
    let raw = Raw {
        to: 3,
        ..Raw::heartbeat()
    };
    assert_eq!(decode(&raw), Err(DecodeError::WrongRecipient { to: 3 }));
    let broadcast = Raw {
        to: 0,
        ..Raw::heartbeat()
    };
    assert!(decode(&broadcast).is_ok(), "0 addresses every member");
}

#[test]
fn rejects_datagrams_from_self() {
    let raw = Raw {
        from: 2,
        to: 0,
        ..Raw::heartbeat()
    };
    assert_eq!(decode(&raw), Err(DecodeError::FromSelf));
}

#[test]
fn rejects_sender_zero() {
    let raw = Raw {
        from: 0,
        ..Raw::heartbeat()
    };
    assert_eq!(decode(&raw), Err(DecodeError::ZeroSender));
}

#[test]
fn rejects_length_mismatch() {
    let mut padded = Raw::heartbeat().signed();
    padded.push(0);
    assert_eq!(
        receiver().decode(&padded),
        Err(DecodeError::LengthMismatch {
            len: 93,
            expected: 92
        })
    );
    // Declaring a shorter body than is present is the same fault seen from the header.
    let raw = Raw {
        declared_len: Some(13),
        ..Raw::heartbeat()
    };
    assert_eq!(
        decode(&raw),
        Err(DecodeError::LengthMismatch {
            len: 92,
            expected: 91
        })
    );
}

#[test]
fn rejects_bad_mac() {
    let raw = Raw::heartbeat();
    assert_eq!(
        receiver().decode(&raw.signed_with(OTHER_KEY)),
        Err(DecodeError::BadMac)
    );
    let mut tampered = raw.signed();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    assert_eq!(receiver().decode(&tampered), Err(DecodeError::BadMac));
    let mut zero_tag = raw.unsigned();
    zero_tag.extend_from_slice(&[0; MAC_LEN]);
    assert_eq!(receiver().decode(&zero_tag), Err(DecodeError::BadMac));
}

fn malformed(kind: MessageKind, body: &[u8]) -> Result<apivip_proto::wire::Received, DecodeError> {
    decode(&Raw::with_body(kind, body))
}

fn assert_malformed(kind: MessageKind, body: &[u8], what: &str) {
    match malformed(kind, body) {
        Err(DecodeError::Malformed { kind: k, what: w }) => {
            assert_eq!(k, kind);
            assert!(
                w.contains(what),
                "{kind:?} {body:02x?}: {w:?} lacks {what:?}"
            );
        }
        other => panic!("{kind:?} {body:02x?}: expected Malformed, got {other:?}"),
    }
}

#[test]
fn rejects_malformed_bodies() {
    use MessageKind::*;
    // Every kind, one byte short and one byte long: bodies are fixed-size.
    for kind in MessageKind::ALL {
        let len = body_len(kind, 1);
        assert_malformed(kind, &vec![0; len - 1], "body length");
        assert_malformed(kind, &vec![0; len + 1], "body length");
    }
    // Booleans other than 0 and 1.
    let mut ack = vec![0; 15];
    ack[8] = 2;
    assert_malformed(Ack, &ack, "accepted");
    assert_malformed(Vote, &[2, 0], "granted");
    assert_malformed(PreVote, &[0xff, 1], "granted");
    // Unknown vote reasons, and a granted flag that disagrees with the reason.
    assert_malformed(Vote, &[0, 8], "reason");
    assert_malformed(PreVote, &[0, 0xff], "reason");
    assert_malformed(Vote, &[1, VoteReason::StaleTerm as u8], "disagrees");
    assert_malformed(PreVote, &[0, VoteReason::Granted as u8], "disagrees");
    // A transfer term or seq without a transfer sender.
    let mut request = vec![0; 22];
    request[6..14].copy_from_slice(&5u64.to_be_bytes());
    assert_malformed(VoteRequest, &request, "transfer");
    let mut request = vec![0; 22];
    request[21] = 1;
    assert_malformed(VoteRequest, &request, "transfer");
    // ...and the valid forms of the same fields pass.
    assert!(malformed(Vote, &[1, 0]).is_ok());
    assert!(malformed(PreVote, &[0, VoteReason::Releasing as u8]).is_ok());
    assert!(malformed(VoteRequest, &[0; 22]).is_ok());
}

#[test]
fn rejects_replayed() {
    let bytes = Raw::heartbeat().signed();
    let mut rx = receiver();
    assert!(rx.decode(&bytes).is_ok());
    assert_eq!(
        rx.decode(&bytes),
        Err(DecodeError::Replayed {
            from: 1,
            counter: 1
        })
    );
}

#[test]
fn rejects_stale() {
    let mut rx = receiver();
    let at = |epoch, counter| {
        Raw {
            epoch,
            counter,
            ..Raw::heartbeat()
        }
        .signed()
    };
    assert!(rx.decode(&at(EPOCH, 100)).is_ok());
    assert_eq!(
        rx.decode(&at(EPOCH, 100 - REPLAY_WINDOW)),
        Err(DecodeError::Stale {
            from: 1,
            epoch: EPOCH,
            counter: 36
        })
    );
    assert_eq!(
        rx.decode(&at(EPOCH - 1, 500)),
        Err(DecodeError::Stale {
            from: 1,
            epoch: EPOCH - 1,
            counter: 500
        })
    );
    assert_eq!(
        rx.decode(&at(EPOCH, 0)),
        Err(DecodeError::Stale {
            from: 1,
            epoch: EPOCH,
            counter: 0
        }),
        "counters start at 1"
    );
    // Counter 0 is refused even as a sender's first datagram, and records nothing.
    let mut fresh = receiver();
    assert_eq!(
        fresh.decode(&at(EPOCH, 0)),
        Err(DecodeError::Stale {
            from: 1,
            epoch: EPOCH,
            counter: 0
        })
    );
    assert_eq!(fresh.tracked_senders(), 0);
}

#[test]
fn rejects_new_senders_beyond_the_limit() {
    let mut rx = codec(u32::MAX, 1);
    let from_id = |from| {
        Raw {
            from,
            to: 0,
            ..Raw::heartbeat()
        }
        .signed()
    };
    let limit = u32::try_from(MAX_SENDERS).expect("small");
    for from in 1..=limit {
        assert!(rx.decode(&from_id(from)).is_ok(), "sender {from}");
    }
    assert_eq!(rx.tracked_senders(), MAX_SENDERS);
    assert_eq!(
        rx.decode(&from_id(limit + 1)),
        Err(DecodeError::TooManySenders { from: limit + 1 })
    );
    assert_eq!(rx.tracked_senders(), MAX_SENDERS);
    // Senders already tracked keep working, and keep their windows.
    let mut next = Raw {
        from: 1,
        to: 0,
        counter: 2,
        ..Raw::heartbeat()
    };
    assert!(rx.decode(&next.signed()).is_ok());
    next.counter = 1;
    assert!(matches!(
        rx.decode(&next.signed()),
        Err(DecodeError::Replayed { .. })
    ));
}

#[test]
fn checks_run_in_the_documented_order() {
    let base = Raw::heartbeat();
    let err = |raw: Raw| decode(&raw).map(|_| ()).unwrap_err().reason();
    // Each case breaks two things; the earlier check must win.
    assert_eq!(
        err(Raw {
            magic: *b"XX",
            version: 9,
            ..base.clone()
        }),
        "bad_magic"
    );
    assert_eq!(
        err(Raw {
            version: 9,
            kind: 99,
            ..base.clone()
        }),
        "unsupported_version"
    );
    assert_eq!(
        err(Raw {
            kind: 99,
            cluster: 1,
            ..base.clone()
        }),
        "unknown_kind"
    );
    assert_eq!(
        err(Raw {
            cluster: 1,
            to: 9,
            ..base.clone()
        }),
        "wrong_cluster"
    );
    assert_eq!(
        err(Raw {
            to: 9,
            from: 0,
            ..base.clone()
        }),
        "wrong_recipient"
    );
    assert_eq!(
        err(Raw {
            from: 0,
            declared_len: Some(1),
            ..base.clone()
        }),
        "zero_sender"
    );
    assert_eq!(
        err(Raw {
            declared_len: Some(1),
            ..base.clone()
        }),
        "length_mismatch"
    );
    // The MAC is checked before the body is read...
    let bad_body = Raw::with_body(MessageKind::Vote, &[7, 7]);
    assert_eq!(
        receiver().decode(&bad_body.signed_with(OTHER_KEY)),
        Err(DecodeError::BadMac)
    );
    // ...and the body before the replay window.
    let mut rx = receiver();
    assert!(rx.decode(&base.signed()).is_ok());
    let replayed_and_malformed = Raw {
        kind: MessageKind::Vote as u8,
        body: vec![7, 7],
        ..base.clone()
    };
    assert_eq!(
        rx.decode(&replayed_and_malformed.signed())
            .map(|_| ())
            .unwrap_err()
            .reason(),
        "malformed"
    );
    // Size comes first of all.
    let mut long_garbage = vec![0xff; MAX_DATAGRAM + 1];
    long_garbage[..2].copy_from_slice(b"AV");
    assert_eq!(
        receiver().decode(&long_garbage),
        Err(DecodeError::Oversized { len: 257 })
    );
}

#[test]
fn reasons_are_distinct_stable_labels() {
    let ours = ClusterId(0);
    let every_variant = [
        DecodeError::Truncated { len: 0, need: 78 },
        DecodeError::Oversized { len: 300 },
        DecodeError::BadMagic { got: [0, 0] },
        DecodeError::UnsupportedVersion { got: 3, max: 2 },
        DecodeError::UnknownKind { code: 0 },
        DecodeError::WrongCluster { got: ours, ours },
        DecodeError::WrongRecipient { to: 3 },
        DecodeError::FromSelf,
        DecodeError::ZeroSender,
        DecodeError::LengthMismatch {
            len: 1,
            expected: 2,
        },
        DecodeError::BadMac,
        DecodeError::Malformed {
            kind: MessageKind::Ack,
            what: "x",
        },
        DecodeError::Replayed {
            from: 1,
            counter: 1,
        },
        DecodeError::Stale {
            from: 1,
            epoch: 1,
            counter: 1,
        },
        DecodeError::TooManySenders { from: 1 },
    ];
    let every_variant: Vec<DecodeError> = {
        // Out-of-range sits between malformed and replayed in the check order.
        let mut v = every_variant.to_vec();
        let at = v
            .iter()
            .position(|e| e.reason() == "replayed")
            .expect("replayed listed");
        v.insert(
            at,
            DecodeError::OutOfRange {
                from: 1,
                field: "term",
                value: u64::MAX,
                max: MAX_TERM,
            },
        );
        v
    };
    let labels: Vec<_> = every_variant.iter().map(DecodeError::reason).collect();
    assert_eq!(labels, DecodeError::REASONS);
    for label in labels {
        assert!(
            label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{label} is not snake_case"
        );
        assert!(
            PROTOCOL_MD.contains(&format!("`{label}`")),
            "docs/protocol.md does not list `{label}`"
        );
    }
    let authenticated: Vec<_> = every_variant
        .iter()
        .filter(|e| e.authenticated())
        .map(DecodeError::reason)
        .collect();
    assert_eq!(
        authenticated,
        [
            "malformed",
            "out_of_range",
            "replayed",
            "stale",
            "too_many_senders"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Replay window and epochs, through the public codec

#[test]
fn duplicate_is_replayed() {
    let mut tx = codec(1, EPOCH);
    let mut rx = codec(2, EPOCH);
    let first = tx.encode(2, &heartbeat(1));
    let second = tx.encode(2, &heartbeat(2));
    assert!(rx.decode(&first).is_ok());
    assert!(rx.decode(&second).is_ok());
    for bytes in [&first, &second] {
        assert!(matches!(
            rx.decode(bytes),
            Err(DecodeError::Replayed { from: 1, .. })
        ));
    }
}

#[test]
fn reordering_within_the_window_is_accepted_once() {
    let mut tx = codec(1, EPOCH);
    let mut rx = codec(2, EPOCH);
    let sent: Vec<_> = (1..=REPLAY_WINDOW)
        .map(|seq| tx.encode(0, &heartbeat(seq)))
        .collect();
    // Newest first, then everything older, down to the oldest the window still holds.
    let mut order: Vec<usize> = (0..sent.len()).rev().collect();
    order.rotate_left(1);
    for &i in &order {
        let got = rx.decode(&sent[i]).expect("reordered datagram accepted");
        assert_eq!(got.counter, i as u64 + 1);
    }
    for bytes in &sent {
        assert!(matches!(
            rx.decode(bytes),
            Err(DecodeError::Replayed { .. })
        ));
    }
}

#[test]
fn too_old_is_stale() {
    let mut tx = codec(1, EPOCH);
    let mut rx = codec(2, EPOCH);
    let oldest = tx.encode(0, &heartbeat(1));
    let mut last = Vec::new();
    for seq in 2..=REPLAY_WINDOW + 1 {
        last = tx.encode(0, &heartbeat(seq));
    }
    assert!(rx.decode(&last).is_ok());
    assert_eq!(
        rx.decode(&oldest),
        Err(DecodeError::Stale {
            from: 1,
            epoch: EPOCH,
            counter: 1
        })
    );
}

#[test]
fn restart_with_higher_epoch_is_accepted_and_old_epoch_is_then_stale() {
    let mut rx = codec(2, EPOCH);
    let mut before = codec(1, EPOCH);
    let old: Vec<_> = (1..=5).map(|s| before.encode(0, &heartbeat(s))).collect();
    assert!(rx.decode(&old[0]).is_ok());
    assert!(rx.decode(&old[1]).is_ok());

    // The sender restarts: counters begin again at 1, under a greater epoch.
    let mut after = codec(1, EPOCH + 1);
    let first = after.encode(0, &heartbeat(1));
    let got = rx.decode(&first).expect("restarted sender accepted");
    assert_eq!((got.epoch, got.counter), (EPOCH + 1, 1));

    // Neither the old life's datagrams seen nor those never seen are accepted any more.
    for (i, bytes) in old.iter().enumerate() {
        assert_eq!(
            rx.decode(bytes),
            Err(DecodeError::Stale {
                from: 1,
                epoch: EPOCH,
                counter: i as u64 + 1
            })
        );
    }
    assert!(rx.decode(&after.encode(0, &heartbeat(2))).is_ok());
}

#[test]
fn rejected_datagrams_do_not_move_the_window() {
    let mut rx = receiver();
    // A forged datagram far ahead must not push real ones below the window.
    let forged = Raw {
        counter: 1_000,
        epoch: EPOCH + 1,
        ..Raw::heartbeat()
    };
    assert_eq!(
        rx.decode(&forged.signed_with(OTHER_KEY)),
        Err(DecodeError::BadMac)
    );
    // An authentic but malformed one must not use up its counter.
    let bad = Raw {
        counter: 2,
        kind: MessageKind::Vote as u8,
        body: vec![1, 1],
        ..Raw::heartbeat()
    };
    assert!(matches!(
        rx.decode(&bad.signed()),
        Err(DecodeError::Malformed { .. })
    ));
    assert_eq!(rx.tracked_senders(), 0, "nothing recorded yet");
    assert!(rx.decode(&Raw::heartbeat().signed()).is_ok());
    let good = Raw {
        counter: 2,
        ..Raw::heartbeat()
    };
    assert!(rx.decode(&good.signed()).is_ok());
}

#[test]
fn senders_have_independent_windows() {
    let mut rx = codec(9, EPOCH);
    let mut a = codec(1, EPOCH);
    let mut b = codec(2, EPOCH);
    let from_a = a.encode(0, &heartbeat(1));
    let from_b = b.encode(0, &heartbeat(1));
    assert_eq!(rx.decode(&from_a).map(|r| r.counter), Ok(1));
    assert_eq!(rx.decode(&from_b).map(|r| r.counter), Ok(1));
    assert_eq!(rx.tracked_senders(), 2);
}

// ---------------------------------------------------------------------------------------
// Keys

const OLD: &str = "old-key-0123456789abcdef0123456789abcdef";
const NEW: &str = "new-key-0123456789abcdef0123456789abcdef";

fn ring(lines: &[&str]) -> Keyring {
    Keyring::parse(&lines.join("\n")).expect("valid key file")
}

fn node(me: NodeId, ring: Keyring) -> Codec {
    Codec::new(ClusterId::from_name(CLUSTER), me, EPOCH, ring)
}

#[test]
fn key_rotation_keeps_the_cluster_talking() {
    let mut a = node(1, ring(&[OLD]));
    let mut b = node(2, ring(&[OLD]));
    let signed_old = a.encode(0, &heartbeat(1));
    assert!(b.decode(&signed_old).is_ok());

    // Step 1, on every node: add the new key second. Everyone still signs with OLD.
    a.set_keys(ring(&[OLD, NEW]));
    b.set_keys(ring(&[OLD, NEW]));
    assert!(b.decode(&a.encode(0, &heartbeat(2))).is_ok());

    // Step 2: move NEW first, one node at a time. Mixed signers verify both ways.
    a.set_keys(ring(&[NEW, OLD]));
    let signed_new = a.encode(0, &heartbeat(3));
    assert!(b.decode(&signed_new).is_ok(), "B verifies NEW");
    let still_old = b.encode(0, &heartbeat(1));
    assert!(
        a.decode(&still_old).is_ok(),
        "A verifies OLD while it is in the ring"
    );

    // Step 3: remove OLD. A datagram still signed with it no longer verifies.
    b.set_keys(ring(&[NEW, OLD]));
    a.set_keys(ring(&[NEW]));
    let mut straggler = node(3, ring(&[OLD]));
    assert_eq!(
        a.decode(&straggler.encode(0, &heartbeat(1))),
        Err(DecodeError::BadMac)
    );
    assert!(a.decode(&b.encode(0, &heartbeat(2))).is_ok());
}

#[test]
fn new_keys_do_not_reopen_replay_windows() {
    let mut tx = node(1, ring(&[OLD]));
    let mut rx = node(2, ring(&[OLD]));
    let bytes = tx.encode(0, &heartbeat(1));
    assert!(rx.decode(&bytes).is_ok());
    rx.set_keys(ring(&[NEW, OLD]));
    assert!(matches!(
        rx.decode(&bytes),
        Err(DecodeError::Replayed { .. })
    ));
}

#[test]
fn key_file_skips_blank_lines_and_comments_and_trims() {
    let text = format!("# apivip keys\r\n\r\n   {NEW}  \r\n\t# retiring\n{OLD}\n\n");
    let parsed = Keyring::parse(&text).expect("valid");
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed, ring(&[NEW, OLD]));
    assert_eq!(parsed.fingerprint(), ring(&[NEW]).fingerprint());
    assert_eq!(parsed.fingerprints(), [fp(NEW), fp(OLD)]);
    // The key is the line's bytes: base64 text is not decoded.
    let b64 = "Zm9yIHRlc3RzIG9ubHk6IG5ldmVyIGRlcGxveSBtZQ==";
    assert_eq!(Keyring::parse(b64), Keyring::single(b64.as_bytes()));
}

/// Fingerprint as an operator computes it: `printf %s KEY | sha256sum | cut -c1-12`.
fn fp(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))[..12].to_string()
}

#[test]
fn fingerprint_is_a_short_sha256_prefix_of_the_signing_key() {
    assert_eq!(ring(&[OLD, NEW]).fingerprint(), fp(OLD));
    assert_eq!(fp(OLD).len(), 12);
    assert_ne!(fp(OLD), fp(NEW));
}

#[test]
fn key_file_errors_name_the_line_and_never_the_key() {
    let short = "tooshort-secret";
    let cases: [(String, KeyError); 5] = [
        (String::new(), KeyError::Empty),
        ("# only a comment\n\n   \n".into(), KeyError::Empty),
        (
            format!("{OLD}\n\n{short}\n"),
            KeyError::LineTooShort { line: 3, len: 15 },
        ),
        (
            format!("{OLD}\n# again:\n{OLD}\n"),
            KeyError::Duplicate { line: 3, first: 1 },
        ),
        (
            (0..=MAX_KEYS)
                .map(|i| format!("{OLD}{i}"))
                .collect::<Vec<_>>()
                .join("\n"),
            KeyError::TooMany { line: MAX_KEYS + 1 },
        ),
    ];
    for (text, want) in cases {
        let got = Keyring::parse(&text).expect_err("invalid key file");
        assert_eq!(got, want);
        let message = got.to_string();
        assert!(
            !message.contains(short) && !message.contains(OLD),
            "{message}"
        );
        if let KeyError::LineTooShort { line, .. } | KeyError::Duplicate { line, .. } = want {
            assert!(message.contains(&format!("line {line}")), "{message}");
        }
    }
    assert_eq!(
        Keyring::single(&[7; 31]),
        Err(KeyError::TooShort { len: 31 })
    );
    assert!(Keyring::single(&[7; 32]).is_ok());
}

#[test]
fn debug_output_never_shows_key_material() {
    let keyring = ring(&[OLD, NEW]);
    let codec = node(1, keyring.clone());
    for shown in [
        format!("{keyring:?}"),
        format!("{codec:?}"),
        format!("{codec:#?}"),
    ] {
        assert!(
            !shown.contains("old-key") && !shown.contains("new-key"),
            "{shown}"
        );
        assert!(shown.contains(&fp(OLD)), "fingerprints are shown: {shown}");
    }
}

// ---------------------------------------------------------------------------------------
// Robustness

/// SplitMix64: a tiny deterministic generator, so every run fuzzes the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Valid datagrams of every kind from several senders, for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for from in [1, 3, 7] {
        let mut tx = codec(from, EPOCH + u64::from(from));
        for msg in edge_messages() {
            out.push(tx.encode(if from == 3 { 2 } else { 0 }, &msg));
        }
    }
    out
}

/// Applies one of several mutations, each aimed at a different layer of the checks.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    match rng.below(6) {
        0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(d.len());
                d[i] = rng.byte();
            }
        }
        1 => d.truncate(rng.below(d.len())),
        2 => d.extend((0..=rng.below(200)).map(|_| rng.byte())),
        3 => {
            // Change header fields, then re-sign, so the MAC passes and the body parser
            // and replay window see the result.
            let mut unsigned = d[..d.len() - MAC_LEN].to_vec();
            for _ in 0..=rng.below(3) {
                let i = 20 + rng.below(unsigned.len() - 20);
                unsigned[i] = rng.byte();
            }
            d = sign(unsigned, KEY);
        }
        4 => {
            // Random body of a random declared length, re-signed.
            let mut unsigned = d[..HEADER_LEN].to_vec();
            let n = rng.below(40);
            unsigned[44..46].copy_from_slice(&u16::try_from(n).expect("small").to_be_bytes());
            unsigned.extend((0..n).map(|_| rng.byte()));
            if rng.below(2) == 0 {
                unsigned[3] = 1 + rng.byte() % 8;
            }
            d = sign(unsigned, KEY);
        }
        _ => {
            // A random sender, epoch and counter, re-signed: exercises the window map.
            let mut unsigned = d[..d.len() - MAC_LEN].to_vec();
            unsigned[12..16].copy_from_slice(&(rng.next() as u32 % 2000).to_be_bytes());
            unsigned[20..28].copy_from_slice(&(rng.next() % 4).to_be_bytes());
            unsigned[28..36].copy_from_slice(&(rng.next() % 200).to_be_bytes());
            d = sign(unsigned, KEY);
        }
    }
    d
}

#[test]
fn fuzzed_datagrams_never_panic() {
    let mut rng = Rng(0x5eed_ab1e);
    let seeds = seeds();
    let mut rx = codec(2, 1);
    let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
    let mut buf = Vec::with_capacity(512);

    // Pure noise: random lengths around the valid range, with a valid magic half the time.
    for _ in 0..1_500_000 {
        buf.clear();
        let len = rng.below(MAX_DATAGRAM + 64);
        buf.extend((0..len).map(|_| rng.byte()));
        if len >= 4 && rng.below(2) == 0 {
            buf[..3].copy_from_slice(b"AV\x01");
        }
        let result = rx.decode(&buf);
        *outcomes.entry(label(&result)).or_default() += 1;
    }
    // Mutations of valid datagrams.
    for _ in 0..500_000 {
        let seed = &seeds[rng.below(seeds.len())];
        let d = mutate(&mut rng, seed);
        let result = rx.decode(&d);
        if result.is_ok() {
            assert!(d.len() <= MAX_DATAGRAM);
        }
        *outcomes.entry(label(&result)).or_default() += 1;
    }
    assert!(rx.tracked_senders() <= MAX_SENDERS);
    eprintln!("fuzz outcomes: {outcomes:?}");

    // The fuzzer must have reached every layer, or it proves little.
    for reason in DecodeError::REASONS {
        // Out-of-range needs a valid MAC over a term or epoch past 2^48 / 2^53, which the
        // re-signing mutations almost never produce; its own test covers it.
        if !matches!(reason, "from_self" | "too_many_senders" | "out_of_range") {
            assert!(
                outcomes.contains_key(reason),
                "never hit {reason}: {outcomes:?}"
            );
        }
    }
    assert!(outcomes.contains_key("ok"), "{outcomes:?}");
}

fn label(result: &Result<apivip_proto::wire::Received, DecodeError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    let mut datagrams: Vec<(Codec, Vec<u8>)> = vectors()
        .into_iter()
        .map(|v| (receiver_for(&v), v.bytes))
        .collect();
    let mut tx = codec(1, EPOCH);
    for msg in edge_messages() {
        datagrams.push((receiver(), tx.encode(2, &msg)));
    }
    let mut flips = 0;
    for (rx, bytes) in &datagrams {
        assert!(
            rx.clone().decode(bytes).is_ok(),
            "unflipped datagram is valid"
        );
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // A fresh receiver each time: rejection must not depend on the replay window.
            let result = rx.clone().decode(&flipped);
            assert!(
                result.is_err(),
                "bit {bit} flipped was accepted: {result:?}"
            );
            flips += 1;
        }
    }
    assert!(flips > 50_000, "{flips} flips");
}

// ---------------------------------------------------------------------------------------
// Encoder invariants

/// A ballot whose `granted` disagrees with its reason is a state-machine bug; debug
/// builds (where the simulator runs) stop at the encoder instead of sending a datagram
/// every peer drops.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "encoding an invalid message")]
fn encoding_an_inconsistent_ballot_asserts_in_debug_builds() {
    let msg = Message {
        term: 1,
        body: Body::Vote(Ballot {
            granted: true,
            reason: VoteReason::AlreadyVoted,
        }),
    };
    codec(1, EPOCH).encode(2, &msg);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "encoding an invalid message")]
fn encoding_a_transfer_from_node_zero_asserts_in_debug_builds() {
    let msg = Message {
        term: 1,
        body: Body::VoteRequest(VoteRequest {
            priority: 1,
            flags: Flags::default(),
            transfer: Some(Transfer {
                from: 0,
                term: 1,
                last_seq: 1,
            }),
        }),
    };
    codec(1, EPOCH).encode(2, &msg);
}

/// Negotiation: a node speaks to each peer the newest version both speak, as that peer's
/// latest datagram said; version 1 to a peer not heard yet. Upgraded nodes find each
/// other through the SPEAKS_2 flag on version-1 datagrams, and a node downgraded to a
/// version-1-only release is spoken to in version 1 from its first datagram on.
#[test]
fn versions_follow_what_each_peer_speaks() {
    let mut a = codec(1, EPOCH);
    let mut b = codec(2, EPOCH);
    let ack = Message {
        term: 3,
        body: Body::Ack(Ack {
            seq: 1,
            accepted: true,
            flags: Flags(Flags::CAN_LEAD),
            priority: 100,
            members_hash: 0,
            promise: Some(std::time::Duration::from_millis(297)),
        }),
    };
    // Neither has heard the other: version 1, with the flag.
    assert_eq!(a.version_for(2), 1);
    let first = b.decode(&a.encode(2, &heartbeat(1))).expect("decodes");
    assert_eq!((first.version, first.speaks), (1, 2));
    // b now knows a speaks 2 and answers in 2, with its promise.
    assert_eq!(b.version_for(1), 2);
    let got = a.decode(&b.encode(1, &ack)).expect("decodes");
    assert_eq!(got.version, 2);
    assert_eq!(got.msg, ack);
    assert_eq!(a.version_for(2), 2);

    // b is replaced by a release that speaks only version 1 (a downgrade).
    let mut old = codec(2, EPOCH + 1);
    old.set_max_version(1);
    // It refuses what a still sends in version 2, as an old release would...
    assert!(matches!(
        old.decode(&a.encode(2, &heartbeat(2))),
        Err(DecodeError::UnsupportedVersion { got: 2, max: 1 })
    ));
    // ...until a hears from it: its datagrams carry no flag, and a drops to version 1.
    let from_old = a.decode(&old.encode(1, &ack)).expect("decodes");
    assert_eq!((from_old.version, from_old.speaks), (1, 1));
    let Body::Ack(seen) = from_old.msg.body else {
        panic!("not an ack")
    };
    assert_eq!(seen.promise, None, "a version-1 ack carries no promise");
    assert_eq!(a.version_for(2), 1);
    let back = old
        .decode(&a.encode(2, &heartbeat(3)))
        .expect("version 1 again");
    assert_eq!(back.version, 1);
}

/// A heartbeat says "every member speaks 2" only when the daemon set it and this codec
/// itself speaks 2: a node held to protocol 1 must never tell its peers to move on.
#[test]
fn all_speak_2_is_said_only_when_set_and_spoken() {
    let said = |max: u8, all: bool| {
        let mut s = codec(1, 1);
        s.set_max_version(max);
        s.set_all_speak_2(all);
        let bytes = s.encode(2, &heartbeat(1));
        codec(2, 1)
            .decode(&bytes)
            .expect("the heartbeat decodes")
            .all_speak_2
    };
    assert!(said(2, true));
    assert!(!said(2, false));
    assert!(
        !said(1, true),
        "a protocol-1 node said every member speaks 2"
    );
}

/// The daemon reports and logs the protocol it speaks from this accessor.
#[test]
fn max_version_reports_what_the_codec_speaks() {
    let mut c = codec(1, 1);
    assert_eq!(c.max_version(), 2);
    c.set_max_version(1);
    assert_eq!(c.max_version(), 1);
    c.set_max_version(9);
    assert_eq!(c.max_version(), 2, "clamped to what this build knows");
}

/// `apivip status` shows these: who this codec is, its boot epoch, and what each peer
/// said it speaks.
#[test]
fn accessors_report_identity_epoch_and_peer_versions() {
    let mut me = codec(7, 42);
    assert_eq!(me.me(), 7);
    assert_eq!(me.epoch(), 42);
    assert!(me.peer_versions().is_empty());
    let mut peer = codec(3, 5);
    peer.set_max_version(1);
    me.decode(&peer.encode(7, &heartbeat(1)))
        .expect("the peer's heartbeat decodes");
    let mut newer = codec(4, 5);
    me.decode(&newer.encode(7, &heartbeat(1)))
        .expect("the newer peer's heartbeat decodes");
    let seen: Vec<(NodeId, u8)> = me.peer_versions().iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(seen, vec![(3, 1), (4, 2)]);
}

/// A datagram of exactly header + MAC passes the size floor and is judged by the body
/// length its header states: the error names the length that was needed.
#[test]
fn a_datagram_at_the_size_floor_is_judged_by_its_stated_body() {
    let floor = HEADER_LEN + MAC_LEN;
    let mut bytes = codec(1, 1).encode(2, &heartbeat(1));
    assert!(bytes.len() > floor);
    let full = bytes.len();
    bytes.truncate(floor);
    assert_eq!(
        codec(2, 1).decode(&bytes).map(|r| r.from),
        Err(DecodeError::Truncated {
            len: floor,
            need: full
        })
    );
}

/// The wire's own flag bits (SPEAKS_2, and ALL_SPEAK_2 on heartbeats) are set on every
/// flags byte, not toggled: flags that already carry those bits (the election's flags
/// are a plain byte) still tell the receiver what the sender speaks.
#[test]
fn the_wires_flag_bits_are_set_whatever_the_flags_carry() {
    let all = Flags(0xFF);
    let bodies = [
        Body::Heartbeat(Heartbeat {
            seq: 1,
            flags: all,
            priority: 100,
            members_hash: 0,
        }),
        Body::Ack(Ack {
            seq: 1,
            accepted: true,
            flags: all,
            priority: 100,
            members_hash: 0,
            promise: None,
        }),
        Body::PreVoteRequest(Candidacy {
            priority: 100,
            flags: all,
        }),
        Body::VoteRequest(VoteRequest {
            priority: 100,
            flags: all,
            transfer: None,
        }),
    ];
    for body in bodies {
        let is_heartbeat = matches!(body, Body::Heartbeat(_));
        let mut sender = codec(1, EPOCH);
        sender.set_all_speak_2(true);
        let msg = Message { term: 1, body };
        let got = codec(2, EPOCH)
            .decode(&sender.encode(2, &msg))
            .expect("decodes");
        assert_eq!(got.speaks, 2, "{msg:?}");
        assert_eq!(got.all_speak_2, is_heartbeat, "{msg:?}");
    }
}

/// Keyrings are equal only when they hold the same keys in the same order: the order
/// matters, since the first key signs.
#[test]
fn keyrings_are_equal_only_with_the_same_keys_in_the_same_order() {
    let a = std::str::from_utf8(KEY).expect("ASCII test key");
    let b = std::str::from_utf8(OTHER_KEY).expect("ASCII test key");
    assert_eq!(ring(&[a, b]), ring(&[a, b]));
    assert_eq!(keys(KEY), ring(&[a]));
    assert_ne!(keys(KEY), keys(OTHER_KEY));
    assert_ne!(ring(&[a, b]), ring(&[b, a]));
    assert_ne!(ring(&[a]), ring(&[a, b]));
}

/// A key of exactly MIN_KEY_LEN bytes is long enough, one byte less is not, in a key
/// file and given directly alike; a ring that parsed is never empty.
#[test]
fn a_key_of_exactly_the_minimum_length_is_accepted() {
    use apivip_proto::wire::MIN_KEY_LEN;
    let just = "k".repeat(MIN_KEY_LEN);
    let short = "k".repeat(MIN_KEY_LEN - 1);
    let ring = Keyring::parse(&just).expect("a key of the minimum length");
    assert_eq!((ring.len(), ring.is_empty()), (1, false));
    assert_eq!(
        Keyring::parse(&format!("# rotation\n{short}")),
        Err(KeyError::LineTooShort {
            line: 2,
            len: MIN_KEY_LEN - 1
        })
    );
    assert!(Keyring::single(just.as_bytes()).is_ok());
    assert_eq!(
        Keyring::single(short.as_bytes()),
        Err(KeyError::TooShort {
            len: MIN_KEY_LEN - 1
        })
    );
}
