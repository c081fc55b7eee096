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
  direction(payload, weight) -> tensors   optional: the update as the aggregator takes it, scaled to a
                                          full round's work (what credit judges: node/outer/useful.py;
                                          without it, the preview's change); `credit_cosine`, optional:
                                          its usefulness threshold (default useful.COSINE)
Strategies exchange only the parameters that train ([p for p in model.parameters() if
p.requires_grad]): frozen ones (a LoRA base model) are the same on every peer and never cross
the wire.
The inner step itself stays plain torch (trainer.py).

A strategy or codec of one's own is registered from Python (`register_strategy`, `register_codec`;
swarmtrain re-exports both): every peer of the run must register it before joining.
"""

from __future__ import annotations

from collections.abc import Callable

from node.config import RobustConfig, StrategyConfig, TrainConfig
from node.config.validate import REGISTERED
from node.errors import SwarmtrainError
from node.outer.aggregate import make_aggregator
from node.outer.strategies.ddp import DdpAdamW
from node.outer.strategies.decoupled_momentum import DecoupledMomentum
from node.outer.strategies.diloco import WIRE_CODECS, DiLoCo
from node.outer.strategies.sparseloco import SparseLoCo

STRATEGIES = {
    "diloco": DiLoCo,
    "sparseloco": SparseLoCo,
    "decoupled-momentum": DecoupledMomentum,
    "ddp-adamw": DdpAdamW,
}
BUILT_IN = frozenset(STRATEGIES)


def register_strategy(name: str, factory: Callable, *, replace: bool = False) -> None:
    """Make `[strategy] name = NAME` build `factory(cfg, shapes, train, schedule, aggregator)`: an
    object with the interface above (DiLoCo is the model to copy). A built-in name cannot be taken;
    registering a name twice needs `replace=True`."""
    if name in BUILT_IN or (name in STRATEGIES and not replace):
        raise SwarmtrainError(
            f"strategy {name!r} is already {'built in' if name in BUILT_IN else 'registered'}",
            "choose another name" + ("" if name in BUILT_IN else ", or pass replace=True"),
        )
    STRATEGIES[name] = factory
    REGISTERED["name"].add(name)


def register_codec(name: str, factory: Callable[[tuple], object], *, replace: bool = False) -> None:
    """Make diloco's `[strategy] wire_dtype = NAME` send its pseudo-gradient with `factory(shapes)`:
    an object with `name` (what envelopes carry; derive it from NAME), `encode(tensors) -> bytes`,
    `decode(bytes) -> tensors` (strict: raise protocol.errors.ProtocolError on any bad input, it
    is a peer's) and `encoded_size() -> int` (exact and fixed), as protocol/codecs' DenseCodec."""
    if name in ("float16", "float32", "int8", "int4", "int2", "int1") or (name in WIRE_CODECS and not replace):
        raise SwarmtrainError(f"codec {name!r} is already defined", "choose another name, or pass replace=True")
    WIRE_CODECS[name] = factory
    REGISTERED["wire_dtype"].add(name)


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
