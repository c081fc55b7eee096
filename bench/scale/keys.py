"""Keyed-hash stand-ins for RSA identities, for simulations of 1,000 peers (making 1,000
RSA-2048 keys takes about a minute on one core). They keep what the protocol relies on: a record
opens only under the peer that sealed it, and a peer's unique signature of a message is one
fixed value nobody else can compute. Envelopes have RSA's sizes (key 294 B, signature 256 B), so
the bytes counted are the node's."""

from __future__ import annotations

import hashlib
import hmac
import os

from node.scatter.grid import KIND, author, pack, unpack
from protocol.errors import ProtocolError

KEY_BYTES, SIG_BYTES = 294, 256


class FastKeys:
    def __init__(self, peer: str, secret: bytes | None = None):
        self.peer, self.secret = peer, secret or os.urandom(32)

    def mac(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, hashlib.sha256).digest() * (SIG_BYTES // 32)

    def seal(self, record) -> dict:
        body = pack(record)
        kind = KIND[type(record)]
        return {
            "body": body,
            "key": self.peer.encode().ljust(KEY_BYTES, b"\0"),
            "sig": self.mac(kind.encode() + body),
            "kind": kind,
        }

    def unique(self, message: bytes) -> bytes:
        return self.mac(b"unique" + message)


class FastChecker:
    """Checks FastKeys envelopes: it holds every simulated peer's secret (the simulator's trust)."""

    def __init__(self, keys: dict[str, FastKeys]):
        self.keys = keys

    def open(self, envelope: object, cls: type, signer: str):
        kind = KIND[cls]
        if not isinstance(envelope, dict) or envelope.get("kind") != kind or signer not in self.keys:
            raise ProtocolError(f"{kind}: not an envelope of a known peer")
        body = envelope.get("body")
        if not isinstance(body, bytes) or not hmac.compare_digest(
            envelope.get("sig", b""), self.keys[signer].mac(kind.encode() + body)
        ):
            raise ProtocolError(f"{kind}: not signed by {signer[:16]}")
        record = unpack(body, cls)
        if author(record) != signer:
            raise ProtocolError(f"{kind}: signed by {signer[:16]} but written by {author(record)[:16]}")
        return record

    def unique_ok(self, sig: bytes, message: bytes, signer: str, envelope: dict) -> bool:
        return signer in self.keys and hmac.compare_digest(sig, self.keys[signer].unique(message))
