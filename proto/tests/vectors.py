#!/usr/bin/env python3
"""Writes proto/tests/vectors.txt: the apivip wire protocol test vectors (versions 1 and 2).

This is a second implementation of docs/protocol.md, written from the document alone
with Python's standard library, so the vectors do not merely echo the Rust encoder:
`cargo test -p apivip-proto --test wire` checks the Rust codec against its output.

Usage: python3 proto/tests/vectors.py > proto/tests/vectors.txt
"""

import hashlib
import hmac
import struct

KINDS = {
    "heartbeat": 1, "ack": 2, "pre_vote_request": 3, "pre_vote": 4,
    "vote_request": 5, "vote": 6, "timeout_now": 7, "resign": 8,
}
REASONS = {
    "granted": 0, "stale_term": 1, "already_voted": 2, "promise_active": 3,
    "lease_active": 4, "silent": 5, "not_member": 6, "releasing": 7,
}

KEY_A = "apivip-test-vector-key-A-0123456789abcdef"
KEY_B = "Zm9yIHRlc3RzIG9ubHk6IG5ldmVyIGRlcGxveSBtZQ=="

# The largest term and epoch a datagram may carry (docs/protocol.md, "Bounds").
MAX_TERM = 2 ** 48
MAX_EPOCH = 2 ** 53

# The flag bit "the sender speaks protocol 2", on every flags byte such a sender writes,
# whatever the datagram's version (docs/protocol.md, "Versioning").
SPEAKS_2 = 0x80
FLAGGED = {"heartbeat", "ack", "pre_vote_request", "vote_request"}

# name, key, cluster, from, to, epoch, counter, term, kind, body fields (in wire order).
# These come from a sender that speaks protocol 1 only (version 1, no flag); V2_VECTORS
# below add the version and the sender's newest version.
VECTORS = [
    ("heartbeat-to-all", KEY_A, "prod-eu1", 1, 0, 1700000000000, 1, 7, "heartbeat",
     [("seq", 42), ("flags", 0x03), ("priority", 100), ("members_hash", 0xDEADBEEF)]),
    ("ack-accepted", KEY_A, "prod-eu1", 2, 1, 1700000000500, 3, 7, "ack",
     [("seq", 42), ("accepted", 1), ("flags", 0x05), ("priority", 50),
      ("members_hash", 0xDEADBEEF)]),
    ("pre-vote-request-witness", KEY_B, "bäckerei-κ8s", 3, 0, 1, 1, MAX_TERM,
     "pre_vote_request", [("priority", 0), ("flags", 0x00)]),
    ("pre-vote-refused", KEY_B, "bäckerei-κ8s", 4294967295, 3, MAX_EPOCH, 2, 9,
     "pre_vote", [("granted", 0), ("reason", "promise_active")]),
    ("vote-request-transfer", KEY_A, "prod-eu1", 2, 0, 1700000000500, 5, 8, "vote_request",
     [("priority", 200), ("flags", 0x01), ("transfer_from", 1), ("transfer_term", 7),
      ("transfer_last_seq", 1234)]),
    ("vote-request-plain", KEY_A, "prod-eu1", 3, 0, 1700000001000, 1, 9, "vote_request",
     [("priority", 255), ("flags", 0x7F), ("transfer_from", 0), ("transfer_term", 0),
      ("transfer_last_seq", 0)]),
    ("vote-granted", KEY_A, "prod-eu1", 1, 3, 1700000000000, 4, 9, "vote",
     [("granted", 1), ("reason", "granted")]),
    ("timeout-now", KEY_A, "prod-eu1", 1, 2, 1700000000000, 2, 7, "timeout_now",
     [("last_seq", 1234)]),
    ("resign", KEY_B, "lab", 7, 0, 2, 1, 1, "resign", [("last_seq", 0xFFFFFFFFFFFFFFFF)]),
]

# (version, speaks, the fields above): protocol 2, and protocol 1 from a sender that
# speaks 2 (the flag tells its peer it may switch).
V2_VECTORS = [
    (2, 2, ("heartbeat-v2", KEY_A, "prod-eu1", 1, 2, 1700000000000, 1, 7, "heartbeat",
            [("seq", 42), ("flags", 0x03), ("priority", 100), ("members_hash", 0xDEADBEEF)])),
    (2, 2, ("ack-v2-promise", KEY_A, "prod-eu1", 2, 1, 1700000000500, 3, 7, "ack",
            [("seq", 42), ("accepted", 1), ("flags", 0x05), ("priority", 50),
             ("members_hash", 0xDEADBEEF), ("promise_ms", 297)])),
    (2, 2, ("vote-v2", KEY_A, "prod-eu1", 1, 3, 1700000000000, 4, 9, "vote",
            [("granted", 1), ("reason", "granted")])),
    (1, 2, ("pre-vote-request-v1-from-v2", KEY_B, "lab", 3, 4, 5, 1, 11,
            "pre_vote_request", [("priority", 100), ("flags", 0x05)])),
]

