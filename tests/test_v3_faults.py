"""Faults in a v3 round run by the real RoundProtocol over the in-memory fakes (tests/test_v3_rounds.py):
a leader that dies right after storing its call, one that stays up but never moves its board
on, or one that lists an honest owner as caught without a proof that checks, costs its members
one bounded wait, not the round (nor the owner a ban)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from node.round.v3 import Aggregate
from node.scatter import member as member_module
from node.scatter import runner
from node.scatter.leader import Leader, tasks_of
from node.scatter.member import Member, Timeouts
from node.scatter.roster import proves
from node.scatter.traffic import Behaviour
from protocol import keys, signed
from tests.test_scatter_member import Framer
from tests.test_v3_rounds import CFG, RUN, TOTAL, swarm

# a member's waits as the node derives them (node/scatter/runner.py make_scatter: phase = call =
# collect_timeout), with a 2 s phase so that the suite waits seconds, not tens of them
NODE_TIMEOUTS = Timeouts(phase=2.0, call=2.0, round=CFG.round_timeout)
SETTLE = 0.6  # the test peers' (tests/test_v3_rounds.py Peer)


class Died(BaseException):
    """Ends a peer's thread where it stands, as a killed process does (no handler catches it)."""


def test_a_leader_that_dies_after_its_call_costs_one_phase_and_no_update():
    """The first peer to call a v3 round stores its call, then dies (its transport goes down, its
    thread ends). Its members give its round up once it has sent no board for a phase, and hand
    the round to the next slot's turn: the next-ranked peer calls again with the survivors, whose
    announced updates are all in its roster (nothing is lost), and the dead leader is in its
    `skip`; exactly two calls (no second leader raced the first one's successor). Bound: 2 x
    (settle + phase) + 3 s from the call (the give-up takes settle + phase; the second round, in
    which nobody waits for anyone, less): 14.2 s, measured 7 s. Before: members waited the whole
    round_timeout (40 s) inside the dead call, then had no roster (42 s), and the round failed."""
    n = 6
    dht, bus, peers = swarm(n, timeouts=NODE_TIMEOUTS)
    dead: dict = {}
    for p in peers:
        real = p.scatter.run

        def run(call, update, leads, stop=None, p=p, real=real):
            if leads and not dead:  # the first leader dies right after its call is stored
                dead.update(id=p.id, at=time.monotonic(), call=call)
                bus.down.add(p.id)
                p.net.registry.pop(p.id, None)
                raise Died()
            return real(call, update, leads, stop)

        p.scatter.run = run
    out, done = play_round(peers, dht, 0)
    assert dead, "nobody called a v3 round"
    survivors, accepted, _ = one_roster(peers, out, dead["id"])
    took = {p.id: done.get(p.id, float("nan")) - dead["at"] for p in survivors}
    print("seconds from the dead call to each survivor's end:", sorted(round(s, 1) for s in took.values()))
    roster = accepted.roster
    # every survivor's announced update counts; the dead leader's is left out
    assert {a.peer for a in accepted.announcements} == {p.id for p in survivors}
    assert set(dht.get(keys.call_key(RUN, 1))) == {dead["id"], roster.leader}
    bound = 2 * (SETTLE + NODE_TIMEOUTS.phase) + 3.0
    assert max(took.values()) <= bound, f"survivors took {max(took.values()):.1f} s after the call (bound {bound} s)"
    opened, _ = signed.open_call(dht.get(keys.call_key(RUN, 1))[roster.leader], signer=roster.leader)
    assert opened.entries == roster.entries


class Frozen(Leader):
    """A hostile leader: it answers every board poll at once, but with its first board only
    (collect, level 1): it never moves its board on, so nobody's round can end. `bump`: under a new
    version each time (a version alone is no progress: node/scatter/leader.py news)."""

    bump = False

    def publish(self, level: int, stage: str, **fields) -> None:
        if not self.boards:
            super().publish(level, stage, **fields)

    def answer(self, caller, msg):
        if msg.op == "board":  # the first board, whatever level or version is asked for
            while not self.boards:
                time.sleep(0.05)
            with self.cond:
                self.version += self.bump
                return dataclasses.replace(self.boards[1], version=self.version).encode()
        return super().answer(caller, msg)


