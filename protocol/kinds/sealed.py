"""Sealed rounds (protocol 18, docs/protocol.md "Sealed rounds"): the leader's seal and an owner's receipt.

A round's payloads must stay unseen until the set of announcements that may earn credit is fixed,
or a crowd of keys mixes the round's honest updates and announces the mixes as its own work
(docs/security.md, tests/test_sybil_attacks_6.py). So a leader signs a Seal of the announcements it
takes before it fetches any payload, and presents it with each fetch; an owner releases its update
only under such a seal (node/round/trust/gate.py) and signs a Receipt naming the first seal it
released under. A roster carries its seals and its owners' receipts; only entries in its first seal
with a receipt naming that seal earn credit (node/round/trust/sealed.py).

Both are signed envelopes of their own kinds ("seal", "receipt": each its own signing domain,
protocol/signing.py), opened by protocol/signed.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.fields import (
    count_field,
    field,
    finite_field,
    led_header,
    optional_field,
    peer_id_field,
    round_field,
    run_field,
    sha256_field,
)

MAX_SEALS = 2  # a roster's seals: the announcements read at close, and those of the second read
MAX_SEALED = 224  # announcements one seal lists (protocol 21): any seal fits in an announcement as evidence
SEAL_BODY = MAX_SEALED * 67 + 1024  # MAX_SEALED hex digests (msgpack str8: 2 + 64) and the header
RECEIPT_BODY = 512
HEAD_BODY = 768  # a SealHead: a run id of up to 128 characters, four digests and the header
MAX_PATH = 8  # a Merkle path's digests: ceil(log2(MAX_SEALED))
# evidence (an announcement's `hidden`): a head envelope (body, a 294-byte key, a 256-byte signature),
# the entry and its path (hex digests, msgpack str8: 2 + 64 each), and the map's keys
EVIDENCE_BODY = HEAD_BODY + 294 + 256 + (MAX_PATH + 1) * 67 + 64


@dataclass(frozen=True, kw_only=True)
class Seal:
    """'In round `round` of run `run`, from state `base`, I, `leader`, take exactly these signed
    announcements; I signed this at `time`, before fetching any of their updates.' Signed by
    `leader`. `announcements`: the SHA-256 hex digests of the announcement envelopes' bodies
    (protocol/signed.py body_hash), sorted, without repeats, at most MAX_SEALED. `after` (protocol
    21): "" on the leader's first seal of that run, round and base; on any later one, the body hash
    of that first seal, which an honest leader keeps and puts first in its roster (node/round/
    trust/sealed.py `hides`: a seal that is neither is evidence of a hidden first seal)."""

    run: str
    round: int
    base: str
    leader: str
    time: float
    announcements: tuple[str, ...]
    after: str = ""

    def to_wire(self) -> dict:
        return _wire(self, announcements=list(self.announcements))

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int = 0) -> Seal:
        w = "seal"
        listed = field(d, "announcements", list, where=w)
        if len(listed) > MAX_SEALED or not all(isinstance(x, str) for x in listed):
            raise ProtocolError(f"{w}: announcements must be at most {MAX_SEALED} digests")
        digests = tuple(sha256_field(x, w) for x in listed)
        if list(digests) != sorted(set(digests)):
            raise ProtocolError(f"{w}: announcements must be sorted without repeats")
        return cls(**_header(d, w), announcements=digests)


@dataclass(frozen=True, kw_only=True)
class SealHead:
    """What a seal's signature covers (protocol 23): the seal with its announcements replaced by
    their Merkle root (`merkle_root`) and how many they are. Signed by `leader` in its own domain
    ("sealhead"); a Seal envelope carries the whole body and that signature (protocol/signed.py)."""

    run: str
    round: int
    base: str
    leader: str
    time: float
    root: str
    count: int
    after: str = ""

    @classmethod
    def of(cls, seal: Seal) -> SealHead:
        return cls(
            run=seal.run,
            round=seal.round,
            base=seal.base,
            leader=seal.leader,
            time=seal.time,
            root=merkle_root(seal.announcements),
            count=len(seal.announcements),
            after=seal.after,
        )

    def to_wire(self) -> dict:
        return _wire(self, root=self.root, count=self.count)

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int = 0) -> SealHead:
        w = "seal head"
        count = count_field(d, "count", w)
        if count > MAX_SEALED:
            raise ProtocolError(f"{w}: lists more than {MAX_SEALED} announcements")
        return cls(**_header(d, w), root=sha256_field(field(d, "root", str, where=w), w), count=count)


def _wire(x: Seal | SealHead, **listing) -> dict:
    """A seal's or head's wire map: the header, what it lists, then `after` (absent when "")."""
    d = {"run": x.run, "round": x.round, "base": x.base, "leader": x.leader, "time": x.time, **listing}
    return {**d, "after": x.after} if x.after else d


def _header(d: object, w: str) -> dict:
    """The fields a seal and its head share, read from the wire map `d`."""
    return {
        **led_header(d, w),
        "after": optional_field(d, "after", str, "", where=w) and sha256_field(d["after"], w),
    }


def _leaf(digest: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(digest)).digest()


def _node(a: bytes, b: bytes) -> bytes:
    """A parent of two nodes, in sorted order: a path needs no left/right bits. Leaves and nodes
    hash under different prefixes, so no node passes for a leaf."""
    return hashlib.sha256(b"\x01" + min(a, b) + max(a, b)).digest()


def _levels(digests: tuple[str, ...]) -> list[list[bytes]]:
    level = [_leaf(d) for d in digests] or [hashlib.sha256(b"").digest()]
    out = [level]
    while len(level) > 1:  # an odd last node goes up unpaired
        level = [_node(*level[i : i + 2]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        out.append(level)
    return out


def merkle_root(digests: tuple[str, ...]) -> str:
    """The Merkle root (hex) of a seal's sorted announcement digests."""
    return _levels(digests)[-1][0].hex()


