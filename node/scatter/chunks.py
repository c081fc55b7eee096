"""How a v3 update is cut and put on the wire.

An update (one tensor per trainable parameter) is laid out flat, in model order, and cut into
C chunks at multiples of BLOCK values; level-1 results are cut again into one part per group.
Every piece travels as a blockwise-int8 flat vector (protocol/codecs: one fp32 scale per BLOCK
values, one int8 per value): senders' chunks, owners' results and the final aggregate alike, so
a piece of n values costs n + 4 ceil(n / BLOCK) bytes, and decoding checks it as strictly as any
update (a peer's bytes never reach a tensor unchecked).
"""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

import torch

from protocol.codecs import Int8Codec
from protocol.errors import ProtocolError

BLOCK = 256


class Span(NamedTuple):
    """Values [start, end) of the flat update."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def spans(total: int, pieces: int, offset: int = 0) -> list[Span]:
    """`total` values cut into `pieces` spans of whole BLOCKs (the last takes the rest; a span may
    be empty when there are fewer blocks than pieces)."""
    blocks = -(-total // BLOCK)
    cuts = [min(total, (blocks * i // pieces) * BLOCK) for i in range(pieces)] + [total]
    return [Span(offset + a, offset + b) for a, b in zip(cuts, cuts[1:])]


def flat(update: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float32) for t in update])


def unflat(values: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    out, at = [], 0
    for s in shapes:
        n = 1
        for d in s:
            n *= d
        out.append(values[at : at + n].reshape(s).clone())
        at += n
    return out


@functools.lru_cache(maxsize=4096)
def _codec(n: int) -> Int8Codec:
    return Int8Codec(((n,),), BLOCK)


def encoded_size(n: int) -> int:
    return _codec(n).encoded_size() if n else 0


def encode(values: torch.Tensor) -> bytes:
    return _codec(values.numel()).encode([values]) if values.numel() else b""


def decode(data: bytes, n: int) -> torch.Tensor:
    """The n values of a piece; raises ProtocolError on a wrong size or a bad value."""
    if n == 0:
        if data:
            raise ProtocolError(f"an empty piece of {len(data)} bytes")
        return torch.zeros(0)
    return _codec(n).decode(data)[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


RECORDS_SLACK = 4 << 20  # bytes of envelopes a message may carry beside its pieces (a proof: one a sender)


def most_message_bytes(total: int) -> int:
    """The largest v3 message a member of a round of `total`-value updates may be sent: a fraud
    proof carries a task's inputs, at most a group's pieces (groups differ by at most one member
    from the chunk count, so under two updates' bytes), with their envelopes. What a node reads
    of a scatter request's body at most (node/p2p/streams.py)."""
    return 2 * encoded_size(total) + RECORDS_SLACK
