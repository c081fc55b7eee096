"""Pieces of a flat update cut into units (round protocol v3's chunks and parts of low-bit and
top-k updates; node/scatter/chunks.py says which units a run has).

A unit is what a piece never splits: a block of the sender's low-bit codec, or a chunk of its
top-k codec. Both sides know the units of a piece, so, as for the update codecs, the wire
carries steps, tables, indices and codes only, and every size is exact and fixed.

lowbit-<b>    per unit one fp32 step d and b-bit codes, as QuantCodec's (code c decodes to
              (c - QUANT_OFFSET[b]) x d); b 1: d = 2 mean|x|, 2: d = RMS, 4: d = max|x| / 7.
              32: the raw fp32 values.
sparse-<b>    per unit its picks[u] largest |values| (ties: the lower index), their indices in
              the unit (12 bits where every unit has at most 4,096 values, else 16) and their
              values against one table of 2^b fp32 entries per segment (a run of units, one
              tensor): exact where the segment's picks hold at most 2^b distinct values, else
              2^b bins of equal count each decoding to its median member (b 1, 2, 4); b 8:
              int8 codes times one fp32 step a segment (max|x| / 127). 32: raw fp32 values.

Owners re-encode their results in these formats and auditors compare the bytes, so encoding
is bit-exact on any machine: steps are sums of float64 along a fixed tree (`fixed_sums`, each
level one elementwise add), maxima, and elementwise fp32 ops; tables are values taken as they
are (no arithmetic). On the output of the sender's own codec both are lossless: a decoded
1-bit block is +-d/2 (whose 2 mean|x| is d exactly), a decoded 2-bit or 1-bit top-k tensor
has at most 4 values (2 for 1-bit).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from protocol.codecs.bitpack import pack_bits, pack_indices, unpack_bits, unpack_indices
from protocol.codecs.blockwise import QUANT_OFFSET, quant_codes, quant_top
from protocol.codecs.bounds import FP16_MAX, MAX_ABS_VALUE, check_scale, check_values, expect_size
from protocol.errors import ProtocolError

RAW = 32
"""`bits` of a piece that carries its values as raw fp32 (exact; for tests and ablations)."""


def fixed_sums(rows: torch.Tensor) -> torch.Tensor:
    """Sum of each row of a 2-D tensor in float64, along a fixed pairwise tree: the same bits on
    every machine, whatever its threads or vector width (zeros pad the rows to a power of two)."""
    x = rows.to(torch.float64)
    width = 1 << max(0, (x.shape[1] - 1).bit_length())
    x = torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], dim=1)
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    return x[:, 0]


@functools.lru_cache(maxsize=1024)
def _layout(units: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(where each value sits in the padded (units, widest unit) matrix, flat; the unit of each value)."""
    width = max(units, default=1)
    sizes = torch.tensor(units, dtype=torch.int64)
    mask = torch.arange(width)[None, :] < sizes[:, None]
    return mask.reshape(-1).nonzero().reshape(-1), torch.arange(len(units)).repeat_interleave(sizes)


def _padded(values: torch.Tensor, units: tuple[int, ...]) -> torch.Tensor:
    """(units, widest unit): each unit's values in a row, zero-padded."""
    rows = torch.zeros(len(units) * max(units, default=1))
    rows[_layout(units)[0]] = values
    return rows.view(len(units), -1)


