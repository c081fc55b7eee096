"""The compute window (node/train/window.py): how many inner steps a peer runs in a round."""

import pytest

from node.config import SwarmConfig
from node.errors import SwarmtrainError
from node.train.window import ComputeWindow, Timing, sized_window


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def steps_run(cfg: SwarmConfig, step_seconds: float, h: int = 8, windowed: bool = True, sized: float = 0.0) -> int:
    clock = Clock()
    return steps_in(ComputeWindow(cfg, h, windowed=windowed, clock=clock, sized=sized), clock, step_seconds)


def steps_in(window: ComputeWindow, clock: Clock, step_seconds: float) -> int:
    """Steps of `step_seconds` each that `window` lets a peer run."""
    done = 0
    while window.another(done):
        clock.t += step_seconds
        done += 1
    return done


def test_without_a_window_every_peer_runs_h_steps():
    fixed = SwarmConfig(round_seconds=0.0)
    assert steps_run(fixed, 0.1) == 8 and steps_run(fixed, 10.0) == 8
    assert steps_run(SwarmConfig(), 0.1) == 8  # unset, nothing measured yet (the first round): H steps


def test_an_unset_window_is_sized_from_the_median_peer_so_a_slow_peer_runs_fewer_steps():
    fast, slow = Timing(0.1, 0.0), Timing(0.4, 0.0)  # seconds per step: two desktops, a quarter-speed peer
    window = sized_window(8, fast, [fast, slow])  # what a fast peer sizes: 8 x the median's 0.1 s
    assert window == pytest.approx(0.8) and sized_window(8, slow, [fast, fast]) == pytest.approx(0.8)
    assert steps_run(SwarmConfig(), fast.step_s, sized=window) == 8  # the median peer: about H
    assert steps_run(SwarmConfig(), slow.step_s, sized=window) == 2  # the slow one: a quarter, on time
    assert sized_window(8, Timing(0.0, 0.0), []) == 0.0  # the run's first round, nothing measured: H steps
    # our first round (a joiner's): the swarm's pace as published
    assert sized_window(8, Timing(0.0, 0.0), [fast, slow, slow]) == pytest.approx(8 * 0.4)
    # a crowd publishing absurd step times stretches or squeezes the window only within 4x ours
    assert sized_window(8, fast, [Timing(1e-6, 0.0)] * 50) == pytest.approx(8 * 0.1 / 4)
    assert sized_window(8, fast, [Timing(3000.0, 0.0)] * 50) == pytest.approx(8 * 0.1 * 4)


def test_a_sized_window_covers_twice_the_median_exchange_so_overlap_can_hide_a_slow_link():
    link = [Timing(0.1, 2.0), Timing(0.1, 1.5)]  # 0.8 s of steps against ~2 s exchanges
    assert sized_window(8, Timing(0.1, 2.0), link) == pytest.approx(2 * 2.0)
    assert sized_window(8, Timing(0.1, 0.2), [Timing(0.1, 0.2)]) == pytest.approx(0.8)  # a fast link: the steps
    assert sized_window(8, Timing(0.1, 0.5), [Timing(0.1, 1e4)] * 50) == pytest.approx(2 * 0.5 * 4)  # within 4x


def test_a_window_fits_the_steps_to_the_peer_speed():
    cfg = SwarmConfig(round_seconds=4.0)
    assert steps_run(cfg, 0.5) == 8  # 8 x 0.5 s fills 4 s
    assert steps_run(cfg, 2.0) == 2  # a 4x slower peer: a quarter of the steps, same wall time
    assert steps_run(cfg, 30.0) == 1  # always at least one step
    assert steps_run(cfg, 0.01) == 32  # at most 4 x H by default
    assert steps_run(SwarmConfig(round_seconds=4.0, max_inner_steps=10), 0.01) == 10


def test_step_wise_strategies_ignore_the_window():
    assert steps_run(SwarmConfig(round_seconds=4.0), 0.01, h=1, windowed=False) == 1


def test_negative_settings_name_the_fix():
    with pytest.raises(SwarmtrainError, match="round_seconds"):
        ComputeWindow(SwarmConfig(round_seconds=-1.0), 8, windowed=True)


def test_a_windowed_round_closes_on_the_median_peer_and_a_fixed_one_waits_for_the_slowest():
    from node.round.lead import collected

    three = {"a", "b", "c"}  # a young run: everyone is core
    windowed, fixed = SwarmConfig(), SwarmConfig(round_seconds=0.0)
    marks: dict = {}
    assert not collected(three, three, {"a"}, 0.5, marks, windowed)  # one of three: not most
    assert not collected(three, three, {"a", "b"}, 1.0, marks, windowed)  # most are in at 1 s: the grace
    assert collected(three, three, {"a", "b"}, 3.0, marks, windowed)  # 2 s later: c waits for the next round
    marks = {}
    assert not collected(three, three, {"a", "b"}, 1.0, marks, fixed)
    assert not collected(three, three, {"a", "b"}, 19.0, marks, fixed)  # H steps each: the slowest is waited for
    assert collected(three, three, {"a", "b"}, fixed.collect_timeout, marks, fixed)
    assert not collected({"a", "b"}, {"a", "b"}, {"a"}, 5.0, {}, windowed)  # two peers: both are most


def window_after(lag: float, seconds: float = 4.0, step: float = 0.5) -> int:
    """Steps a peer runs when it started its window `lag` seconds after the round opened."""
    clock = Clock()
    window = ComputeWindow(SwarmConfig(round_seconds=seconds), 8, windowed=True, clock=clock, wall=lambda: 1000.0)
    window.anchor(1000.0 - lag)
    return steps_in(window, clock, step)


def test_a_late_starter_ends_its_window_with_the_swarm_not_a_window_after_its_start():
    assert window_after(0.0) == 8  # started as the roster was signed: the whole window
    assert window_after(2.0) == 4  # a joiner 2 s into a 4 s round: ends with the others
    assert window_after(60.0) == 2  # far behind (or a skewed clock): a quarter window, never less
    assert window_after(-1.0) == 10  # overlap: we started before the roster was signed
    assert window_after(-60.0) == 16  # at most one window later
    fixed = ComputeWindow(SwarmConfig(round_seconds=0.0), 8, windowed=True, clock=Clock(), wall=lambda: 1000.0)
    fixed.anchor(0.0)
    assert fixed.lag == 0.0  # fixed H steps: no window to anchor


def test_without_a_window_carried_steps_count_toward_h_so_a_late_peer_catches_up():
    def run(carried: int) -> int:
        clock = Clock()
        window = ComputeWindow(SwarmConfig(round_seconds=0.0), 8, windowed=True, clock=clock, carried=carried)
        return steps_in(window, clock, 0.1)

    assert run(0) == 8 and run(3) == 5 and run(8) == 1  # left out for being late: announce early next round
