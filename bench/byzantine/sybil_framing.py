"""`bench byzantine --sybil`'s copy row: Sybils (ids sorted before their victim's, so a leader
lists them first) announce a copy of an honest victim's update each round, 3 s after it. Honest
leaders in turn build real rosters (node/round/lead.py) with real scores of a tiny model on a
shared batch (node/outer/scoring.py); every peer derives bans from the ledger's scores.
(tests/test_framing.py holds the same attack as a unit test.)"""

from __future__ import annotations

import hashlib

import torch

from bench.fakenet import FakeDHT, FakeNet, digest_of
from node.config import ModelConfig, RobustConfig, StrategyConfig, SwarmConfig
from node.outer.scoring import banned, flagged, score_updates, shared_batch_loss
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.round.fetch import UpdateFetcher
from node.round.hooks import Hooks, Outcome
from node.round.lead import RosterBuilder
from node.round.ledger import Ledger
from node.train.model import build_model
from protocol import keys, signed
from protocol.messages import UpdateEnvelope
from protocol.records import Announcement

RUN = "sybil-copies"
BASE = "a" * 64
TINY = ModelConfig(d_model=16, n_layer=1, n_head=2, ctx=8)
HONEST_LEADERS = 3
"""Honest peers that lead in turn (bans need this many distinct leaders)."""


class Scorer:
    """One shared state, an honest direction of descent on the shared batch, and the scores a
    leader computes (node/peer/applier.py's score_round, without the node)."""

    def __init__(self):
        model = build_model(TINY, 0)
        shapes = [tuple(p.shape) for p in model.parameters()]
        self.strat = make_strategy(StrategyConfig(wire_dtype="float32", outer_lr=1.0, outer_momentum=0.0), shapes)
        self.state = SwarmState.initial(model, self.strat.outer_buffers)
        self.gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (4, 8), generator=self.gen)
        y = x.roll(-1, dims=1)
        self.loss_of = shared_batch_loss(build_model(TINY, 0), x, y)
        local = build_model(TINY, 0)
        opt = torch.optim.SGD(local.parameters(), lr=0.5)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(local(x).reshape(-1, 256), y.reshape(-1)).backward()
            opt.step()
        self.direction = [gp - lp.detach() for gp, lp in zip(self.state.params, local.parameters())]

    def honest(self) -> bytes:
        """An honest update: the shared direction plus its own shard's noise."""
        return self.strat.codec.encode(
            [d + 0.1 * d.std() * torch.randn(d.shape, generator=self.gen) for d in self.direction]
        )

    def score(self, payloads: list[bytes], tokens: list[int]) -> list[float]:
        return score_updates(self.strat, self.state, payloads, self.loss_of)


class Member:
    """A peer of the copy row: its key, its network, its roster builder (used when it leads)."""

    def __init__(self, key, dht: FakeDHT, registry: dict, scorer: Scorer):
        self.key, self.id = key
        self.net = FakeNet(self.id, dht, registry)
        hooks = Hooks(validate=lambda p: None, result=lambda p, t: Outcome(digest_of(p, BASE)), score=scorer.score)
        fetcher = UpdateFetcher(self.net, RUN, SwarmConfig(), hooks.validate)
        self.builder = RosterBuilder(self.net, RUN, self.key, hooks, fetcher, max_bytes=1 << 20)

    def announce(self, round_no: int, payload: bytes, time: float) -> None:
        blob = UpdateEnvelope(run=RUN, round=round_no, peer=self.id, codec="dense-float32", payload=payload).encode()
        self.net.keep_update(round_no, self.id, blob)
        ann = Announcement(
            run=RUN,
            round=round_no,
            peer=self.id,
            nbytes=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            tokens=100,
            base=BASE,
            time=time,
        )
        self.net.store(keys.updates_key(RUN, round_no), self.id, signed.seal(self.key, ann), ttl=600.0)


def copies(pool, sybils: int, rounds: int) -> dict:
    """`sybils` copycats with ids before the victim's, 3 honest leaders, `rounds` rounds: who is
    flagged and who is banned."""
    dht, registry, scorer = FakeDHT(), {}, Scorer()
    keys_ = pool.take(sybils + 1 + HONEST_LEADERS)
    members = sorted((Member(k, dht, registry, scorer) for k in keys_), key=lambda m: m.id)
    crowd, victim = members[:sybils], members[sybils]  # the Sybils chose ids listed before the victim's
    honest = [m for m in members if m not in crowd]
    leaders = [m for m in honest if m is not victim][:HONEST_LEADERS]
    everyone = {m.id for m in members}
    ledger, flags = Ledger(), {"honest": 0, "sybil": 0}
    for r in range(1, rounds + 1):
        now = dht.clock.t = 1_000_000.0 + 60 * r
        update = scorer.honest()
        for m in honest:
            m.announce(r, update if m is victim else scorer.honest(), now)
        for s in crowd:
            s.announce(r, update, now + 3)  # a copy comes after its original
        accepted = leaders[r % HONEST_LEADERS].builder.build(
            r, BASE, ledger.prev_hash(r), everyone, at_least=len(everyone), beacon=BASE, attempt=0
        )
        ledger.append(accepted)
        for p in flagged(dict(accepted.roster.scores)):
            flags["sybil" if p in {s.id for s in crowd} else "honest"] += 1
    gone = banned(ledger.score_history(), RobustConfig(scoring=True))
    honest_banned = len(gone - {s.id for s in crowd})
    return {
        "row": "framing",
        "case": f"{sybils} Sybils copy a victim's update, {len(honest)} honest",
        "sybils": len(crowd),
        "honest": len(honest),
        "identity_share": round(len(crowd) / len(members), 3),
        "established_share": round(len(crowd) / len(members), 3),
        "credit_share": None,  # its rosters credit nobody: the row is about scores, not ranks
        "rounds": rounds,
        "sybils_listed_before_victim": all(s.id < victim.id for s in crowd),
        "honest_flags": flags["honest"],
        "sybil_flags": flags["sybil"],
        "honest_banned": honest_banned,
        "target": "0 honest banned",
        "met": honest_banned == 0,
    }
