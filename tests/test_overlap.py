"""node/outer/overlap.py: where each round's local training starts (overlap, and carrying a missed round)."""

import pytest
import torch

from node.config import StrategyConfig
from node.errors import SwarmtrainError
from node.outer.overlap import NoOverlap, Overlap
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy


def state(round_no: int, *values: float) -> SwarmState:
    return SwarmState(round=round_no, names=["w"], params=[torch.tensor(values)], outer={})


def test_without_overlap_each_round_starts_from_the_swarms_state():
    newest = state(3, 1.0, 2.0)
    start = NoOverlap().start(newest, [torch.tensor([9.0, 9.0])])
    assert start.base is newest and start.params is newest.params and start.carried_steps == 0


def test_a_missed_round_is_carried_into_the_next_once():
    plan = NoOverlap()
    first = plan.start(state(3, 1.0, 2.0), [])
    assert plan.missed(first, [torch.tensor([0.5, 2.5])], steps=7)  # trained 1,2 -> 0.5,2.5; not applied
    # the swarm moved on without us (4,4): we start from there plus our progress, measured from there
    second = plan.start(state(4, 4.0, 4.0), [])
    assert second.base.params[0].tolist() == [4.0, 4.0]
    assert second.params[0].tolist() == [3.5, 4.5] and second.carried_steps == 7
    assert not plan.missed(second, [torch.tensor([3.0, 5.0])], steps=5)  # missed again: dropped, no drift
    third = plan.start(state(5, 6.0, 6.0), [])
    assert third.params[0].tolist() == [6.0, 6.0] and third.carried_steps == 0


def test_with_overlap_a_round_goes_on_from_our_weights_and_moves_onto_the_state_once_applied():
    ov = Overlap()
    first = ov.start(state(0, 1.0, 2.0), [torch.tensor([7.0, 7.0])])  # nothing in flight: the state
    assert first.params[0].tolist() == [1.0, 2.0]
    # round 1 ended at 1.5,1.0 and is in flight: round 2 goes on from there
    second = ov.start(state(0, 1.0, 2.0), [torch.tensor([1.5, 1.0])], in_flight=True)
    assert second.params[0].tolist() == [1.5, 1.0]
    # two steps later round 1 is applied (the swarm moved to 3,3); we are at 2,0: keep the -0.5,-1 since
    moved = ov.rebase(second, state(1, 3.0, 3.0), [torch.tensor([2.0, 0.0])])
    assert moved.params[0].tolist() == [3.5, 2.0] and moved.base.round == 1
    assert moved.base.params[0].tolist() == [3.0, 3.0]  # the update is measured from the swarm's state
    assert not ov.missed(moved, [torch.tensor([0.0, 0.0])], steps=3)  # with overlap nothing is carried


def test_overlap_is_refused_for_strategies_that_exchange_every_step():
    with pytest.raises(SwarmtrainError, match="no round to overlap"):
        make_strategy(StrategyConfig(name="decoupled-momentum", overlap=True), [(4, 4)])


def test_step_wise_strategies_carry_nothing():
    plan = NoOverlap(carry=False)  # their inner step leaves the weights alone: progress is a gradient
    assert not plan.missed(plan.start(state(1, 1.0), []), [torch.tensor([0.0])], steps=1)
