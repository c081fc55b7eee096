"""DiLoCo (arXiv 2311.08105): H inner AdamW steps, then an outer Nesterov step on the combined
pseudo-gradient (global - local), sent dense as fp16, fp32 or int8 (as INTELLECT-1 did), or at 4, 2
or 1 bits per value through an error-feedback buffer (as MuLoCo, arXiv 2505.23725): each peer adds
its pseudo-gradient to what earlier rounds' rounding left out, sends the quantised sum, and keeps
the difference; or as low-rank factors of each matrix through the same buffer (PowerSGD, arXiv
1905.13727: one power iteration a round, warm-started from the last round's Q)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from node.config import StrategyConfig, TrainConfig
from node.outer.aggregate import Aggregator, Mean, Weights, per_round
from node.outer.copies import distinct
from node.outer.state import SwarmState, shaped
from protocol.codecs import DenseCodec, Int8Codec, LowRankCodec, QuantCodec

LOW_BIT = {"int4": 4, "int2": 2, "int1": 1}
LOW_RANK = {"lowrank": 8, "lowrank1": 1}  # wire_dtype -> bits of a factor's values
# Codecs registered from Python (node.outer.strategies.register_codec): wire_dtype name -> factory(shapes).
WIRE_CODECS: dict[str, Callable[[tuple], object]] = {}


def search_space(cfg: StrategyConfig, train: TrainConfig) -> dict[str, tuple]:
    """What `bench tune` searches for a diloco preset (bench/tune.py): name -> (kind, low, high, log);
    'train.' names are TrainConfig fields. H and the wire format stay the preset's: they set the
    traffic, the tuner only finds the best quality there. outer_lr reaches above 1 (SNOO)."""
    space = {
        "outer_lr": ("float", 0.3, 2.0, True),
        "outer_momentum": ("float", 0.5, 0.95, False),
        "train.inner_lr": ("float", 1e-3, 1e-2, True),
    }
    if cfg.wire_dtype in (*LOW_BIT, *LOW_RANK):
        space["error_decay"] = ("float", 0.5, 1.0, False)  # 0.7 beat 0.807 at H = 144 (docs/benchmarks.md)
    return space


def low_rank(cfg: StrategyConfig, shapes) -> LowRankCodec:
    """The lowrank wire for these shapes; a rank that factors no matrix is refused (all would go as int1)."""
    if cfg.wire_rank < 1 or cfg.wire_block < 1:
        raise ValueError(f"wire_rank ({cfg.wire_rank}) and wire_block ({cfg.wire_block}) must be at least 1")
    codec = LowRankCodec(
        tuple(tuple(s) for s in shapes), rank=cfg.wire_rank, block=cfg.wire_block, bits=LOW_RANK[cfg.wire_dtype]
    )
    if not any(codec.factored(tuple(s)) for s in shapes):
        raise ValueError(
            f"wire_rank {cfg.wire_rank} factors no matrix of this model (rank-r factors of an m x n matrix "
            "must hold fewer values than it, r (m + n) < m n): use a lower rank, or wire_dtype int1"
        )
    return codec


class DiLoCo:
    name = "diloco"
    outer_buffers = ["momentum"]
    local_optimizer = True

    def __init__(self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator = Mean()):
        if cfg.wire_dtype not in ("float16", "float32", "int8", *LOW_RANK, *LOW_BIT, *WIRE_CODECS):
            raise ValueError(
                f"wire_dtype {cfg.wire_dtype!r} is not one of float16, float32, int8, int4, int2, int1, "
                "lowrank, lowrank1"
                + "".join(f", {name}" for name in WIRE_CODECS)
                + " (a codec of your own must be registered first: swarmtrain.register_codec)"
            )
        if cfg.inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        if cfg.wire_share != 1 and cfg.wire_dtype != "int1":
            raise ValueError(f"wire_share {cfg.wire_share} needs wire_dtype int1 (a shared sign is one bit)")
        self.cfg, self.agg = cfg, agg
        self.inner_steps = cfg.inner_steps
        self.error_feedback = cfg.wire_dtype in (*LOW_BIT, *LOW_RANK)
        if cfg.wire_dtype in LOW_RANK:
            self.codec = low_rank(cfg, shapes)
        elif self.error_feedback:
            if cfg.wire_block < 1:
                raise ValueError("wire_block must be at least 1")
            self.codec = QuantCodec(
                tuple(shapes), bits=LOW_BIT[cfg.wire_dtype], block=cfg.wire_block, share=cfg.wire_share
            )
        elif cfg.wire_dtype in WIRE_CODECS:
            self.codec = WIRE_CODECS[cfg.wire_dtype](tuple(shapes))
        elif cfg.wire_dtype == "int8":
            self.codec = Int8Codec(tuple(shapes))
        else:
            self.codec = DenseCodec(tuple(shapes), cfg.wire_dtype)

    def new_worker(self) -> dict | None:
        return {} if self.error_feedback else None  # the error buffer is made on first use

    @torch.no_grad()
    def make_update(self, state: SwarmState, worker, model: torch.nn.Module) -> bytes:
        """The pseudo-gradient theta_global - theta_local, encoded (through the error buffer at
        4, 2 or 1 bits, or low rank)."""
        local = [p.detach().to("cpu", torch.float32) for p in model.parameters() if p.requires_grad]
        pseudo = [g - l for g, l in zip(state.params, local)]
        if not self.error_feedback:
            return self.codec.encode(pseudo)
        errors = worker.setdefault("error", [torch.zeros_like(p) for p in pseudo])
        for e, g in zip(errors, pseudo):
            e.mul_(self.cfg.error_decay).add_(g)  # e = beta * e + pseudo-gradient
        if isinstance(self.codec, LowRankCodec):  # PowerSGD's warm start: each matrix's Q of the last round
            factors, worker["warm"] = self.codec.factorize(errors, worker.get("warm"))
            payload = self.codec.pack(factors, errors)
        else:
            payload = self.codec.encode(errors)
        for e, s in zip(errors, self.codec.decode(payload)):
            e.sub_(s)  # keep what was not sent (as received)
        return payload

    def check(self, payload: bytes) -> None:
        self.codec.decode(payload)

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights: Weights = None) -> None:
        """Combine the payloads (in the given order) with the aggregator, then Nesterov SGD, in place.

        Separate multiply and add ops (no fused alpha/FMA forms), each exactly rounded in fp32
        on the CPU, so every peer computes the same bits from the same payloads.
        """
        payloads, weights = distinct(payloads, weights)  # a copy is not a second vote
        self.outer_step(state, self.agg.dense([self.codec.decode(p) for p in payloads], weights))

    @torch.no_grad()
    def take_back(self, worker: dict | None, payload: bytes, applied: list[torch.Tensor]) -> None:
        """After a v3 round whose aggregate was re-encoded at low bit width (node/scatter/chunks.py
        SignWire), with error feedback: what this peer sent less what was applied goes back into
        its error buffer. Averaged over the peers (under the mean) that is exactly the aggregate's
        rounding, which no owner can keep across rounds; each peer's own share is its distance
        from the consensus, which averages out. Without error feedback: nothing to keep it in."""
        if not self.error_feedback:
            return
        for e, sent, a in zip(worker["error"], self.codec.decode(payload), applied):
            e.add_(sent - a)

    @torch.no_grad()
    def apply_aggregate(self, state: SwarmState, flat: torch.Tensor) -> None:
        """The outer step on a v3 round's aggregate (node/scatter: the flat pseudo-gradient every
        member gathered, in model order), in place: the same ops as `apply` after its aggregator,
        so every peer holding the same aggregate computes the same bits."""
        self.outer_step(state, shaped(flat, state.params))

    def outer_step(self, state: SwarmState, combined: list[torch.Tensor]) -> None:
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        for param, mom, g in zip(state.params, state.outer["momentum"], combined):
            mom.mul_(mu).add_(g)  # m = mu * m + g
            step = g + mom * mu  # Nesterov: g + mu * m
            param.sub_(step * lr)
        state.round += 1

    def direction(self, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The pseudo-gradient as the aggregator takes it: decoded, scaled to a full round's work
        (node/outer/useful.py judges it)."""
        return per_round([self.codec.decode(payload)], [weight])[0]

    @torch.no_grad()
    def preview(self, state: SwarmState, payload: bytes, weight: float = 1.0) -> list[torch.Tensor]:
        """The outer step of this payload alone from zero momentum: theta - lr (1 + mu) g, with g
        scaled to one full round's work (g / weight, as the aggregators do)."""
        lr, mu = self.cfg.outer_lr, self.cfg.outer_momentum
        return [
            p - (g + g * mu) * lr for p, g in zip(state.params, per_round([self.codec.decode(payload)], [weight])[0])
        ]
