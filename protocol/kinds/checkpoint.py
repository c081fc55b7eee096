"""The organizer's checkpoint: 'round `round` of run `run` is the roster whose body hashes to
`roster`, ending at state `result`' (trust model step 2).

Signed by the organizer's key (the key that signed the manifest: the run id commits to it), so
a crowd of fresh identities cannot forge one. It is never a DHT value on its own (the
validators refuse its kind): the organizer's heartbeat names it (`cp`), the `checkpoint` RPC
serves it, and leaders embed it in the roster field `checkpoint` (protocol/records.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import msgpack

from protocol import signing
from protocol.errors import ProtocolError
from protocol.fields import field, finite_field, round_field, run_field, sha256_field

KIND = "checkpoint"
MAX_BODY = 1024  # the body is ~250 B: run, round, two digests, a time


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A round of the run's chain the organizer vouches for."""

    run: str
    round: int
    roster: str
    """SHA-256 of the body of the chain's roster of `round` (what roster round+1 names as prev)."""
    result: str
    """That roster's result: the state the chain is at after `round`."""
    time: float

    def to_wire(self) -> dict:
        return asdict(self)

    @classmethod
    def from_wire(cls, d: object) -> Checkpoint:
        w = KIND
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            roster=sha256_field(field(d, "roster", str, where=w), w),
            result=sha256_field(field(d, "result", str, where=w), w),
            time=finite_field(field(d, "time", float, where=w), "time", w),
        )


def seal_checkpoint(private_key, checkpoint: Checkpoint) -> dict:
    """The organizer signs a checkpoint."""
    return signing.sign(private_key, msgpack.packb(checkpoint.to_wire(), use_bin_type=True), KIND)


def open_checkpoint(envelope: object, *, organizer: str, run_id: str) -> Checkpoint:
    """The checkpoint inside `envelope`, if it is of run `run_id` and signed by `organizer` (the
    peer id the manifest names); any other key is refused. Raises ProtocolError."""
    if not organizer:
        raise ProtocolError("checkpoint: no organizer to check it against")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), bytes):
        raise ProtocolError("checkpoint: expected a signed envelope")
    if len(envelope["body"]) > MAX_BODY:
        raise ProtocolError(f"checkpoint: body of {len(envelope['body'])} bytes is too long")
    try:
        raw = msgpack.unpackb(envelope["body"], raw=False, strict_map_key=True, max_array_len=16, max_map_len=16)
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"checkpoint: body is not msgpack ({type(e).__name__})") from None
    checkpoint = Checkpoint.from_wire(raw)
    if checkpoint.run != run_id:
        raise ProtocolError(f"checkpoint: of run {checkpoint.run[:40]!r}, not {run_id[:40]!r}")
    signing.verify(envelope, signer=organizer, max_body=MAX_BODY, kind=KIND)
    return checkpoint


def checkpoint_hash(envelope: dict) -> str:
    """SHA-256 hex of a checkpoint's body: what the organizer's heartbeat names in `cp`."""
    return hashlib.sha256(envelope["body"]).hexdigest()
