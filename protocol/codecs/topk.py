"""Chunked top-k: topk-c<C>-k<K>[-kv<KV>][-dct]-<V>-i<I>.

Per chunk of <= C x C values (2-D tensors; <= C for 1-D): the K largest-magnitude coefficients
(after an orthonormal 2-D DCT-II with -dct), indices packed in I bits (12 or 16), values
V = bf16 | 2bit (4-level table per tensor) | 1bit (sign times one fp32 scale per tensor).
The steps (select, quantize, densify, pack, unpack) are exposed because error feedback needs
what was selected and what receivers see; combining several peers' selections is the
aggregator's job (node/outer/aggregate.py), not the wire's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.codecs.bitpack import pack_2bit, pack_indices, unpack_2bit, unpack_indices
from protocol.codecs.bounds import FP16_MAX, MAX_ABS_VALUE, check_scale, check_values, expect_size
from protocol.errors import ProtocolError


def largest_divisor(n: int, target: int) -> int:
    return max(c for c in range(1, min(n, target) + 1) if n % c == 0)


_DCT: dict[int, torch.Tensor] = {}


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II (rows are frequencies), float64 so that peers round alike."""
    if n not in _DCT:
        k = torch.arange(n, dtype=torch.float64)[:, None]
        i = torch.arange(n, dtype=torch.float64)[None, :]
        m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        m[0] /= math.sqrt(2.0)
        _DCT[n] = m
    return _DCT[n]