def merkle_path(digests: tuple[str, ...], digest: str) -> tuple[str, ...]:
    """The sibling digests (hex, leaf up) that prove `digest` is one of `digests` (ValueError if not)."""
    i, path = digests.index(digest), []
    for level in _levels(digests)[:-1]:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling].hex())
        i //= 2
    return tuple(path)


def merkle_listed(digest: str, path: tuple[str, ...], root: str) -> bool:
    """Whether `path` proves `digest` is listed under `root`."""
    node = _leaf(digest)
    for sibling in path:
        node = _node(node, bytes.fromhex(sibling))
    return node.hex() == root


def evidence_fields(wire: object) -> tuple[dict, str, tuple[str, ...]]:
    """(head envelope, entry, path) of evidence about a seal (an announcement's `hidden`), its
    shape checked: {"head": a signed "sealhead" envelope, "entry": a digest, "path": at most
    MAX_PATH digests}. Signatures and the path are protocol/signed.py's (open_evidence)."""
    w = "evidence"
    head = field(wire, "head", dict, where=w)
    if head.get("kind") != "sealhead" or not all(type(head.get(k)) is bytes for k in ("body", "key", "sig")):
        raise ProtocolError(f"{w}: head must be a signed sealhead envelope")
    path = field(wire, "path", list, where=w)
    if len(path) > MAX_PATH or not all(isinstance(x, str) for x in path):
        raise ProtocolError(f"{w}: path must be at most {MAX_PATH} digests")
    return head, sha256_field(field(wire, "entry", str, where=w), w), tuple(sha256_field(x, w) for x in path)


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """'I, `owner`, released my update of round `round` of run `run` first under the seal whose
    body hashes to `seal`, at `time`.' Signed by `owner`; an owner signs one receipt a round."""

    run: str
    round: int
    owner: str
    seal: str
    time: float

    def to_wire(self) -> dict:
        return {"run": self.run, "round": self.round, "owner": self.owner, "seal": self.seal, "time": self.time}

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int = 0) -> Receipt:
        w = "receipt"
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            owner=peer_id_field(field(d, "owner", str, where=w), w),
            seal=sha256_field(field(d, "seal", str, where=w), w),
            time=finite_field(field(d, "time", float, where=w), "time", w),
        )