@dataclass(frozen=True)
class LowBitPiece:
    """A piece of len(units) units, `bits` (1, 2, 4 or RAW) per value, one fp32 step per unit."""

    units: tuple[int, ...]
    bits: int

    def __post_init__(self):
        if self.bits not in (*QUANT_OFFSET, RAW):
            raise ValueError(f"low-bit piece: {self.bits} bits (1, 2, 4 or {RAW})")

    @property
    def name(self) -> str:
        return f"lowbit-{self.bits}"

    def _top(self) -> float:
        return quant_top(self.bits)

    def encoded_size(self) -> int:
        n = sum(self.units)
        return 4 * n if self.bits == RAW else 4 * len(self.units) + -(-n * self.bits // 8)

    def encode(self, values: torch.Tensor) -> bytes:
        v = values.detach().reshape(-1).to("cpu", torch.float32).clamp(-FP16_MAX, FP16_MAX)
        if self.bits == RAW:
            return v.numpy().astype("<f4").tobytes()
        if not self.units:
            return b""
        rows = _padded(v, self.units)
        counts = torch.tensor(self.units, dtype=torch.float64).clamp(min=1)
        if self.bits == 1:
            d = fixed_sums(rows.abs()) / counts * 2.0
        elif self.bits == 2:
            d = (fixed_sums(rows.square()) / counts).sqrt()
        else:
            d = rows.abs().amax(dim=1).to(torch.float64) / 7.0
        d = d.to(torch.float32).clamp(max=MAX_ABS_VALUE / self._top() * (1 - 1e-6))
        c = quant_codes(rows / d.clamp(min=1e-30)[:, None], self.bits)
        codes = c.reshape(-1)[_layout(self.units)[0]].to(torch.uint8).numpy()
        return d.numpy().astype("<f4").tobytes() + pack_bits(codes, self.bits)

    def decode(self, data: bytes) -> torch.Tensor:
        expect_size(self, data)
        n = sum(self.units)
        if self.bits == RAW:
            values = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=n).astype(np.float32))
            check_values(values, self.name)
            return values
        nu = len(self.units)
        d = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=nu).astype(np.float32))
        check_scale(d, MAX_ABS_VALUE / self._top(), f"{self.name} step")
        codes = unpack_bits(data[4 * nu :], n, self.bits)
        levels = torch.from_numpy(codes.astype(np.float32)) - QUANT_OFFSET[self.bits]
        values = levels * d[_layout(self.units)[1]]
        check_values(values, self.name)
        return values


