"""The node's side of v3 (node/scatter/roster.py, node/scatter/grid.py's RSA keys): which runs
and rosters use the reduce-scatter, who may own chunks, and a round built from a signed roster
alone, run by every member with real RSA keys (the leader's draw checked against its key)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.scale.sim import make_updates
from node.config import SwarmConfig
from node.outer.aggregate import Robust
from node.round.ledger import AcceptedRoster
from node.scatter.grid import SCATTER_MIN_PEERS, RsaChecker, RsaKeys, scatter_threshold, uses_scatter
from node.scatter.leader import Leader
from node.scatter.member import Member, Timeouts
from node.scatter.reduce import two_level
from node.scatter.roster import reachable, scatter_round
from node.scatter.runner import ASKED_AGAIN, Dialer
from protocol import signed, signing
from protocol.records import Announcement, Heartbeat, Roster
from tests.fakes import ScatterBus

RUN, TOTAL = "demo-0123456789ab", 4096
BEACON = "ab" * 32


@pytest.fixture(scope="module")
def identities():
    """Five RSA identities of the one shape the node accepts (2,048-bit, as hivemind makes them)."""
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(5)]


def roster_of(keys: list, leader_key, *, attempt: int = 0) -> AcceptedRoster:
    anns, entries = [], []
    for key in keys:
        peer = signing.peer_id_of(signing.public_der(key))
        ann = Announcement(run=RUN, round=3, peer=peer, nbytes=100, sha256="0" * 64, tokens=1, base="1" * 64, time=1.0)
        anns.append(ann)
        entries.append(signed.seal(key, ann))
    roster = Roster(
        run=RUN,
        round=3,
        leader=signing.peer_id_of(signing.public_der(leader_key)),
        prev="2" * 64,
        base="1" * 64,
        result="3" * 64,
        time=1.0,
        entries=tuple(entries),
        beacon=BEACON,
        attempt=attempt,
    )
    return AcceptedRoster(signed.seal(leader_key, roster), roster, tuple(anns))


def heartbeat(peer: str, maddrs: tuple[str, ...]) -> Heartbeat:
    return Heartbeat(
        run=RUN, peer=peer, name="", round=3, state_round=2, digest="1" * 64, device="cpu", maddrs=maddrs, time=1.0
    )


def test_only_runs_v3_carries_use_the_reduce_scatter_and_the_default_is_the_designs():
    assert SwarmConfig().scatter_min_peers == SCATTER_MIN_PEERS == 16
    assert scatter_threshold(16, "diloco", "int8") == 16
    assert scatter_threshold(4, "diloco", "float16") == 4
    assert scatter_threshold(16, "diloco", "int1") == scatter_threshold(16, "sparseloco", "int8") == 16
    for name, wire in (("decoupled-momentum", "int8"), ("diloco", "int4"), ("ddp", "float32")):
        assert scatter_threshold(16, name, wire) == 0, (name, wire)  # verify-all at any size


def test_a_roster_switches_on_its_size_alone(identities):
    accepted = roster_of(identities[:4], identities[0])
    n = len(accepted.announcements)
    assert uses_scatter(n, 4) and not uses_scatter(n, 5) and not uses_scatter(n, 0)


def test_reachable_members_are_the_dialable_or_all_on_one_machine_or_network():
    a, b, c = (signing.peer_id_of(bytes([i]) * 40) for i in range(3))
    loop = ("/ip4/127.0.0.1/tcp/4001",)
    assert reachable([a, b], {a: heartbeat(a, loop), b: heartbeat(b, loop)}) == {a, b}
    public, home = ("/ip4/8.8.8.8/tcp/4001",), ("/ip4/192.168.1.2/tcp/4001",)
    peers = {a: heartbeat(a, public), b: heartbeat(b, home), c: heartbeat(c, loop)}
    assert reachable([a, b, c], peers) == {a}  # a NAT'd or loopback member only sends
    # one private network (a lab, bench swarm's emulated links): nobody is public, all dial each other
    lan = {a: heartbeat(a, ("/ip4/10.77.0.2/tcp/4001",)), b: heartbeat(b, home), c: heartbeat(c, loop)}
    assert reachable([a, b, c], lan) == {a, b, c} and reachable([a, b], {**lan, a: heartbeat(a, public)}) == {a}


def test_a_board_draw_checks_against_the_leaders_key_from_the_roster(identities):
    accepted = roster_of(identities, identities[0])
    everyone = {a.peer for a in accepted.announcements}
    rnd = scatter_round(accepted.envelope, accepted.roster, accepted.announcements, everyone, TOTAL, Robust())
    keys = RsaKeys(identities[0])
    message = b"swarmtrain-scatter-audit|draw"
    draw = keys.unique(message)
    assert rnd.checker.unique_ok(draw, message, keys.peer, {})
    other = accepted.announcements[1].peer
    assert not rnd.checker.unique_ok(draw, message, other, {})  # not the other's signature
    assert not RsaChecker().unique_ok(draw, message, keys.peer, {})  # without its key: unchecked
    # a key in an envelope must be the signer's own
    assert not rnd.checker.unique_ok(draw, message, other, {"key": signing.public_der(identities[0])})


def test_every_member_ends_with_the_aggregate_from_the_signed_roster_alone(identities):
    """Each member builds its Round from the roster (the same grid: the roster's beacon and
    attempt), signs with its RSA identity, and checks the leader's draw with the roster's keys."""
    leader = run_signed_round(identities, lambda net: net)
    assert not leader.caught and not leader.withheld


class BreaksOffOnce:
    """A member's net whose first stream of each op asked again ends short of its answer (seen on
    loopback under load: asyncio's IncompleteReadError, an EOFError)."""

    def __init__(self, net):
        self.net, self.me, self.broken = net, net.me, set()

    def call(self, peer: str, message, timeout: float) -> bytes:
        if message.op in ASKED_AGAIN and message.op not in self.broken:
            self.broken.add(message.op)
            raise asyncio.IncompleteReadError(b"\0" * 3, 8)
        return self.net.call(peer, message, timeout)


