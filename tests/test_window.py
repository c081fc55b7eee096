"""The compute window (node/train/window.py): how many inner steps a peer runs in a round."""

import pytest

from node.config import SwarmConfig
from node.errors import SwarmtrainError
from node.train.window import ComputeWindow


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def steps_run(cfg: SwarmConfig, step_seconds: float, h: int = 8, windowed: bool = True) -> int:
    clock = Clock()
    window = ComputeWindow(cfg, h, windowed=windowed, clock=clock)
    done = 0
    while window.another(done):
        clock.t += step_seconds
        done += 1
    return done


def test_without_a_window_every_peer_runs_h_steps():
    assert steps_run(SwarmConfig(), 0.1) == 8 and steps_run(SwarmConfig(), 10.0) == 8


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
