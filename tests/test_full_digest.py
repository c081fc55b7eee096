"""The roster's `full` digest (parameters and outer buffers, SwarmState.full_digest): the leader
writes it (node/round/lead.py through Hooks.result), every peer that applies the roster checks it
(node/peer/applier.py), and a joiner takes a donor's state only if it reproduces it
(node/peer/sync.py: refusal), so a Sybil donor cannot serve the head's parameters with other
momentum or Adam moments. Rosters written before the field still read."""

from __future__ import annotations

import io
import logging
from dataclasses import replace

import pytest
import torch

from node.outer.state import SwarmState
from node.peer.sync import StateSync
from node.round.hooks import Outcome
from node.round.ledger import AcceptedRoster
from node.round.trust import chain
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import History
from protocol import signed
from protocol.errors import ProtocolError
from tests.fakes import digest_of
from tests.test_round_protocol import CFG, RUN, NoSleep, Peer, play_round, swarm
from tests.test_score_checks import applier, roster_of, updates
from tests.test_sybil_attacks import accepted_of, hold, roster_body

F = "f" * 64


# ------------------------------------------------------------------------------ the record
def test_full_is_left_off_the_wire_when_empty_and_read_when_there():
    _, _, (p,) = swarm(1)
    body = roster_body(p, 1, "0" * 64, "1" * 64, "2" * 64, "", [p], 0.0)
    old = body.to_wire()
    assert "full" not in old  # a roster before the field: the same bytes, the same signature
    assert type(body).from_wire(old).full == ""  # and it still reads
    assert type(body).from_wire(replace(body, full=F).to_wire()).full == F
    with pytest.raises(ProtocolError):
        type(body).from_wire({**old, "full": "not a digest"})


def test_the_leader_writes_full_and_every_peer_agrees():
    """Hooks.result's Outcome goes into the roster (lead.py); the node's hooks (Applier.roster_result)
    give SwarmState.full_digest of the leader's applied copy (the test below)."""
    _, _, peers = swarm(3)
    for p in peers:
        p.proto.hooks.result = lambda payloads, tokens, p=p: Outcome(
            digest_of(payloads, p.digest), digest_of(payloads, "buffers " + p.digest)
        )
    played = play_round(peers)
    fulls = {x.accepted.roster.full for x in played.values()}
    assert len(fulls) == 1 and fulls != {""}


# ------------------------------------------------------------------- every peer that applies
def test_a_leader_that_writes_a_wrong_full_is_refused():
    said = io.StringIO()
    leader, member = applier("leader", io.StringIO()), applier("member", said)
    assert member.state.outer  # DiLoCo's outer momentum: full covers more than the parameters
    payloads = updates(member.state, member.strategy, 3)
    honest = roster_of(leader, payloads, ["Qma", "Qmb", "Qmc"])
    assert honest.roster.full and honest.roster.full != honest.roster.result
    lying = AcceptedRoster({}, replace(honest.roster, full=F), honest.announcements)
    assert not member.apply_round(lying, payloads)
    assert "round_refused" in said.getvalue() and "full digest" in said.getvalue()
    assert member.state.round == 0
    assert member.apply_round(honest, payloads) and member.state.full_digest == honest.roster.full
    older = applier("older", io.StringIO())  # a roster without `full`: refused (protocol 4 leaders write it)
    assert not older.apply_round(AcceptedRoster({}, replace(honest.roster, full=""), honest.announcements), payloads)


# --------------------------------------------------------------------------- a joiner's donors
TEMPLATE = SwarmState(round=0, names=["w"], params=[torch.ones(4)], outer={"momentum": [torch.zeros(4)]})


def state_at(round_no: int, momentum: float) -> SwarmState:
    return SwarmState(round_no, ["w"], [torch.full((4,), 2.0)], {"momentum": [torch.full((4,), momentum)]})


class Exchange:
    """Serves each donor's state blob (Exchange.fetch's contract: the exact expected length)."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs, self.asked = blobs, []

    def fetch(self, donor, request, *, timeout, expect):
        self.asked.append(donor)
        blob = self.blobs[donor]
        if len(blob) != expect:
            raise ProtocolError(f"{len(blob)} bytes, {expect} expected")
        return blob

    def set_state(self, blob: bytes) -> None:
        pass


def chain_to(leader: Peer, crowd: list[Peer], head: SwarmState, full: str) -> list[AcceptedRoster]:
    """Rounds 1..head.round from the genesis of TEMPLATE, the last ending at `head` with `full`."""
    out, link = [], chain.genesis(RUN, TEMPLATE.digest)
    for r in range(1, head.round + 1):
        result = head.digest if r == head.round else f"{r:064x}"
        body = roster_body(leader, r, link.prev, link.base, result, link.beacon, crowd, leader.net.now())
        out.append(accepted_of(signed.seal(leader.key, replace(body, full=full if r == head.round else ""))))
        link = chain.after(out[-1])
    return out


def joining(full_of_head) -> tuple[StateSync, Exchange, list[str]]:
    """A joiner (empty ledger) and 4 holders of round 3; the first donor asked serves the head's
    parameters with other momentum, the second the head's state."""
    dht, registry, crowd = swarm(4)
    head = state_at(3, momentum=0.5)
    rosters = chain_to(crowd[0], crowd, head, full_of_head(head))
    for p in crowd:
        p.ledger.rosters = {a.roster.round: a for a in rosters}
    hold(crowd, (head.round, head.digest))
    donors = sorted(p.id for p in crowd)
    blobs = {d: head.to_bytes(RUN) for d in donors}
    blobs[donors[0]] = state_at(3, momentum=0.0).to_bytes(RUN)  # the same parameters, other buffers
    sync, exchange = joiner(dht, registry, blobs)
    return sync, exchange, donors


