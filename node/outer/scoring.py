"""Update scores and bans (issue 8, optional in the manifest: [robust] scoring = true).

Each round, every update in the roster is scored by the loss change it causes alone on a small
batch that all peers share (Templar-style): the strategy's `preview` applies that one payload to
the round's parameters from fresh outer buffers, and the score is loss(after) - loss(before) in
nats per byte. Lower is better: honest updates lower the loss, poisoned ones raise it.
An update that cannot be applied (the codec refuses it), that replays the bytes of an
earlier round, or that is `crafted` (it sits on one side of the round's coordinate-wise median
almost everywhere, as ALIE's mean minus z standard deviations does, or points away from the
median, as sign flips and IPM do) scores WORST.

Copies within one round are scored for what they are, never for being copies: who holds the
bytes first cannot be told from the roster (peer ids are free to choose, and a copy of a
victim's update must not get the victim flagged). The credit for such bytes goes to the
earliest signed announcement, and to nobody on a tie (`credited`); scores and flags depend on
neither times nor ids.

The scores travel as plain floats in the signed round roster, keyed by peer id, so bans are a
pure function of that ledger: every peer derives the same ban set from the same rosters,
whatever its own arithmetic (`banned`). A ban needs flags from several leaders, so that a run
of hostile leaders cannot ban honest peers by writing bad scores for them.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import torch

from node.config import RobustConfig
from node.train.model import loss_fn
from protocol.errors import ProtocolError

WORST = 1e9
"""Score (nats) of an update that cannot be applied or that replays an earlier round's: far
beyond any real loss change, and finite so that ledgers stay plain JSON."""
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
"""Rounds with fewer distinct scores flag no one: a median of 3 is not a majority's opinion."""
ONE_SIDED_MAX = 0.5
"""Most an update's deviation from the round's median may lean to one side: |mean sign| over
the coordinates where it differs. Honest updates split about evenly (each peer's noise has
no preferred sign; bench byzantine, 16 peers: at most 0.035 (diloco), 0.15 (sparseloco), 0.02
(decoupled-momentum) when all are honest, 0.25 beside 7 ALIE peers); ALIE's leans 0.94-1.0."""
SAMPLE = 1 << 16
"""Coordinates (evenly strided over every tensor) that `directions` compares: enough to measure
the lean to +-0.01, and a bounded cost on any model size."""
MIN_COSINE = 0.0
"""Least cosine between an update and the round's median update: honest peers descend the same
loss, so theirs point the same way (bench byzantine, 16 peers, clean: at least 0.375 diloco,
0.15 sparseloco, 0.20 decoupled-momentum; beside 7 IPM peers, sparseloco's least was 0.028: the
thinnest margin); a flipped or inverted update points away (sign flip <= -0.83, IPM <= -0.95)."""
DUPLICATE_COS = 0.999
"""Updates this close (cosine of their parameter changes) count once in the median, so that
colluders sending one update cannot move it; within one round, one credit for all of them
(`credited`)."""
TIE_SECONDS = 1.0
"""Least lead (seconds of signed announcement time) that makes one holder of some bytes their
author: announcements closer than this are a tie and nobody is credited (clocks and the DHT's
own delays blur the order below it)."""
LossOf = Callable[[list[torch.Tensor]], float]


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def stale(payloads: list[bytes], earlier: Iterable[str] = ()) -> list[bool]:
    """Per payload (roster order): does it repeat the bytes of an earlier round (`earlier`: their
    digests)? The chain proves those came first, so the later holder replays them. Copies within
    this round are not stale: which came first is `credited`'s question, not a flag."""
    seen = set(earlier)
    return [payload_digest(p) in seen for p in payloads]


