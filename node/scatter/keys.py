"""Signing for v3's records, behind a small interface: the node signs with its RSA identity
(protocol/signing.py); `bench scale` swaps in keyed hashes at N = 1,000, where 2,048-bit keys would
take minutes to make (the bench reports the RSA cost per peer apart).

Envelopes are protocol/signing.py's: {body, key, sig, kind}; a receipt's `draw` is the owner's
unique signature of its task (sign_unique: one valid signature per key and message)."""

from __future__ import annotations

from typing import Protocol

import msgpack

from protocol import signing
from protocol.errors import ProtocolError
from protocol.kinds.scatter import ChunkNote, Commitment, Receipt

Record = Commitment | Receipt | ChunkNote

KIND = {Commitment: "scatter-commitment", Receipt: "scatter-receipt", ChunkNote: "scatter-chunk"}
MAX_BODY = {Commitment: 1024 * 80, Receipt: 1024 * 16, ChunkNote: 1024}


class Keys(Protocol):
    peer: str

    def seal(self, record: Record) -> dict:
        """The signed envelope of a record this peer wrote."""

    def unique(self, message: bytes) -> bytes:
        """This peer's one signature of `message` (a receipt's draw)."""


class Checker(Protocol):
    def open(self, envelope: object, cls: type, signer: str) -> Record:
        """The record in `envelope`, written and signed by `signer`; raises ProtocolError."""

    def unique_ok(self, sig: bytes, message: bytes, signer: str, envelope: dict) -> bool:
        """Whether `sig` is `signer`'s unique signature of `message` (its key travels in `envelope`)."""


def pack(record: Record) -> bytes:
    return msgpack.packb(record.to_wire(), use_bin_type=True)


def unpack(body: bytes, cls: type) -> Record:
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, max_array_len=8192, max_map_len=32)
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"{KIND[cls]}: body is not msgpack ({type(e).__name__})") from None
    return cls.from_wire(raw)


def author(record: Record) -> str:
    return record.owner if isinstance(record, Receipt) else record.peer


class RsaKeys:
    """A node's identity key (hivemind's RSA-2048)."""

    def __init__(self, private_key):
        self.private_key = private_key
        self.peer = signing.peer_id_of(signing.public_der(private_key))

    def seal(self, record: Record) -> dict:
        return signing.sign(self.private_key, pack(record), KIND[type(record)])

    def unique(self, message: bytes) -> bytes:
        return signing.sign_unique(self.private_key, message)


class RsaChecker:
    """Checks protocol/signing.py envelopes (cached by digest, cheapest checks first). `keys`
    (peer -> DER public key, from envelopes it signed, e.g. the roster's announcements) lets it
    check a unique signature that travels without an envelope, as the leader's `draw` on its board."""

    def __init__(self, keys: dict[str, bytes] | None = None):
        self.keys = dict(keys or {})

    def open(self, envelope: object, cls: type, signer: str) -> Record:
        body = signing.verify(envelope, signer=signer, max_body=MAX_BODY[cls], kind=KIND[cls])
        record = unpack(body, cls)
        if author(record) != signer:
            raise ProtocolError(f"{KIND[cls]}: signed by {signer[:16]} but written by {author(record)[:16]}")
        return record

    def unique_ok(self, sig: bytes, message: bytes, signer: str, envelope: dict) -> bool:
        key = envelope.get("key") if isinstance(envelope, dict) and envelope.get("key") else self.keys.get(signer)
        if not isinstance(key, bytes) or signing.peer_id_of(key) != signer:
            return False  # a key that is not the signer's proves nothing about the signer
        try:
            signing.verify_unique(sig, message, key)
        except ProtocolError:
            return False
        return True
