"""How a v3 update is cut and put on the wire: the run's `Wire`.

An update (one tensor per trainable parameter) is laid out flat and cut into C chunks; level-1
results are cut again into one part per group. Decoding checks every piece as strictly as any
update (a peer's bytes never reach a tensor unchecked). Three wires, by the run's codec:
  INT8    (dense: diloco int8, fp16, fp32, int4/int2; ddp) model order, cuts at multiples of
          BLOCK values; every piece blockwise int8 (one fp32 scale per BLOCK values), senders'
          chunks, owners' results and the final aggregate alike: n + 4 ceil(n / BLOCK) bytes.
  SignWire  (diloco int1) model order, cut at the sender codec's blocks (units); senders' pieces
          1 bit a value and one fp32 step a unit (lossless: the sender's own payload values);
          owners' results re-encoded at `out_bits` (1, 2 or 4: the default) the same way, so the
          gathered aggregate is about out_bits x one update. Reduced with the dense rule.
  SparseWire  (sparseloco top-k, no DCT) the codec's chunk order (each tensor's chunks, one
          after the other), cut at its chunks (units); senders' pieces keep their k picks a
          unit with 2-bit tables (lossless); owners' results are re-sparsified to keep x k
          picks a unit (their largest |values|; default 8) with 2^out_bits-entry tables or int8
          values (out_bits 8, the default), so the gathered aggregate is about keep x one
          update (x 20/14 with int8 values). Reduced with the sparse rule (vote); what the
          aggregate dropped goes back into each sender's error buffer (SparseLoCo.take_back).
protocol/codecs/pieces.py holds the low-bit and sparse formats; all are bit-exact to re-encode.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import torch

from protocol.codecs import Int8Codec, QuantCodec, Selection, TopKCodec
from protocol.codecs.pieces import LowBitPiece, SparsePiece
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


# ----------------------------------------------------------------------------- the wires
class Int8Wire:
    """Every piece blockwise int8, cut at multiples of BLOCK (the wire of dense runs)."""

    name = "int8"
    rule = "dense"

    def spans(self, span: Span, pieces: int) -> list[Span]:
        return spans(span.size, pieces, span.start)

    def segments(self, span: Span) -> None:
        return None

    def in_size(self, span: Span) -> int:
        return encoded_size(span.size)

    def out_size(self, span: Span, level: int = 2) -> int:
        return encoded_size(span.size)

    def encode_in(self, values: torch.Tensor, span: Span) -> bytes:
        return encode(values)

    def encode_out(self, values: torch.Tensor, span: Span, level: int = 2) -> bytes:
        return encode(values)

    def decode_in(self, data: bytes, span: Span) -> torch.Tensor:
        return decode(data, span.size)

    def decode_out(self, data: bytes, span: Span, level: int = 2) -> torch.Tensor:
        return decode(data, span.size)


INT8 = Int8Wire()


@dataclass(frozen=True)
class Layout:
    """A flat update as units that no piece splits (a codec's blocks or chunks), in order."""

    units: tuple[int, ...]
    """Values of each unit."""
    tensors: tuple[int, ...]
    """The tensor each unit belongs to (a value table covers one tensor's run of units)."""

    @functools.cached_property
    def starts(self) -> tuple[int, ...]:
        out = [0]
        for n in self.units:
            out.append(out[-1] + n)
        return tuple(out)

    @property
    def total(self) -> int:
        return self.starts[-1]

    def units_of(self, span: Span) -> range:
        """The units that make up `span` (spans of this layout start and end at units)."""
        a, b = bisect.bisect_left(self.starts, span.start), bisect.bisect_left(self.starts, span.end)
        if self.starts[a] != span.start or self.starts[b] != span.end:
            raise ValueError(f"span {span} does not start and end at units")
        return range(a, b)

    def cut(self, span: Span, pieces: int) -> list[Span]:
        """`span` cut into `pieces` spans of whole units, as even in units as they go (as `spans`)."""
        r = self.units_of(span)
        cuts = [r.start + len(r) * i // pieces for i in range(pieces)] + [r.stop]
        return [Span(self.starts[a], self.starts[b]) for a, b in zip(cuts, cuts[1:])]

    def sizes(self, span: Span) -> tuple[int, ...]:
        r = self.units_of(span)
        return self.units[r.start : r.stop]

    def segments(self, span: Span) -> tuple[int, ...]:
        """Units per run of one tensor within `span`."""
        out, last = [], None
        for u in self.units_of(span):
            if self.tensors[u] == last:
                out[-1] += 1
            else:
                out.append(1)
                last = self.tensors[u]
        return tuple(out)

    def segment_values(self, span: Span) -> list[int]:
        """Values per run of one tensor within `span` (the sparse rule caps values per tensor)."""
        starts, at, out = self.starts, self.units_of(span).start, []
        for seg in self.segments(span):
            out.append(starts[at + seg] - starts[at])
            at += seg
        return out


class ByPieces:
    """A wire whose sizes and codes are its `piece(span, level)`'s: level 0 a sender's chunk,
    1 and 2 an owner's result at that level (protocol/codecs/pieces.py)."""

    def piece(self, span: Span, level: int):
        raise NotImplementedError

    def in_size(self, span: Span) -> int:
        return self.piece(span, 0).encoded_size()

    def out_size(self, span: Span, level: int = 2) -> int:
        return self.piece(span, level).encoded_size()

    def encode_in(self, values: torch.Tensor, span: Span) -> bytes:
        return self.piece(span, 0).encode(values)

    def decode_in(self, data: bytes, span: Span) -> torch.Tensor:
        return self.piece(span, 0).decode(data)

    def encode_out(self, values: torch.Tensor, span: Span, level: int = 2) -> bytes:
        return self.piece(span, level).encode(values)

    def decode_out(self, data: bytes, span: Span, level: int = 2) -> torch.Tensor:
        return self.piece(span, level).decode(data)


@dataclass(frozen=True)
class SignWire(ByPieces):
    """Diloco's 1-bit updates: 1-bit pieces in, `out_bits` results out (one step a unit)."""

    layout: Layout
    out_bits: int = 4
    """Bits a value of a level-2 owner's result, the gathered aggregate (1, 2 or 4; RAW: fp32)."""
    mid_bits: int = 0
    """Bits a value of a level-1 owner's result (0: out_bits); they travel only to one part
    owner each (about 1/G of an update per peer), so a finer middle costs little."""

    name = "sign"
    rule = "dense"

    def spans(self, span: Span, pieces: int) -> list[Span]:
        return self.layout.cut(span, pieces)

    def segments(self, span: Span) -> None:
        return None

    def piece(self, span: Span, level: int) -> LowBitPiece:
        """Level 0: a sender's chunk; 1, 2: an owner's result at that level."""
        bits = (1, self.mid_bits or self.out_bits, self.out_bits)[level]
        return LowBitPiece(self.layout.sizes(span), bits)


@dataclass(frozen=True)
class SparseWire(ByPieces):
    """Top-k updates in the codec's chunk order: k picks a unit in, keep x k picks a unit out."""

    layout: Layout
    picks: tuple[int, ...]
    """The senders' picks per unit (the codec's k for its tensor)."""
    in_bits: int = 2
    """Code bits of the senders' value tables (2: the codec's 4 values a tensor, exact)."""
    keep: int = 1
    """A level-2 owner's result (the gathered aggregate) keeps keep x picks values a unit (its
    largest |values|)."""
    out_bits: int = 2
    """Code bits of an owner's value tables."""
    mid_keep: int = 0
    """A level-1 owner's result keeps mid_keep x picks a unit (0: keep)."""

    name = "sparse"
    rule = "sparse"

    def spans(self, span: Span, pieces: int) -> list[Span]:
        return self.layout.cut(span, pieces)

    def segments(self, span: Span) -> list[int]:
        return self.layout.segment_values(span)

    def piece(self, span: Span, level: int) -> SparsePiece:
        """Level 0: a sender's chunk; 1, 2: an owner's result at that level."""
        r, units = self.layout.units_of(span), self.layout.sizes(span)
        factor = (1, self.mid_keep or self.keep, self.keep)[level]
        picks = tuple(min(n, factor * k) for n, k in zip(units, self.picks[r.start : r.stop]))
        return SparsePiece(units, picks, self.layout.segments(span), self.out_bits if level else self.in_bits)


Wire = Int8Wire | SignWire | SparseWire


def wire_for(codec, *, out_bits: int = 0, keep: int = 0, mid: int = 0) -> Wire:
    """The wire v3 carries a run's updates on, from its codec; 0 takes the wire's default, the
    setting measured to hold quality (docs/benchmarks.md): signs at 4 bits (+0.7% against the
    all-gather), top-k keeping 8 x k values a chunk as int8 (+1.6%). `mid`: level-1 results'
    bits, or keep (0: as level 2's). Raises ValueError for updates v3 does not carry."""
    if isinstance(codec, QuantCodec) and codec.bits == 1 and codec.share == 1:
        units, tensors = [], []
        for t, shape in enumerate(codec.shapes):
            n = 1
            for d in shape:
                n *= d
            sizes = [codec.block] * (n // codec.block) + ([n % codec.block] if n % codec.block else [])
            units += sizes
            tensors += [t] * len(sizes)
        return SignWire(Layout(tuple(units), tuple(tensors)), out_bits=out_bits or 4, mid_bits=mid)
    if isinstance(codec, TopKCodec):
        if codec.dct:
            raise ValueError("v3 does not carry DCT top-k updates (decoupled momentum's sign vote) yet")
        units, tensors, picks = [], [], []
        for t, ch in enumerate(codec.chunkings()):
            units += [ch.chunk_numel] * ch.num_chunks
            tensors += [t] * ch.num_chunks
            picks += [codec.picks(ch)] * ch.num_chunks
        in_bits = {"2bit": 2, "1bit": 1}.get(codec.values, 32)  # bf16 values travel as fp32
        return SparseWire(Layout(tuple(units), tuple(tensors)), tuple(picks), in_bits, keep or 8, out_bits or 8, mid)
    return INT8


def sparse_flat(codec: TopKCodec, sel: list[Selection]) -> torch.Tensor:
    """A top-k update as SparseWire lays it out: each tensor's chunks in order, zeros where not picked."""
    out = []
    for ch, s in zip(codec.chunkings(), sel):
        out.append(torch.zeros(ch.num_chunks, ch.chunk_numel).scatter_(1, s.idx, s.val).reshape(-1))
    return torch.cat(out)


def sparse_unflat(codec: TopKCodec, values: torch.Tensor) -> list[torch.Tensor]:
    """The inverse of sparse_flat for a dense vector in chunk order: one tensor per parameter."""
    out, at = [], 0
    for ch in codec.chunkings():
        n = ch.num_chunks * ch.chunk_numel
        out.append(ch.from_chunks(values[at : at + n].reshape(ch.num_chunks, ch.chunk_numel)))
        at += n
    return out
