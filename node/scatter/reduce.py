"""An owner's reduction, bit-exact, and the two-level aggregate that honest owners produce.

An owner reduces its inputs (decoded pieces, in grid order) with the run's aggregator
(node/outer/aggregate.py), applied to the piece alone:
  robust  each piece's L2 norm clipped to clip_multiple x the median of the task's pieces, then
          a coordinate-wise trimmed mean (trim_fraction at each end);
  mean    the plain mean.
Both are CPU fp32 in a fixed order (sorting along the input dimension, rows added one by one,
norms summed along a fixed tree), so an auditor who decodes the same signed inputs gets the
same bytes out: the owner's output is checked by re-encoding and comparing SHA-256s.
Inputs weigh alike: token weights are v2's (a claimed count would need every owner to agree on
the median of claims it cannot see); v3 bounds a peer's influence by the clip instead.
"""

from __future__ import annotations

import torch

from node.outer.aggregate import Aggregator, Robust, clip_factors, l2_norm, scaled, trim_count, trimmed_mean
from node.scatter import chunks
from node.scatter.grid import Grid, place


def reduce_pieces(pieces: list[torch.Tensor], agg: Aggregator) -> torch.Tensor:
    """The task's result from its inputs (at least one, all the same length)."""
    if not pieces:
        raise ValueError("an owner with no inputs has no result")
    trim = 0
    if isinstance(agg, Robust):
        pieces = [scaled(p, f) for p, f in zip(pieces, clip_factors([l2_norm([p]) for p in pieces], agg.clip_multiple))]
        trim = trim_count(len(pieces), agg.trim_fraction)
    return trimmed_mean(torch.stack(pieces), trim)


def reduce_encoded(pieces: list[torch.Tensor], agg: Aggregator) -> tuple[torch.Tensor, bytes]:
    """(the result as the wire carries it, its bytes): what receivers decode is what counts."""
    data = chunks.encode(reduce_pieces(pieces, agg))
    return chunks.decode(data, pieces[0].numel()), data


def two_level(updates: dict[str, torch.Tensor], grid: Grid, agg: Aggregator) -> torch.Tensor:
    """The aggregate honest owners produce from these flat updates (every member sends, every
    owner is honest): what a v3 round must end with, and what `bench quality` trains with."""
    total = next(iter(updates.values())).numel()
    out = torch.zeros(total)
    for span in chunks.spans(total, grid.chunks):
        results = []
        for group in grid.groups:
            pieces = [chunks.decode(chunks.encode(updates[p][span.start : span.end]), span.size) for p in group]
            results.append(reduce_encoded(pieces, agg)[0])
        for part in chunks.spans(span.size, grid.n_groups):
            final, _ = reduce_encoded([r[part.start : part.end] for r in results], agg)
            out[span.start + part.start : span.start + part.end] = final
    return out


class TwoLevel:
    """An aggregator (dense updates) that combines like a v3 round of honest owners: the
    strategies use it unchanged (`bench quality --exchange scatter`). Each call draws a new grid,
    as each round does, from a counter (the bench's stand-in for the beacon)."""

    name = "scatter"

    def __init__(self, inner: Aggregator, seed: int = 0):
        self.inner, self.calls, self.seed = inner, 0, seed

    def dense(self, updates: list[list[torch.Tensor]], weights=None) -> list[torch.Tensor]:
        shapes = [tuple(t.shape) for t in updates[0]]
        peers = [f"peer{i:05d}" for i in range(len(updates))]
        self.calls += 1
        beacon = f"{self.seed:032x}{self.calls:032x}"
        grid = place(peers, set(peers), beacon)
        flat = two_level({p: chunks.flat(u) for p, u in zip(peers, updates)}, grid, self.inner)
        return chunks.unflat(flat, shapes)
