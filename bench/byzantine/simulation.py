"""`bench byzantine`'s simulation: one run of N peers in one process, the attackers among them.

N peers are simulated as in `bench quality` (bench/quality/simulator.py): honest peers train for
real (inner AdamW steps on their own data shard) and send their update through the real codec;
the attackers do not train but craft their payloads (bench/byzantine/attacks.py), from the
honest ones where the attack needs them. Every payload goes through `strategy.check` (a refused
one is dropped and counted, as the round protocol drops it) and then `strategy.apply`: encode ->
bytes -> decode -> aggregate, the node's own code. Roster order: honest peers, then attackers (a
replay can only be announced after its original). With scoring, every update is scored on a
batch all peers share (node/outer/scoring.py) and banned peers are left out of later rounds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import torch

from bench.byzantine.attacks import ATTACKS, RoundView
from bench.quality.presets import BASE_TRAIN, SMALL, Tier
from bench.quality.simulator import Worker, check_stop, local_round
from node.config import ModelConfig, RobustConfig, StrategyConfig
from node.outer.scoring import banned, payload_digest, score_updates, shared_batch_loss
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.round.ledger import ScoredRound
from node.train import data
from node.train.model import build_model
from node.train.trainer import InnerTrainer, evaluate_bpb, warmup_cosine
from protocol.errors import ProtocolError

DIVERGED = 1e4
"""A state with a weight beyond this has diverged (trained weights of this model stay below 10)."""

TARGET_STRATEGIES: dict[str, StrategyConfig] = {
    # H = 5 keeps the default suite within ~15 minutes on one core; the rest as in bench quality
    "diloco": StrategyConfig(name="diloco", inner_steps=5, outer_lr=0.7, outer_momentum=0.9),
    "sparseloco": StrategyConfig(
        name="sparseloco", inner_steps=5, topk=64, values="2bit", outer_lr=2.0, error_decay=0.95
    ),
    "decoupled-momentum": StrategyConfig(name="decoupled-momentum", topk=32, values="bf16", momentum_decay=0.999),
    "ddp-adamw": StrategyConfig(name="ddp-adamw"),
}
"""The strategies under attack (--strategy), by name: their settings."""


@dataclass(frozen=True, kw_only=True)
class Setup:
    """What every run of a suite shares: the model, the batches, the measurement."""

    model: ModelConfig = SMALL
    """Model of every run (bench quality's small tier)."""
    batch_size: int = 8
    """Sequences per honest inner step."""
    warmup_steps: int = 20
    """Linear warm-up before the cosine decay, in inner steps."""
    val_seqs: int = 128
    """Held-out windows in the final val bpb."""
    score_seqs: int = 16
    """Windows of the batch all peers share for scoring, one per data shard in turn."""
    seed: int = 0
    """Weights, batches and attackers' randomness."""


@dataclass(frozen=True)
class AttackCase:
    """One run of the suite: a strategy and its aggregator under one attack."""

    strategy: str
    """A key of TARGET_STRATEGIES."""
    aggregator: str
    """'robust' or 'mean'."""
    attack: str
    """A key of ATTACKS, or 'none' (with 0 attackers)."""
    attackers: int
    """How many of the workers lie (the last ones in roster order)."""
    workers: int
    """Simulated peers, attackers included."""
    rounds: int
    """Outer rounds (for step-wise strategies, one step each)."""
    scoring: bool
    """Score updates and ban bad scorers (node/outer/scoring.py)."""
    variant: dict | None = None
    """Aggregator ablation: fields of node.outer.aggregate.Robust to override (sparse_rule, sign_rule, ...)."""


class SimulatedSwarm:
    """One simulated run: honest workers, attackers, the strategy with its aggregator, the ledger of scores."""

    def __init__(self, case: AttackCase, setup: Setup, shards: list[torch.Tensor]):
        self.case, self.setup, self.shards = case, setup, shards
        strat_cfg = TARGET_STRATEGIES[case.strategy]
        train = replace(BASE_TRAIN, batch_size=setup.batch_size, warmup_steps=setup.warmup_steps, seed=setup.seed)
        self.h = strat_cfg.inner_steps if strat_cfg.name in ("diloco", "sparseloco") else 1  # steps per round
        schedule = warmup_cosine(train, case.rounds * self.h)
        self.model = build_model(setup.model, setup.seed)
        shapes = [tuple(p.shape) for p in self.model.parameters() if p.requires_grad]
        self.robust = RobustConfig(aggregator=case.aggregator, scoring=case.scoring)
        self.strategy = make_strategy(strat_cfg, shapes, train, schedule, robust=self.robust)
        if case.variant:
            self.strategy.agg = replace(self.strategy.agg, **case.variant)
        self.state = SwarmState.initial(self.model, self.strategy.outer_buffers)
        self.tier = Tier(
            steps=case.rounds * self.h, seeds=(setup.seed,), model=setup.model, batch_size=setup.batch_size
        )
        self.n_honest = case.workers - case.attackers
        self.peers = [f"peer-{i:02d}" for i in range(case.workers)]  # attackers last
        self.workers = [
            Worker(
                InnerTrainer(build_model(setup.model, setup.seed), train, torch.device("cpu"), schedule),
                self.strategy.new_worker(),
                torch.Generator().manual_seed(1000 * setup.seed + w),
                shards[w % len(shards)],
            )
            for w in range(self.n_honest)
        ]
        self.scorer = build_model(setup.model, setup.seed)
        self.gen = torch.Generator().manual_seed(777 + setup.seed)
        self.banned: set[str] = set()
        self.history: list[ScoredRound] = []  # the ledger's scores, one roster per round
        self.seen: set[str] = set()  # digests of every payload so far (stale replays)
        self.previous: list[bytes] = []
        self.dropped = 0

    def round_payloads(self) -> tuple[list[int], list[bytes]]:
        """(live peers, their payloads in roster order): honest peers train, then attackers craft."""
        live = [i for i in range(self.case.workers) if self.peers[i] not in self.banned]
        honest = [
            local_round(self.workers[i], self.state, self.strategy, self.h, self.tier)
            for i in live
            if i < self.n_honest
        ]
        liars = [i for i in live if i >= self.n_honest]
        ctx = RoundView(self.strategy.codec, honest, self.previous, self.gen, len(live), len(liars))
        self.previous = honest
        return live, honest + [ATTACKS[self.case.attack](ctx, i - self.n_honest) for i in liars]

    def accepted(self, payloads: list[bytes]) -> list[bytes]:
        """What the round protocol keeps: payloads the strategy's check (the codec) accepts."""
        ok = []
        for p in payloads:
            try:
                self.strategy.check(p)
                ok.append(p)
            except ProtocolError:
                self.dropped += 1
        return ok

    def score(self, rnd: int, live: list[int], payloads: list[bytes]) -> None:
        """Score this round's updates into the ledger and update the bans (they apply from the next round)."""
        loss_of = shared_batch_loss(self.scorer, *_shared_batch(self.shards, self.setup, rnd))
        scores = score_updates(self.strategy, self.state, payloads, loss_of, earlier=self.seen)
        leader = self.peers[rnd % self.n_honest]  # honest peers lead in turn: bans need several leaders
        self.history.append(ScoredRound(rnd + 1, leader, {self.peers[i]: s for i, s in zip(live, scores)}))
        self.seen |= {payload_digest(p) for p in payloads}
        self.banned = banned(self.history, self.robust)

    def attackers_banned(self) -> bool:
        return self.case.attackers > 0 and set(self.peers[self.n_honest :]) <= self.banned


def simulate_case(
    case: AttackCase,
    setup: Setup,
    shards: list[torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    stop: threading.Event | None = None,
) -> dict:
    """One run: `case.rounds` outer rounds with its attackers; the final val bpb and what happened.
    A set `stop` raises Stopped (bench/quality/simulator.py) before the next round."""
    t0 = time.monotonic()
    swarm = SimulatedSwarm(case, setup, shards)
    rounds_to_ban = diverged_at = None
    for rnd in range(case.rounds):
        check_stop(stop)
        live, payloads = swarm.round_payloads()
        ok = swarm.accepted(payloads)
        if case.scoring:
            swarm.score(rnd, live, payloads)
            rounds_to_ban = rounds_to_ban or (rnd + 1 if swarm.attackers_banned() else None)
        swarm.strategy.apply(swarm.state, ok)
        if _diverged(swarm.state):
            diverged_at = rnd + 1
            break
    bpb = None if diverged_at else _val_bpb(swarm.model, swarm.state, val)
    attackers = swarm.peers[swarm.n_honest :]
    return {
        "attack": case.attack,
        "aggregator": case.aggregator + _variant_suffix(case.variant),
        "strategy": case.strategy,
        "attackers": case.attackers,
        "workers": case.workers,
        "rounds": case.rounds,
        "scoring": case.scoring,
        "seed": setup.seed,
        "val_bpb": bpb,
        "diverged_at_round": diverged_at,
        "dropped_payloads": swarm.dropped,
        "rounds_to_ban": rounds_to_ban,
        "banned_attackers": sum(p in swarm.banned for p in attackers),
        "banned_honest": len(swarm.banned) - sum(p in swarm.banned for p in attackers),
        "seconds": round(time.monotonic() - t0, 1),
    }


def _diverged(state: SwarmState) -> bool:
    """Non-finite, or weights beyond any trained model's (|w| > 1e4): the model is gone, the run ends.
    (The round protocol refuses a non-finite state; a huge finite one is what the plain mean lets in.)"""
    return not all(bool(torch.isfinite(p).all()) and float(p.abs().max()) <= DIVERGED for p in state.params)


def _variant_suffix(variant: dict | None) -> str:
    return f"[{','.join(f'{k}={v}' for k, v in variant.items())}]" if variant else ""


def _shared_batch(shards: list[torch.Tensor], setup: Setup, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The round's shared scoring batch: one window from each shard in turn, seeded by the round."""
    g = torch.Generator().manual_seed(10_000 + rnd)
    xs, ys = zip(
        *(data.windows(shards[(rnd + j) % len(shards)], 1, setup.model.ctx, g) for j in range(setup.score_seqs))
    )
    return torch.cat(xs), torch.cat(ys)


def _val_bpb(model: torch.nn.Module, state: SwarmState, val) -> float:
    with torch.no_grad():
        for p, src in zip([p for p in model.parameters() if p.requires_grad], state.params):
            p.copy_(src)
    return evaluate_bpb(model, *val, torch.device("cpu"))
