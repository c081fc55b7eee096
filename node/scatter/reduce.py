"""An owner's reduction, bit-exact, and the two-level aggregate that honest owners produce.

An owner reduces its inputs (decoded pieces, in grid order) with the run's aggregator
(node/outer/aggregate.py), applied to the piece alone, by the rule of the run's wire (chunks.py):
  robust, dense   each piece's L2 norm clipped to clip_multiple x the median of the task's
                  pieces, then a coordinate-wise trimmed mean (trim_fraction at each end);
  robust, sparse  the same clip, then each value capped, per tensor, at the median piece's
                  largest |value| there, then the all-gather's per-coordinate sign vote
                  (`majority_sum`: the majority's values summed, over all the task's inputs);
  mean            the plain mean.
All are CPU fp32 in a fixed order (sorting along the input dimension, rows added one by one,
norms summed along a fixed tree), so an auditor who decodes the same signed inputs gets the
same bytes out: the owner's output is checked by re-encoding and comparing SHA-256s. The wire's
re-encoding is part of the output (a sign wire's 1-bit steps, a sparse wire's re-sparsified
picks and value tables), and is bit-exact too (protocol/codecs/pieces.py).
Inputs weigh alike: token weights are v2's (a claimed count would need every owner to agree on
the median of claims it cannot see); v3 bounds a peer's influence by the clip instead.
"""

from __future__ import annotations

import statistics

import torch

from node.outer.aggregate import (
    Aggregator,
    Robust,
    clip_factors,
    l2_norm,
    majority_sum,
    scaled,
    trim_count,
    trimmed_mean,
)
from node.scatter import chunks
from node.scatter.grid import Grid, place


def reduce_pieces(
    pieces: list[torch.Tensor], agg: Aggregator, rule: str = "dense", segments: list[int] | None = None
) -> torch.Tensor:
    """The task's result from its inputs (at least one, all the same length). `rule` is the
    wire's ("dense" or "sparse"); `segments`, the values of each tensor's run in the piece (the
    sparse rule's value cap is per tensor, as the all-gather's)."""
    if not pieces:
        raise ValueError("an owner with no inputs has no result")
    if not isinstance(agg, Robust):
        return trimmed_mean(torch.stack(pieces), 0)
    pieces = [scaled(p, f) for p, f in zip(pieces, clip_factors([l2_norm([p]) for p in pieces], agg.clip_multiple))]
    if rule == "dense":
        return trimmed_mean(torch.stack(pieces), trim_count(len(pieces), agg.trim_fraction))
    if agg.value_cap:
        pieces = [torch.cat(capped) for capped in zip(*(capped_runs(pieces, segments or [pieces[0].numel()])))]
    stack = torch.stack(pieces)
    if agg.sparse_rule == "vote":
        return majority_sum(stack)
    return trimmed_mean(stack, trim_count(len(pieces), agg.trim_fraction) if agg.sparse_rule == "trimmed" else 0)


def capped_runs(pieces: list[torch.Tensor], segments: list[int]) -> list[list[torch.Tensor]]:
    """Per run of one tensor, every piece's values there capped at the median piece's largest
    |value| there (Robust.cap_values, on the piece)."""
    out, at = [], 0
    for n in segments:
        runs = [p[at : at + n] for p in pieces]
        cap = statistics.median(float(r.abs().max()) if n else 0.0 for r in runs)
        out.append([r.clamp(-cap, cap) for r in runs])
        at += n
    return out


def reduce_encoded(pieces: list[torch.Tensor], agg: Aggregator) -> tuple[torch.Tensor, bytes]:
    """(the result as the wire carries it, its bytes): what receivers decode is what counts."""
    data = chunks.encode(reduce_pieces(pieces, agg))
    return chunks.decode(data, pieces[0].numel()), data


def reduce_task(pieces: list[torch.Tensor], agg: Aggregator, wire: chunks.Wire, span: chunks.Span) -> torch.Tensor:
    """A task's result over `span` by the wire's rule, before the wire re-encodes it."""
    return reduce_pieces(pieces, agg, wire.rule, wire.segments(span))


def two_level(
    updates: dict[str, torch.Tensor], grid: Grid, agg: Aggregator, wire: chunks.Wire = chunks.INT8
) -> torch.Tensor:
    """The aggregate honest owners produce from these flat updates (every member sends, every
    owner is honest): what a v3 round must end with, and what `bench quality` trains with. Each
    level-1 result travels as one encoded piece per part, as audit.outputs_of sends it."""
    total = next(iter(updates.values())).numel()
    out = torch.zeros(total)
    for span in wire.spans(chunks.Span(0, total), grid.chunks):
        results = []
        for group in grid.groups:
            pieces = [wire.decode_in(wire.encode_in(updates[p][span.start : span.end], span), span) for p in group]
            results.append(reduce_task(pieces, agg, wire, span))
        for part in wire.spans(span, grid.n_groups):
            a, b = part.start - span.start, part.end - span.start
            inputs = [wire.decode_out(wire.encode_out(r[a:b], part, 1), part, 1) for r in results]
            final = wire.encode_out(reduce_task(inputs, agg, wire, part), part, 2)
            out[part.start : part.end] = wire.decode_out(final, part, 2)
    return out


class TwoLevel:
    """An aggregator that combines like a v3 round of honest owners on the run's wire: the
    strategies use it unchanged (`bench quality`'s scatter presets): dense and 1-bit updates
    through `dense`, top-k ones through `sparse`. Each call draws a new grid, as each round
    does, from a counter (the bench's stand-in for the beacon). Inputs weigh alike (as v3's)."""

    name = "scatter"

    def __init__(self, inner: Aggregator, seed: int = 0, wire: chunks.Wire = chunks.INT8):
        self.inner, self.calls, self.seed, self.wire = inner, 0, seed, wire
        self.last: list[torch.Tensor] | None = None
        """The last aggregate (what a sparse strategy's take_back compares its update with)."""

    def combine(self, flats: list[torch.Tensor]) -> torch.Tensor:
        peers = [f"peer{i:05d}" for i in range(len(flats))]
        self.calls += 1
        grid = place(peers, set(peers), f"{self.seed:032x}{self.calls:032x}")
        return two_level(dict(zip(peers, flats)), grid, self.inner, self.wire)

    def dense(self, updates: list[list[torch.Tensor]], weights=None) -> list[torch.Tensor]:
        if isinstance(self.wire, chunks.SparseWire):
            raise ValueError("a sparse wire carries top-k selections (TwoLevel.sparse)")
        self.last = chunks.unflat(self.combine([chunks.flat(u) for u in updates]), [tuple(t.shape) for t in updates[0]])
        return self.last

    def sparse(self, codec, sels: list, weights=None) -> list[torch.Tensor]:
        if not isinstance(self.wire, chunks.SparseWire):
            raise ValueError("top-k selections need a sparse wire (chunks.wire_for(codec))")
        self.last = chunks.sparse_unflat(codec, self.combine([chunks.sparse_flat(codec, s) for s in sels]))
        return self.last

    def signs(self, codec, sels: list) -> list[torch.Tensor]:
        raise ValueError("v3 does not carry decoupled momentum's sign vote yet: its runs keep verify-all")