def test_a_stream_that_breaks_off_is_asked_again_and_the_round_ends_exact(identities):
    """Every member's first `inputs`, `verdict` and `final` stream breaks off: asked again, each
    auditor's verdict reaches the leader (before, the leader waited two phases for it) and every
    member gathers the aggregate (before, a lost `final` failed the member's round)."""
    whole = run_signed_round(identities, lambda net: net)
    broken = run_signed_round(identities, lambda net: Dialer(BreaksOffOnce(net)))
    assert not broken.caught and not broken.withheld
    assert set(broken.verdicts) == set(whole.verdicts)  # the same auditors dealt (the leader's unique draw)
    assert set(ASKED_AGAIN) >= {"inputs", "verdict", "final"}


def run_signed_round(identities, wrap) -> Leader:
    accepted = roster_of(identities, identities[2], attempt=1)
    peers = [a.peer for a in accepted.announcements]
    updates = make_updates(peers, TOTAL, 7)
    bus, timeouts = ScatterBus(), Timeouts(phase=3.0, call=3.0, round=60.0)
    members, leader_id = {}, accepted.roster.leader
    for key, p in zip(identities, peers):
        own = scatter_round(accepted.envelope, accepted.roster, accepted.announcements, set(peers), TOTAL, Robust())
        members[p] = Member(own, updates[p], RsaKeys(key), wrap(bus.net(p)), leader_id, timeouts=timeouts)
        bus.handlers[p] = members[p]
    lead_rnd = dataclasses.replace(members[leader_id].rnd, replaced={}, caught=set(), fixed={}, signers={})
    leader = Leader(lead_rnd, RsaKeys(identities[2]), members[leader_id])
    results = {}

    def one(p):
        try:
            results[p] = members[p].run()
        except Exception as e:  # reported below with the member's name
            results[p] = e

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in peers]
    threads.append(threading.Thread(target=leader.run, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    expected = two_level(updates, members[peers[0]].rnd.grid, Robust())
    for p in peers:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], expected)
    return leader
