"""Scores that cannot frame an honest peer (issue 16, design step 6): a copy of a victim's update
never gets the victim flagged, credit for copied bytes goes by signed announcement time (never
by peer id), and a ban needs flags from several leaders.

The copy attack runs over the in-memory fake (tests/fakes.py): real signed announcements, the
real leader (node/round/lead.py, which lists updates in peer-id order), real scores on a tiny
model, the ledger and the ban rule every peer applies."""

from __future__ import annotations

import hashlib

import pytest
import torch

from bench.byzantine.sybil_framing import Scorer  # the shared state, honest updates and a leader's scores
from node.config import RobustConfig, SwarmConfig
from node.outer.scoring import (
    TIE_SECONDS,
    WORST,
    banned,
    credited,
    flagged,
    payload_digest,
    score_updates,
)
from node.round.fetch import UpdateFetcher
from node.round.hooks import Hooks, Outcome
from node.round.lead import RosterBuilder
from node.round.ledger import AcceptedRoster, Ledger, ScoredRound
from protocol import keys, signed
from protocol.messages import UpdateEnvelope
from protocol.records import Announcement, Roster
from tests.fakes import FakeDHT, FakeNet, digest_of, new_key

RUN = "test-0123456789ab"
SWARM = SwarmConfig(collect_timeout=5.0, round_timeout=40.0)
ROBUST = RobustConfig(scoring=True, score_window=10, ban_after=5)
BASE = "a" * 64


class Member:
    """A peer of the fake swarm: its key, its network, and (if it leads) its roster builder."""

    def __init__(self, dht: FakeDHT, registry: dict, scorer: Scorer):
        self.key, self.id = new_key()
        self.net = FakeNet(self.id, dht, registry)
        hooks = Hooks(validate=lambda p: None, result=lambda p, t: Outcome(digest_of(p, BASE)), score=scorer.score)
        fetcher = UpdateFetcher(self.net, RUN, SWARM, hooks.validate)
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


def test_sybils_with_smaller_ids_copying_a_victim_get_nobody_flagged_or_banned():
    dht, registry, scorer = FakeDHT(), {}, Scorer()
    *sybils, victim = sorted((Member(dht, registry, scorer) for _ in range(4)), key=lambda m: m.id)
    leaders = [Member(dht, registry, scorer) for _ in range(3)]  # honest, leading in turn: 3 distinct leaders
    everyone = {m.id for m in [*sybils, victim, *leaders]}
    ledger = Ledger()
    for r in range(1, 13):
        now = dht.clock.t = 1_000_000.0 + 60 * r
        update = scorer.honest()
        victim.announce(r, update, now)
        for m in leaders:
            m.announce(r, scorer.honest(), now)
        for s in sybils:
            s.announce(r, update, now + 3)  # a copy is announced after its original
        accepted = leaders[r % 3].builder.build(
            r, BASE, ledger.prev_hash(r), everyone, at_least=len(everyone), beacon=BASE, attempt=0
        )
        ledger.append(accepted)
        peers = [a.peer for a in accepted.announcements]
        assert peers.index(sybils[0].id) < peers.index(victim.id)  # the leader lists the copies first
        scores = dict(accepted.roster.scores)
        assert scores[victim.id] < 0 and {scores[s.id] for s in sybils} == {scores[victim.id]}
        # nobody is flagged: not the victim, not the honest peers whose spread 3 copies would shrink to
        # nothing, not the copies either (they earn nothing instead)
        assert flagged(scores) == set()
        payloads = [UpdateEnvelope.decode(registry[p].held_update(r, p)).payload for p in peers]
        credit = dict(zip(peers, credited(payloads, [a.time for a in accepted.announcements])))
        assert credit[victim.id] and not any(credit[s.id] for s in sybils)
    assert banned(ledger.score_history(), ROBUST) == set()


def test_credit_for_copied_bytes_goes_by_signed_time_never_by_peer_id():
    a, b = b"update-a", b"update-b"
    # roster (peer-id) order puts the copy first; the victim announced 5 s earlier
    assert credited([a, a, b], [105.0, 100.0, 100.0]) == [False, True, True]
    assert credited([a, a], [100.0, 100.0 + TIE_SECONDS / 2]) == [False, False]  # a tie credits nobody
    assert credited([a, a, a], [100.0, 100.0 + 2 * TIE_SECONDS, 100.2]) == [False, False, False]
    # a backdated copy steals the credit, nothing more: the bytes score the same for both
    assert credited([a, a], [90.0, 100.0]) == [True, False]
    # an earlier round's bytes: the chain proves they came first, nobody here earns them
    assert credited([a, b], [100.0, 100.0], earlier=[payload_digest(a)]) == [False, True]
    # near-duplicates (cosine > DUPLICATE_COS, linked transitively) share one credit
    g = torch.Generator().manual_seed(3)
    u = torch.randn(4096, generator=g)
    near = [u, u * 2.0, u + 1e-3 * torch.randn(4096, generator=g), torch.randn(4096, generator=g)]
    assert credited([b"w", b"x", b"y", b"z"], [100.0, 95.0, 103.0, 99.0], deltas=near) == [False, True, False, True]
    assert credited([b"w", b"x"], [100.0, 100.0], deltas=[torch.zeros(8), torch.zeros(8)]) == [True, True]