@pytest.mark.parametrize("bump", [False, True], ids=["same-version", "new-versions"])
def test_a_leader_that_never_moves_its_board_on_costs_one_stall_and_no_update(monkeypatch, bump):
    """The first peer to call a v3 round leads it with a board that never moves on past its first
    version, while answering every poll (so no member ever finds it silent). Its members give its
    round up once the board has shown nothing new for Timeouts.stall (2.5 x phase) and hand the
    round to the next slot's turn, as for a dead leader: the next-ranked peer calls again, its
    roster lists every other member's update and skips the staller. Bound: settle + stall + settle
    + phase + 3 s from the call: 21.7 s, measured 14.6 s. Before (only silence was detected):
    every member waited round_timeout (40 s) inside the stalled call, then failed its round (the
    test failed after 91 s)."""
    n = 6
    dht, bus, peers = swarm(n, timeouts=NODE_TIMEOUTS)
    hostile: dict = {}

    def leader(rnd, keys, member, **options):
        if not hostile:
            hostile.update(id=keys.peer, at=time.monotonic())
            frozen = Frozen(rnd, keys, member, **options)
            frozen.bump = bump
            return frozen
        return Leader(rnd, keys, member, **options)

    monkeypatch.setattr(runner, "Leader", leader)
    out, done = play_round(peers, dht, 1)
    assert hostile, "nobody called a v3 round"
    survivors, accepted, _ = one_roster(peers, out, hostile["id"])
    took = {p.id: done.get(p.id, float("nan")) - hostile["at"] for p in survivors}
    print("seconds from the stalled call to each survivor's end:", sorted(round(s, 1) for s in took.values()))
    assert {a.peer for a in accepted.announcements} == {p.id for p in survivors}
    bound = 2 * SETTLE + NODE_TIMEOUTS.stall + NODE_TIMEOUTS.phase + 3.0
    assert max(took.values()) <= bound, f"survivors took {max(took.values()):.1f} s after the call (bound {bound} s)"


def play_round(peers, dht, seed: int) -> tuple[dict, dict]:
    """Every peer announces and plays round 1 in its own thread: (peer -> (accepted, got) or
    error, or "died"; peer -> when its thread ended, time.monotonic())."""
    gen = torch.Generator().manual_seed(seed)
    updates = {p.id: torch.randn(TOTAL, generator=gen) * 0.01 for p in peers}
    dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    for p in peers:
        p.announce(updates[p.id])
    out: dict = {}
    done: dict = {}

    def play(p):
        try:
            p.play(out)
        except Died:
            out[p.id] = "died"
        done[p.id] = time.monotonic()

    threads = [threading.Thread(target=play, args=(p,), daemon=True) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CFG.round_timeout + 30)
    return out, done


def one_roster(peers, out: dict, bad: str) -> tuple[list, object, object]:
    """The peers other than `bad` each ended the round with no error, on one digest, and a v3
    roster another leader than `bad` led, skipping it: (survivors, accepted, got)."""
    survivors = [p for p in peers if p.id != bad]
    for p in survivors:
        assert not isinstance(out.get(p.id), Exception) and p.id in out, f"{p.id[:8]}: {out.get(p.id)!r}"
        p.finish(*out[p.id])
    assert len({p.digest for p in survivors}) == 1
    accepted, got = out[survivors[0].id]
    assert isinstance(got, Aggregate) and accepted.roster.finals  # a v3 round
    assert accepted.roster.leader != bad and bad in accepted.roster.skip
    return survivors, accepted, got