def joiner(dht, registry, blobs: dict[str, bytes]) -> tuple[StateSync, Exchange]:
    """A StateSync of a new peer (empty ledger) whose donors serve `blobs`."""
    joiner = Peer(dht, registry)
    exchange = Exchange(blobs)
    sync = StateSync(
        type("Holder", (), {"state": TEMPLATE})(),
        swarm=None,
        run_id=RUN,
        me=joiner.id,
        cfg=CFG,
        ledger=joiner.ledger,
        rounds=joiner.proto,
        exchange=exchange,
        template=TEMPLATE,
        ckpt=None,
        metrics=NodeMetrics(),
        history=History(),
        out=Reporter(stream=io.StringIO()),
    )
    sync.live = joiner.proto.peers
    return sync, exchange


def test_a_donor_serving_other_buffers_is_refused_and_the_next_donor_taken(caplog):
    sync, exchange, donors = joining(lambda head: head.full_digest)
    with caplog.at_level(logging.WARNING, logger="swarmtrain.sync"):
        synced = sync.fetch_state(NoSleep(), attempts=1)
    assert synced is not None and exchange.asked[:2] == donors[:2]
    assert synced.state.full_digest == state_at(3, 0.5).full_digest
    assert f"state from {donors[0][:16]}: refused: its outer buffers differ" in caplog.text


def test_a_head_roster_without_full_takes_the_first_donor_as_before():
    """Old rosters still read: without `full` only the parameters are checked (the hole it closes)."""
    sync, exchange, donors = joining(lambda head: "")
    synced = sync.fetch_state(NoSleep(), attempts=1)
    assert synced is not None and exchange.asked == donors[:1]
    assert synced.state.digest == state_at(3, 0.5).digest


def moved_on(blobs_of) -> tuple[StateSync, Exchange, list[str], SwarmState]:
    """A joiner that sees 4 holders of round 3 (heartbeats) while they already hold round 4:
    their rosters run to 4, their state is round 4's (`blobs_of(head4, donors)`: what each serves)."""
    dht, registry, crowd = swarm(4)
    head = state_at(4, momentum=0.5)
    rosters = chain_to(crowd[0], crowd, head, head.full_digest)
    for p in crowd:
        p.ledger.rosters = {a.roster.round: a for a in rosters}
    hold(crowd, (3, rosters[2].roster.result))
    donors = sorted(p.id for p in crowd)
    sync, exchange = joiner(dht, registry, blobs_of(head, donors))
    return sync, exchange, donors, head


def test_a_donor_that_moved_on_serves_its_later_state_verified_by_its_rosters():
    """Rounds shorter than a look: the donors are a round past the head the joiner verified when
    the state arrives; the rosters after it verify from there, so the later state is taken."""
    sync, exchange, donors, head = moved_on(lambda h, donors: {d: h.to_bytes(RUN) for d in donors})
    synced = sync.fetch_state(NoSleep(), attempts=1)
    assert synced is not None and exchange.asked == donors[:1]
    assert (synced.state.round, synced.state.full_digest) == (4, head.full_digest)
    assert [a.roster.round for a in synced.target.rosters] == [1, 2, 3, 4] and synced.target.head.round == 4


def test_a_later_state_no_verified_roster_leads_to_is_refused(caplog):
    """A donor serving a round-4 state that is not the result of round 4's roster, or one too many
    rounds on, is refused like any wrong state; the next donor's is taken."""
    odd = state_at(4, momentum=0.5)
    odd.params[0].add_(1.0)

    def blobs(h, donors):
        return {d: (odd if d == donors[0] else h).to_bytes(RUN) for d in donors}

    sync, exchange, donors, head = moved_on(blobs)
    with caplog.at_level(logging.WARNING, logger="swarmtrain.sync"):
        synced = sync.fetch_state(NoSleep(), attempts=1)
    assert f"state from {donors[0][:16]}: refused: its state is round 4" in caplog.text
    assert synced is not None and exchange.asked[:2] == donors[:2] and synced.state.digest == head.digest
