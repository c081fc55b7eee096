"""Low-rank codecs (PowerSGD, arXiv 1905.13727): each matrix as two rank-r factors, the rest 1-bit.

lowrank-r<R>-b<B>    for each matrix M (m x n) whose factors hold fewer values than it
                     (r (m + n) < m n), in model order: P (m x r), then Q (n x r), each as r fp32
                     column scales, then r columns of codes (column k's codes together): int8
                     codes c (value c x scale, c in -127..127); M decodes to P Q^T. Then every
                     other tensor (1-D, and matrices too small to gain) as one int1-b<B> payload
                     (blockwise.py), in model order.
lowrank1-r<R>-b<B>   the same with 1-bit factor codes, each column's packed in ceil(rows / 8)
                     bytes, the first in the low bit: code c decodes to (c - 1/2) x scale (the
                     scale twice the column's mean |x|: sign times the L2-best magnitude). At
                     equal bytes 1-bit factors carry 8 times the rank of int8 ones.

Which: what the bytes buy depends on the spectrum. Where a few directions hold most of a
matrix's update, int8 factors send them near exactly and the error buffer keeps the rest, which
later rounds' power iterations find; a sign's rounding is not low-rank, and at a rank far below
the matrix's sides the buffer piles it up (tests/test_codecs_lowrank.py). Muon's pseudo-gradients
are flat (its steps are orthogonalised: the top 6 of 64 directions hold 25-39% of the energy on
the full tier), and there rank buys more than precision: at the int1 wire's bytes, 1-bit factors
of rank 43 beat int8 ones of rank 6 (docs/benchmarks.md, "Levers toward 10,000x").

DETERMINISM: every peer must decode a payload to the same bits, whatever its BLAS library or
thread count, because the outer step of every peer starts from the decoded values. A matmul
(gemm) blocks and orders its sums by library and thread count, so the decoder does not use one:
P Q^T is a sum of rank-1 outer products p_k q_k^T, k = 0 .. r-1 in that order, each an
elementwise fp32 multiply (broadcast) added elementwise to the running sum (separate ops, no
fused multiply-add): every element is rounded the same way on every machine. (The encoder's
power iteration uses matmul and QR; that is local: peers agree on the payload's bytes, not on
how they were found.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from protocol.codecs.bitpack import pack_bits, unpack_bits
from protocol.codecs.blockwise import QuantCodec
from protocol.codecs.bounds import FP16_MAX, MAX_ABS_VALUE, check_scale, check_values, expect_size
from protocol.errors import ProtocolError

FACTOR_BITS = (8, 1)
"""Code widths of a factor's values (int8 with an absmax scale, or a sign with a mean-|x| scale)."""
CLAMP_MARGIN = 1e-3
"""How far below +-MAX_ABS_VALUE an encoder scales a reconstruction that would leave it (far above
fp32 rounding of a sum of r products: an honest peer's own payload is never refused)."""


