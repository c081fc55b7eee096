"""A ledger whose window lacks rosters fills it by hash (issue 16; node/round/trust/reader.py
WindowFill, node/round/ledger.py Ledger.backfill). A peer that restarted from its state checkpoint
without its ledger file, or lost lines of it, or synced state, holds fewer than the 64 rosters
before its next round: its tickets are not the swarm's, so it judged no skip mark by rank
(Ledger.holds_window) and took, for up to 64 rounds, hostile marks the swarm refuses
(tests/test_sybil_attacks_5.py). Now it fetches the missing rosters from a live peer with the
`ledger` RPC and takes each one whose body hashes to the next one's `prev`, down from its head
(which passed the chain rules): then it judges marks as the swarm does. Signed, chained rosters;
the fake network's `ledger` answers."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from types import SimpleNamespace

import msgpack
import pytest

from node.round.ledger import Ledger, verify
from node.round.trust import marks
from node.round.trust.reader import WindowFill
from protocol import signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS, Announcement, Roster
from tests.fakes import FakeDHT, FakeNet, new_key

RUN = "window-fill-run"
ROUNDS = 100  # a run longer than the window
SYNCED = 59  # the reader's state checkpoint: it holds rosters 60..100 only
K = 2  # established_rounds


@pytest.fixture(scope="module")
def run() -> dict:
    """Round -> signed roster envelope, chained from the genesis: 4 honest peers lead in turn and
    each gets a full round's credit; Sybil i gets it in rounds 37 + 2i and 38 + 2i only (two
    leaders: established, 2 tickets in round 101's window, which holds rounds 37..100)."""
    honest = [new_key() for _ in range(4)]
    sybils = [new_key() for _ in range(8)]
    envs, prev, base = {}, GENESIS, "b" * 64
    for r in range(1, ROUNDS + 1):
        credited = honest + [s for i, s in enumerate(sybils) if r in (ROUNDS - 63 + 2 * i, ROUNDS - 62 + 2 * i)]
        entries = tuple(
            signed.seal(
                key, Announcement(run=RUN, round=r, peer=p, nbytes=64, sha256="1" * 64, tokens=1, base=base, time=0.0)
            )
            for key, p in sorted(credited, key=lambda kp: kp[1])
        )
        leader_key, leader = honest[r % 4]
        roster = Roster(
            run=RUN, round=r, leader=leader, prev=prev, base=base, result=f"{r:064x}", time=float(r),
            entries=entries, credit=(64,) * len(entries), beacon=hashlib.sha256(b"%d" % r).hexdigest(),
        )  # fmt: skip
        envs[r] = signed.seal(leader_key, roster)
        prev, base = signed.body_hash(envs[r]), roster.result
    return {"envs": envs, "honest": [p for _, p in honest], "sybils": [p for _, p in sybils], "keys": honest + sybils}


def member(envs: dict, rounds) -> Ledger:
    """A ledger that took `rounds` of the run's rosters in order (append: a gap restarts it)."""
    ledger = Ledger()
    accepted, problems = verify([envs[r] for r in rounds])
    assert problems == [] or rounds[0] > 1
    for a in accepted:
        ledger.append(a)
    return ledger


def taken(ledger: Ledger, roster: Roster) -> bool:
    """Does a reader holding `ledger` take `roster`'s skip marks? What chain.check and the live
    checks do: judged by the window's tickets only while it holds the whole window."""
    r = roster.round
    try:
        marks.check(roster, set(), ledger.tickets(r, K) if ledger.holds_window(r) else None)
        return True
    except ProtocolError:
        return False


def marked(run: dict, swarm: Ledger) -> tuple[Roster, Roster]:
    """Round 101 rosters by an honest leader skipping one Sybil: one the swarm refuses (the Sybil
    ranks behind the leader in every attempt up to its own, under the swarm's tickets), one it takes."""
    tickets, leader, base = swarm.tickets(ROUNDS + 1, K), run["honest"][0], verify([run["envs"][ROUNDS]])[0][0]
    hostile = honest = None
    for i in range(400):
        beacon = hashlib.sha256(b"mark %d" % i).hexdigest()
        for s in run["sybils"]:
            roster = replace(base.roster, round=ROUNDS + 1, leader=leader, beacon=beacon, attempt=0, skip=(s,))
            if marks.ranked_ahead(beacon, 0, s, leader, tickets):
                honest = honest or roster
            else:
                hostile = hostile or roster
    assert hostile is not None and honest is not None
    return hostile, honest


