"""How many inner steps a peer runs in one round (issue 9: rounds never wait for the slowest).

With [swarm] round_seconds = 0 every peer runs exactly H = [strategy] inner_steps. With a
compute window, each peer runs steps while the next one is expected to end inside the window
(at least one, at most max_inner_steps), and signs for the tokens it trained on; the round's
aggregate weighs each contribution by them (node/outer/aggregate.py: token_weights). A laptop beside
two desktops then adds a quarter of their tokens in the same wall time, instead of making them
wait for its H steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.config import SwarmConfig
from node.errors import SwarmtrainError


@dataclass
class ComputeWindow:
    cfg: SwarmConfig
    """The run's round timing: round_seconds and max_inner_steps."""
    inner_steps: int
    """The strategy's H: the fixed step count without a window (and a quarter of the default cap)."""
    windowed: bool
    """Does the strategy train locally between exchanges (diloco, sparseloco)? The step-wise
    strategies exchange every step, so a window does not apply to them."""
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.cfg.round_seconds < 0 or self.cfg.max_inner_steps < 0:
            raise SwarmtrainError(
                f"[swarm] round_seconds={self.cfg.round_seconds}, max_inner_steps="
                f"{self.cfg.max_inner_steps} are negative",
                "use round_seconds >= 0 (0: fixed inner_steps) and max_inner_steps >= 0",
            )
        self.started = self.clock()

    @property
    def most(self) -> int:
        if not self.windowed or self.cfg.round_seconds <= 0:
            return self.inner_steps
        return self.cfg.max_inner_steps or 4 * self.inner_steps

    def another(self, done: int) -> bool:
        """May the peer run step number done + 1? Without a window: until H. With one: while a
        step of the average length so far still ends inside it."""
        if done >= self.most:
            return False
        if done == 0 or not self.windowed or self.cfg.round_seconds <= 0:
            return True
        elapsed = self.clock() - self.started
        return elapsed + elapsed / done <= self.cfg.round_seconds
