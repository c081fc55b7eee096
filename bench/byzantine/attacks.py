"""`bench byzantine`'s attacks: what a lying peer sends, crafted in the strategy's wire format.

Each attack is a function (what it saw this round, which attacker it is) -> payload bytes. Some
answer from the honest payloads (they answer last), some forge bytes by hand past any encoder's
clamping (NaN, inf, 3e38), so that the codecs' bounds and the aggregators are what stops them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from protocol.codecs import FP16_MAX, DenseCodec, Int8Codec, Selection, TopKCodec, pack_indices

SIGN_FLIP_SCALE = 4.0
"""sign-flip sends -4 x an honest update (a flip at the honest scale barely differs from a freeloader)."""
NOISE_SCALE = 100.0
"""scaled-noise sends Gaussian noise of 100 x an honest update's RMS, per tensor."""
IPM_EPS = 0.1
"""ipm sends -eps x the honest mean (Xie et al. 2019 use 0.1 against robust aggregators)."""
HUGE = 3.0e38
"""max-value: what the wire formats can carry beyond fp16 (int8 scale, 2-bit table, 1-bit scale, bf16, fp32)."""


@dataclass
class RoundView:
    """What an attacker can see when it crafts its payload in one round."""

    codec: object
    """The strategy's codec (protocol/codecs/): attackers write its wire format."""
    honest: list[bytes]
    """This round's honest payloads (attackers answer last, so they saw them)."""
    previous: list[bytes]
    """Last round's honest payloads (stale replays)."""
    gen: torch.Generator
    """The attackers' randomness (seeded: runs repeat)."""
    n: int
    """Peers in the round, attackers included."""
    f: int
    """Attackers in the round."""
    _decoded: list | None = None
    """Cache of the honest payloads, decoded."""

    @property
    def decoded(self) -> list[list[torch.Tensor]]:
        if self._decoded is None:
            self._decoded = [self.codec.decode(p) for p in self.honest]
        return self._decoded

    def mean_std(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        stacks = [torch.stack(ts) for ts in zip(*self.decoded)]
        return [s.mean(0) for s in stacks], [s.std(0, correction=0) for s in stacks]


def _sign_flip(r: RoundView, a: int) -> bytes:
    return r.codec.encode([-SIGN_FLIP_SCALE * t for t in r.decoded[a % len(r.honest)]])


def _scaled_noise(r: RoundView, a: int) -> bytes:
    ref = r.decoded[a % len(r.honest)]
    return r.codec.encode(
        [torch.randn(t.shape, generator=r.gen) * (NOISE_SCALE * float(t.square().mean().sqrt())) for t in ref]
    )


def alie_z(n: int, f: int) -> float:
    """'A little is enough' (Baruch et al. 2019): z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - f."""
    s = math.floor(n / 2 + 1) - f
    return max(0.0, statistics.NormalDist().inv_cdf(min(0.999, max(0.5, (n - s) / n))))


def _alie(r: RoundView, a: int) -> bytes:
    mean, std = r.mean_std()
    z = alie_z(r.n, r.f)
    return r.codec.encode([m - z * s for m, s in zip(mean, std)])


def _ipm(r: RoundView, a: int) -> bytes:
    mean, _ = r.mean_std()
    return r.codec.encode([-IPM_EPS * m for m in mean])


def _nan_inf(r: RoundView, a: int) -> bytes:
    return forged_payload(r.codec, math.nan if a % 2 == 0 else math.inf)


def _max_value(r: RoundView, a: int) -> bytes:
    """Even attackers: the largest value the wire format carries (fp16 65504, which is valid bytes;
    else 3e38 as an int8 scale, 2-bit table, 1-bit scale, bf16 or fp32, which the codec refuses).
    Odd attackers: the largest value the codec still accepts (65504) in every codec: the clip's job."""
    fp16 = isinstance(r.codec, DenseCodec) and r.codec.dtype == "float16"
    return forged_payload(r.codec, HUGE if a % 2 == 0 and not fp16 else FP16_MAX)


def _sparse_index(r: RoundView, a: int) -> bytes:
    """All attackers pick the same coordinates every round, at +-65504 (fixed signs)."""
    g = torch.Generator().manual_seed(4242)  # shared by the attackers, not by round
    codec = r.codec
    if isinstance(codec, TopKCodec):
        sels = []
        for ch in codec.chunkings():
            k = min(codec.k, ch.chunk_numel)
            idx = torch.rand(ch.num_chunks, ch.chunk_numel, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
            sign = torch.randint(0, 2, (ch.num_chunks, k), generator=g).float() * 2 - 1
            sels.append(Selection(idx=idx, val=sign * FP16_MAX))
        return codec.pack(sels)
    out = []
    for t in r.decoded[0]:
        mask = torch.rand(t.shape, generator=g) < 1 / 64
        sign = torch.randint(0, 2, t.shape, generator=g).float() * 2 - 1
        out.append(mask.float() * sign * FP16_MAX)
    return codec.encode(out)


def _freeloader(r: RoundView, a: int) -> bytes:
    """Even attackers send zeros; odd ones replay an honest update of the previous round."""
    if a % 2 == 1 and r.previous:
        return r.previous[a % len(r.previous)]
    return r.codec.encode([torch.zeros_like(t) for t in r.decoded[0]])


def _copycat(r: RoundView, a: int) -> bytes:
    return r.honest[a % len(r.honest)]


ATTACKS: dict[str, Callable[[RoundView, int], bytes]] = {
    "sign-flip": _sign_flip,
    "scaled-noise": _scaled_noise,
    "alie": _alie,
    "ipm": _ipm,
    "nan-inf": _nan_inf,
    "max-value": _max_value,
    "sparse-index": _sparse_index,
    "freeloader": _freeloader,
    "copycat": _copycat,
}


def forged_payload(codec, value: float) -> bytes:
    """Bytes of exactly the codec's size whose every value decodes to `value` (NaN, inf, 3e38 included):
    what a hostile peer writes by hand, past any encoder's clamping."""
    if isinstance(codec, DenseCodec):
        n = sum(math.prod(s) for s in codec.shapes)
        with np.errstate(over="ignore"):
            out = np.full(n, value, dtype=np.float16 if codec.dtype == "float16" else np.float32).tobytes()
    elif isinstance(codec, Int8Codec):
        out = b"".join(
            np.full(codec.blocks(math.prod(s)), value / 127, np.float32).tobytes()
            + np.full(math.prod(s), 127, np.int8).tobytes()
            for s in codec.shapes
        )
    else:
        parts = []
        for ch in codec.chunkings():
            k = min(codec.k, ch.chunk_numel)
            _, ni, nv = codec.sizes(ch)
            idx = torch.arange(k).repeat(ch.num_chunks)
            if codec.values == "bf16":
                bf16 = torch.full((idx.numel(),), value).to(torch.bfloat16)
                header, codes = b"", bf16.view(torch.int16).numpy().tobytes()
            elif codec.values == "2bit":
                header, codes = np.full(4, value, np.float32).tobytes(), bytes(nv)
            else:
                header, codes = np.float32(value).tobytes(), b"\xff" * nv
            parts += [header, pack_indices(idx, codec.index_bits), codes]
        out = b"".join(parts)
    assert len(out) == codec.encoded_size()
    return out
