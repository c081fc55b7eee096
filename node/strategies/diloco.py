"""DiLoCo (arXiv 2311.08105): H inner AdamW steps, then an outer Nesterov step on the combined
pseudo-gradient (global - local), sent dense as fp16, fp32 or int8 (as INTELLECT-1 did)."""
from __future__ import annotations

import torch

from node.aggregate import Aggregator, Mean, Weights, per_round
from node.config import StrategyConfig, TrainConfig
from node.state import SwarmState
from protocol.codecs import DenseCodec, Int8Codec


class DiLoCo:
    name = "diloco"
    outer_buffers = ["momentum"]
    local_optimizer = True

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator = Mean()):
        if cfg.wire_dtype not in ("float16", "float32", "int8"):
            raise ValueError(f"wire_dtype {cfg.wire_dtype!r} is not one of float16, float32, int8")
        if cfg.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        self.cfg, self.agg = cfg, agg
        self.inner_steps = cfg.inner_steps
        self.codec = Int8Codec(tuple(shapes)) if cfg.wire_dtype == "int8" else DenseCodec(tuple(shapes), cfg.wire_dtype)

    def new_worker(self) -> None:
        return None

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker, model: torch.nn.Module) -> bytes:
        """The pseudo-gradient theta_global - theta_local, encoded."""
        local = [p.detach().to("cpu", torch.float32) for p in model.parameters() if p.requires_grad]
        return self.codec.encode([g - l for g, l in zip(state.params, local)])

    def check(self, payload: bytes) -> None:
        self.codec.decode(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights: Weights = None) -> None:
        """Combine the payloads (in the given order) with the aggregator, then Nesterov SGD, in place.

        Separate multiply and add ops (no fused alpha/FMA forms), each exactly rounded in fp32
        on the CPU, so every peer computes the same bits from the same payloads.
        """
        combined = self.agg.dense([self.codec.decode(p) for p in payloads], weights)
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        for param, mom, g in zip(state.params, state.outer["momentum"], combined):
            mom.mul_(mu).add_(g)                    # m = mu * m + g
            step = g + mom * mu                     # Nesterov: g + mu * m
            param.sub_(step * lr)
        state.round += 1

    @torch.no_grad()
    def preview(self, state: SwarmState, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The outer step of this payload alone from zero momentum: theta - lr (1 + mu) g, with g
        scaled to one full round's work (g / weight, as the aggregators do)."""
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        return [p - (g + g * mu) * lr for p, g in zip(state.params, per_round([self.codec.decode(payload)], [weight])[0])]
