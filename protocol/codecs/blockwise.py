"""Blockwise quantised codecs: per block of B values, one fp32 scale (or step) and B low-bit codes.

int8-b<B>                          one fp32 scale + B int8 values
int4-b<B> / int2-b<B> / int1-b<B>  one fp32 step d + B codes of 4, 2 or 1 bits, packed; code c
                                   decodes to (c - offset) * d (offset 8, 1.5, 0.5: a grid with
                                   zero at 4 bits, a symmetric grid without zero at 2 and 1 bits)
int1-s<S>-b<B>                     an 8-byte flip seed, then per block one fp32 step d + B / S
                                   sign bits: each run of S values (their signs flipped by the
                                   seed's pattern) shares one code (1/2, 1/4 bit per value)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from protocol.codecs.bitpack import pack_bits, unpack_bits
from protocol.codecs.bounds import FP16_MAX, MAX_ABS_VALUE, check_scale, check_values, expect_size


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


# ------------------------------------------------------------------------------------- int8
@dataclass(frozen=True)
class Int8Codec:
    shapes: tuple[tuple[int, ...], ...]
    block: int = 256

    @property
    def name(self) -> str:
        return f"int8-b{self.block}"

    def blocks(self, n: int) -> int:
        return -(-n // self.block)

    def encoded_size(self) -> int:
        return sum(self.blocks(math.prod(s)) * 4 + math.prod(s) for s in self.shapes)

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        out = []
        for t in tensors:
            n, blocks = _to_blocks(t, self.block)
            scale = blocks.abs().amax(dim=1) / 127.0
            q = torch.round(blocks / scale.clamp(min=1e-30)[:, None]).clamp(-127, 127).to(torch.int8)
            out += [scale.numpy().tobytes(), q.reshape(-1)[:n].numpy().tobytes()]
        return b"".join(out)

    def decode(self, data: bytes) -> list[torch.Tensor]:
        expect_size(self, data)
        out, off = [], 0
        for s in self.shapes:
            n, nb = math.prod(s), self.blocks(math.prod(s))
            scale = torch.frombuffer(bytearray(data[off : off + 4 * nb]), dtype=torch.float32)
            off += 4 * nb
            q = torch.frombuffer(bytearray(data[off : off + n]), dtype=torch.int8).to(torch.float32)
            off += n
            check_scale(scale, MAX_ABS_VALUE / 127, f"{self.name} block scale")
            values = _from_blocks(q, scale, self.block)
            check_values(values, self.name)  # after scaling: the scale check alone misses rounding
            out.append(values.reshape(s))
        return out


# ------------------------------------------------------------------------- int4/int2/int1
QUANT_OFFSET = {4: 8.0, 2: 1.5, 1: 0.5}
"""Code c of a `bits`-bit value decodes to (c - QUANT_OFFSET[bits]) * d."""


def quant_top(bits: int) -> float:
    """Largest |c - offset| over the `bits`-bit codes: a step's bound is MAX_ABS_VALUE / this."""
    return max(QUANT_OFFSET[bits], 2**bits - 1 - QUANT_OFFSET[bits])


