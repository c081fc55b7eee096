"""Decoupled momentum (DeMo, arXiv 2411.19870; the published form of DisTrO).

Every step: m = beta * m + grad; the top-k of each 2-D DCT block of m are sent (bf16 or
1-bit values) and subtracted from m, the rest stays as error feedback; all-gather; every peer
applies theta -= lr * sign(idct(mean of received)) with decoupled weight decay.
"""
from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.state import SwarmState
from protocol.codecs import TopKCodec


class DecoupledMomentum:
    name = "decoupled-momentum"
    outer_buffers: list[str] = []
    local_optimizer = False
    inner_steps = 1

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule):
        self.cfg, self.train, self.schedule = cfg, train, schedule
        self.codec = TopKCodec(tuple(shapes), chunk=cfg.chunk, k=cfg.topk, dct=True, values=cfg.values,
                               index_bits=cfg.index_bits)

    def new_worker(self) -> dict:
        return {}

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker: dict, model: torch.nn.Module) -> bytes:
        grads = [p.grad.detach().to("cpu", torch.float32) for p in model.parameters()]
        momentum = worker.setdefault("momentum", [torch.zeros_like(g) for g in grads])
        for m, g in zip(momentum, grads):
            m.mul_(self.cfg.momentum_decay).add_(g)
        selected = self.codec.select(momentum)
        for m, s in zip(momentum, self.codec.densify(selected)):
            m.sub_(s)                     # the full selected components leave the momentum
        return self.codec.pack(selected)  # values quantised only on the wire

    def check(self, payload: bytes) -> None:
        self.codec.unpack(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes]) -> None:
        # mean in the DCT domain (exact scatter-adds in roster order), one float64 inverse DCT,
        # sign taken before any rounding to fp32: peers agree on every sign
        mean = self.codec.mean_dense([self.codec.unpack(p) for p in payloads], dtype=torch.float64)
        lr = self.train.inner_lr * self.schedule(state.round)
        for param, m in zip(state.params, mean):
            param.mul_(1.0 - lr * self.train.weight_decay)
            param.sub_(torch.sign(m).to(torch.float32) * lr)
        state.round += 1
