"""Outer strategies: how local progress becomes an update, and how a round's updates apply.

One file per strategy, one interface, used unchanged by the node and by `bench quality`:
  name, inner_steps (H), local_optimizer (does the inner step take an AdamW step itself?)
  outer_buffers: list[str]                per-parameter buffers kept in SwarmState.outer
  codec                                   protocol/codecs object; codec.name goes on the wire
  new_worker() -> object                  this peer's private buffers (error feedback, momentum)
  make_update(state, worker, model) -> bytes
  check(payload) -> None                  raise ProtocolError if a payload cannot be applied
  apply(state, payloads) -> None          deterministic: same payloads, same order, same bits;
                                          combines them with the run's aggregator (node/outer/aggregate.py)
  preview(state, payload) -> params       the parameters this one payload alone would give, from
                                          fresh outer buffers (what update scoring measures)
Strategies exchange only the parameters that train ([p for p in model.parameters() if
p.requires_grad]): frozen ones (a LoRA base model) are the same on every peer and never cross
the wire.
The inner step itself stays plain torch (trainer.py).
"""

from __future__ import annotations

from collections.abc import Callable

from node.config import RobustConfig, StrategyConfig, TrainConfig
from node.errors import SwarmtrainError
from node.outer.aggregate import make_aggregator
from node.outer.strategies.ddp import DdpAdamW
from node.outer.strategies.decoupled_momentum import DecoupledMomentum
from node.outer.strategies.diloco import DiLoCo
from node.outer.strategies.sparseloco import SparseLoCo

STRATEGIES = {
    "diloco": DiLoCo,
    "sparseloco": SparseLoCo,
    "decoupled-momentum": DecoupledMomentum,
    "ddp-adamw": DdpAdamW,
}


def make_strategy(
    cfg: StrategyConfig,
    shapes: list[tuple[int, ...]],
    train: TrainConfig | None = None,
    schedule: Callable[[int], float] | None = None,
    robust: RobustConfig | None = None,
):
    """Build the strategy a run names; `schedule(step)` scales the learning rate of step-wise strategies;
    `robust` chooses how a round's updates combine (default RobustConfig(): the robust aggregator).
    `shapes` are those of the trainable parameters only."""
    if cfg.name not in STRATEGIES:
        raise SwarmtrainError(
            f"strategy {cfg.name!r} is not implemented by this version",
            f"use one of: {', '.join(STRATEGIES)} (or upgrade swarmtrain)",
        )
    train = train or TrainConfig()
    agg = make_aggregator(robust)
    try:
        strategy = STRATEGIES[cfg.name](cfg, [tuple(s) for s in shapes], train, schedule or (lambda step: 1.0), agg)
    except ValueError as e:
        raise SwarmtrainError(f"strategy {cfg.name}: {e}", "fix [strategy] in run.toml") from None
    if cfg.overlap and not strategy.local_optimizer:
        raise SwarmtrainError(
            f"strategy {cfg.name} exchanges every step: it has no round to overlap",
            "set overlap = false, or use diloco or sparseloco",
        )
    return strategy