def donor_of(name: str, ledger: Ledger | None, dht: FakeDHT, registry: dict) -> FakeNet:
    net = FakeNet(name, dht, registry)
    net.ledger = ledger
    return net


def test_a_reader_whose_window_lacks_rosters_fills_it_and_refuses_the_marks_the_swarm_refuses(run):
    """Attack 2 of tests/test_sybil_attacks_5.py, closed: the reader (rosters 60..100 of a 100-round
    run) takes a mark of round 101 the swarm refuses. One `ledger` answer from a live peer (rounds
    37..59, linked down from its roster 60's `prev`) fills its window: it counts the swarm's
    tickets, refuses that mark and takes the honest one."""
    envs = run["envs"]
    swarm = member(envs, range(1, ROUNDS + 1))
    reader = member(envs, range(SYNCED + 1, ROUNDS + 1))
    hostile, honest = marked(run, swarm)
    assert not taken(swarm, hostile) and taken(swarm, honest)
    assert not reader.holds_window(ROUNDS + 1) and reader.missing() == list(range(37, SYNCED + 1))
    assert reader.tickets(ROUNDS + 1, K) != swarm.tickets(ROUNDS + 1, K)
    assert taken(reader, hostile)  # what the reader did before: the swarm refuses this mark

    dht, registry = FakeDHT(), {}
    me, donor = FakeNet("me", dht, registry), donor_of("donor", swarm, dht, registry)
    t0 = time.perf_counter()
    assert WindowFill(me, reader, RUN).step(["me", "donor"], block=True) == SYNCED - 36
    took_s = time.perf_counter() - t0
    served = len(msgpack.packb(swarm.envelopes_from(37), use_bin_type=True))
    assert donor.requests == [("ledger", 37)]  # one answer: 64 rounds from its round 37 on
    assert reader.holds_window(ROUNDS + 1) and reader.missing() == []
    assert {r: a.hash for r, a in reader.rosters.items()} == {r: a.hash for r, a in swarm.rosters.items()}
    assert reader.tickets(ROUNDS + 1, K) == swarm.tickets(ROUNDS + 1, K)
    assert not taken(reader, hostile) and taken(reader, honest)
    assert reader.established(K) == swarm.established(K)
    # the cost on the fake network (12 keys, 4-6 entries a roster): about 96 KB, well under a second
    print(f"window fill: {SYNCED - 36} rosters, answer of {served} bytes (64 rosters), {took_s * 1000:.0f} ms")
    assert served < 4 * 2**20 and took_s < 5


def test_a_young_run_filled_from_round_one_is_the_whole_run():
    """A run younger than the window: the fill reaches roster 1, whose prev is the genesis, so
    the ledger holds the whole run (Ledger.complete: 'nobody established' means a young run)."""
    key, p = new_key()
    envs, prev = [], GENESIS
    for r in range(1, 6):
        ann = signed.seal(
            key, Announcement(run=RUN, round=r, peer=p, nbytes=64, sha256="1" * 64, tokens=1, base="b" * 64, time=0.0)
        )
        body = Roster(run=RUN, round=r, leader=p, prev=prev, base="b" * 64, result="b" * 64, time=0.0, entries=(ann,))
        envs.append(signed.seal(key, body))
        prev = signed.body_hash(envs[-1])
    accepted = verify(envs)[0]
    reader = Ledger()
    for a in accepted[3:]:
        reader.append(a)
    assert not reader.complete(5) and reader.backfill(envs) == (3, [])
    assert reader.complete(5) and reader.holds_window(6)