@dataclass(frozen=True)
class Chunking:
    """How one tensor is cut into chunks: 2-D tensors into a x b blocks, others into runs of c."""

    shape: tuple[int, ...]
    target: int
    dct: bool

    @property
    def block(self) -> tuple[int, ...]:
        if len(self.shape) == 2:
            return largest_divisor(self.shape[0], self.target), largest_divisor(self.shape[1], self.target)
        return (largest_divisor(math.prod(self.shape), self.target),)

    @property
    def chunk_numel(self) -> int:
        return math.prod(self.block)

    @property
    def num_chunks(self) -> int:
        return math.prod(self.shape) // self.chunk_numel

    def to_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """(num_chunks, chunk_numel), in the DCT domain if enabled."""
        if len(self.shape) == 2:
            a, b = self.block
            c = x.reshape(self.shape[0] // a, a, self.shape[1] // b, b).permute(0, 2, 1, 3)
            if self.dct:
                c = torch.einsum("ha,yxab,wb->yxhw", dct_matrix(a), c.double(), dct_matrix(b)).float()
            return c.reshape(-1, a * b)
        c = x.reshape(-1, self.block[0])
        return (c.double() @ dct_matrix(self.block[0]).t()).float() if self.dct else c

    def from_chunks(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of to_chunks; float64 input stays float64 (callers that need exact agreement)."""
        dtype = c.dtype
        if len(self.shape) == 2:
            a, b = self.block
            c = c.reshape(self.shape[0] // a, self.shape[1] // b, a, b)
            if self.dct:
                c = torch.einsum("ha,yxhw,wb->yxab", dct_matrix(a), c.double(), dct_matrix(b)).to(dtype)
            return c.permute(0, 2, 1, 3).reshape(self.shape)
        if self.dct:
            c = (c.double() @ dct_matrix(self.block[0])).to(dtype)
        return c.reshape(self.shape)


@dataclass
class Selection:
    """The coefficients chosen from one tensor: indices within each chunk, and their values."""

    idx: torch.Tensor  # (num_chunks, k) int64, unique per row
    val: torch.Tensor  # (num_chunks, k) float32


@dataclass(frozen=True)
class TopKCodec:
    shapes: tuple[tuple[int, ...], ...]
    chunk: int = 64
    k: int = 32
    dct: bool = False
    values: str = "bf16"  # bf16 | 2bit | 1bit
    index_bits: int = 12
    k_vector: int = 0  # k per chunk of a 1-D tensor (norm gains, biases); 0: the same k as matrices

    def __post_init__(self):
        if self.values not in ("bf16", "2bit", "1bit") or self.index_bits not in (12, 16):
            raise ValueError(f"top-k codec: values {self.values!r} / index bits {self.index_bits} not supported")
        if self.index_bits == 12 and self.chunk > 64:
            raise ValueError("12-bit indices address chunks of at most 64 x 64 values")

    @property
    def name(self) -> str:
        kv = f"-kv{self.k_vector}" if self.k_vector else ""
        return f"topk-c{self.chunk}-k{self.k}{kv}{'-dct' if self.dct else ''}-{self.values}-i{self.index_bits}"

    def chunkings(self) -> list[Chunking]:
        return [Chunking(tuple(s), self.chunk, self.dct) for s in self.shapes]

    def picks(self, ch: Chunking) -> int:
        """Values kept per chunk of `ch`."""
        k = self.k_vector if self.k_vector and len(ch.shape) != 2 else self.k
        return min(k, ch.chunk_numel)

    def sizes(self, ch: Chunking) -> tuple[int, int, int]:
        """(header, index, value) bytes of one tensor."""
        m = ch.num_chunks * self.picks(ch)
        header = {"bf16": 0, "2bit": 16, "1bit": 4}[self.values]
        index = 2 * m if self.index_bits == 16 else 3 * -(-m // 2)  # 12-bit: two indices in 3 bytes
        value = {"bf16": 2 * m, "2bit": -(-m // 4), "1bit": -(-m // 8)}[self.values]
        return header, index, value

    def encoded_size(self) -> int:
        return sum(sum(self.sizes(ch)) for ch in self.chunkings())

    # ---- the steps, exposed because error feedback needs what was selected and what is seen
    def select(self, tensors: list[torch.Tensor]) -> list[Selection]:
        out = []
        for ch, t in zip(self.chunkings(), tensors):
            c = ch.to_chunks(t.detach().to("cpu", torch.float32))
            idx = c.abs().topk(self.picks(ch), dim=1, sorted=False).indices
            idx, _ = idx.sort(dim=1)  # canonical order: the wire never depends on topk's
            out.append(Selection(idx=idx, val=c.gather(1, idx)))
        return out

    def quantize(self, sel: list[Selection]) -> list[Selection]:
        """The values as receivers will decode them."""
        return [
            Selection(s.idx, _dequant(*_quant(s.val, self.values), self.values, s.val.numel()).reshape(s.val.shape))
            for s in sel
        ]

    def densify(self, sel: list[Selection]) -> list[torch.Tensor]:
        out = []
        for ch, s in zip(self.chunkings(), sel):
            c = torch.zeros(ch.num_chunks, ch.chunk_numel).scatter_(1, s.idx, s.val)
            out.append(ch.from_chunks(c))
        return out

    def pack(self, sel: list[Selection]) -> bytes:
        parts = []
        for s in sel:
            header, codes = _quant(s.val, self.values)
            parts += [header, pack_indices(s.idx.reshape(-1), self.index_bits), codes]
        return b"".join(parts)

    def unpack(self, data: bytes) -> list[Selection]:
        expect_size(self, data)
        out, off = [], 0
        for ch in self.chunkings():
            k = self.picks(ch)
            m = ch.num_chunks * k
            nh, ni, nv = self.sizes(ch)
            header, off = data[off : off + nh], off + nh
            idx = unpack_indices(data[off : off + ni], m, self.index_bits).reshape(ch.num_chunks, k)
            off += ni
            codes, off = data[off : off + nv], off + nv
            if m and int(idx.max()) >= ch.chunk_numel:
                raise ProtocolError(f"{self.name}: index out of range for chunks of {ch.chunk_numel}")
            srt, _ = idx.sort(dim=1)
            if k > 1 and bool((srt[:, 1:] == srt[:, :-1]).any()):
                raise ProtocolError(f"{self.name}: repeated index within a chunk")
            val = _dequant(header, codes, self.values, m).reshape(ch.num_chunks, k)
            check_values(val, self.name)
            out.append(Selection(idx=idx, val=val))
        return out

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        return self.pack(self.select(tensors))

    def decode(self, data: bytes) -> list[torch.Tensor]:
        return self.densify(self.unpack(data))


# ------------------------------------------------------------------- value quantisers
def _quant(val: torch.Tensor, kind: str) -> tuple[bytes, bytes]:
    """-> (per-tensor header, packed codes)."""
    v = val.reshape(-1).float().clamp(-FP16_MAX, FP16_MAX)  # what every decoder accepts
    if kind == "bf16":
        return b"", v.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    if kind == "1bit":
        scale = v.abs().mean() if v.numel() else torch.tensor(0.0)
        return np.float32(scale).tobytes(), np.packbits((v >= 0).numpy().astype(np.uint8)).tobytes()
    # 2bit: 4 bins of 1.5 sigma around the mean; each bin decodes to the mean of its members
    shift = v.mean() if v.numel() else torch.tensor(0.0)
    c = v - shift
    std = c.norm() / math.sqrt(max(1, c.numel() - 1))
    scale = 6 * std / 4 if std > 0 else torch.tensor(1.0)
    q = (c / scale + 2).round().nan_to_num(2.0).clamp(0, 3).long()  # NaN in: a NaN table out (refused)
    sums = torch.zeros(4, dtype=torch.float64).scatter_add_(0, q, c.double())
    cnt = torch.zeros(4, dtype=torch.float64).scatter_add_(0, q, torch.ones_like(c, dtype=torch.float64))
    lut = (torch.where(cnt > 0, sums / cnt.clamp(min=1), 0.0) + shift.double()).float()
    return lut.numpy().tobytes(), pack_2bit(q)


def _dequant(header: bytes, codes: bytes, kind: str, m: int) -> torch.Tensor:
    if kind == "bf16":
        raw = torch.frombuffer(bytearray(codes), dtype=torch.int16) if codes else torch.empty(0, dtype=torch.int16)
        return raw.view(torch.bfloat16).float()
    n = m
    if kind == "1bit":
        scale = float(np.frombuffer(header, dtype=np.float32)[0])
        check_scale(torch.tensor([scale]), MAX_ABS_VALUE, "1-bit scale")
        bits = np.unpackbits(np.frombuffer(codes, dtype=np.uint8))[:n]
        return torch.from_numpy(bits.astype(np.float32) * 2 - 1) * scale
    lut = torch.frombuffer(bytearray(header), dtype=torch.float32)
    check_scale(lut, MAX_ABS_VALUE, "2-bit value table")
    return lut[unpack_2bit(codes, n)]