def credited(
    payloads: list[bytes],
    times: list[float],
    earlier: Iterable[str] = (),
    deltas: list[torch.Tensor | None] | None = None,
) -> list[bool]:
    """Per payload (roster order): does it earn this round's credit for its bytes?

    Entries with the same bytes (and, given their sampled parameter changes `deltas`, the
    near-duplicates: cosine > DUPLICATE_COS, linked transitively) form one group. A group of one
    is credited; in a larger one only the member whose signed announcement `time` precedes every
    other member's by TIE_SECONDS, and on a tie nobody. Never the smaller peer id: ids are free,
    and a copy must not take its victim's credit by its name. Bytes of an earlier round
    (`earlier`) earn nothing, nor does their group.
    """
    parent = list(range(len(payloads)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[str, int] = {}
    for i, p in enumerate(payloads):
        parent[root(i)] = root(first_of.setdefault(payload_digest(p), i))
    for i, j in _near_pairs(deltas or []):
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(payloads)):
        groups[root(i)].append(i)
    old = stale(payloads, earlier)
    out = [False] * len(payloads)
    for members in groups.values():
        if any(old[i] for i in members):
            continue
        first, *rest = sorted(members, key=lambda i: times[i])
        if not rest or times[rest[0]] - times[first] >= TIE_SECONDS:
            out[first] = True
    return out


def _near_pairs(deltas: list[torch.Tensor | None]) -> list[tuple[int, int]]:
    """Index pairs (i < j) of non-zero deltas with cosine above DUPLICATE_COS."""
    idx = [i for i, d in enumerate(deltas) if d is not None and bool(d.any())]
    if len(idx) < 2:
        return []
    unit = torch.stack([deltas[i].float() / deltas[i].float().norm() for i in idx])
    close = torch.triu(unit @ unit.T > DUPLICATE_COS, diagonal=1).nonzero().tolist()
    return [(idx[a], idx[b]) for a, b in close]


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


def score_updates(
    strategy,
    state,
    payloads: list[bytes],
    loss_of: LossOf,
    earlier: Iterable[str] = (),
    weights: list[float] | None = None,
) -> list[float]:
    """Loss change (nats; lower is better) each payload causes applied alone (scaled to a full
    round's work by its weight, as the aggregate does); WORST for refused, one-sided updates and
    replays of an earlier round (`earlier`: their digests).

    Copies within the round are not flagged for copying: every holder of some bytes gets one
    score, the best that any holder's weight gives them, so a copy can neither make its victim
    WORST nor worsen its score by claiming another token count, and the round's statistics
    count the bytes once (`flagged`)."""
    before = loss_of(state.params)
    stride = max(1, sum(p.numel() for p in state.params) // SAMPLE)
    weights = weights or [1.0] * len(payloads)
    digests = [payload_digest(p) for p in payloads]
    known: dict[tuple[str, float], tuple[float, torch.Tensor | None]] = {}  # each bytes and weight once
    scored = []
    for payload, digest, w, replayed in zip(payloads, digests, weights, stale(payloads, earlier)):
        if replayed:
            scored.append((WORST, None))
            continue
        if (digest, w) not in known:
            known[digest, w] = _score_one(strategy, state, payload, w, loss_of, before, stride)
        scored.append(known[digest, w])
    best: dict[str, float] = {}
    for digest, (score, _), bad in zip(digests, scored, crafted([delta for _, delta in scored])):
        best[digest] = min(best.get(digest, WORST), WORST if bad else score)
    return [best[d] for d in digests]


def _score_one(
    strategy, state, payload: bytes, weight: float, loss_of: LossOf, before: float, stride: int
) -> tuple[float, torch.Tensor | None]:
    """(loss change, sampled parameter change) of one payload applied alone."""
    try:
        after = strategy.preview(state, payload, weight)
        change = loss_of(after) - before
    except ProtocolError:
        return WORST, None
    if not math.isfinite(change):
        return WORST, None
    delta = torch.cat([(a.float() - b.float()).flatten()[::stride] for a, b in zip(after, state.params)])
    return min(WORST, change), delta


def directions(deltas: list[torch.Tensor | None]) -> list[tuple[float, float]]:
    """Per update (lean, cosine) against the round's coordinate-wise median: how far its deviation
    from the median leans to one side (|mean of sign(delta - median)| over the coordinates where
    they differ), and the cosine between it and the median on the median's support. (0, 1) for
    None.

    The median is over distinct updates (near-duplicates once), so 7 colluders of 16 sending one
    crafted update do not drag it to themselves; with fewer than MIN_PEERS distinct updates,
    nothing is judged: (0, 1) for all."""
    distinct: list[torch.Tensor] = []
    for d in (d for d in deltas if d is not None):
        if not any(float(torch.nn.functional.cosine_similarity(d, u, dim=0)) > DUPLICATE_COS for u in distinct):
            distinct.append(d)
    if len(distinct) < MIN_PEERS:
        return [(0.0, 1.0)] * len(deltas)
    median = torch.quantile(torch.stack(distinct), 0.5, dim=0)
    out = []
    for d in deltas:
        if d is None:
            out.append((0.0, 1.0))
            continue
        signs = torch.sign(d - median)
        moved = int(signs.count_nonzero())
        out.append((abs(float(signs.sum())) / moved if moved else 0.0, _cosine_on(median != 0, d, median)))
    return out


def _cosine_on(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of a and b over the masked coordinates (the median's support: with sparse top-k
    updates, the coordinates most peers picked); 1 when a has nothing there (nothing to judge)."""
    a, b = a[mask], b[mask]
    if not bool(a.any()):
        return 1.0
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def crafted(deltas: list[torch.Tensor | None]) -> list[bool]:
    """Updates no honest peer would send: leaning to one side of the round's median almost
    everywhere (ALIE), or pointing away from it (sign flips, IPM's -eps x mean)."""
    return [lean > ONE_SIDED_MAX or cos < MIN_COSINE for lean, cos in directions(deltas)]


def flagged(scores: Mapping[str, float]) -> set[str]:
    """Peers whose score is worse than the round's median by MARGIN robust standard deviations.

    The median and the spread count each distinct score once: copies of one update share one
    score (`score_updates`), and ten copies of a victim's update must not shrink the spread
    until every other honest peer sits beyond it."""
    values = sorted(set(scores.values()))
    if len(values) < MIN_PEERS:
        return set()
    med = statistics.median(values)
    spread = max(MAD_TO_SIGMA * statistics.median(abs(v - med) for v in values), MIN_SPREAD)
    return {peer for peer, s in scores.items() if s > med + MARGIN * spread}


class ScoredRound(Protocol):
    """One applied roster's scores, as node/round/ledger.py's ScoredRound carries them (outer
    does not import round)."""

    @property
    def round(self) -> int: ...

    @property
    def leader(self) -> str: ...

    @property
    def scores(self) -> Mapping[str, float]: ...


def banned(history: Iterable[ScoredRound], cfg: RobustConfig) -> set[str]:
    """Peers flagged at least ban_after times within some score_window consecutive rounds, by the
    rosters of at least cfg.distinct_leaders different leaders; for good.

    history: the ledger's rosters (`Ledger.score_history`), in any order; the window counts round
    numbers, so a gap in the ledger shortens it. A ban is permanent: a banned peer is no longer
    scored, so its window would otherwise empty and let it back in to do the same again.
    """
    flags = [(r.round, r.leader, flagged(r.scores)) for r in history]
    out: set[str] = set()
    for end, _, _ in flags:
        leaders: dict[str, list[str]] = defaultdict(list)  # peer -> the leader of each roster that flagged it
        for rnd, leader, peers in flags:
            if end - cfg.score_window < rnd <= end:
                for p in peers:
                    leaders[p].append(leader)
        out |= {p for p, by in leaders.items() if len(by) >= cfg.ban_after and len(set(by)) >= cfg.distinct_leaders}
    return out
