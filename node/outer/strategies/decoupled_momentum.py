"""Decoupled momentum (DeMo, arXiv 2411.19870; the published form of DisTrO).

Every step: m = beta * m + grad; the top-k of each 2-D DCT block of m are sent (bf16 or
1-bit values) and subtracted from m, the rest stays as error feedback; all-gather; every peer
applies theta -= lr * signs(received) with decoupled weight decay, where signs is
sign(idct(mean)) under the plain mean and a per-coordinate majority vote under the robust
aggregator (node/outer/aggregate.py): one peer alone decides no sign.
"""

from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.outer.aggregate import Aggregator, Mean, Weights
from node.outer.copies import distinct
from node.outer.state import SwarmState
from protocol.codecs import TopKCodec


def search_space(cfg: StrategyConfig, train: TrainConfig) -> dict[str, tuple]:
    """What `bench tune` searches for a decoupled-momentum preset (see diloco.search_space)."""
    return {"train.inner_lr": ("float", 1e-3, 1e-2, True), "momentum_decay": ("float", 0.9, 0.999, False)}


class DecoupledMomentum:
    name = "decoupled-momentum"
    outer_buffers: list[str] = []
    local_optimizer = False
    inner_steps = 1

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator = Mean()):
        self.cfg, self.train, self.schedule, self.agg = cfg, train, schedule, agg
        self.codec = TopKCodec(
            tuple(shapes), chunk=cfg.chunk, k=cfg.topk, dct=True, values=cfg.values, index_bits=cfg.index_bits
        )

    def new_worker(self) -> dict:
        return {}

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker: dict, model: torch.nn.Module) -> bytes:
        grads = [p.grad.detach().to("cpu", torch.float32) for p in model.parameters() if p.requires_grad]
        momentum = worker.setdefault("momentum", [torch.zeros_like(g) for g in grads])
        for m, g in zip(momentum, grads):
            m.mul_(self.cfg.momentum_decay).add_(g)
        selected = self.codec.select(momentum)
        for m, s in zip(momentum, self.codec.densify(selected)):
            m.sub_(s)  # the full selected components leave the momentum
        return self.codec.pack(selected)  # values quantised only on the wire

    def check(self, payload: bytes) -> None:
        self.codec.unpack(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights: Weights = None) -> None:
        payloads, weights = distinct(payloads, weights)  # a copy is not a second vote
        signs = self.agg.signs(self.codec, [self.codec.unpack(p) for p in payloads])
        self._step(state.params, signs, state.round)
        state.round += 1

    def direction(self, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The payload's sign vote (what the aggregator counts: magnitudes and weights do not),
        without the weight decay every step shares (node/outer/useful.py)."""
        return Mean().signs(self.codec, [self.codec.unpack(payload)])

    @torch.no_grad()
    def preview(self, state: SwarmState, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The sign step of this payload alone."""
        params = [p.clone() for p in state.params]
        self._step(params, Mean().signs(self.codec, [self.codec.unpack(payload)]), state.round)
        return params

    def _step(self, params: list[torch.Tensor], signs: list[torch.Tensor], round_no: int) -> None:
        lr = self.train.inner_lr * self.schedule(round_no)
        for param, s in zip(params, signs):
            param.mul_(1.0 - lr * self.train.weight_decay)
            param.sub_(s * lr)