# Body field widths in bytes, from docs/protocol.md.
WIDTHS = {
    "seq": 8, "flags": 1, "priority": 1, "members_hash": 4, "accepted": 1, "granted": 1,
    "reason": 1, "transfer_from": 4, "transfer_term": 8, "transfer_last_seq": 8,
    "last_seq": 8, "promise_ms": 4,
}


def cluster_id(name):
    return hashlib.sha256(b"apivip-cluster-v1\0" + name.encode()).digest()[:8]


def be(value, width):
    return value.to_bytes(width, "big")


def field_value(name, value):
    return REASONS[value] if name == "reason" else value


def wire_value(kind, speaks, name, value):
    """The value as sent: a sender that speaks 2 sets SPEAKS_2 on its flags."""
    v = field_value(name, value)
    if name == "flags" and kind in FLAGGED and speaks >= 2:
        v |= SPEAKS_2
    return v


def build(v, version=1, speaks=1):
    """Returns [(bytes, comment)] for one vector: every field, then the MAC."""
    name, key, cluster, frm, to, epoch, counter, term, kind, body = v
    body_bytes = b"".join(be(wire_value(kind, speaks, f, x), WIDTHS[f]) for f, x in body)
    parts = [
        (b"AV", "magic"),
        (be(version, 1), f"version {version}"),
        (be(KINDS[kind], 1), f"type: {kind}"),
        (cluster_id(cluster), f"cluster id of {cluster!r}"),
        (be(frm, 4), f"from {frm}"),
        (be(to, 4), f"to {to}"),
        (be(epoch, 8), f"epoch {epoch}"),
        (be(counter, 8), f"counter {counter}"),
        (be(term, 8), f"term {term}"),
        (struct.pack(">H", len(body_bytes)), f"body length {len(body_bytes)}"),
    ]
    for f, x in body:
        w = wire_value(kind, speaks, f, x)
        shown = x if isinstance(x, str) else hexed(f, w)
        note = " (speaks 2)" if w != field_value(f, x) else ""
        parts.append((be(w, WIDTHS[f]), f"{f} {shown}{note}"))
    signed = b"".join(p for p, _ in parts)
    tag = hmac.new(key.encode(), signed, hashlib.sha256).digest()
    parts.append((tag[:16], "HMAC-SHA256"))
    parts.append((tag[16:], ""))
    return parts


def hexed(field, x):
    """Bit fields and hashes read best in hex, counts in decimal."""
    if field == "flags":
        return f"{x:#04x}"
    if field == "members_hash":
        return f"{x:#010x}"
    return str(x)


def message_text(kind, body):
    def show(f, x):
        if isinstance(x, str):
            return x
        return hexed(f, x)
    return " ".join([kind] + [f"{f}={show(f, x)}" for f, x in body])


def main():
    print("# apivip wire protocol test vectors, written by proto/tests/vectors.py from")
    print("# docs/protocol.md. Do not edit by hand: change the script and rerun it.")
    print("# Record fields are `name = value`; indented lines continue `bytes`, and '#'")
    print("# starts a comment. `counter` is the sender codec's n-th datagram.")
    all_vectors = [(1, 1, v) for v in VECTORS] + V2_VECTORS
    for version, speaks, v in all_vectors:
        name, key, cluster, frm, to, epoch, counter, term, kind, body = v
        print()
        print(f"vector  = {name}")
        print(f"version = {version}")
        print(f"speaks  = {speaks}")
        print(f"key     = {key}")
        print(f"cluster = {cluster}")
        print(f"from    = {frm}")
        print(f"to      = {to}")
        print(f"epoch   = {epoch}")
        print(f"counter = {counter}")
        print(f"term    = {term}")
        print(f"message = {message_text(kind, body)}")
        print("bytes   =")
        for chunk, comment in build(v, version, speaks):
            hexed = chunk.hex()
            print((f"    {hexed:<34}" + (f"# {comment}" if comment else "")).rstrip())


if __name__ == "__main__":
    main()
