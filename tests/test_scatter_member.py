"""Round protocol v3 as each member runs it (node/scatter/member.py, leader.py): 16 members, one
thread each, over the in-memory transport (tests/fakes.py ScatterBus). Every member must end with
the bytes of the all-at-once simulation (node/scatter/round.py) on the same inputs, at the
per-peer traffic `bench scale` reports; a lying owner is caught and a withholding one replaced."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time

import msgpack
import pytest
import torch

from bench.scale.count import one_update
from bench.scale.sim import leader_of, make_updates, one_round, peer_ids, round_of
from node.outer.aggregate import Robust
from node.scatter.leader import Leader, tasks_of
from node.scatter.member import Framed, Member, Timeouts
from node.scatter.reduce import two_level
from node.scatter.traffic import Behaviour
from protocol.errors import ProtocolError
from protocol.kinds.board import Board
from protocol.kinds.scatter import Message, task_name
from tests.fakes import ScatterBus

TOTAL = 8192


def run_members(peers, updates, *, behaviour=None, phase=2.0, reachable=None, lead=Leader):
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
    leader = lead(lead_rnd, keys[leader_id], members[leader_id])
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


def test_every_member_checks_the_proof_of_a_caught_liar():
    """A conviction is each member's to check, not the leader's word: every member (the liar and
    the leader's own Member too) fetches the proof the board pins, checks its SHA-256 and re-runs
    the fraud check, and its round keeps the digest it checked (what its roster must list)."""
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 1)
    liar = peers[5]
    results, leader, bus, _ = run_members(peers, updates, behaviour={liar: Behaviour(lie=True)})
    assert leader.caught == [liar] and set(leader.convictions) == {leader.proofs[liar]}
    for p in peers:
        assert bus.handlers[p].checked == {liar: leader.proofs[liar]}, p[:8]
    assert all(isinstance(results[p], torch.Tensor) for p in peers if p != liar)


def test_garbling_senders_are_convicted_by_every_member_and_the_round_ends_exact():
    """4 Sybils of 16 commit and send garbage under signed notes; 2 of them are half of group 0
    (before: no owner of group 0 could include a majority, and the round failed). Each owner
    reports the note against the commitment (op garble); the leader catches the senders and
    publishes the board again, every member checks each proof, and all honest members end with
    the honest senders' aggregate (the simulated round's)."""
    peers = peer_ids(16)
    _, rnd = round_of(peers, TOTAL)
    group0 = list(rnd.grid.groups[0])
    leader_id = leader_of(peers, 1)
    sybils = set(
        [p for p in group0 if p != leader_id][:2] + [p for p in peers if p not in group0 and p != leader_id][:2]
    )
    updates = make_updates(peers, TOTAL, 7)
    results, leader, bus, _ = run_members(peers, updates, behaviour=dict.fromkeys(sybils, Behaviour(garble=True)))
    assert set(leader.caught) == sybils and len(leader.caught) == 4
    sim, _ = one_round(peers, updates, TOTAL, behaviour=dict.fromkeys(sybils, Behaviour(garble=True)))
    assert set(sim.caught) == sybils
    for p in set(peers) - sybils:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], sim.final)  # the honest senders' aggregate, as simulated
        assert bus.handlers[p].checked == {s: leader.proofs[s] for s in sybils}, p[:8]


def test_two_silent_members_of_one_group_are_asked_dropped_and_the_round_ends_exact():
    """2 of group 0's 4 members count as committed (every member of the call does) and send
    nothing. Before protocol 13 no owner of group 0 could include a majority and the round failed.
    Now each owner names them (op `missing`), the leader asks them on its board, they hand it
    nothing, and the board lists them `silent`: every honest member drops them from the quorum
    and ends with the honest senders' aggregate (the simulated round's)."""
    peers = peer_ids(16)
    _, rnd = round_of(peers, TOTAL)
    leader_id = leader_of(peers, 1)
    quiet = set([p for p in rnd.grid.groups[0] if p != leader_id][:2])
    updates = make_updates(peers, TOTAL, 8)
    behaviour = dict.fromkeys(quiet, Behaviour(silent=True))
    results, leader, bus, seconds = run_members(peers, updates, behaviour=behaviour, phase=1.0)
    sim, _ = one_round(peers, updates, TOTAL, behaviour=behaviour)
    assert set(leader.silent) == quiet == set(sim.silent) and not leader.caught
    for p in set(peers) - quiet:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], sim.final) and bus.handlers[p].rnd.silent == quiet
    print("seconds", seconds)


def test_an_owner_naming_an_honest_sender_missing_cannot_get_it_dropped():
    """The owner of task 1/0/0 names an honest member of its group missing though its chunk came:
    the leader asks that member itself, it hands over its chunk (op `here`), the leader forwards
    it, and nobody is silent; every member ends exact."""
    peers = peer_ids(16)
    _, rnd = round_of(peers, TOTAL)
    owner = rnd.owner(1, 0, 0)
    victim = next(p for p in rnd.grid.groups[0] if p not in (owner, leader_of(peers, 1)))
    updates = make_updates(peers, TOTAL, 9)
    results, leader, bus, _ = run_members(peers, updates, behaviour={owner: Behaviour(names=(victim,))}, phase=1.0)
    assert not leader.silent and [(c.owner, c.places) for c in leader.claims.values()] == [
        (owner, (rnd.grid.groups[0].index(victim),))
    ]
    assert (1, 0, 0) in bus.handlers[victim].told and not leader.withheld
    for p in peers:
        assert isinstance(results[p], torch.Tensor), f"{p[:8]}: {results[p]!r}"
        assert torch.equal(results[p], two_level(updates, rnd.grid, Robust())) and not bus.handlers[p].rnd.silent


class Framer(Leader):
    """A hostile leader: once level 1's receipts are fixed and audited, it convicts an honest owner
    (not itself) on its task, with a junk proof (`junk`: the owner's own receipt and no inputs, a
    verdict that shows no lie, hashed and served) or with no proof served (`junk` False). `linger`:
    seconds it leads on after framing before it gives up (None: it leads on, collecting again)."""

    junk, linger, framed = True, None, None

    def run(self) -> None:
        try:
            super().run()
        except ProtocolError:  # it gave up (`linger`), or nobody took its round on
            pass

    def audit_round(self, level: int, tag: str, count: int) -> list[tuple]:
        convicted = super().audit_round(level, tag, count)
        if self.framed is None and level == 1:
            rnd = self.rnd
            with self.cond:
                task = next(t for t in tasks_of(rnd, 1) if rnd.owner(*t) not in (self.keys.peer, *rnd.caught))
                name, self.framed = task_name(task), rnd.owner(*task)
                verdict = Message(
                    op="verdict", run=rnd.run, round=rnd.round, attempt=rnd.attempt, level=1, a=task[1], b=task[2],
                    index=1, envelope=self.pending[name],
                )  # fmt: skip
                digest = hashlib.sha256(verdict.encode()).hexdigest()
                self.caught.append(self.framed)
                self.proofs[self.framed], self.tasks[self.framed] = digest, name
                if self.junk:
                    self.convictions[digest] = verdict.encode()
                rnd.caught.add(self.framed)
                rnd.unfix(name)
            convicted.append(task)
        return convicted

    def collect(self, level: int, tasks: list[tuple]) -> None:
        if self.framed is not None and self.linger is not None:
            self.publish(level, "collect")
            time.sleep(self.linger)
            raise ProtocolError("the framer gives up")
        super().collect(level, tasks)


@pytest.mark.parametrize("junk", [True, False], ids=["junk-proof", "no-proof"])
def test_a_leader_that_frames_an_honest_owner_is_given_up_by_every_member(junk):
    """A leader lists an honest owner as caught, pinning a junk proof (its own receipt, no inputs:
    hashed and served, but it shows no lie) or one it never serves. Every member, the leader's own
    Member included, fetches the proof, finds it missing or not checking, and gives the round up
    as from a silent leader (Framed, a LeaderSilent: node/round/v3.py hands the round on), before
    it takes the board: nobody's round records the owner as caught. Before (members took `caught`
    on the leader's word), they applied the board and the round ended with the owner caught."""
    peers = peer_ids(16)
    updates = make_updates(peers, TOTAL, 5)

    def framer(*args, **options):
        lead = Framer(*args, **options)
        lead.junk, lead.linger = junk, 2.0
        return lead

    results, leader, bus, _ = run_members(peers, updates, lead=framer)
    assert leader.framed is not None
    for p in peers:
        assert isinstance(results[p], Framed), f"{p[:8]}: {results[p]!r}"
        assert not bus.handlers[p].checked and leader.framed not in bus.handlers[p].rnd.caught


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
    pid = peer_ids(2)
    board = Board(
        level=1, version=2, stage="audit", replaced={"1/0/0": 1}, caught=(pid[0],), fixed={}, signers={},
        proofs={pid[0]: ("1/0/1", "a" * 64)},
    )  # fmt: skip
    assert Board.decode(board.encode()) == board
    proof = {pid[0]: ["1/0/1", "a" * 64]}
    for bad in (
        {"stage": "lie"}, {"replaced": {"1/0/0": -1}}, {"fixed": {"1/0/0": "nope"}}, {"digest": "zz"},
        {"proofs": {}}, {"proofs": {**proof, pid[1]: ["1/0/0", "b" * 64]}}, {"proofs": {pid[0]: ["3/0/0", "a" * 64]}},
        {"proofs": {pid[0]: ["1/0/1", "zz"]}}, {"proofs": {pid[0]: ["1/0/1"]}}, {"caught": [pid[1]]},
    ):  # fmt: skip
        with pytest.raises(ProtocolError):
            Board.decode(msgpack_of({**dataclasses.asdict(board), "caught": [pid[0]], "proofs": proof, **bad}))


def msgpack_of(d: dict) -> bytes:
    return msgpack.packb(d, use_bin_type=True)
