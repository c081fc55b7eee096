"""Update codecs: a list of float tensors <-> bytes, with exact byte accounting.

Both sides know the tensor shapes (they come from the run manifest's model), so the wire
carries values (and indices) only, and every codec's `encoded_size()` is exact and fixed.
`decode` checks the byte count, index ranges, duplicate indices, and that every decoded value
(after its scale or table is applied) is finite and within +-MAX_ABS_VALUE; it raises
ProtocolError for anything else: a peer's payload never reaches a tensor unchecked.

Codecs (their `name` is what envelopes carry):
  dense-float32 / dense-float16   every value, little-endian, tensors in model order
  int8-b<B>                       per block of B values: one fp32 scale + B int8 values
  int4-b<B> / int2-b<B> / int1-b<B>  per block of B values: one fp32 step d + B codes of 4, 2
                                  or 1 bits, packed; code c decodes to (c - offset) * d
                                  (offset 8, 1.5, 0.5: a grid with zero at 4 bits, a symmetric
                                  grid without zero at 2 and 1 bits)
  topk-c<C>-k<K>[-dct]-<V>-i<I>   per chunk of <= C x C values (2-D tensors; <= C for 1-D):
                                  the K largest-magnitude coefficients (after an orthonormal
                                  2-D DCT-II with -dct), indices packed in I bits (12 or 16),
                                  values V = bf16 | 2bit (4-level table per tensor) | 1bit (sign
                                  times one fp32 scale per tensor)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.errors import ProtocolError

Shapes = list[tuple[int, ...]]

FP16_MAX = 65504.0
"""Largest finite fp16 value: encoders clamp every value to +-FP16_MAX, whatever the codec."""
MAX_ABS_VALUE = 65536.0
"""Largest |value| a decoder accepts after scaling (2**16: FP16_MAX, and bf16's rounding of it).
Honest pseudo-gradients and momenta are orders of magnitude smaller; the bound is what keeps an
int8 scale, a 2-bit table or a 1-bit scale of 3e38 from turning parameters into inf, while a
dense fp16 payload of 65504 everywhere stays valid bytes (the aggregator's norm clip handles it).
Sums over any realistic number of peers stay far below fp32's 3.4e38."""


# ------------------------------------------------------------------------------------ dense
@dataclass(frozen=True)
class DenseCodec:
    shapes: tuple[tuple[int, ...], ...]
    dtype: str = "float16"

    @property
    def name(self) -> str:
        return f"dense-{self.dtype}"

    @property
    def _dt(self) -> torch.dtype:
        return {"float16": torch.float16, "float32": torch.float32}[self.dtype]

    def encoded_size(self) -> int:
        return sum(math.prod(s) for s in self.shapes) * (2 if self.dtype == "float16" else 4)

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        flat = _flat(tensors).clamp(-FP16_MAX, FP16_MAX)  # beyond fp16's range would become inf
        return flat.to(self._dt).numpy().tobytes()

    def decode(self, data: bytes) -> list[torch.Tensor]:
        _expect_size(self, data)
        flat = torch.frombuffer(bytearray(data), dtype=self._dt).to(torch.float32)
        _check_values(flat, self.name)
        return _split(flat, self.shapes)


# ------------------------------------------------------------------------------------- int8
def _to_blocks(t: torch.Tensor, block: int) -> tuple[int, torch.Tensor]:
    """(values, the tensor as rows of `block` values, zero-padded), clamped to fp16's range."""
    flat = t.detach().reshape(-1).to("cpu", torch.float32).clamp(-FP16_MAX, FP16_MAX)
    n = flat.numel()
    padded = torch.zeros(-(-n // block) * block)
    padded[:n] = flat
    return n, padded.view(-1, block)


def _from_blocks(levels: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """The n levels times their block's scale (the inverse of _to_blocks' layout), flat."""
    n = levels.numel()
    padded = torch.zeros(scale.numel() * block)
    padded[:n] = levels
    return (padded.view(-1, block) * scale[:, None]).reshape(-1)[:n]


@dataclass(frozen=True)
class Int8Codec:
    shapes: tuple[tuple[int, ...], ...]
    block: int = 256

    @property
    def name(self) -> str:
        return f"int8-b{self.block}"

    def _blocks(self, n: int) -> int:
        return -(-n // self.block)

    def encoded_size(self) -> int:
        return sum(self._blocks(math.prod(s)) * 4 + math.prod(s) for s in self.shapes)

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        out = []
        for t in tensors:
            n, blocks = _to_blocks(t, self.block)
            scale = blocks.abs().amax(dim=1) / 127.0
            q = torch.round(blocks / scale.clamp(min=1e-30)[:, None]).clamp(-127, 127).to(torch.int8)
            out += [scale.numpy().tobytes(), q.reshape(-1)[:n].numpy().tobytes()]
        return b"".join(out)

    def decode(self, data: bytes) -> list[torch.Tensor]:
        _expect_size(self, data)
        out, off = [], 0
        for s in self.shapes:
            n, nb = math.prod(s), self._blocks(math.prod(s))
            scale = torch.frombuffer(bytearray(data[off:off + 4 * nb]), dtype=torch.float32)
            off += 4 * nb
            q = torch.frombuffer(bytearray(data[off:off + n]), dtype=torch.int8).to(torch.float32)
            off += n
            _check_scale(scale, MAX_ABS_VALUE / 127, f"{self.name} block scale")
            values = _from_blocks(q, scale, self.block)
            _check_values(values, self.name)  # after scaling: the scale check alone misses rounding
            out.append(values.reshape(s))
        return out


# ------------------------------------------------------------------------- int4/int2/int1
QUANT_OFFSET = {4: 8.0, 2: 1.5, 1: 0.5}
"""Code c of a `bits`-bit value decodes to (c - QUANT_OFFSET[bits]) * d."""


@dataclass(frozen=True)
class QuantCodec:
    """Blockwise low-bit values (dense; meant to run under error feedback, which keeps what the
    rounding dropped). The encoder's step d per block: absmax / 7 at 4 bits (codes 1..15 for
    -7..7, zero exact), the block's RMS at 2 bits (levels +-d/2, +-3d/2: next to the optimal
    4-level quantiser of a Gaussian), twice the mean |x| at 1 bit (levels +-mean|x|: sign x
    the L2-best magnitude). The decoder does not care how d was chosen: it checks that every d
    is finite and small enough that no level leaves +-MAX_ABS_VALUE."""

    shapes: tuple[tuple[int, ...], ...]
    bits: int = 4
    block: int = 256

    def __post_init__(self):
        if self.bits not in QUANT_OFFSET or self.block < 1:
            raise ValueError(f"quantised codec: {self.bits} bits / block {self.block} not supported (4, 2 or 1 bits)")

    @property
    def name(self) -> str:
        return f"int{self.bits}-b{self.block}"

    def _blocks(self, n: int) -> int:
        return -(-n // self.block)

    def _top(self) -> float:
        """Largest |c - offset| over the codes: the step bound is MAX_ABS_VALUE / this."""
        return max(QUANT_OFFSET[self.bits], 2 ** self.bits - 1 - QUANT_OFFSET[self.bits])

    def _code_bytes(self, n: int) -> int:
        return -(-n * self.bits // 8)

    def encoded_size(self) -> int:
        return sum(self._blocks(math.prod(s)) * 4 + self._code_bytes(math.prod(s)) for s in self.shapes)

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        out = []
        for t in tensors:
            n, blocks = _to_blocks(t, self.block)
            nb = blocks.shape[0]
            counts = torch.full((nb,), float(self.block))
            counts[-1] = n - (nb - 1) * self.block  # the last block's padding does not dilute its scale
            if self.bits == 4:
                d = blocks.abs().amax(dim=1) / 7.0
            elif self.bits == 2:
                d = (blocks.square().sum(dim=1) / counts).sqrt()
            else:
                d = blocks.abs().sum(dim=1) / counts * 2.0
            # what decoders accept (values beyond: clipped), less a margin for the rounding to fp32
            d = d.clamp(max=MAX_ABS_VALUE / self._top() * (1 - 1e-6))
            x = blocks / d.clamp(min=1e-30)[:, None]
            if self.bits == 4:
                c = x.round().clamp(-7, 7) + 8
            elif self.bits == 2:
                c = (x.floor() + 2).clamp(0, 3)
            else:
                c = (x >= 0).float()
            c = c.nan_to_num(QUANT_OFFSET[self.bits]).to(torch.uint8).reshape(-1)[:n]
            out += [d.numpy().astype("<f4").tobytes(), _pack_bits(c.numpy(), self.bits)]
        return b"".join(out)

    def decode(self, data: bytes) -> list[torch.Tensor]:
        _expect_size(self, data)
        out, off = [], 0
        top = self._top()
        for s in self.shapes:
            n, nb = math.prod(s), self._blocks(math.prod(s))
            d = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=nb, offset=off).astype(np.float32))
            off += 4 * nb
            nc = self._code_bytes(n)
            codes = _unpack_bits(data[off:off + nc], n, self.bits)
            off += nc
            _check_scale(d, MAX_ABS_VALUE / top, f"{self.name} block step")
            levels = torch.from_numpy(codes.astype(np.float32)) - QUANT_OFFSET[self.bits]
            values = _from_blocks(levels, d, self.block)
            _check_values(values, self.name)
            out.append(values.reshape(s))
        return out


def _pack_bits(c: np.ndarray, bits: int) -> bytes:
    """Codes (uint8, each < 2**bits) packed little-end first: the first code in the low bits."""
    per = 8 // bits
    a = np.concatenate([c.astype(np.uint8), np.zeros((-len(c)) % per, np.uint8)]).reshape(-1, per)
    out = np.zeros(len(a), np.uint8)
    for i in range(per):
        out |= (a[:, i] << (i * bits)).astype(np.uint8)
    return out.tobytes()


def _unpack_bits(raw: bytes, n: int, bits: int) -> np.ndarray:
    per, mask = 8 // bits, (1 << bits) - 1
    b = np.frombuffer(raw, dtype=np.uint8)
    return np.stack([(b >> (i * bits)) & mask for i in range(per)], axis=1).reshape(-1)[:n]


# -------------------------------------------------------------------------- chunked top-k
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

    def _k(self, ch: Chunking) -> int:
        k = self.k_vector if self.k_vector and len(ch.shape) != 2 else self.k
        return min(k, ch.chunk_numel)

    def _sizes(self, ch: Chunking) -> tuple[int, int, int]:
        """(header, index, value) bytes of one tensor."""
        m = ch.num_chunks * self._k(ch)
        header = {"bf16": 0, "2bit": 16, "1bit": 4}[self.values]
        index = 2 * m if self.index_bits == 16 else 3 * -(-m // 2)  # 12-bit: two indices in 3 bytes
        value = {"bf16": 2 * m, "2bit": -(-m // 4), "1bit": -(-m // 8)}[self.values]
        return header, index, value

    def encoded_size(self) -> int:
        return sum(sum(self._sizes(ch)) for ch in self.chunkings())

    # ---- the steps, exposed because error feedback needs what was selected and what is seen
    def select(self, tensors: list[torch.Tensor]) -> list[Selection]:
        out = []
        for ch, t in zip(self.chunkings(), tensors):
            c = ch.to_chunks(t.detach().to("cpu", torch.float32))
            idx = c.abs().topk(self._k(ch), dim=1, sorted=False).indices
            idx, _ = idx.sort(dim=1)  # canonical order: the wire never depends on topk's
            out.append(Selection(idx=idx, val=c.gather(1, idx)))
        return out

    def quantize(self, sel: list[Selection]) -> list[Selection]:
        """The values as receivers will decode them."""
        return [Selection(s.idx, _dequant(*_quant(s.val, self.values), self.values, s.val.numel()).reshape(s.val.shape))
                for s in sel]

    def densify(self, sel: list[Selection]) -> list[torch.Tensor]:
        out = []
        for ch, s in zip(self.chunkings(), sel):
            c = torch.zeros(ch.num_chunks, ch.chunk_numel).scatter_(1, s.idx, s.val)
            out.append(ch.from_chunks(c))
        return out

    def mean_dense(self, sels: list[list[Selection]], dtype=torch.float32) -> list[torch.Tensor]:
        """Mean of several peers' selections, summed in the given order in the chunk domain.

        One inverse transform per tensor instead of one per peer; with dtype=float64 the result
        of the (float64) inverse DCT is kept unrounded, so its signs agree across machines.
        """
        out = []
        for i, ch in enumerate(self.chunkings()):
            acc = torch.zeros(ch.num_chunks, ch.chunk_numel, dtype=dtype)
            for sel in sels:
                acc.scatter_add_(1, sel[i].idx, sel[i].val.to(dtype))
            out.append(ch.from_chunks(acc / len(sels)))
        return out

    def pack(self, sel: list[Selection]) -> bytes:
        parts = []
        for s in sel:
            header, codes = _quant(s.val, self.values)
            parts += [header, _pack_indices(s.idx.reshape(-1), self.index_bits), codes]
        return b"".join(parts)

    def unpack(self, data: bytes) -> list[Selection]:
        _expect_size(self, data)
        out, off = [], 0
        for ch in self.chunkings():
            k = self._k(ch)
            m = ch.num_chunks * k
            nh, ni, nv = self._sizes(ch)
            header, off = data[off:off + nh], off + nh
            idx = _unpack_indices(data[off:off + ni], m, self.index_bits).reshape(ch.num_chunks, k)
            off += ni
            codes, off = data[off:off + nv], off + nv
            if m and int(idx.max()) >= ch.chunk_numel:
                raise ProtocolError(f"{self.name}: index out of range for chunks of {ch.chunk_numel}")
            srt, _ = idx.sort(dim=1)
            if k > 1 and bool((srt[:, 1:] == srt[:, :-1]).any()):
                raise ProtocolError(f"{self.name}: repeated index within a chunk")
            val = _dequant(header, codes, self.values, m).reshape(ch.num_chunks, k)
            _check_values(val, self.name)
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
    return lut.numpy().tobytes(), _pack_2bit(q)


def _dequant(header: bytes, codes: bytes, kind: str, m: int) -> torch.Tensor:
    if kind == "bf16":
        raw = torch.frombuffer(bytearray(codes), dtype=torch.int16) if codes else torch.empty(0, dtype=torch.int16)
        return raw.view(torch.bfloat16).float()
    n = m
    if kind == "1bit":
        scale = float(np.frombuffer(header, dtype=np.float32)[0])
        _check_scale(torch.tensor([scale]), MAX_ABS_VALUE, "1-bit scale")
        bits = np.unpackbits(np.frombuffer(codes, dtype=np.uint8))[:n]
        return torch.from_numpy(bits.astype(np.float32) * 2 - 1) * scale
    lut = torch.frombuffer(bytearray(header), dtype=torch.float32)
    _check_scale(lut, MAX_ABS_VALUE, "2-bit value table")
    return lut[_unpack_2bit(codes, n)]


def _pack_2bit(q: torch.Tensor) -> bytes:
    a = q.numpy().astype(np.uint8)
    a = np.concatenate([a, np.zeros((-len(a)) % 4, np.uint8)]).reshape(-1, 4)
    return (a[:, 0] | a[:, 1] << 2 | a[:, 2] << 4 | a[:, 3] << 6).astype(np.uint8).tobytes()


def _unpack_2bit(codes: bytes, n: int) -> torch.Tensor:
    b = np.frombuffer(codes, dtype=np.uint8)
    a = np.stack([b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6], axis=1).reshape(-1)[:n]
    return torch.from_numpy(a.astype(np.int64))


def _pack_indices(idx: torch.Tensor, bits: int) -> bytes:
    a = idx.numpy().astype(np.uint16)
    if bits == 16:
        return a.astype("<u2").tobytes()
    if len(a) % 2:
        a = np.append(a, np.uint16(0))
    lo, hi = a[0::2], a[1::2]  # two 12-bit indices in three bytes
    out = np.stack([lo & 0xFF, (lo >> 8) | ((hi & 0xF) << 4), hi >> 4], axis=1).astype(np.uint8)
    return out.tobytes()


def _unpack_indices(raw: bytes, m: int, bits: int) -> torch.Tensor:
    if bits == 16:
        return torch.from_numpy(np.frombuffer(raw, dtype="<u2").astype(np.int64)[:m])
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int64)
    lo = b[:, 0] | ((b[:, 1] & 0xF) << 8)
    hi = (b[:, 1] >> 4) | (b[:, 2] << 4)
    return torch.from_numpy(np.stack([lo, hi], axis=1).reshape(-1)[:m].copy())


# ------------------------------------------------------------------------------ helpers
def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in tensors])


def _split(flat: torch.Tensor, shapes) -> list[torch.Tensor]:
    out, off = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(flat[off:off + n].reshape(s))
        off += n
    return out


def _expect_size(codec, data: bytes) -> None:
    if len(data) != codec.encoded_size():
        raise ProtocolError(f"{codec.name}: payload is {len(data)} bytes, expected {codec.encoded_size()}")


def _finite(t: torch.Tensor, name: str) -> None:
    if not torch.isfinite(t).all():
        raise ProtocolError(f"{name}: payload contains NaN or inf")


def _check_values(t: torch.Tensor, name: str) -> None:
    """Decoded values: finite and within +-MAX_ABS_VALUE."""
    _finite(t, name)
    if t.numel() and float(t.abs().max()) > MAX_ABS_VALUE:
        raise ProtocolError(f"{name}: decoded value {float(t.abs().max()):.3g} is beyond the bound "
                            f"+-{MAX_ABS_VALUE:g} (no honest update comes near it)")


def _check_scale(t: torch.Tensor, bound: float, name: str) -> None:
    """A scale or value table: finite and |x| <= bound, so that nothing it multiplies leaves the bound."""
    _finite(t, name)
    if t.numel() and float(t.abs().max()) > bound:
        raise ProtocolError(f"{name} {float(t.abs().max()):.3g} is beyond the bound {bound:.6g}")


Codec = DenseCodec | Int8Codec | QuantCodec | TopKCodec
