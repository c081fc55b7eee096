"""Combining one round's updates when some peers may lie (issue 8, robust aggregation).

Every peer runs this on the same payloads in the same (roster) order and must end with the
same bits, so everything here is CPU fp32 elementwise arithmetic in a fixed order, sorting
along the peer dimension (stable: the order of equal values, +0 and -0 included, is fixed),
maxima, and norms summed along a fixed tree (see `l2_norm`). No reduction whose order depends
on thread count or vector width decides anything.

Two aggregators, chosen by [robust] aggregator in the run manifest:
  Mean     today's plain mean: one peer of n moves the model as far as it likes
  Robust   (the default)
    norm clip   each update is scaled down to at most clip_multiple x the round's median L2
                norm, so no update weighs more than a few honest ones (0 disables);
    dense       (diloco, ddp-adamw) coordinate-wise trimmed mean: per coordinate the
                floor(trim_fraction x n) largest and smallest values are dropped, the rest
                averaged (n <= 2: the mean of the clipped updates);
    sparse      (sparseloco top-k) every value is first capped at the median peer's largest
                |value| in that tensor (no peer pours its clipped norm into a few coordinates);
                then, per coordinate, the peers that sent it vote on its sign, only the
                majority's values count (a tie moves nothing), and the sum is divided by ALL n
                peers, non-senders counting as zeros. So a coordinate only one peer picked moves
                by at most one typical honest value / n; a flipped copy of another peer's pick
                cancels it rather than reversing it; f colluders on the same coordinates move
                them by at most f typical values / n. (A coordinate-wise trimmed mean over all
                n, zeros included, would be stricter but drops nearly every honest pick, which
                few peers share: +40% bpb in the benchmark; see `sparse_rule`.)
    signs       (decoupled momentum) a majority vote: each peer's update votes sign(idct(its
                own selection)) per coordinate; the applied sign is the sign of the vote sum,
                0 on a tie. One peer's vote decides nothing unless the others are tied, and
                magnitudes (65504s included) do not count at all (signSGD with majority vote,
                Bernstein et al., ICLR 2019).
Zero updates have no aggregate: every aggregator raises NoUpdates, which the round treats as failed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from node.config import RobustConfig
from node.errors import SwarmtrainError
from node.outer.norm import l2_norm
from protocol.codecs import Selection, TopKCodec

Update = list[torch.Tensor]  # one peer's decoded update, one tensor per parameter, model order
Weights = list[float] | None  # one per update (token_weights); None: all equal, unweighted arithmetic
MIN_WEIGHT = 1 / 64
"""Least weight of a contribution: 1/64 of a full round's tokens."""


class NoUpdates(ValueError):
    """A round with zero updates has no aggregate: the caller treats the round as failed."""


def _require_updates(n: int) -> None:
    """Refuse to aggregate zero updates (there is no mean of nothing, and no median to clip to)."""
    if n == 0:
        raise NoUpdates("no updates to aggregate: the round has none")


# ----------------------------------------------------------------------------- building blocks
def clip_factors(norms: list[float], clip_multiple: float) -> list[float]:
    """Per update, the factor (<= 1) that brings its norm to at most clip_multiple x the median."""
    if clip_multiple <= 0 or not norms:
        return [1.0] * len(norms)
    bound = clip_multiple * statistics.median(norms)
    return [1.0 if n <= bound else bound / n for n in norms]


def scaled(t: torch.Tensor, factor: float) -> torch.Tensor:
    """t x factor in fp32 (factor rounded to fp32 first, one multiply per element); 1.0 keeps t."""
    return t if factor == 1.0 else t * torch.tensor(factor, dtype=torch.float32)