def test_a_donor_serving_rosters_that_do_not_link_is_refused_and_the_window_stays_partial(run, caplog):
    """A donor that serves a forged roster (signed by its own key, another body: its hash is not
    the next roster's `prev`) among the real ones: the rosters above it that link are taken, it and
    the ones below are refused with a log line, nothing raises; a donor that serves junk or never
    answers costs its answer's timeout. The next live donor fills the rest."""
    envs = run["envs"]
    swarm = member(envs, range(1, ROUNDS + 1))
    reader = member(envs, range(SYNCED + 1, ROUNDS + 1))
    hostile, _ = marked(run, swarm)
    forger_key, forger = run["keys"][4]
    body = msgpack.unpackb(envs[50]["body"], raw=False)
    forged = signed.seal(forger_key, replace(verify([envs[50]])[0][0].roster, leader=forger, time=body["time"] + 1))
    dht, registry = FakeDHT(), {}
    me = FakeNet("me", dht, registry)
    liar = donor_of("liar", None, dht, registry)
    liar.ledger_override = [forged if r == 50 else envs[r] for r in range(37, ROUNDS + 1)]
    junk = donor_of("junk", None, dht, registry)
    junk.ledger_override = [{"body": b"\x93", "sig": b"", "key": b""}]  # a list of one unreadable roster
    donor_of("stalled", swarm, dht, registry)
    dht.stalls.add("stalled")
    fill = WindowFill(me, reader, RUN)
    with caplog.at_level(logging.INFO, logger="swarmtrain.sync"):
        assert fill.step(["liar"], block=True) == SYNCED - 50  # 51..59 link; 50 does not
        assert fill.step(["liar", "junk"], block=True) == 0  # the liar is not asked again
        assert fill.step(["liar", "junk", "stalled"], block=True) == 0
    assert reader.missing() == list(range(37, 51)) and not reader.holds_window(ROUNDS + 1)
    assert "refused: no roster of round 50 hashes to roster 51's prev" in caplog.text
    assert "did not answer" in caplog.text and "window rosters from junk" in caplog.text
    assert taken(reader, hostile)  # still partial: still the reader of tests/test_sybil_attacks_5.py
    donor_of("honest", swarm, dht, registry)
    assert fill.step(["liar", "junk", "stalled", "honest"], block=True) == 50 - 36
    assert reader.holds_window(ROUNDS + 1) and not taken(reader, hostile)


class Capped(Ledger):
    """A donor's ledger whose `ledger` answers hold 10 rosters (as SERVE_BYTES caps big rosters)."""

    def envelopes_from(self, first: int, most_bytes: int = 0) -> list[dict]:
        return super().envelopes_from(first)[:10]


def test_answers_capped_by_size_are_read_from_the_highest_rounds_missing_down(run):
    """Rosters link from the head down, so after a first answer that stops short the fill asks for
    the highest rounds still missing first: 3 answers of 10 rosters fill rounds 37..59."""
    envs = run["envs"]
    swarm, reader = member(envs, range(1, ROUNDS + 1)), member(envs, range(SYNCED + 1, ROUNDS + 1))
    capped = Capped()
    capped.rosters = dict(swarm.rosters)
    dht, registry = FakeDHT(), {}
    me, donor = FakeNet("me", dht, registry), donor_of("donor", capped, dht, registry)
    assert WindowFill(me, reader, RUN).step(["donor"], block=True) == SYNCED - 36
    assert donor.requests == [("ledger", 37), ("ledger", 50), ("ledger", 47)]
    assert reader.holds_window(ROUNDS + 1)


def test_the_node_fills_in_the_background_from_live_peers_at_its_head(run):
    """StateSync.fill_window, once a round: asks a live peer whose heartbeat is at or past its
    ledger's head (not one behind, which may not hold them), on a thread; the next call takes the
    rosters. Nothing is asked once the window is whole."""
    from node.peer.sync import StateSync

    envs = run["envs"]
    swarm, reader = member(envs, range(1, ROUNDS + 1)), member(envs, range(SYNCED + 1, ROUNDS + 1))
    dht, registry = FakeDHT(), {}
    me, behind, ahead = (
        FakeNet("me", dht, registry),
        donor_of("a", swarm, dht, registry),
        donor_of("b", swarm, dht, registry),
    )
    live = {"me": 100, "a": 50, "b": 101}
    node = SimpleNamespace(ledger=reader, fill=WindowFill(me, reader, RUN))
    node.live = lambda: {p: SimpleNamespace(state_round=r) for p, r in live.items()}
    StateSync.fill_window(node)
    node.fill.fetching.result(timeout=10)  # the fetch ends on its own thread
    assert not reader.holds_window(ROUNDS + 1)  # taken by the next call, on the node's thread
    StateSync.fill_window(node)
    assert reader.holds_window(ROUNDS + 1) and node.fill.fetching is None
    assert behind.requests == [] and ahead.requests == [("ledger", 37)]
    StateSync.fill_window(node)
    assert ahead.requests == [("ledger", 37)]
