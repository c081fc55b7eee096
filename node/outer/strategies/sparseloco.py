"""SparseLoCo (arXiv 2508.15706): DiLoCo whose pseudo-gradient goes through an error-feedback
buffer, is sparsified to the top-k of each chunk, and is sent with 2-bit values; all-gather.
The outer step is plain SGD (the paper), or Nesterov SGD with sparse_outer_momentum > 0 (SNOO,
arXiv 2510.15830, with outer_lr above 1)."""

from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.outer.aggregate import Aggregator, Mean, Weights, per_round
from node.outer.copies import distinct
from node.outer.state import SwarmState, shaped
from protocol.codecs import TopKCodec


def search_space(cfg: StrategyConfig, train: TrainConfig) -> dict[str, tuple]:
    """What `bench tune` searches for a sparseloco preset (see diloco.search_space); H, k, chunk and
    value bits stay the preset's (they set the traffic)."""
    space = {
        "outer_lr": ("float", 0.5, 4.0, True),
        "error_decay": ("float", 0.8, 0.999, False),
        "train.inner_lr": ("float", 1e-3, 1e-2, True),
    }
    if cfg.sparse_outer_momentum > 0:
        space["sparse_outer_momentum"] = ("float", 0.3, 0.95, False)
    return space


class SparseLoCo:
    name = "sparseloco"
    outer_buffers: list[str] = []
    local_optimizer = True
    takes_back = True
    """After a v3 round (the sparse wire re-sparsifies the aggregate), each member hands
    `take_back` its own update and the aggregate (node/peer/applier.py Applier.take_back)."""

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator = Mean()):
        if cfg.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        if not 0.0 <= cfg.sparse_outer_momentum < 1.0:
            raise ValueError("sparse_outer_momentum must be in [0, 1)")
        self.cfg, self.agg = cfg, agg
        self.inner_steps = cfg.inner_steps
        self.outer_buffers = ["momentum"] if cfg.sparse_outer_momentum > 0 else []
        if cfg.topk_vector < 0:
            raise ValueError("topk_vector must be >= 0")
        self.codec = TopKCodec(
            tuple(shapes),
            chunk=cfg.chunk,
            k=cfg.topk,
            dct=False,
            values=cfg.values,
            index_bits=cfg.index_bits,
            k_vector=cfg.topk_vector,
        )

    def new_worker(self) -> dict:
        return {}  # the error buffer is made on first use, shaped like the parameters

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker: dict, model: torch.nn.Module) -> bytes:
        local = [p.detach().to("cpu", torch.float32) for p in model.parameters() if p.requires_grad]
        errors = worker.setdefault("error", [torch.zeros_like(p) for p in state.params])
        for e, g, l in zip(errors, state.params, local):
            e.mul_(self.cfg.error_decay).add_(g - l)  # e = beta * e + pseudo-gradient
        selected = self.codec.select(errors)
        sent = self.codec.densify(self.codec.quantize(selected))
        for e, s in zip(errors, sent):
            e.sub_(s)  # keep what was not sent (as received)
        return self.codec.pack(selected)

    def check(self, payload: bytes) -> None:
        self.codec.unpack(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights: Weights = None) -> None:
        """theta -= outer_lr * combine(received), in roster order (no DCT: exact scatter-adds); with
        sparse_outer_momentum mu: Nesterov, m = mu * m + g, theta -= outer_lr * (g + mu * m), in
        separate multiply and add ops (each exactly rounded in fp32: the same bits on every peer)."""
        payloads, weights = distinct(payloads, weights)  # a copy is not a second vote
        self.outer_step(state, self.agg.sparse(self.codec, [self.codec.unpack(p) for p in payloads], weights))

    @torch.no_grad()
    def apply_aggregate(self, state: SwarmState, flat: torch.Tensor) -> None:
        """The outer step on a v3 round's aggregate (node/scatter on the sparse wire: the flat
        aggregate every member gathered, in model order), in place: the same ops as `apply`
        after its aggregator, so every peer holding the same aggregate computes the same bits."""
        self.outer_step(state, shaped(flat, state.params))

    def outer_step(self, state: SwarmState, combined: list[torch.Tensor]) -> None:
        mu = self.cfg.sparse_outer_momentum
        if mu > 0:
            for param, mom, g in zip(state.params, state.outer["momentum"], combined):
                mom.mul_(mu).add_(g)
                param.sub_((g + mom * mu) * self.cfg.outer_lr)
        else:
            for param, m in zip(state.params, combined):
                param.sub_(m * self.cfg.outer_lr)
        state.round += 1

    def direction(self, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The sent top-k values, decoded and scaled to a full round's work (node/outer/useful.py)."""
        return per_round([self.codec.decode(payload)], [weight])[0]

    @torch.no_grad()
    def take_back(self, worker: dict, payload: bytes, applied: list[torch.Tensor]) -> None:
        """After a round whose aggregate was re-sparsified (v3's sparse wire, node/scatter/chunks.py):
        what this peer sent where the applied aggregate is zero was not applied, so it goes back
        into the error buffer, to be sent again, as every value SparseLoCo does not send stays.
        Summed over the peers, that is the mass the owners' re-sparsification dropped (under the
        mean: exactly), kept by the senders, since no owner holds an error buffer across rounds."""
        for e, sent, a in zip(worker["error"], self.codec.decode(payload), applied):
            e.add_(torch.where(a == 0, sent, 0.0))

    @torch.no_grad()
    def preview(self, state: SwarmState, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """theta - outer_lr * this payload alone (scaled to one full round's work: / weight), from
        zero momentum: (1 + mu) times that with Nesterov."""
        mu = self.cfg.sparse_outer_momentum
        if mu > 0:
            return [
                p - (g + g * mu) * self.cfg.outer_lr
                for p, g in zip(state.params, per_round([self.codec.decode(payload)], [weight])[0])
            ]
        return [
            p - g * self.cfg.outer_lr
            for p, g in zip(state.params, per_round([self.codec.decode(payload)], [weight])[0])
        ]