def test_copies_score_what_their_bytes_score_and_earlier_rounds_still_worst():
    s = Scorer()
    victim, other = s.honest(), s.honest()
    scores = score_updates(s.strat, s.state, [victim, other, victim], s.loss_of)
    assert scores[0] == scores[2] < 0 < WORST  # the copy (listed first or last) never makes the victim WORST
    scores = score_updates(s.strat, s.state, [victim, other], s.loss_of, earlier=[payload_digest(other)])
    assert scores[0] < 0 and scores[1] == WORST  # a replay of an earlier round's bytes


def rosters(leaders: list, authors: list, flag_rounds: set[int], rounds: int) -> Ledger:
    """A ledger of signed rosters of the authors' updates: round r led by leaders[r % len], the
    last author's update scoring WORST (so flagged) in flag_rounds, the others honestly."""
    ledger = Ledger()
    for r in range(1, rounds + 1):
        key, leader = leaders[r % len(leaders)]
        entries = [
            signed.seal(k, Announcement(run=RUN, round=r, peer=p, nbytes=1, sha256=BASE, tokens=1, base=BASE, time=1.0))
            for k, p in sorted(authors, key=lambda a: a[1])
        ]
        scores = {p: -0.05 + 0.002 * i for i, (_, p) in enumerate(authors)}
        scores[authors[-1][1]] = WORST if r in flag_rounds else -0.05
        roster = Roster(
            run=RUN,
            round=r,
            leader=leader,
            prev=ledger.prev_hash(r),
            base=BASE,
            result=BASE,
            time=float(r),
            entries=tuple(entries),
            scores=tuple(sorted(scores.items())),
        )
        env = signed.seal(key, roster)
        opened, anns = signed.open_roster(env)
        ledger.append(AcceptedRoster(env, opened, tuple(anns)))
    return ledger


@pytest.fixture(scope="module")
def leaders():
    return [new_key() for _ in range(RobustConfig().distinct_leaders)]


@pytest.fixture(scope="module")
def authors():
    """Six peers whose updates the rosters list; the last is the one flagged."""
    return [new_key() for _ in range(6)]


@pytest.mark.parametrize("distinct", [1, 2])
def test_flags_from_one_or_two_leaders_never_ban_whatever_their_number(leaders, authors, distinct):
    victim = authors[-1][1]
    history = rosters(leaders[:distinct], authors, set(range(1, 31)), rounds=30).score_history()  # flagged each round
    assert {h.leader for h in history} == {p for _, p in leaders[:distinct]}
    assert all(flagged(h.scores) == {victim} for h in history)
    assert banned(history, ROBUST) == set()


def test_five_flags_from_three_leaders_do_ban(leaders, authors):
    liar = authors[-1][1]
    history = rosters(leaders, authors, {1, 2, 3, 4, 5}, rounds=8).score_history()
    assert [h.round for h in history] == list(range(1, 9)) and isinstance(history[0], ScoredRound)
    assert banned(history, ROBUST) == {liar}
    assert banned(history[:4], ROBUST) == set()  # 4 flags: not yet
    # the same 5 flags spread beyond score_window rounds: never 5 in one window
    spread = rosters(leaders, authors, {1, 4, 7, 10, 13}, rounds=13).score_history()
    assert banned(spread, ROBUST) == set()
    # two more flags: rounds 6-15 then hold 5 (7, 10, 13, 14, 15), from 3 leaders
    late = [spread[-1]._replace(round=r, leader=leaders[r % 3][1]) for r in (14, 15)]
    assert banned([*spread, *late], ROBUST) == {liar}


def test_an_empty_round_and_a_round_of_one_update():
    s = Scorer()
    assert score_updates(s.strat, s.state, [], s.loss_of) == []
    assert credited([], []) == [] and credited([], [], deltas=[]) == []
    one = s.honest()
    assert score_updates(s.strat, s.state, [one], s.loss_of)[0] < 0
    assert credited([one], [100.0]) == [True]
    assert flagged({}) == set() and flagged({"only": WORST}) == set()  # too few to judge
    assert banned([], ROBUST) == set()
    empty = [ScoredRound(r, f"leader{r % 3}", {}) for r in range(1, 11)]  # scoring off: rosters without scores
    assert banned(empty, ROBUST) == set()
    single = [ScoredRound(r, f"leader{r % 3}", {"only": WORST}) for r in range(1, 11)]
    assert banned(single, ROBUST) == set()
    assert Ledger().score_history() == []