def table_codes(values: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a table of `levels` fp32 values, each value's code): exact where `values` hold at most
    `levels` distinct values; else bins of equal count by rank, each the median member's value."""
    m = values.numel()
    if m == 0:
        return torch.zeros(levels), torch.zeros(0, dtype=torch.int64)
    srt, order = torch.sort(values, stable=True)
    uniq = torch.unique_consecutive(srt)
    if uniq.numel() <= levels:
        table = torch.cat([uniq, uniq[-1:].expand(levels - uniq.numel())])
        return table, torch.searchsorted(uniq, values)
    bins = torch.arange(m) * levels // m  # bin of each rank: every bin has a member (m > levels)
    lo = torch.searchsorted(bins, torch.arange(levels))
    hi = torch.searchsorted(bins, torch.arange(levels), right=True)
    codes = torch.empty(m, dtype=torch.int64)
    codes[order] = bins
    return srt[(lo + hi - 1) // 2].clone(), codes


def int8_codes(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(one fp32 step, max|value| / 127; each value's code, round(value / step) + 128)."""
    top = float(values.abs().max()) if values.numel() else 0.0
    step = torch.tensor([top / 127.0], dtype=torch.float32).clamp(max=MAX_ABS_VALUE / 127 * (1 - 1e-6))
    codes = (values / step.clamp(min=1e-30)).round().clamp(-127, 127).to(torch.int64) + 128
    return step, codes


@functools.lru_cache(maxsize=256)
def _starts(sizes: tuple[int, ...]) -> tuple[int, ...]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return tuple(out)


@dataclass(frozen=True)
class SparsePiece:
    """A piece of len(units) units keeping picks[u] values of unit u, one value table per segment."""

    units: tuple[int, ...]
    picks: tuple[int, ...]
    """Values kept per unit (at most the unit's size)."""
    segments: tuple[int, ...]
    """Units per value table, in order (summing to len(units))."""
    bits: int
    """Code bits: 1, 2 or 4 (a table of 2^bits entries a segment), 8 (int8 codes times one fp32
    step a segment, max|value| / 127), or RAW."""

    def __post_init__(self):
        if (
            self.bits not in (1, 2, 4, 8, RAW)
            or len(self.picks) != len(self.units)
            or sum(self.segments) != len(self.units)
        ):
            raise ValueError(f"sparse piece: {self.bits} bits, {len(self.picks)} picks for {len(self.units)} units")
        if any(not 0 <= k <= n for k, n in zip(self.picks, self.units)):
            raise ValueError("sparse piece: more picks than a unit has values")

    @property
    def name(self) -> str:
        return f"sparse-{self.bits}"

    @property
    def index_bits(self) -> int:
        return 12 if max(self.units, default=0) <= 4096 else 16

    def _sizes(self) -> tuple[int, int, int]:
        """(table, index, code) bytes."""
        m = sum(self.picks)
        index = 2 * m if self.index_bits == 16 else 3 * -(-m // 2)
        if self.bits == RAW:
            return 0, index, 4 * m
        return 4 * len(self.segments) * self._table(), index, -(-m * self.bits // 8)

    def _table(self) -> int:
        """fp32 entries a segment: a table of 2^bits, or one int8 step."""
        return 1 if self.bits == 8 else 2**self.bits

    def encoded_size(self) -> int:
        return sum(self._sizes())

    def encode(self, values: torch.Tensor) -> bytes:
        v = values.detach().reshape(-1).to("cpu", torch.float32).clamp(-FP16_MAX, FP16_MAX)
        starts = _starts(self.units)
        idx, vals = [], []
        for u, k in enumerate(self.picks):
            unit = v[starts[u] : starts[u + 1]]
            chosen = torch.sort(unit.abs(), descending=True, stable=True).indices[:k].sort().values
            idx.append(chosen)
            vals.append(unit[chosen])
        idx.append(torch.zeros(0, dtype=torch.int64))  # (a piece of no units)
        indices = pack_indices(torch.cat(idx), self.index_bits)
        if self.bits == RAW:
            return indices + torch.cat([*vals, torch.zeros(0)]).numpy().astype("<f4").tobytes()
        tables, codes, at = [], [], 0
        for seg in self.segments:
            picked = torch.cat(vals[at : at + seg]) if seg else torch.zeros(0)
            table, c = int8_codes(picked) if self.bits == 8 else table_codes(picked, 2**self.bits)
            tables.append(table.numpy().astype("<f4").tobytes())
            codes.append(c)
            at += seg
        code_bytes = pack_bits(torch.cat(codes).numpy().astype(np.uint8), self.bits) if codes else b""
        return b"".join(tables) + indices + code_bytes

    def decode(self, data: bytes) -> torch.Tensor:
        expect_size(self, data)
        nt, ni, _ = self._sizes()
        m = sum(self.picks)
        idx = unpack_indices(data[nt : nt + ni], m, self.index_bits)
        if self.bits == RAW:
            vals = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=m, offset=nt + ni).astype(np.float32))
        else:
            tables = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=nt // 4).astype(np.float32))
            check_scale(tables, MAX_ABS_VALUE / (127 if self.bits == 8 else 1), f"{self.name} table")
            codes = torch.from_numpy(unpack_bits(data[nt + ni :], m, self.bits).astype(np.int64))
            seg_of_pick = torch.repeat_interleave(
                torch.arange(len(self.segments)),
                torch.tensor(
                    [sum(self.picks[a : a + s]) for a, s in zip(_starts(self.segments), self.segments)],
                    dtype=torch.int64,
                ),
            )
            if self.bits == 8:
                vals = (codes - 128).to(torch.float32) * tables[seg_of_pick]
            else:
                vals = tables[seg_of_pick * 2**self.bits + codes]
        check_values(vals, self.name)
        out, starts, at = torch.zeros(sum(self.units)), _starts(self.units), 0
        for u, k in enumerate(self.picks):
            i = idx[at : at + k]
            if k and (int(i[-1]) >= self.units[u] or (k > 1 and bool((i[1:] <= i[:-1]).any()))):
                raise ProtocolError(f"{self.name}: indices of unit {u} out of range or not increasing")
            out[starts[u] + i] = vals[at : at + k]
            at += k
        return out