def trim_count(n: int, trim_fraction: float) -> int:
    """How many values to drop at each end of n: floor(trim_fraction x n), always keeping one."""
    return max(0, min(math.floor(trim_fraction * n), (n - 1) // 2))


def trimmed_mean(stack: torch.Tensor, trim: int, weights: Weights = None) -> torch.Tensor:
    """Mean over dim 0 of `stack` without its `trim` largest and smallest values per coordinate;
    with `weights` (one per row), the kept values' weighted mean.

    The kept rows are added one by one in a fixed order (sorted; roster order when trim is 0,
    which is then exactly the plain mean's arithmetic), so the bits do not depend on threads.
    """
    if weights is None:
        rows = stack if trim == 0 else torch.sort(stack, dim=0, stable=True).values[trim : stack.shape[0] - trim]
        acc = torch.zeros_like(stack[0])
        for row in rows:
            acc.add_(row)
        return acc.div_(float(rows.shape[0]))
    w = torch.tensor(weights, dtype=stack.dtype).reshape(-1, *[1] * (stack.dim() - 1)).expand_as(stack)
    order = torch.sort(stack, dim=0, stable=True)
    keep = slice(trim, stack.shape[0] - trim)
    rows, row_weights = order.values[keep], torch.gather(w, 0, order.indices)[keep]
    acc, total = torch.zeros_like(stack[0]), torch.zeros_like(stack[0])
    for row, rw in zip(rows, row_weights):
        acc.add_(row * rw)
        total.add_(rw)
    return acc.div_(total)


def majority_sum(stack: torch.Tensor, weights: Weights = None) -> torch.Tensor:
    """Per coordinate of `stack` (n, ...): the values whose sign agrees with the majority of the
    non-zero ones, summed in roster order and divided by n; a tie moves nothing. With `weights`,
    each value counts times its weight and the sum is divided by the weights' total (the vote
    itself stays one peer, one vote: a claimed token count buys no votes).

    The vote counts are sums of small integers in fp32, exact in any order.
    """
    signs = torch.sign(stack)
    majority = torch.sign(signs.sum(0))
    acc = torch.zeros_like(stack[0])
    for i, (value, sign) in enumerate(zip(stack, signs)):
        acc.add_(torch.where(sign == majority, value if weights is None else scaled(value, weights[i]), 0.0))
    return acc.div_(
        float(stack.shape[0]) if weights is None else float(torch.tensor(weights, dtype=torch.float64).sum())
    )


def plain_mean(updates: list[Update], weights: Weights = None) -> Update:
    """The mean in roster order, the arithmetic the strategies always used (bit for bit); with
    `weights`, the weighted mean (each update times its weight, summed, over the weights' sum)."""
    total = float(len(updates)) if weights is None else float(torch.tensor(weights, dtype=torch.float64).sum())
    out = []
    for i in range(len(updates[0])):
        acc = torch.zeros_like(updates[0][i])
        for j, u in enumerate(updates):
            acc.add_(u[i] if weights is None else scaled(u[i], weights[j]))
        out.append(acc.div_(total))
    return out


def token_weights(tokens: list[int], nominal: int, cap: float) -> Weights:
    """Each contribution's weight, its signed token count over a full round's (`nominal`), capped
    at `cap` x the round's median and floored at MIN_WEIGHT (a count is a claim; the cap keeps a
    liar's weight to a few honest peers'). None when every weight is 1: the unweighted
    arithmetic, bit for bit."""
    raw = [max(MIN_WEIGHT, t / nominal) for t in tokens]
    bound = cap * statistics.median(raw) if raw else 0.0
    weights = [min(w, bound) for w in raw]
    return None if all(w == 1.0 for w in weights) else weights


def at_scale(update: Update, weights: Weights) -> Update:
    """The combined per-round update scaled back to the work of the round's median peer: with a
    compute window, a typical peer ran weight x H steps, and its progress must not be shrunk
    to H steps' worth (per_round made the updates comparable, not smaller). The median, not
    the mean, so that a claimed token count cannot stretch the step."""
    if weights is None:
        return update
    factor = statistics.median(weights)
    return [scaled(t, factor) for t in update]


def per_round(updates: list[Update], weights: Weights) -> list[Update]:
    """Updates scaled to one full round's worth of work (update / weight), so that a slow peer's
    few steps and a fast peer's many compare, clip and trim on one scale."""
    return updates if weights is None else _scaled_each(updates, [1.0 / w for w in weights])


def mean_dense(codec: TopKCodec, sels: list[list[Selection]], dtype=torch.float32) -> Update:
    """Mean of several peers' selections, summed in the given order in the chunk domain.

    One inverse transform per tensor instead of one per peer; with dtype=float64 the result
    of the (float64) inverse DCT is kept unrounded, so its signs agree across machines.
    """
    out = []
    for i, ch in enumerate(codec.chunkings()):
        acc = torch.zeros(ch.num_chunks, ch.chunk_numel, dtype=dtype)
        for sel in sels:
            acc.scatter_add_(1, sel[i].idx, sel[i].val.to(dtype))
        out.append(ch.from_chunks(acc / len(sels)))
    return out


def _scaled_each(updates: list[Update], factors: list[float]) -> list[Update]:
    return [[scaled(t, f) for t in u] for u, f in zip(updates, factors)]


def _rescaled(sels: list[list[Selection]], factors: list[float]) -> list[list[Selection]]:
    return [[Selection(x.idx, scaled(x.val, f)) for x in sel] for sel, f in zip(sels, factors)]


def _stack_chunks(codec: TopKCodec, sels: list[list[Selection]], i: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, num_chunks, chunk_numel): tensor i of every peer in the chunk domain, zeros where not sent."""
    ch = codec.chunkings()[i]
    stack = torch.zeros(len(sels), ch.num_chunks, ch.chunk_numel, dtype=dtype)
    for p, sel in enumerate(sels):
        stack[p].scatter_(1, sel[i].idx, sel[i].val.to(dtype))
    return stack


# --------------------------------------------------------------------------------- aggregators
@dataclass(frozen=True)
class Mean:
    """The plain mean: exactly what the strategies computed before robust aggregation existed."""

    name = "mean"

    def dense(self, updates: list[Update], weights: Weights = None) -> Update:
        _require_updates(len(updates))
        return at_scale(plain_mean(per_round(updates, weights), weights), weights)

    def sparse(self, codec: TopKCodec, sels: list[list[Selection]], weights: Weights = None) -> Update:
        _require_updates(len(sels))
        if weights is None:
            return mean_dense(codec, sels)
        return at_scale(mean_dense(codec, _rescaled(sels, [len(sels) / sum(weights)] * len(sels))), weights)

    def signs(self, codec: TopKCodec, sels: list[list[Selection]]) -> Update:
        _require_updates(len(sels))
        # mean in the DCT domain (exact scatter-adds), one float64 inverse DCT, sign before any
        # rounding to fp32
        return [torch.sign(m).to(torch.float32) for m in mean_dense(codec, sels, dtype=torch.float64)]


@dataclass(frozen=True)
class Robust:
    """Norm clip to the round's median, then a trimmed mean (dense, sparse) or a sign vote."""

    clip_multiple: float = 2.0
    """Clip each update's L2 norm to this multiple of the round's median norm (0 disables)."""
    trim_fraction: float = 0.25
    """Fraction of the values dropped at each end, per coordinate."""
    sparse_rule: str = "vote"
    """Top-k updates, after the norm clip and the value cap: 'vote' (per coordinate, the senders
    vote on the sign and only the majority's values count, summed over all n peers; the default),
    'clipped-mean' (every value counts, divided by n) or 'trimmed' (trimmed mean over all n,
    non-senders as zeros). The last two are kept for the benchmark's ablation."""
    value_cap: bool = True
    """Top-k updates: cap every value at the median peer's largest |value| in that tensor, so a
    peer cannot pour its whole clipped norm into a few coordinates."""
    sign_rule: str = "vote"
    """Sign updates: 'vote' (majority of per-peer signs: the default) or 'trimmed' (sign of the
    trimmed mean in the DCT domain; kept for the benchmark's ablation)."""

    name = "robust"

    def clip(self, updates: list[Update]) -> list[Update]:
        return _scaled_each(updates, clip_factors([l2_norm(u) for u in updates], self.clip_multiple))

    def clip_selections(self, sels: list[list[Selection]]) -> list[list[Selection]]:
        # the norm of a top-k update is the norm of its values (orthonormal DCT included)
        return _rescaled(sels, clip_factors([l2_norm([s.val for s in sel]) for sel in sels], self.clip_multiple))

    def dense(self, updates: list[Update], weights: Weights = None) -> Update:
        _require_updates(len(updates))
        updates = self.clip(per_round(updates, weights))
        trim = trim_count(len(updates), self.trim_fraction)
        return at_scale(
            [trimmed_mean(torch.stack([u[i] for u in updates]), trim, weights) for i in range(len(updates[0]))], weights
        )

    def cap_values(self, sels: list[list[Selection]]) -> list[list[Selection]]:
        caps = [
            statistics.median(float(sel[i].val.abs().max()) if sel[i].val.numel() else 0.0 for sel in sels)
            for i in range(len(sels[0]))
        ]
        return [[Selection(s.idx, s.val.clamp(-c, c)) for s, c in zip(sel, caps)] for sel in sels]

    def sparse(self, codec: TopKCodec, sels: list[list[Selection]], weights: Weights = None) -> Update:
        _require_updates(len(sels))
        if weights is not None:  # one full round's worth each (see per_round)
            sels = _rescaled(sels, [1.0 / w for w in weights])
        sels = self.clip_selections(sels)
        if self.value_cap:
            sels = self.cap_values(sels)
        if self.sparse_rule == "clipped-mean":
            return at_scale(
                mean_dense(
                    codec, sels if weights is None else _rescaled(sels, [w * len(sels) / sum(weights) for w in weights])
                ),
                weights,
            )
        trim = trim_count(len(sels), self.trim_fraction)
        combine = (
            (lambda st: trimmed_mean(st, trim, weights))
            if self.sparse_rule == "trimmed"
            else (lambda st: majority_sum(st, weights))
        )
        return at_scale(
            [
                ch.from_chunks(combine(_stack_chunks(codec, sels, i, torch.float32)))
                for i, ch in enumerate(codec.chunkings())
            ],
            weights,
        )

    def signs(self, codec: TopKCodec, sels: list[list[Selection]]) -> Update:
        _require_updates(len(sels))
        if self.sign_rule == "trimmed":
            sels = self.clip_selections(sels)
            trim = trim_count(len(sels), self.trim_fraction)
            return [
                torch.sign(ch.from_chunks(trimmed_mean(_stack_chunks(codec, sels, i, torch.float64), trim))).to(
                    torch.float32
                )
                for i, ch in enumerate(codec.chunkings())
            ]
        out = []
        for i, ch in enumerate(codec.chunkings()):
            votes = torch.zeros(ch.shape, dtype=torch.int32)  # integer sums: exact in any order
            for sel in sels:
                own = torch.zeros(ch.num_chunks, ch.chunk_numel, dtype=torch.float64)
                own.scatter_(1, sel[i].idx, sel[i].val.double())
                votes.add_(torch.sign(ch.from_chunks(own)).to(torch.int32))  # float64: no fp32 rounding to 0
            out.append(torch.sign(votes).to(torch.float32))
        return out


Aggregator = Mean | Robust


def make_aggregator(cfg: RobustConfig | None = None) -> Aggregator:
    """The aggregator a run's [robust] table names (RobustConfig() when None: robust)."""
    cfg = cfg or RobustConfig()
    if cfg.aggregator == "mean":
        return Mean()
    if cfg.aggregator == "robust":
        if cfg.clip_multiple < 0 or not 0 <= cfg.trim_fraction < 0.5:
            raise SwarmtrainError(
                f"[robust] clip_multiple={cfg.clip_multiple}, trim_fraction={cfg.trim_fraction} are out of range",
                "use clip_multiple >= 0 (0 disables) and 0 <= trim_fraction < 0.5 in run.toml",
            )
        return Robust(clip_multiple=cfg.clip_multiple, trim_fraction=cfg.trim_fraction)
    raise SwarmtrainError(f"[robust] aggregator {cfg.aggregator!r} is not known", "use 'robust' or 'mean' in run.toml")
