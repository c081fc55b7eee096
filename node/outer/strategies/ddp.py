"""Data-parallel AdamW, the baseline: every step each peer sends its (clipped) fp32 gradient,
and every peer applies AdamW to the combined gradient. Dense and every step: the traffic every
other strategy is measured against."""

from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.outer.aggregate import Aggregator, Mean, Weights
from node.outer.copies import distinct
from node.outer.state import SwarmState
from protocol.codecs import DenseCodec

BETAS = (0.9, 0.95)
EPS = 1e-8


class DdpAdamW:
    name = "ddp-adamw"
    outer_buffers = ["exp_avg", "exp_avg_sq"]
    local_optimizer = False
    inner_steps = 1

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator = Mean()):
        self.train, self.schedule, self.agg = train, schedule, agg
        self.codec = DenseCodec(tuple(shapes), "float32")

    def new_worker(self) -> None:
        return None

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker, model: torch.nn.Module) -> bytes:
        # clipped by the trainer
        # the wire and the shared state are fp32 on the CPU, whatever device trains
        return self.codec.encode([p.grad.to("cpu", torch.float32) for p in model.parameters() if p.requires_grad])

    def check(self, payload: bytes) -> None:
        self.codec.decode(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights: Weights = None) -> None:
        self.adamw(state, self.combine(payloads, weights), range(len(state.params)))
        state.round += 1

    def combine(self, payloads: list[bytes], weights: Weights = None) -> list[torch.Tensor]:
        """The round's gradient: the run's aggregate of the distinct payloads."""
        payloads, weights = distinct(payloads, weights)  # a copy is not a second vote
        return self.agg.dense([self.codec.decode(p) for p in payloads])

    @torch.no_grad()
    def adamw(self, state: SwarmState, combined: list[torch.Tensor], which) -> None:
        """AdamW on the parameters numbered `which`, written as elementwise ops only (no
        reductions), so the result does not depend on thread counts or vector widths."""
        t = state.round + 1
        lr = self.train.inner_lr * self.schedule(state.round)
        b1, b2 = BETAS
        c1, c2 = 1 - b1**t, 1 - b2**t
        for i in which:
            p, m, v, g = state.params[i], state.outer["exp_avg"][i], state.outer["exp_avg_sq"][i], combined[i]
            m.mul_(b1).add_(g * (1 - b1))
            v.mul_(b2).add_(g * g * (1 - b2))
            p.mul_(1 - lr * self.train.weight_decay)
            denom = (v / c2).sqrt_().add_(EPS)
            p.sub_((m / c1) / denom * lr)

    def direction(self, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The gradient, decoded (node/outer/useful.py)."""
        return self.codec.decode(payload)

    @torch.no_grad()
    def preview(self, state: SwarmState, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """AdamW's first step from zero moments, lr * sign(g) (weight decay left out: it is the same
        for every payload)."""
        lr = self.train.inner_lr * self.schedule(state.round)
        return [p - torch.sign(g) * lr for p, g in zip(state.params, self.codec.decode(payload))]
