"""How many inner steps a peer runs in one round: rounds never wait for the slowest.

With [swarm] round_seconds = 0 every peer runs exactly H = [strategy] inner_steps. With a
compute window, each peer runs steps while the next one is expected to end inside the window
(at least one, at most max_inner_steps), and signs for the tokens it trained on; the round's
aggregate weighs each contribution by them (node/outer/aggregate.py: token_weights). A laptop beside
two desktops then adds a quarter of their tokens in the same wall time, instead of making them
wait for its H steps.

A run that leaves round_seconds unset sizes the window from the swarm (`sized_window`): H times
the median of the seconds per step that live peers publish in their heartbeats, so that the
median peer runs about H steps, and at least twice the median exchange, so that a slow link's
exchange hides behind the next round's compute. A peer's first round (nothing measured yet) takes
the swarm's pace as published; the run's first round runs H steps, to measure.

A window ends at the round's opening plus its length, not at our start plus it
(`ComputeWindow.anchor`): the round opened when its leader signed the roster we start from, and a
peer that starts late (a joiner mid-round, a slow fetch) would otherwise announce a constant lag
behind the others, round after round, after the leader closed on the median peer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from node.config import SwarmConfig
from node.errors import SwarmtrainError

SKEW = 4.0
"""A sized window stays within [1/SKEW, SKEW] x our own H steps' time: heartbeats are anyone's
to publish, and a crowd claiming absurd step times may stretch or squeeze rounds only so far."""


COVER = 2.0
"""A sized window lasts at least this many times the median peer's exchange, so that a slow
link's exchange hides behind the next round's compute (overlap) instead of idling the peers."""


class Timing(NamedTuple):
    """What a peer measured of its last round (and publishes in its heartbeat)."""

    step_s: float
    """Seconds per inner step (0: nothing measured yet)."""
    exchange_s: float
    """Seconds from announcing its update to having the round (0: nothing measured yet)."""


def sized_window(inner_steps: int, own: Timing, published: Iterable[Timing]) -> float:
    """The compute window of a run without round_seconds: H x the median peer's seconds per step,
    and at least COVER x the median peer's exchange (ours among them), each kept within SKEW of
    our own. Before we measured ours (a joiner's first round): H x the published median (a
    crowd's claim costs that one round; the step cap bounds it); nobody measured yet: 0 (H steps)."""
    if own.step_s <= 0:
        theirs = [t.step_s for t in published if t.step_s > 0]
        return inner_steps * statistics.median(theirs) if theirs else 0.0
    published = list(published)
    steps = inner_steps * _near(own.step_s, [t.step_s for t in published])
    return max(steps, COVER * _near(own.exchange_s, [t.exchange_s for t in published])) if own.exchange_s else steps


def _near(own: float, published: list[float]) -> float:
    """The median of ours and the published values, within SKEW of ours."""
    median = statistics.median([own, *(s for s in published if s > 0)])
    return min(max(median, own / SKEW), own * SKEW)


@dataclass
class ComputeWindow:
    cfg: SwarmConfig
    """The run's round timing: round_seconds and max_inner_steps."""
    inner_steps: int
    """The strategy's H: the fixed step count without a window (and a quarter of the default cap)."""
    windowed: bool
    """Does the strategy train locally between exchanges (diloco, sparseloco)? The step-wise
    strategies exchange every step, so a window does not apply to them."""
    sized: float = 0.0
    """The window sized from the swarm (sized_window), used when the run leaves round_seconds unset."""
    carried: int = 0
    """Steps of a missed round carried into this one. Without a window they count toward H: a
    peer left out for being late (a joiner mid-round) then announces early in the next round
    instead of the same lag late again, round after round."""
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    """Wall time, to compare with a roster's signed time (anchor)."""
    started: float = field(default=0.0, init=False)
    lag: float = field(default=0.0, init=False)
    """Seconds our window started after the round opened (anchor); counted as elapsed."""

    def __post_init__(self) -> None:
        if (self.cfg.round_seconds or 0) < 0 or self.cfg.max_inner_steps < 0:
            raise SwarmtrainError(
                f"[swarm] round_seconds={self.cfg.round_seconds}, max_inner_steps="
                f"{self.cfg.max_inner_steps} are negative",
                "use round_seconds >= 0 (0: fixed inner_steps) and max_inner_steps >= 0",
            )
        self.started = self.clock()

    @property
    def seconds(self) -> float:
        """This round's window; 0: fixed H steps."""
        if not self.windowed:
            return 0.0
        return self.sized if self.cfg.round_seconds is None else self.cfg.round_seconds

    @property
    def most(self) -> int:
        if self.seconds <= 0:
            return max(1, self.inner_steps - self.carried)
        return self.cfg.max_inner_steps or 4 * self.inner_steps

    def another(self, done: int) -> bool:
        """May the peer run step number done + 1? Without a window: until H. With one: while a
        step of the average length so far still ends inside it."""
        if done >= self.most:
            return False
        if done == 0 or self.seconds <= 0:
            return True
        elapsed = self.clock() - self.started
        return self.lag + elapsed + elapsed / done <= self.seconds

    def anchor(self, opened: float) -> None:
        """The round opened at wall time `opened` (the signed time of the roster we start from):
        the window ends then plus its length. Moved at most (1 - 1/SKEW) of the window earlier (a
        skewed clock, a roster signed long ago: we still train a quarter window) and one window
        later (with overlap we start before that roster is signed)."""
        if self.seconds <= 0:
            return
        lag = self.wall() - (self.clock() - self.started) - opened  # when we started, on the wall clock
        self.lag = min(max(lag, -self.seconds), (1 - 1 / SKEW) * self.seconds)
