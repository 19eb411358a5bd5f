#!/usr/bin/env python3
"""Writes proto/tests/vectors.txt: the apivip wire protocol v1 test vectors.

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

# name, key, cluster, from, to, epoch, counter, term, kind, body fields (in wire order)
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
     [("priority", 255), ("flags", 0xFF), ("transfer_from", 0), ("transfer_term", 0),
      ("transfer_last_seq", 0)]),
    ("vote-granted", KEY_A, "prod-eu1", 1, 3, 1700000000000, 4, 9, "vote",
     [("granted", 1), ("reason", "granted")]),
    ("timeout-now", KEY_A, "prod-eu1", 1, 2, 1700000000000, 2, 7, "timeout_now",
     [("last_seq", 1234)]),
    ("resign", KEY_B, "lab", 7, 0, 2, 1, 1, "resign", [("last_seq", 0xFFFFFFFFFFFFFFFF)]),
]

# Body field widths in bytes, from docs/protocol.md.
WIDTHS = {
    "seq": 8, "flags": 1, "priority": 1, "members_hash": 4, "accepted": 1, "granted": 1,
    "reason": 1, "transfer_from": 4, "transfer_term": 8, "transfer_last_seq": 8,
    "last_seq": 8,
}


def cluster_id(name):
    return hashlib.sha256(b"apivip-cluster-v1\0" + name.encode()).digest()[:8]


def be(value, width):
    return value.to_bytes(width, "big")


def field_value(name, value):
    return REASONS[value] if name == "reason" else value


def build(v):
    """Returns [(bytes, comment)] for one vector: every field, then the MAC."""
    name, key, cluster, frm, to, epoch, counter, term, kind, body = v
    body_bytes = b"".join(be(field_value(f, x), WIDTHS[f]) for f, x in body)
    parts = [
        (b"AV", "magic"),
        (be(1, 1), "version 1"),
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
        shown = x if isinstance(x, str) else hexed(f, x)
        parts.append((be(field_value(f, x), WIDTHS[f]), f"{f} {shown}"))
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
    print("# apivip wire protocol v1 test vectors, written by proto/tests/vectors.py from")
    print("# docs/protocol.md. Do not edit by hand: change the script and rerun it.")
    print("# Record fields are `name = value`; indented lines continue `bytes`, and '#'")
    print("# starts a comment. `counter` is the sender codec's n-th datagram.")
    for v in VECTORS:
        name, key, cluster, frm, to, epoch, counter, term, kind, body = v
        print()
        print(f"vector  = {name}")
        print(f"key     = {key}")
        print(f"cluster = {cluster}")
        print(f"from    = {frm}")
        print(f"to      = {to}")
        print(f"epoch   = {epoch}")
        print(f"counter = {counter}")
        print(f"term    = {term}")
        print(f"message = {message_text(kind, body)}")
        print("bytes   =")
        for chunk, comment in build(v):
            hexed = chunk.hex()
            print((f"    {hexed:<34}" + (f"# {comment}" if comment else "")).rstrip())


if __name__ == "__main__":
    main()
