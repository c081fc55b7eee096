"""Scores make flags and flags make bans: every peer recomputes the scores of a roster it applies
(node/peer/applier.py: Applier.wrong_score) and refuses a roster whose leader lied about one,
so Sybil leaders cannot frame an honest peer by their word (bench byzantine --sybil's framing
rows were missed before: 3 Sybil leaders got a victim banned at 20% of the identities)."""

from __future__ import annotations

import io
from dataclasses import replace

import torch

from node.config import ModelConfig, RobustConfig, RunConfig, StrategyConfig
from node.outer.scoring import WORST
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.peer.applier import Applier
from node.round.ledger import AcceptedRoster, Ledger
from node.train.model import build_model, trainable
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from protocol import signed
from protocol.records import GENESIS, Announcement, Roster
from tests.fakes import sealed_roster

RUN = RunConfig(
    model=ModelConfig(d_model=32, n_layer=1, n_head=2, ctx=16),
    strategy=StrategyConfig(wire_dtype="float32"),
    robust=RobustConfig(scoring=True),
)


def applier(me: str, out: io.StringIO, run: RunConfig = RUN) -> Applier:
    model = build_model(run.model, run.train.seed)
    strategy = make_strategy(run.strategy, [tuple(p.shape) for p in trainable(model)], run.train, robust=run.robust)
    tokens = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1))  # 1-D long, as data.py
    return Applier(
        SwarmState.initial(model, strategy.outer_buffers),
        run=run,
        strategy=strategy,
        ledger=Ledger(),
        metrics=NodeMetrics(),
        out=Reporter(stream=out),
        me=me,
        device=torch.device("cpu"),
        model=model,
        overlap=False,
        score_tokens=tokens,
    )


def updates(state: SwarmState, strategy, n: int) -> list[bytes]:
    gen = torch.Generator().manual_seed(2)
    return [strategy.codec.encode([0.01 * torch.randn(p.shape, generator=gen) for p in state.params]) for _ in range(n)]


def roster_of(leader: Applier, payloads: list[bytes], peers: list[str], *, keys: dict | None = None) -> AcceptedRoster:
    """What an honest leader publishes: the result, its scores and credit. Signatures play no part
    here unless `keys` (peer id -> private key, "leader" -> the leader's (key, id)) is given: then
    the entries are the peers' signed announcements and the roster is sealed and receipted as
    protocol 18 has it (tests/fakes.py sealed_roster), so its credit can stand; without, a member
    credits nobody (node/round/trust/sealed.py)."""
    tokens = [100] * len(payloads)
    scores = leader.score_round(payloads, tokens)
    outcome = leader.roster_result(payloads, tokens)
    base = "b" if keys is None else "b" * 64
    anns = tuple(
        Announcement(run="r", round=1, peer=p, nbytes=1, sha256="1" * 64, tokens=100, base=base, time=0.0)
        for p in peers
    )
    roster = Roster(
        run="r",
        round=1,
        leader="leader" if keys is None else keys["leader"][1],
        prev=GENESIS,
        base=base,
        result=outcome.digest,
        time=0.0,
        entries=() if keys is None else tuple(signed.seal(keys[a.peer], a) for a in anns),
        scores=tuple(zip(peers, scores)),
        full=outcome.full,
        credit=tuple(leader.credit_round(payloads, list(anns))),
    )
    if keys is not None:
        leader_key, leader_id = keys["leader"]
        roster = sealed_roster(roster, {**keys, leader_id: leader_key})
    return AcceptedRoster({}, roster, anns)


def test_a_roster_that_scores_an_honest_update_worst_is_refused():
    said = io.StringIO()
    leader, member = applier("leader", io.StringIO()), applier("member", said)
    payloads = updates(member.state, member.strategy, 3)
    peers = ["Qma", "Qmb", "Qmc"]
    honest = roster_of(leader, payloads, peers)
    framed = replace(honest.roster, scores=((peers[0], WORST), *honest.roster.scores[1:]))
    lying = AcceptedRoster({}, framed, honest.announcements)
    assert not member.apply_round(lying, payloads)  # refused: the member computes another score
    assert "round_refused" in said.getvalue() and f"scores {peers[0]}" in said.getvalue()
    assert member.state.round == 0
    assert member.apply_round(honest, payloads)  # the honest scores agree within the tolerance
    assert member.state.round == 1 and member.state.digest == honest.roster.result
