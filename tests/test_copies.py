"""A round's copies count once: a crowd of Sybils copying one update does not multiply its say."""

import pytest

from node.config import RobustConfig
from node.outer.copies import distinct
from tests.test_state_and_strategy import setup, update


@pytest.mark.parametrize("name", ["diloco", "sparseloco", "decoupled-momentum", "ddp-adamw"])
@pytest.mark.parametrize("aggregator", ["robust", "mean"])
def test_copies_of_an_update_move_the_state_as_one_update(name, aggregator):
    robust = RobustConfig(aggregator=aggregator)
    _, strat, with_copies = setup(robust, name=name)
    _, _, without = setup(robust, name=name)
    honest = [update(strat, with_copies, k) for k in range(3)]
    strat.apply(with_copies, honest + [honest[0]] * 5)  # five Sybils copy the first peer's bytes
    strat.apply(without, honest)
    assert with_copies.digest == without.digest


def test_a_copy_never_raises_the_weight_of_its_bytes():
    kept, weights = distinct([b"a", b"b", b"a", b"a"], [1.0, 1.0, 2.0, 0.5])
    assert kept == [b"a", b"b"] and weights == [0.5, 1.0]
    assert distinct([b"x", b"x"]) == ([b"x"], None)
    assert distinct([]) == ([], None)
