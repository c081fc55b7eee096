"""Round protocol v3 as each member runs it (node/scatter/member.py, leader.py): 16 members, one
thread each, over the in-memory transport (tests/fakes.py ScatterBus). Every member must end with
the bytes of the all-at-once simulation (node/scatter/round.py) on the same inputs, at the
per-peer traffic `bench scale` reports; a lying owner is caught and a withholding one replaced."""

from __future__ import annotations

import dataclasses
import threading
import time

import msgpack
import pytest
import torch

from bench.scale.count import one_update
from bench.scale.sim import leader_of, make_updates, one_round, peer_ids, round_of
from node.outer.aggregate import Robust
from node.scatter.leader import Leader
from node.scatter.member import Member, Timeouts
from node.scatter.reduce import two_level
from node.scatter.traffic import Behaviour
from protocol.errors import ProtocolError
from protocol.kinds.scatter import Board, Message
from tests.fakes import ScatterBus

TOTAL = 8192


def run_members(peers, updates, *, behaviour=None, phase=2.0, reachable=None):
    """Every member's run in its own thread: (results by peer, the leader, the bus, seconds)."""
    keys, rnd = round_of(peers, TOTAL, reachable=reachable)
    leader_id = leader_of(sorted(reachable or peers), 1)  # only a reachable peer leads (election.candidates)
    bus = ScatterBus()
    timeouts = Timeouts(phase=phase, call=phase, round=60.0)
    members = {}
    for p in peers:
        own = dataclasses.replace(rnd, replaced={}, caught=set(), fixed={}, signers={})
        act = (behaviour or {}).get(p, Behaviour())
        members[p] = Member(own, updates[p], keys[p], bus.net(p), leader_id, timeouts=timeouts, behaviour=act)
        bus.handlers[p] = members[p]
    lead_rnd = dataclasses.replace(rnd, replaced={}, caught=set(), fixed={}, signers={})
    leader = Leader(lead_rnd, keys[leader_id], members[leader_id])
    results: dict[str, object] = {}

    def one(p):
        try:
            results[p] = members[p].run()
        except Exception as e:  # the test reports which member failed and why
            results[p] = e

    threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in peers]
    threads.append(threading.Thread(target=leader.run, daemon=True))
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a member did not finish its round"
    return results, leader, bus, time.monotonic() - start


def test_every_member_ends_with_the_simulated_rounds_aggregate_at_flat_bytes():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 0)
    results, leader, bus, seconds = run_members(peers, updates)
    sim, rnd = one_round(peers, updates, TOTAL)
    for p in peers:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], sim.final)
    assert torch.equal(sim.final, two_level(updates, rnd.grid, Robust()))
    assert not leader.caught and not leader.withheld
    unit = one_update(TOTAL, rnd.grid)
    for name in ("data_up", "data_down"):
        ours, simulated = getattr(bus.traffic, name), getattr(sim.traffic, name)
        print(name, max(ours[p] for p in peers) / unit, max(simulated[p] for p in peers) / unit)
        assert max(ours[p] for p in peers) <= 4 * unit
    print("records", max(bus.traffic.records_down[p] for p in peers), "seconds", seconds)


def test_a_lying_owner_is_caught_and_every_member_ends_exact():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 1)
    liar = peers[5]
    results, leader, _, _ = run_members(peers, updates, behaviour={liar: Behaviour(lie=True)})
    _, rnd = one_round(peers, updates, TOTAL)
    assert leader.caught == [liar]
    honest = [p for p in peers if p != liar]
    for p in honest:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], two_level(updates, rnd.grid, Robust()))


def test_a_withholding_owner_is_replaced_by_its_backup():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 3)
    quiet = peers[7]
    results, leader, _, _ = run_members(peers, updates, behaviour={quiet: Behaviour(withhold=True)}, phase=1.0)
    _, rnd = one_round(peers, updates, TOTAL)
    assert quiet in leader.withheld and not leader.caught
    for p in peers:
        if p != quiet:
            assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
            assert torch.equal(results[p], two_level(updates, rnd.grid, Robust()))


def test_members_behind_nat_are_never_dialled_and_end_exact():
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 4)
    behind_nat = set(peers[:5])
    results, _, bus, _ = run_members(peers, updates, reachable=set(peers) - behind_nat)
    sim, _ = one_round(peers, updates, TOTAL, reachable=set(peers) - behind_nat)
    assert not bus.dialled & behind_nat
    for p in peers:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], sim.final)


def test_messages_and_boards_from_peers_are_checked_field_by_field():
    msg = Message(op="part", run="r", round=3, attempt=0, level=2, a=1, b=2, index=1, data=b"x", inputs=(None,))
    assert Message.decode(msg.encode()) == msg
    for bad in ({"op": "state"}, {"level": 3}, {"a": -1}, {"tag": "x" * 40}, {"inputs": [[1, 2]]}, {"data": "x"}):
        with pytest.raises(ProtocolError):
            Message.decode(msgpack_of({**dataclasses.asdict(msg), "inputs": [None], **bad}))
    with pytest.raises(ProtocolError):
        Message.decode(b"\xc1garbage")
    board = Board(level=1, version=2, stage="audit", replaced={"1/0/0": 1}, caught=(), fixed={}, signers={})
    assert Board.decode(board.encode()) == board
    for bad in ({"stage": "lie"}, {"replaced": {"1/0/0": -1}}, {"fixed": {"1/0/0": "nope"}}, {"digest": "zz"}):
        with pytest.raises(ProtocolError):
            Board.decode(msgpack_of({**dataclasses.asdict(board), "caught": [], **bad}))


def msgpack_of(d: dict) -> bytes:
    return msgpack.packb(d, use_bin_type=True)
