"""Outer strategies: how a round's local progress becomes an update and how updates are applied.

Interface (one file per strategy):
  inner_steps: int                       inner steps between two exchanges
  codec_name: str                        codec of the payloads (protocol/codecs.py)
  outer_buffers: list[str]               names of per-parameter buffers kept in SwarmState.outer
  make_update(state, local) -> bytes     this peer's payload for the round
  check(payload) -> None                 raise ProtocolError if a payload cannot be applied
  apply(state, payloads) -> None         deterministic: same inputs, same bits, on every peer
"""
from __future__ import annotations

from node.config import StrategyConfig
from node.errors import SwarmtrainError
from node.strategies.diloco import DiLoCo

STRATEGIES = {"diloco": DiLoCo}


def make_strategy(cfg: StrategyConfig, shapes: list[tuple[int, ...]]):
    if cfg.name not in STRATEGIES:
        raise SwarmtrainError(f"strategy {cfg.name!r} is not implemented by this version",
                              f"use one of: {', '.join(STRATEGIES)} (or upgrade swarmtrain)")
    return STRATEGIES[cfg.name](cfg, shapes)
