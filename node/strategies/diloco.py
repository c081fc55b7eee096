"""DiLoCo (arXiv 2311.08105): H inner AdamW steps, then an outer Nesterov step on the mean
pseudo-gradient (global - local), sent dense as fp16 (or fp32)."""
from __future__ import annotations

import torch

from node.config import StrategyConfig
from node.errors import SwarmtrainError
from node.state import SwarmState
from protocol.codecs import DenseCodec


class DiLoCo:
    outer_buffers = ["momentum"]

    def __init__(self, cfg: StrategyConfig, shapes: list[tuple[int, ...]]):
        if cfg.wire_dtype not in ("float16", "float32"):
            raise SwarmtrainError(f"diloco wire_dtype {cfg.wire_dtype!r} is not known",
                                  "use 'float16' or 'float32' in run.toml [strategy]")
        if cfg.inner_steps < 1:
            raise SwarmtrainError("strategy inner_steps must be at least 1")
        self.cfg = cfg
        self.shapes = shapes
        self.codec = DenseCodec(cfg.wire_dtype)
        self.codec_name = self.codec.name
        self.inner_steps = cfg.inner_steps

    def update_size(self) -> int:
        return self.codec.encoded_size(self.shapes)

    @torch.no_grad()
    def make_update(self, state: SwarmState, local: list[torch.Tensor]) -> bytes:
        """The pseudo-gradient theta_global - theta_local, encoded."""
        return self.codec.encode([g - l.detach().to("cpu", torch.float32) for g, l in zip(state.params, local)])

    def check(self, payload: bytes) -> None:
        self.codec.decode(payload, self.shapes)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes]) -> None:
        """Mean of the payloads in the given order, then Nesterov SGD, in place.

        Written as separate multiply and add ops (no fused alpha/FMA forms), each exactly rounded
        in fp32 on the CPU, so every peer computes the same bits from the same payloads.
        """
        deltas = [self.codec.decode(p, self.shapes) for p in payloads]
        n = float(len(deltas))
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        for i, (param, mom) in enumerate(zip(state.params, state.outer["momentum"])):
            mean = torch.zeros_like(param)
            for d in deltas:
                mean.add_(d[i])
            mean.div_(n)
            mom.mul_(mu).add_(mean)                 # m = mu * m + g
            step = mean + mom * mu                  # Nesterov: g + mu * m
            param.sub_(step * lr)
        state.round += 1
