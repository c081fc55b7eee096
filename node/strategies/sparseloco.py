"""SparseLoCo (arXiv 2508.15706): DiLoCo whose pseudo-gradient goes through an error-feedback
buffer, is sparsified to the top-k of each chunk, and is sent with 2-bit values; all-gather."""
from __future__ import annotations

import torch

from node.aggregate import Aggregator, Mean, Weights, per_round
from node.config import StrategyConfig, TrainConfig
from node.state import SwarmState
from protocol.codecs import TopKCodec


class SparseLoCo:
    name = "sparseloco"
    outer_buffers: list[str] = []
    local_optimizer = True

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator = Mean()):
        if cfg.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        self.cfg, self.agg = cfg, agg
        self.inner_steps = cfg.inner_steps
        self.codec = TopKCodec(tuple(shapes), chunk=cfg.chunk, k=cfg.topk, dct=False, values=cfg.values,
                               index_bits=cfg.index_bits)

    def new_worker(self) -> dict:
        return {}  # the error buffer is made on first use, shaped like the parameters

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker: dict, model: torch.nn.Module) -> bytes:
        local = [p.detach().to("cpu", torch.float32) for p in model.parameters() if p.requires_grad]
        errors = worker.setdefault("error", [torch.zeros_like(p) for p in state.params])
        for e, g, l in zip(errors, state.params, local):
            e.mul_(self.cfg.error_decay).add_(g - l)          # e = beta * e + pseudo-gradient
        selected = self.codec.select(errors)
        sent = self.codec.densify(self.codec.quantize(selected))
        for e, s in zip(errors, sent):
            e.sub_(s)                                          # keep what was not sent (as received)
        return self.codec.pack(selected)

    def check(self, payload: bytes) -> None:
        self.codec.unpack(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights: Weights = None) -> None:
        """theta -= outer_lr * combine(received), in roster order (no DCT: exact scatter-adds)."""
        combined = self.agg.sparse(self.codec, [self.codec.unpack(p) for p in payloads], weights)
        for param, m in zip(state.params, combined):
            param.sub_(m * self.cfg.outer_lr)
        state.round += 1

    @torch.no_grad()
    def preview(self, state: SwarmState, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """theta - outer_lr * this payload alone (scaled to one full round's work: / weight)."""
        return [p - g * self.cfg.outer_lr for p, g in zip(state.params, per_round([self.codec.decode(payload)], [weight])[0])]
