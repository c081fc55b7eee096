"""Where a round's local training starts, with and without overlap ([strategy] overlap).

Without overlap a peer trains round r+1 only once round r is applied: every round starts from
the swarm's state, and the update is measured from there.

With overlap the peer starts round r+1 while round r's updates still travel (a one-round-
delayed outer step: Streaming DiLoCo, arXiv 2501.18512; "eager updates", arXiv 2502.12996).
It starts from the newest state it holds (round r-1's, one behind the swarm's) plus its own
progress of round r, which is in flight but not applied yet:

    start(r+1) = state(r-1) + (end(r) - start(r))

and round r+1's update is end(r+1) - start(r+1): that round's progress alone, so nothing is
counted twice. The swarm's state is still what the rosters' updates make of it, bit-identical
on every peer; only where each peer's local training starts differs. If round r fails for us,
its progress is dropped at the next rebase (it never reached the swarm), as it is without
overlap. bench quality's `*-overlap` presets measure what the delay costs at equal tokens.
"""
from __future__ import annotations

import torch

from node.state import SwarmState


class NoOverlap:
    """Each round starts from the swarm's state (the disabled feature: nothing to remember)."""

    enabled = False

    def start(self, newest: SwarmState, local: list[torch.Tensor]) -> SwarmState:
        return newest


class Overlap:
    """Each round starts from the newest state held plus our progress still in flight."""

    enabled = True

    def __init__(self) -> None:
        self.base: SwarmState | None = None  # where the round being trained started

    @torch.no_grad()
    def start(self, newest: SwarmState, local: list[torch.Tensor]) -> SwarmState:
        """The start of the next round, as a state (round and outer buffers: `newest`'s) from
        which the strategy measures the update; `local` is the model's trained tensors now."""
        if self.base is None:
            params = [p.clone() for p in newest.params]
        else:
            params = [n + (l.detach().to("cpu", torch.float32) - s)
                      for n, l, s in zip(newest.params, local, self.base.params)]
        self.base = SwarmState(round=newest.round, names=newest.names, params=params, outer=newest.outer)
        return self.base


def make_overlap(enabled: bool) -> NoOverlap | Overlap:
    return Overlap() if enabled else NoOverlap()
