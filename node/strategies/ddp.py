"""Data-parallel AdamW, the baseline: every step each peer sends its (clipped) fp32 gradient,
and every peer applies AdamW to the mean gradient. Dense and every step: the traffic every
other strategy is measured against."""
from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.state import SwarmState
from protocol.codecs import DenseCodec

BETAS = (0.9, 0.95)
EPS = 1e-8


class DdpAdamW:
    name = "ddp-adamw"
    outer_buffers = ["exp_avg", "exp_avg_sq"]
    local_optimizer = False
    inner_steps = 1

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule):
        self.train, self.schedule = train, schedule
        self.codec = DenseCodec(tuple(shapes), "float32")

    def new_worker(self) -> None:
        return None

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker, model: torch.nn.Module) -> bytes:
        return self.codec.encode([p.grad for p in model.parameters()])  # clipped by the trainer

    def check(self, payload: bytes) -> None:
        self.codec.decode(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes]) -> None:
        """AdamW on the mean gradient, written as elementwise ops only (no reductions), so the
        result does not depend on thread counts or vector widths."""
        grads = [self.codec.decode(p) for p in payloads]
        t = state.round + 1
        lr = self.train.inner_lr * self.schedule(state.round)
        b1, b2 = BETAS
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        for i, (p, m, v) in enumerate(zip(state.params, state.outer["exp_avg"], state.outer["exp_avg_sq"])):
            g = torch.zeros_like(p)
            for d in grads:
                g.add_(d[i])
            g.div_(float(len(grads)))
            m.mul_(b1).add_(g * (1 - b1))
            v.mul_(b2).add_(g * g * (1 - b2))
            p.mul_(1 - lr * self.train.weight_decay)
            denom = (v / c2).sqrt_().add_(EPS)
            p.sub_((m / c1) / denom * lr)
        state.round += 1
