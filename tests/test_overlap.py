"""node/overlap.py: where each round's local training starts."""
import pytest
import torch

from node.config import StrategyConfig
from node.errors import SwarmtrainError
from node.overlap import NoOverlap, Overlap
from node.state import SwarmState
from node.strategies import make_strategy


def state(round_no: int, *values: float) -> SwarmState:
    return SwarmState(round=round_no, names=["w"], params=[torch.tensor(values)], outer={})


def test_without_overlap_each_round_starts_from_the_swarms_state():
    newest = state(3, 1.0, 2.0)
    assert NoOverlap().start(newest, [torch.tensor([9.0, 9.0])]) is newest


def test_with_overlap_a_round_starts_from_the_newest_state_plus_the_progress_in_flight():
    ov = Overlap()
    first = ov.start(state(0, 1.0, 2.0), [torch.tensor([7.0, 7.0])])  # nothing in flight yet
    assert first.params[0].tolist() == [1.0, 2.0]
    # round 1 trained 1,2 -> 1.5,1.0 and is in flight; the newest state held is still round 0's
    second = ov.start(state(0, 1.0, 2.0), [torch.tensor([1.5, 1.0])])
    assert second.params[0].tolist() == [1.5, 1.0]
    # round 1 applied (the swarm moved to 3,3); round 2 trained 1.5,1 -> 2,0 and is in flight
    third = ov.start(state(1, 3.0, 3.0), [torch.tensor([2.0, 0.0])])
    assert third.params[0].tolist() == [3.5, 2.0] and third.round == 1
    assert first.params[0].tolist() == [1.0, 2.0]  # each start is its own tensor: updates measure from it


def test_overlap_is_refused_for_strategies_that_exchange_every_step():
    with pytest.raises(SwarmtrainError, match="no round to overlap"):
        make_strategy(StrategyConfig(name="decoupled-momentum", overlap=True), [(4, 4)])
