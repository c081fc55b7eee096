"""DDP with Muon: `bench quality`'s second data-parallel reference, beside DDP with AdamW.

The compressed presets with `inner_optimizer = 'muon'` train with Muon inside each round, so a gap
measured against DDP-AdamW alone mixes two things: what the communication costs and what the
inner optimizer gains. This reference takes the same Muon out of the rounds: every step each
worker sends its clipped fp32 gradient (ddp-adamw's wire and bytes), and the round's gradient
drives torch.optim.Muon on the Linear weights (node/train/trainer.muon_matrices, with the same
`adjust_lr_fn` and `muon_lr` as the inner optimizer) and ddp-adamw's AdamW on embeddings, norms
and biases.

A benchmark reference, not a run strategy: Muon's Newton-Schulz matmuls round differently with
thread counts and vector widths, so the peers of a real swarm would not agree on their state bit
for bit (ddp-adamw's apply is elementwise for that reason). The simulator applies one state for
all workers, so it needs no such agreement.
"""

from __future__ import annotations

import torch

from node.config import StrategyConfig, TrainConfig
from node.outer.aggregate import Aggregator
from node.outer.state import SwarmState
from node.outer.strategies.ddp import DdpAdamW

NAME = "ddp-muon"


class DdpMuon(DdpAdamW):
    name = NAME
    outer_buffers = ["exp_avg", "exp_avg_sq", "momentum_buffer"]

    def __init__(
        self, cfg: StrategyConfig, shapes, train: TrainConfig, schedule, agg: Aggregator, matrices: list[bool]
    ):
        super().__init__(cfg, shapes, train, schedule, agg)
        if len(matrices) != len(shapes):
            raise ValueError(f"{len(matrices)} Muon flags for {len(shapes)} parameters")
        self.matrices = matrices
        """Per trainable parameter, in order: does Muon train it (else AdamW)?"""

    @torch.no_grad()
    def apply(self, state: SwarmState, payloads: list[bytes], weights=None) -> None:
        combined = self.combine(payloads, weights)
        self.adamw(state, combined, [i for i, m in enumerate(self.matrices) if not m])
        self.muon(state, combined)
        state.round += 1

    def muon(self, state: SwarmState, combined: list[torch.Tensor]) -> None:
        """torch.optim.Muon's own step on the Linear weights, its momentum kept in the state."""
        which = [i for i, m in enumerate(self.matrices) if m]
        if not which:
            return
        peak = self.train.muon_lr or self.train.inner_lr
        params = [state.params[i] for i in which]
        opt = torch.optim.Muon(
            params,
            lr=peak * self.schedule(state.round),
            weight_decay=self.train.weight_decay,
            adjust_lr_fn="match_rms_adamw",
        )
        for i, p in zip(which, params):
            p.grad = combined[i]
            opt.state[p]["momentum_buffer"] = state.outer["momentum_buffer"][i]  # updated in place
        opt.step()
        for p in params:
            p.grad = None