@dataclass(frozen=True)
class LowRankCodec:
    """Rank-r factors of each matrix (`bits` 8 or 1 per value, a scale per column) and 1-bit
    blockwise values for the rest; meant to run under error feedback (the buffer keeps M minus
    what the receiver decodes). `factorize` is one warm-started power iteration (the encoder's
    side); `decode` checks the byte count, every scale (finite, no factor value beyond
    +-MAX_ABS_VALUE), int8 codes (no -128), and every reconstructed value (finite, within
    +-MAX_ABS_VALUE)."""

    shapes: tuple[tuple[int, ...], ...]
    rank: int = 4
    block: int = 1024
    bits: int = 8
    dense: QuantCodec = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.rank < 1 or self.block < 1 or self.bits not in FACTOR_BITS:
            raise ValueError(
                f"low-rank codec: rank {self.rank} / block {self.block} (at least 1), {self.bits} bits (8, 1)"
            )
        rest = tuple(s for s in self.shapes if not self.factored(s))
        object.__setattr__(self, "dense", QuantCodec(rest, bits=1, block=self.block))

    @property
    def name(self) -> str:
        return f"lowrank{'' if self.bits == 8 else 1}-r{self.rank}-b{self.block}"

    def factored(self, shape: tuple[int, ...]) -> bool:
        """A matrix whose rank-r factors hold fewer values than it (then r < m and r < n)."""
        return len(shape) == 2 and self.rank * (shape[0] + shape[1]) < shape[0] * shape[1]

    def _column_bytes(self, rows: int) -> int:
        return rows if self.bits == 8 else -(-rows // 8)

    def _factor_bytes(self, rows: int) -> int:
        return self.rank * (4 + self._column_bytes(rows))

    def encoded_size(self) -> int:
        mats = sum(self._factor_bytes(s[0]) + self._factor_bytes(s[1]) for s in self.shapes if self.factored(s))
        return mats + self.dense.encoded_size()

    def factorize(self, tensors: list[torch.Tensor], warm: list[torch.Tensor] | None = None):
        """One power iteration per matrix, from `warm` (each matrix's Q of the last round; None: a
        fixed seeded start): P = M Q, orthonormalised, Q = M^T P. Returns ((P, Q) per matrix,
        in model order, and the Qs to keep for the next round)."""
        factors, keep = [], []
        mats = [t for t, s in zip(tensors, self.shapes) if self.factored(s)]
        for i, t in enumerate(mats):
            m = t.detach().to("cpu", torch.float32).clamp(-FP16_MAX, FP16_MAX)
            q0 = warm[i] if warm else torch.randn(m.shape[1], self.rank, generator=torch.Generator().manual_seed(i))
            p = torch.linalg.qr(m @ q0).Q  # reduced: m x r, orthonormal columns
            q = m.t() @ p
            keep.append(q)
            # on the wire, each column pair balanced (|p_k| = |q_k|): both factors' values stay
            # below sqrt(|M|), far inside the decoder's bound, whatever M's scale
            s = q.norm(dim=0).sqrt().clamp(min=1e-30)
            factors.append((p * s, q / s))
        return factors, keep

    def encode(self, tensors: list[torch.Tensor], warm: list[torch.Tensor] | None = None) -> bytes:
        return self.pack(self.factorize(tensors, warm)[0], tensors)

    def pack(self, factors: list[tuple[torch.Tensor, torch.Tensor]], tensors: list[torch.Tensor]) -> bytes:
        """The payload: the matrices' factors (from `factorize`), then the other tensors of `tensors` at 1 bit."""
        out = []
        for p, q in factors:
            (sp, cp), (sq, cq) = self._quantise(p), self._quantise(q)
            big = float(self._product(self._values(sp, cp), self._values(sq, cq)).abs().max())
            if big > MAX_ABS_VALUE * (1 - CLAMP_MARGIN):  # scale what decoders would refuse back inside
                sq = sq * (MAX_ABS_VALUE * (1 - CLAMP_MARGIN) / big)
            out += [_le(sp), self._code_bytes(cp), _le(sq), self._code_bytes(cq)]
        rest = [t for t, s in zip(tensors, self.shapes) if not self.factored(s)]
        return b"".join(out) + self.dense.encode(rest)

    def _quantise(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale per column, codes as columns x rows) of a factor (rows x r)."""
        cols = f.t().contiguous()
        if self.bits == 1:
            return (cols.abs().mean(dim=1) * 2.0).nan_to_num(0.0), (cols >= 0).to(torch.uint8)
        scale = (cols.abs().amax(dim=1) / 127.0).nan_to_num(0.0)
        codes = torch.round(cols / scale.clamp(min=1e-30)[:, None]).nan_to_num(0.0).clamp(-127, 127)
        return scale, codes.to(torch.int8)

    def _code_bytes(self, codes: torch.Tensor) -> bytes:
        if self.bits == 8:
            return codes.numpy().tobytes()
        return b"".join(pack_bits(c, 1) for c in codes.numpy())  # each column from a byte boundary

    def _values(self, scale: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Decoded factor values, columns x rows: code x scale (int8) or (code - 1/2) x scale (1 bit)."""
        levels = codes.to(torch.float32) - (0.5 if self.bits == 1 else 0.0)
        return levels * scale[:, None]

    @staticmethod
    def _product(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """P Q^T from the factors' columns (r x rows each): the sum over k in order of the elementwise
        products p_k q_k^T, separate fp32 multiplies and adds (no gemm, no fused multiply-add)."""
        out = torch.zeros(p.shape[1], q.shape[1])
        for k in range(p.shape[0]):
            out = out + p[k][:, None] * q[k][None, :]
        return out

    def _read(self, data: bytes, off: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales, codes as r x rows) of one factor at `off`, its scales checked."""
        r, width = self.rank, self._column_bytes(rows)
        scale = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=r, offset=off).astype(np.float32))
        raw = np.frombuffer(data, dtype=np.uint8, count=r * width, offset=off + 4 * r)
        # no factor value beyond +-MAX_ABS_VALUE (|code| <= 127, or 1/2): the products stay finite
        check_scale(scale, MAX_ABS_VALUE / (127 if self.bits == 8 else 0.5), f"{self.name} factor scale")
        if self.bits == 1:
            return scale, torch.from_numpy(np.stack([unpack_bits(c.tobytes(), rows, 1) for c in raw.reshape(r, width)]))
        codes = torch.from_numpy(raw.view(np.int8).reshape(r, rows).copy())
        if (codes == -128).any():
            raise ProtocolError(f"{self.name}: factor code -128 (encoders write -127 .. 127)")
        return scale, codes

    def decode(self, data: bytes) -> list[torch.Tensor]:
        expect_size(self, data)
        mats, off = [], 0
        for s in (s for s in self.shapes if self.factored(s)):
            (sp, cp), (sq, cq) = self._read(data, off, s[0]), self._read(data, off + self._factor_bytes(s[0]), s[1])
            off += self._factor_bytes(s[0]) + self._factor_bytes(s[1])
            values = self._product(self._values(sp, cp), self._values(sq, cq))
            check_values(values, self.name)
            mats.append(values)
        rest, mats = iter(self.dense.decode(data[off:])), iter(mats)
        return [next(mats) if self.factored(s) else next(rest) for s in self.shapes]


def _le(t: torch.Tensor) -> bytes:
    return t.numpy().astype("<f4").tobytes()
