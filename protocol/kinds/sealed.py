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

from dataclasses import dataclass

from protocol.errors import ProtocolError
from protocol.fields import field, finite_field, optional_field, peer_id_field, round_field, run_field, sha256_field

MAX_SEALS = 2  # a roster's seals: the announcements read at close, and those of the second read
MAX_SEALED = 224  # announcements one seal lists (protocol 21): any seal fits in an announcement as evidence
SEAL_BODY = MAX_SEALED * 67 + 1024  # MAX_SEALED hex digests (msgpack str8: 2 + 64) and the header
RECEIPT_BODY = 512


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
        d = {
            "run": self.run,
            "round": self.round,
            "base": self.base,
            "leader": self.leader,
            "time": self.time,
            "announcements": list(self.announcements),
            "after": self.after,
        }
        return d if self.after else {k: v for k, v in d.items() if k != "after"}

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int = 0) -> Seal:
        w = "seal"
        listed = field(d, "announcements", list, where=w)
        if len(listed) > MAX_SEALED or not all(isinstance(x, str) for x in listed):
            raise ProtocolError(f"{w}: announcements must be at most {MAX_SEALED} digests")
        digests = tuple(sha256_field(x, w) for x in listed)
        if list(digests) != sorted(set(digests)):
            raise ProtocolError(f"{w}: announcements must be sorted without repeats")
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            base=sha256_field(field(d, "base", str, where=w), w),
            leader=peer_id_field(field(d, "leader", str, where=w), w),
            time=finite_field(field(d, "time", float, where=w), "time", w),
            announcements=digests,
            after=optional_field(d, "after", str, "", where=w) and sha256_field(d["after"], w),
        )


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
