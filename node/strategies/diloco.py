"""DiLoCo (arXiv 2311.08105): H inner AdamW steps, then an outer Nesterov step on the mean
pseudo-gradient (global - local), sent dense as fp16, fp32 or int8 (as INTELLECT-1 did)."""
from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.state import SwarmState
from protocol.codecs import DenseCodec, Int8Codec


class DiLoCo:
    name = "diloco"
    outer_buffers = ["momentum"]
    local_optimizer = True

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule):
        if cfg.wire_dtype not in ("float16", "float32", "int8"):
            raise ValueError(f"wire_dtype {cfg.wire_dtype!r} is not one of float16, float32, int8")
        if cfg.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        self.cfg = cfg
        self.inner_steps = cfg.inner_steps
        self.codec = Int8Codec(tuple(shapes)) if cfg.wire_dtype == "int8" else DenseCodec(tuple(shapes), cfg.wire_dtype)

    def new_worker(self) -> None:
        return None

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker, model: torch.nn.Module) -> bytes:
        """The pseudo-gradient theta_global - theta_local, encoded."""
        local = [p.detach().to("cpu", torch.float32) for p in model.parameters()]
        return self.codec.encode([g - l for g, l in zip(state.params, local)])

    def check(self, payload: bytes) -> None:
        self.codec.decode(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes]) -> None:
        """Mean of the payloads in the given order, then Nesterov SGD, in place.

        Separate multiply and add ops (no fused alpha/FMA forms), each exactly rounded in fp32
        on the CPU, so every peer computes the same bits from the same payloads.
        """
        deltas = [self.codec.decode(p) for p in payloads]
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        for i, (param, mom) in enumerate(zip(state.params, state.outer["momentum"])):
            mean = torch.zeros_like(param)
            for d in deltas:
                mean.add_(d[i])
            mean.div_(float(len(deltas)))
            mom.mul_(mu).add_(mean)                 # m = mu * m + g
            step = mean + mom * mu                  # Nesterov: g + mu * m
            param.sub_(step * lr)
        state.round += 1
