"""Update scores and bans (issue 8, optional in the manifest: [robust] scoring = true).

Each round, every update in the roster is scored by the loss change it causes alone on a small
batch that all peers share (Templar-style): the strategy's `preview` applies that one payload to
the round's parameters from fresh outer buffers, and the score is loss(after) - loss(before) in
nats per byte. Lower is better: honest updates lower the loss, poisoned ones raise it.
An update that cannot be applied (the codec refuses it) or that replays bytes already seen
(earlier in this round's roster, or in an earlier round) scores WORST.

The scores travel as plain floats in the signed round roster, keyed by peer id, so bans are a
pure function of that ledger: every peer derives the same ban set from the same rosters,
whatever its own arithmetic (`banned`).
"""
from __future__ import annotations

import hashlib
import math
import statistics
from collections import Counter
from typing import Callable, Iterable

import torch

from node.config import RobustConfig
from node.model import loss_fn
from protocol.errors import ProtocolError

WORST = 1e9
"""Score (nats) of an update that cannot be applied or that replays another: far beyond any
real loss change, and finite so that ledgers stay plain JSON."""
MARGIN = 6.0
"""A score is bad when it exceeds the round's median by MARGIN robust standard deviations.
Honest scores are heavy-tailed (each peer trains on its own shard): in `bench byzantine`,
honest updates reached 5-9 sigma about once in 300 scores, and 3 sigma once in 40; attackers
that move the model at all sit far beyond (replayed, refused: WORST)."""
MAD_TO_SIGMA = 1.4826
"""Median absolute deviation x this = standard deviation, for normally spread scores."""
MIN_SPREAD = 1e-4
"""Floor (nats) of the spread: when honest scores agree to the 4th decimal, noise is no signal."""
MIN_PEERS = 4
"""Rounds with fewer scored peers flag no one: a median of 3 is not a majority's opinion."""

LossOf = Callable[[list[torch.Tensor]], float]


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def replays(payloads: list[bytes], earlier: Iterable[str] = ()) -> list[bool]:
    """Per payload (roster order): does it repeat bytes seen before it, in this round or earlier?

    The roster lists updates in announcement order, and a copy can only be announced after its
    original, so the first holder of some bytes keeps them and every later one is the replay.
    """
    seen, out = set(earlier), []
    for p in payloads:
        d = payload_digest(p)
        out.append(d in seen)
        seen.add(d)
    return out


def shared_batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> LossOf:
    """loss_of(params): mean cross-entropy (nats/byte) of `model` with those trainable params on (x, y).

    Each call overwrites `model`'s trainable parameters (copied from CPU params, so any device
    works): pass a scratch model, or reload the real one before it trains again.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def loss_of(params: list[torch.Tensor]) -> float:
        for p, src in zip(trainable, params):
            p.copy_(src)
        return float(loss_fn(model(x), y))
    return loss_of


def score_updates(strategy, state, payloads: list[bytes], loss_of: LossOf,
                  earlier: Iterable[str] = ()) -> list[float]:
    """Loss change (nats; lower is better) each payload causes applied alone; WORST for refused or replayed."""
    before = loss_of(state.params)
    return [WORST if replayed else _score_one(strategy, state, payload, loss_of, before)
            for payload, replayed in zip(payloads, replays(payloads, earlier))]


def _score_one(strategy, state, payload: bytes, loss_of: LossOf, before: float) -> float:
    try:
        change = loss_of(strategy.preview(state, payload)) - before
    except ProtocolError:
        return WORST
    return min(WORST, change) if math.isfinite(change) else WORST


def flagged(scores: dict[str, float]) -> set[str]:
    """Peers whose score is worse than the round's median by MARGIN robust standard deviations."""
    if len(scores) < MIN_PEERS:
        return set()
    values = list(scores.values())
    med = statistics.median(values)
    spread = max(MAD_TO_SIGMA * statistics.median(abs(v - med) for v in values), MIN_SPREAD)
    return {peer for peer, s in scores.items() if s > med + MARGIN * spread}


def banned(score_history: list[dict[str, float]], cfg: RobustConfig) -> set[str]:
    """Peers flagged in at least ban_after of some score_window consecutive rounds, for good.

    score_history: one {peer id: score} per round, oldest first (what the ledger's rosters
    carry). A ban is permanent: a banned peer is no longer scored, so its window would
    otherwise empty and let it back in to do the same again.
    """
    flags = [flagged(scores) for scores in score_history]
    out: set[str] = set()
    for end in range(len(flags)):
        window = flags[max(0, end - cfg.score_window + 1):end + 1]
        out |= {p for p, n in Counter(p for f in window for p in f).items() if n >= cfg.ban_after}
    return out