@pytest.mark.parametrize("junk", [True, False], ids=["junk-proof", "no-proof"])
def test_a_leader_that_frames_an_honest_owner_costs_a_phase_and_no_ban(monkeypatch, junk):
    """The first peer to call a v3 round lists an honest owner as caught on its board, with a
    junk proof (the owner's own receipt, no inputs: it shows no lie) or with none served, and leads
    on. Every member fetches the proof, finds it missing or not checking, and gives the round up
    as from a silent leader: the next slot's leader calls again, skips the framer, and its roster
    catches nobody; no peer's ledger bans the honest owner. Before (members took `caught` on the
    leader's word), the framer's roster listed the owner as caught and the chain banned it."""
    dht, bus, peers = swarm(6, timeouts=NODE_TIMEOUTS)
    hostile: dict = {}

    def leader(rnd, keys, member, **options):
        if hostile:
            return Leader(rnd, keys, member, **options)
        framer = Framer(rnd, keys, member, **options)
        framer.junk = junk
        hostile.update(id=keys.peer, leader=framer)
        return framer

    monkeypatch.setattr(runner, "Leader", leader)
    out, _ = play_round(peers, dht, 2)
    assert hostile, "nobody called a v3 round"
    framed = hostile["leader"].framed
    assert framed is not None and framed != hostile["id"]
    survivors, accepted, _ = one_roster(peers, out, hostile["id"])
    roster = accepted.roster
    assert not roster.caught and framed in {a.peer for a in accepted.announcements}
    assert all(framed not in p.ledger.caught() and framed not in p.proto.banned(p.ledger) for p in survivors)


def test_an_honest_conviction_ends_in_one_roster_whose_proof_every_member_checked(monkeypatch):
    """An owner that lies (Behaviour.lie) is convicted as before, and the round still ends in one
    roster: every member, the liar and the leader's own Member included, fetched the proof its
    board pinned and re-ran it (one check each), and took the roster only because it lists that
    owner with that proof's digest (check_v3 compares the pairs); the chain then bans the liar."""
    n = 6
    dht, bus, peers = swarm(n, timeouts=NODE_TIMEOUTS)
    made: list = []
    checks: list = []

    def liar_member(rnd, update, keys, net, leader, **options):
        liar = next(o for o in (rnd.owner(*t) for t in tasks_of(rnd, 1)) if o != leader)
        if keys.peer == liar:
            options["behaviour"] = Behaviour(lie=True)
        made.append(Member(rnd, update, keys, net, leader, **options))
        return made[-1]

    def counted(*args):
        checks.append(args[1])  # the owner whose proof a member checks
        return proves(*args)

    monkeypatch.setattr(runner, "Member", liar_member)
    monkeypatch.setattr(member_module, "proves", counted)
    out, _ = play_round(peers, dht, 3)
    for p in peers:
        assert not isinstance(out.get(p.id), Exception) and p.id in out, f"{p.id[:8]}: {out.get(p.id)!r}"
        p.finish(*out[p.id])
    assert len({p.digest for p in peers}) == 1 and len(made) == n
    roster = out[peers[0].id][0].roster
    assert len(roster.caught) == 1
    ((liar, digest),) = roster.caught
    assert checks == [liar] * n
    assert all(m.checked == {liar: digest} for m in made)
    assert all(liar in p.ledger.caught() for p in peers)


def test_peers_that_leave_inside_a_stalled_v3_round_end_at_once(monkeypatch):
    """Every peer is asked to stop (Ctrl+C, SIGTERM) while it waits inside a v3 round whose leader
    never moves its board on, under the node's default 30 s phases: each ends its wait for the
    roster within a second, with no roster. Before, a member's part in the round ignored the stop
    and waited out the stall (75 s at the defaults): `bench swarm` saw peers that SIGTERM did
    not end in 30 s, and wrote no result."""
    dht, bus, peers = swarm(5, timeouts=Timeouts(phase=30.0, call=30.0, round=CFG.round_timeout))
    inside = threading.Semaphore(0)

    def member(*args, **options):
        made = Member(*args, **options)
        real = made.run
        made.run = lambda: (inside.release(), real())[1]
        return made

    monkeypatch.setattr(runner, "Leader", Frozen)
    monkeypatch.setattr(runner, "Member", member)
    dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    for p in peers:
        p.announce(torch.full((TOTAL,), 0.01))
    stop, ended = threading.Event(), {}

    def play(p):
        ended[p.id] = (p.proto.await_roster(1, p.digest, 0, stop), time.monotonic())

    threads = [threading.Thread(target=play, args=(p,), daemon=True) for p in peers]
    for t in threads:
        t.start()
    for _ in peers:  # every member, the leader's own one included, is inside the round
        assert inside.acquire(timeout=30), "a peer never took part in the v3 round"
    asked = time.monotonic()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(ended) == len(peers) and all(roster is None for roster, _ in ended.values())
    took = max(at for _, at in ended.values()) - asked
    assert took < 2.0, f"the last peer ended {took:.1f} s after the stop"