def quant_codes(x: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes (as floats) of values `x` in units of their step: 4 bits round to -7..7 (+8),
    2 bits floor to the levels -3/2..3/2 (codes 0..3), 1 bit is the sign (1 for >= 0)."""
    if bits == 4:
        return x.round().clamp(-7, 7) + 8
    if bits == 2:
        return (x.floor() + 2).clamp(0, 3)
    return (x >= 0).float()


FLIP_SEED_BYTES = 8
"""The seed of a shared-sign payload's flip pattern (QuantCodec with share > 1)."""


@dataclass(frozen=True)
class QuantCodec:
    """Blockwise low-bit values (dense; meant to run under error feedback, which keeps what the
    rounding dropped). The encoder's step d per block: absmax / 7 at 4 bits (codes 1..15 for
    -7..7, zero exact), the block's RMS at 2 bits (levels +-d/2, +-3d/2: next to the optimal
    4-level quantiser of a Gaussian), twice the mean |x| at 1 bit (levels +-mean|x|: sign x
    the L2-best magnitude). The decoder does not care how d was chosen: it checks that every d
    is finite and small enough that no level leaves +-MAX_ABS_VALUE.

    `share` > 1 (1 bit only): each run of `share` consecutive values of a block sends one code,
    the sign of the run's sum, and all of them decode to it: 1 / share bits per value. The step
    is the L2-best one for those signs: twice the block's sum of |run sum| over its values
    (share 1: twice the mean |x|, as above). A fixed grouping could never send the differences
    within a run (error feedback would pile them up unsent), so each payload first flips the
    values' signs by a pattern drawn from a seed it carries (a hash of its input: new each
    round); the decoder flips them back. Over rounds every direction gets its turn."""

    shapes: tuple[tuple[int, ...], ...]
    bits: int = 4
    block: int = 256
    share: int = 1

    def __post_init__(self):
        if self.bits not in QUANT_OFFSET or self.block < 1:
            raise ValueError(f"quantised codec: {self.bits} bits / block {self.block} not supported (4, 2 or 1 bits)")
        if self.share < 1 or (self.share > 1 and self.bits != 1) or self.block % self.share:
            raise ValueError(f"quantised codec: a sign shared by {self.share}  values: 1 bit, runs that tile a block")

    @property
    def name(self) -> str:
        return f"int{self.bits}-b{self.block}" if self.share == 1 else f"int1-s{self.share}-b{self.block}"

    def blocks(self, n: int) -> int:
        return -(-n // self.block)

    def _top(self) -> float:
        return quant_top(self.bits)

    def _codes(self, n: int) -> int:
        """Codes a tensor of n values sends (one per run of `share`; the last run may be short)."""
        return -(-n // self.share)

    def _code_bytes(self, n: int) -> int:
        return -(-self._codes(n) * self.bits // 8)

    def _header(self) -> int:
        """Bytes of the flip seed (shared signs only)."""
        return FLIP_SEED_BYTES if self.share > 1 else 0

    def flips(self, seed: bytes) -> list[torch.Tensor]:
        """+-1 per value of every tensor, from the seed (SHAKE-128: the same on every machine)."""
        total = sum(math.prod(s) for s in self.shapes)
        raw = np.frombuffer(hashlib.shake_128(seed).digest(-(-total // 8)), dtype=np.uint8)
        signs = torch.from_numpy(1.0 - 2.0 * np.unpackbits(raw, bitorder="little")[:total].astype(np.float32))
        return [f.reshape(s) for f, s in zip(signs.split([math.prod(s) for s in self.shapes]), self.shapes)]

    def encoded_size(self) -> int:
        values = sum(self.blocks(math.prod(s)) * 4 + self._code_bytes(math.prod(s)) for s in self.shapes)
        return self._header() + values

    def encode(self, tensors: list[torch.Tensor]) -> bytes:
        out = []
        if self.share > 1:
            tensors = [t.detach().to("cpu", torch.float32) for t in tensors]
            seed = hashlib.blake2b(b"".join(t.numpy().tobytes() for t in tensors), digest_size=FLIP_SEED_BYTES)
            out.append(seed.digest())
            tensors = [t * f for t, f in zip(tensors, self.flips(out[0]))]
        for t in tensors:
            n, blocks = _to_blocks(t, self.block)
            nb = blocks.shape[0]
            counts = torch.full((nb,), float(self.block))
            counts[-1] = n - (nb - 1) * self.block  # the last block's padding does not dilute its scale
            if self.bits == 4:
                d = blocks.abs().amax(dim=1) / 7.0
            elif self.bits == 2:
                d = (blocks.square().sum(dim=1) / counts).sqrt()
            else:  # a run's sum (one value per run when share is 1): the decoded level is +-d/2 for each
                runs = blocks.view(nb, -1, self.share).sum(dim=2)
                d = runs.abs().sum(dim=1) / counts * 2.0
                blocks = runs
            # what decoders accept (values beyond: clipped), less a margin for the rounding to fp32
            d = d.clamp(max=MAX_ABS_VALUE / self._top() * (1 - 1e-6))
            c = quant_codes(blocks / d.clamp(min=1e-30)[:, None], self.bits)
            c = c.nan_to_num(QUANT_OFFSET[self.bits]).to(torch.uint8).reshape(-1)[: self._codes(n)]
            out += [d.numpy().astype("<f4").tobytes(), pack_bits(c.numpy(), self.bits)]
        return b"".join(out)

    def decode(self, data: bytes) -> list[torch.Tensor]:
        expect_size(self, data)
        out, off = [], self._header()
        top = self._top()
        for s in self.shapes:
            n, nb = math.prod(s), self.blocks(math.prod(s))
            d = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=nb, offset=off).astype(np.float32))
            off += 4 * nb
            nc = self._code_bytes(n)
            codes = unpack_bits(data[off : off + nc], self._codes(n), self.bits)
            off += nc
            check_scale(d, MAX_ABS_VALUE / top, f"{self.name} block step")
            levels = torch.from_numpy(codes.astype(np.float32)) - QUANT_OFFSET[self.bits]
            levels = levels.repeat_interleave(self.share)[:n]
            values = _from_blocks(levels, d, self.block)
            check_values(values, self.name)
            out.append(values.reshape(s))
        if self.share > 1:  # (+-1: exact, and the bound checked above holds)
            out = [v * f for v, f in zip(out, self.flips(data[:FLIP_SEED_BYTES]))]
        return out
