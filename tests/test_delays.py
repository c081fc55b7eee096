"""Costly delays are punished, not absorbed (issue 16, design step 8; node/round/trust/marks.py).

Silent candidates that draw the first ranks get `skip` marks and are ranked after everyone else
once they hold two; an announcer that never serves is listed `unserved` and, once two leaders
listed it, is fetched last with a short limit. Each attack runs over the in-memory network
(bench/fakenet.py), rounds through the real RoundProtocol, in fake-clock time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.byzantine.sybilnet import BASE0, FAST, NoSleep, Peer, Swarm
from node.round import election
from node.round.fetch import FETCH_FLOOR, FETCH_RATE
from node.round.ledger import AcceptedRoster, Ledger
from node.round.trust import chain, credit, marks
from protocol import keys, signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS, MAX_SKIP, Roster
from tests.fakes import in_step, new_key

RUN = "delays-0123456789ab"
CFG = replace(FAST, round_timeout=120.0)
"""FAST's waits; room for 6 attempts, so silent candidates' stalls are counted, not given up on."""


def favour(monkeypatch, first: dict[int, set[str]]) -> None:
    """Rank `first[attempt % 2]` ahead of everyone in each attempt (worst luck on demand): the
    rank key gains a leading byte, 0 for the favoured, 1 for the rest."""
    real = election.rank_key
    monkeypatch.setattr(
        election,
        "rank_key",
        lambda beacon, attempt, peer, tickets=1: (
            bytes([peer not in first[attempt % 2]]) + real(beacon, attempt, peer, tickets)
        ),
    )
    monkeypatch.setattr(marks, "rank_key", election.rank_key)


def turns(p: Peer, r: int) -> float:
    """When `p` may first lead round `r`, in its own view (its candidates and marks)."""
    cands = p.proto.candidates(p.proto.peers(), p.digest, p.round, ahead=1)
    beacon, marked, tickets = p.proto.beacon(r), p.proto.marked(r), p.proto.tickets(r)
    for attempt in range(8):
        slot = election.slot_of(beacon, attempt, cands, p.id, marked, tickets)
        if slot.rank < election.ATTEMPT_RANKS:
            return election.turn(slot, p.swarm.cfg)
    return float("inf")


def play(honest: list[Peer], silent: list[Peer] = (), announcing: list[Peer] = ()) -> AcceptedRoster:
    """One round: all beat on the honest head, the honest peers (and `announcing` others) announce,
    the honest ones await the roster, the one whose turn comes first first."""
    swarm = honest[0].swarm
    swarm.dht.clock.t += 2
    for s in [*silent, *announcing]:
        s.round, s.digest = honest[0].round, honest[0].digest
    for p in [*honest, *silent, *announcing]:
        p.heartbeat()
    for p in [*honest, *announcing]:
        p.announce(f"update {p.id} {p.round}".encode())
    r = honest[0].round + 1
    taken, now = [], []
    for s in [*honest, *silent, *announcing]:  # a swarm awaits at once: here one after another
        in_step(s, now)
    for p in sorted(honest, key=lambda p: turns(p, r)):
        now[:] = [p]
        accepted = p.proto.await_roster(r, p.digest, p.round, NoSleep())
        assert accepted is not None, f"round {r}: {p.id[:8]} got no roster"
        taken.append((p, accepted, p.proto.gather(accepted)))
    now.clear()  # the owners' gates are their own again
    assert len({a.hash for _, a, _ in taken}) == 1
    for p, accepted, payloads in taken:
        p.finish(accepted, payloads)
    return taken[0][1]


def established_crowd(n_honest: int, n_sybils: int, cfg=CFG, *, leaders: int = 0) -> tuple[list[Peer], list[Peer]]:
    """Honest peers and Sybils that played 2 rounds as honest peers do (contributing, leading in
    their turn: no marks): all established on the chain. With `leaders`, on until that many
    leaders credited them: then they stay established while silent, however many others lead
    (node/round/trust/credit.py: min(3, the window's leaders) must have credited a peer)."""
    swarm = Swarm(run=RUN, cfg=cfg)
    honest, sybils = swarm.peers(n_honest), swarm.peers(n_sybils)
    for _ in range(cfg.established_rounds):
        play([*honest, *sybils])
    while len({a.roster.leader for a in honest[0].ledger.rosters.values()}) < leaders:
        play([*honest, *sybils])
    return honest, sybils


def test_silent_sybil_candidates_stall_one_attempt_a_round_then_none_once_marked(monkeypatch):
    """Six established Sybils keep live heartbeats and never announce nor lead, and draw ranks
    0-2 of every round's attempt 0 (the worst luck; honest peers come first in attempt 1). Each
    round, attempt 0 fails and attempt 1's honest rank 0 leads, listing the three it passed over
    in `skip`. Two marks rank a Sybil after every unmarked candidate, so a Sybil is passed over
    at most twice, within a few rounds no Sybil reaches ranks 0-2, and rounds land in attempt 0
    at rank 0 again. Without marks every round would lose an attempt for ever."""
    honest, sybils = established_crowd(4, 6, leaders=credit.LEADERS)
    favour(monkeypatch, {0: {s.id for s in sybils}, 1: {p.id for p in honest}})
    rosters = [play(honest, silent=sybils) for _ in range(8)]
    attempts = [a.roster.attempt for a in rosters]
    assert max(attempts) <= 1  # never more than the one attempt a round
    passes = [p for a in rosters for p in a.roster.skip]
    assert set(passes) <= {s.id for s in sybils}  # no honest peer marked
    assert all(passes.count(s.id) <= marks.MARKS_TO_DROP for s in sybils)
    assert sum(attempts) <= marks.MARKS_TO_DROP * len(sybils) // election.ATTEMPT_RANKS  # 4 failed attempts
    assert marks.skip_marked(honest[0].ledger, honest[0].round + 1) == {s.id for s in sybils}
    assert all(a.roster.attempt == 0 and not a.roster.skip for a in rosters[-3:])  # rank 0 of attempt 0 leads


def test_silent_sybils_that_always_draw_the_first_ranks_fail_one_attempt_per_three(monkeypatch):
    """Six established silent Sybils draw the first ranks of every attempt (luck no beacon gives:
    the worst case). An attempt ranks the first ranks of the round's earlier attempts after the
    rest, so attempts 0 and 1 fail and attempt 2's honest rank 0 leads, skipping all six; the
    second such round marks them twice, and from the third round on they rank after every honest
    peer: rank 0 of attempt 0 leads. With one plain reshuffle per attempt they held every
    attempt of every round."""
    honest, sybils = established_crowd(4, 6, leaders=credit.LEADERS)
    favour(monkeypatch, {0: {s.id for s in sybils}, 1: {s.id for s in sybils}})
    rosters = [play(honest, silent=sybils) for _ in range(4)]
    assert [a.roster.attempt for a in rosters] == [2, 2, 0, 0]
    assert [len(a.roster.skip) for a in rosters] == [6, 6, 0, 0]


def test_a_hostile_leader_cannot_mark_a_peer_behind_it_nor_one_whose_roster_came(monkeypatch):
    """A rank-1 attacker lists rank 0 (an honest peer that led) and rank 3 (behind it) in
    `skip`. Every reader refuses the roster listing rank 3, and the chain check refuses it too;
    between the honest rank 0's roster and the attacker's that lists rank 0, readers take the
    smaller slot, rank 0's: no mark reaches the chain."""
    swarm = Swarm(run=RUN, cfg=CFG)
    peers = swarm.peers(6)
    favour(monkeypatch, {0: set(), 1: set()})  # real ranks; the patch only keeps marks.py in step
    play(peers)
    play(peers)
    swarm.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
        p.announce(f"update {p.id} 3".encode())
    r = peers[0].round + 1
    beacon = peers[0].proto.beacon(r)
    ranked = election.ranking(beacon, 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    order = [next(p for p in peers if p.id == pid) for pid in ranked]
    rank0, attacker, reader = order[0], order[1], order[5]
    honest_roster = rank0.proto.await_roster(r, rank0.digest, rank0.round, NoSleep())
    assert honest_roster.roster.leader == rank0.id and not honest_roster.roster.skip

    def hostile(skip: tuple[str, ...]) -> dict:
        built = attacker.proto.builder.build(  # a roster with `skip` credits nobody (sealed.creditable)
            r,
            attacker.digest,
            attacker.ledger.prev_hash(r),
            {p.id for p in peers},
            1,
            beacon=beacon,
            attempt=0,
            skip=skip,
        )
        return signed.seal(attacker.key, built.roster)

    behind = hostile((order[3].id,))
    cands = reader.proto.candidates(reader.proto.peers(), reader.digest, reader.round)
    reader.proto.seen[r] = {p.id for p in peers}
    reader.proto.opened[r] = reader.net.monotonic() - 100  # every turn of attempt 0 came
    with pytest.raises(ProtocolError, match="ranks behind its leader"):
        reader.proto.check_roster(behind, attacker.id, r, reader.digest, cands)
    with pytest.raises(ProtocolError, match="ranks behind its leader"):
        chain.check(behind, chain.after(reader.ledger.rosters[r - 1]), reader.ledger, reader.proto.rules)

    ahead = hostile((rank0.id,))
    assert reader.proto.check_roster(ahead, attacker.id, r, reader.digest, cands).slot == (0, 1)  # well formed
    attacker.net.store(keys.roster_key(RUN, r), attacker.id, ahead, ttl=600.0)
    for p in order[2:]:  # both rosters are in: every reader takes rank 0's
        p.proto.opened[r] = p.net.monotonic() - 100
        taken = p.proto.await_roster(r, p.digest, p.round, NoSleep())
        assert taken.hash == honest_roster.hash and not taken.roster.skip


def test_a_non_serving_announcer_costs_a_fetch_bound_until_two_leaders_list_it():
    """An established peer announces every round and never serves (FakeDHT.stalls: its requests
    time out after the fake clock moves by the batch's timeout). Each leader lists it `unserved`;
    once two distinct leaders did (counted from the roster before last), leaders fetch it last
    with marks.SLOW_FETCH seconds: the round's fetch cost drops from the bound to that. Nobody
    else is listed, and no roster holds its update."""
    cfg = replace(CFG, collect_timeout=30.0)
    honest, (staller,) = established_crowd(4, 1, cfg=cfg)
    swarm = honest[0].swarm
    swarm.dht.stalls.add(staller.id)
    costs, rosters = [], []
    for _ in range(10):
        before = swarm.dht.clock.t
        rosters.append(play(honest, announcing=[staller]))
        costs.append(swarm.dht.clock.t - before - 2)  # play's own 2 s step left out
    bound = FETCH_FLOOR + max(len(b) for p in honest for b in p.net.updates.values()) / FETCH_RATE
    assert all(a.roster.unserved == (staller.id,) for a in rosters)
    assert all(staller.id not in {x.peer for x in a.announcements} for a in rosters)
    listed = [i for i in range(len(rosters)) if len({a.roster.leader for a in rosters[: i + 1]}) >= 2]
    slow_from = listed[0] + marks.MARK_LAG  # the round the second leader's listing counts in
    assert all(c <= bound + 1e-3 for c in costs) and costs[0] == pytest.approx(bound, abs=1e-3)
    assert slow_from < len(costs) - 2
    assert all(c <= marks.SLOW_FETCH + 1e-3 for c in costs[slow_from:])


def fake_roster(r: int, leader: str, *, skip=(), unserved=()) -> AcceptedRoster:
    roster = Roster(
        run=RUN,
        round=r,
        leader=leader,
        prev=GENESIS,
        base=BASE0,
        result=BASE0,
        time=0.0,
        entries=({},),
        skip=tuple(skip),
        unserved=tuple(unserved),
    )
    return AcceptedRoster({}, roster, ())


def test_marks_age_out_after_the_window():
    """Two skip marks (rounds 10 and 12) rank a peer last from round 12 + MARK_LAG until the
    older one leaves the MARK_WINDOW rosters; unserved listings count distinct leaders only."""
    (_, victim), (_, a), (_, b) = new_key(), new_key(), new_key()
    ledger = Ledger(rosters={r: fake_roster(r, a) for r in range(1, 60)})
    ledger.rosters[10] = fake_roster(10, a, skip=[victim], unserved=[victim])
    ledger.rosters[12] = fake_roster(12, a, skip=[victim], unserved=[victim])
    marked = [r for r in range(1, 60) if victim in marks.skip_marked(ledger, r)]
    assert marked == list(range(12 + marks.MARK_LAG, 10 + marks.MARK_LAG + marks.MARK_WINDOW))
    assert not any(victim in marks.slow_servers(ledger, r) for r in range(1, 60))  # one leader, twice
    ledger.rosters[12] = fake_roster(12, b, unserved=[victim])
    assert victim in marks.slow_servers(ledger, 14) and victim not in marks.slow_servers(
        ledger, 10 + marks.MARK_LAG + marks.MARK_WINDOW
    )


def test_roster_marks_are_optional_bounded_and_left_off_when_empty():
    (_, p), (_, q) = new_key(), new_key()
    plain = fake_roster(1, p).roster
    wire = plain.to_wire()
    assert "skip" not in wire and "unserved" not in wire  # byte for byte an older peer's roster
    assert Roster.from_wire(wire) == plain
    marked = replace(plain, skip=(q,), unserved=(q,))
    assert Roster.from_wire(marked.to_wire()) == marked
    for bad in ([q, q], ["not a peer id"], [q] * (MAX_SKIP + 1), "q"):
        with pytest.raises(ProtocolError):
            Roster.from_wire({**wire, "skip": bad})
    with pytest.raises(ProtocolError, match="lists itself"):
        marks.check(replace(plain, skip=(p,)), set())
    with pytest.raises(ProtocolError, match="unserved an update it holds"):
        marks.check(replace(plain, unserved=(q,)), {q})
