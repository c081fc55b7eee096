"""Where a round's local training starts, with and without overlap ([strategy] overlap).

Without overlap a peer trains round r+1 only once round r is applied: every round starts from
the swarm's state, and the update is measured from there. A round whose roster missed our
update (the round failed for us, or the leader left it out) is not lost: its progress is
carried into the next round, which starts from the new state plus that progress and measures
its update from the new state, so it holds both rounds' work (and signs for both rounds'
tokens). Only one round is carried: a carried round missed again is dropped, so a peer the
swarm keeps leaving out cannot drift away on its own.

With overlap a peer starts round r+1 while round r's updates still travel, as Streaming
DiLoCo does (arXiv 2501.18512): it trains on from where round r ended (its own weights, which
hold its own round-r progress as a stand-in for the swarm's). As soon as round r is applied,
between two inner steps or at the latest when round r+1's compute ends, it moves the progress
made since then onto the swarm's new state (`rebase`):

    weights = state(r) + (weights - end(r))

and round r+1's update is measured from state(r), as without overlap: it holds round r+1's
progress alone, so nothing counts twice. Only the few inner steps taken before round r's
result arrived started from a stale point: the exchange time, not a whole round. The swarm's
state is still what the rosters' updates make of it, bit-identical on every peer. If round r
fails for us, its progress is dropped at the rebase (it never reached the swarm).
`bench quality`'s `*-overlap` presets measure what the delay costs at equal tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from node.outer.state import SwarmState


@dataclass(frozen=True)
class Start:
    base: SwarmState
    """What this round's update is measured from (its round and outer buffers: the state's)."""
    params: list[torch.Tensor]
    """Where the trainer starts (base.params, plus a missed round's progress when one is carried)."""
    carried_steps: int = 0
    """Inner steps of a missed round folded into this one (its tokens are signed for again)."""


class NoOverlap:
    """Each round starts from the swarm's state, plus the progress of a missed round."""

    enabled = False

    def __init__(self, carry: bool = True) -> None:
        # False for step-wise strategies: their progress is a gradient, not weights. The volunteer
        # keeps a copy of the error feedback to restore only where a round can be carried.
        self.carries = carry
        self._carry: tuple[list[torch.Tensor], int] | None = None  # (progress, steps) of a missed round

    def start(self, newest: SwarmState, local: list[torch.Tensor], in_flight: bool = False) -> Start:
        carry, self._carry = self._carry, None
        if carry is None:
            return Start(newest, newest.params)
        progress, steps = carry
        return Start(newest, [n + p for n, p in zip(newest.params, progress)], steps)

    def rebase(self, start: Start, newest: SwarmState, local: list[torch.Tensor]) -> Start:
        return start  # nothing is ever in flight while we train

    @torch.no_grad()
    def missed(self, start: Start, local: list[torch.Tensor], steps: int) -> bool:
        """The round trained from `start` to `local` was not applied: carry it into the next
        round (True), unless it was itself carrying one (False: both are dropped)."""
        if start.carried_steps or not self.carries:
            return False
        self._carry = ([l.detach().to("cpu", torch.float32) - s for l, s in zip(local, start.params)], steps)
        return True


class Overlap:
    """Train on while a round is in flight; move the progress onto the state once it is applied."""

    enabled = True
    carries = False  # a missed round's progress is dropped at the rebase

    @torch.no_grad()
    def start(self, newest: SwarmState, local: list[torch.Tensor], in_flight: bool = False) -> Start:
        """With a round in flight: go on from our weights (`base` is provisional until `rebase`);
        else from the swarm's state."""
        if not in_flight:
            return Start(newest, newest.params)
        return Start(newest, [l.detach().to("cpu", torch.float32).clone() for l in local])

    @torch.no_grad()
    def rebase(self, start: Start, newest: SwarmState, local: list[torch.Tensor]) -> Start:
        """The round in flight was applied (or given up): our progress since `start` onto `newest`,
        from which this round's update is then measured."""
        params = [n + (l.detach().to("cpu", torch.float32) - s) for n, l, s in zip(newest.params, local, start.params)]
        return Start(newest, params)

    def missed(self, start: Start, local: list[torch.Tensor], steps: int) -> bool:
        """With overlap the next round is already under way when a round fails: its progress is
        dropped at the rebase (not carried)."""
        return False


def make_overlap(setting: bool | None, local_optimizer: bool) -> NoOverlap | Overlap:
    """`local_optimizer`: the strategy's inner steps move the weights (diloco, sparseloco), so a
    missed round's progress is a weight difference that can be carried; `setting` ([strategy]
    overlap) unset overlaps exactly those strategies."""
    enabled = local_optimizer if setting is None else setting
    return Overlap() if enabled else NoOverlap(carry=local_optimizer)
