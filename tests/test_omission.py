"""A roster must hold what was announced in time (issue 16, design step 5; node/round/trust/omission.py).

A Sybil leader that leaves an honest peer's update out of its roster no longer costs that peer
its place in the chain: the peers that saw the announcement in time list it in `seen_late`, the
peer claims it, and once more than half of the established peers other than the claimant and the
leader vouch, the claim counts as the peer's appearance and marks the leader. Rounds run over the
in-memory network (bench/fakenet.py) through the real RoundProtocol, as tests/test_delays.py does,
in fake-clock time: the fake's wall clock stands still within a round, so LATE_MARGIN is patched to 0."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.byzantine.sybilnet import Peer
from node.round import election
from node.round.trust import chain, credit, marks, omission
from protocol import keys, signed
from protocol.errors import ProtocolError
from protocol.records import CLAIM_ROUNDS, MAX_SEEN_LATE, SEEN_PREFIX, Announcement, Roster
from tests.test_delays import CFG, established_crowd, favour, play

K = CFG.established_rounds


@pytest.fixture(autouse=True)
def no_margin(monkeypatch):
    monkeypatch.setattr(omission, "LATE_MARGIN", 0.0)


def censor(leader: Peer, victims: set[str]) -> None:
    """`leader` leaves `victims`' updates out of every roster it builds (and lists them nowhere)."""
    real = leader.proto.builder.pick

    def pick(round_no, base, eligible, *args, **kwargs):
        return real(round_no, base, eligible - victims, *args, **kwargs)

    leader.proto.builder.pick = pick


def blind(monkeypatch, peer: Peer) -> None:
    """`peer` notes no announcement: it came to the round too late to see any."""
    monkeypatch.setattr(peer.proto.seer, "saw", lambda *args: None)


def test_a_left_out_peer_proves_omission_and_the_second_omission_ranks_the_leader_last(monkeypatch):
    """Five honest peers and an established Sybil S. S leads round 3 (the worst luck) and leaves
    P out; 3 of the 4 other honest peers saw P's announcement in time (the fourth saw nothing).
    Their round-4 announcements list it in `seen_late` and P's claims it: 3 of the claim's jury of
    4 (the 6 established peers less P and S) vouch, more than half, so P counts as appearing in
    round 3 and S has an omission mark.
    S does it again in round 5: two marks rank it after every unmarked candidate from round 7 on,
    so it no longer leads although it draws rank 0."""
    honest, (s,) = established_crowd(5, 1)
    p, seers, late = honest[0], honest[1:4], honest[4]
    everyone = [*honest, s]
    favour(monkeypatch, {0: {s.id}, 1: {s.id}})
    censor(s, {p.id})
    blind(monkeypatch, late)
    blind(monkeypatch, s)  # a Sybil vouches for nobody
    omitted = play(everyone)
    assert omitted.roster.leader == s.id and p.id not in {a.peer for a in omitted.announcements}
    assert p.id not in omitted.roster.unserved
    claiming = p.proto.seer.left_out[omitted.roster.round]

    del s.proto.builder.pick  # S leads honestly
    carried = play(everyone)
    by = {a.peer: a for a in carried.announcements}
    name = omission.prefix(claiming)
    listed = {q.id for q in everyone if name in by[q.id].seen_late}
    assert listed == {q.id for q in seers}
    assert by[p.id].claim == claiming
    for q in everyone:
        assert omission.claims(q.ledger.rosters, K) == [omission.Claim(p.id, 3, s.id, False, carried.roster.round)]
    assert p.ledger.appearances()[p.id] == 3 and omission.claimed(p.ledger.rosters, K)[p.id] == 1  # 4 rounds of 4
    claims = omission.claims(p.ledger.rosters, K)  # the claim earns what the update that carried it earned
    assert credit.weights(p.ledger.rosters, claims).units[p.id] == 4 * credit.UNITS
    assert s.id not in p.proto.marked(5)  # one mark

    censor(s, {p.id})
    assert play(everyone).roster.leader == s.id  # round 5: S still leads, and omits P again
    del s.proto.builder.pick  # S leads honestly again
    play(everyone)  # round 6: P's claim rides in
    assert {c.round for c in omission.claims(p.ledger.rosters, K)} == {3, 5}
    assert marks.omission_marked(p.ledger, 7, K) == {s.id}
    assert all(s.id in q.proto.marked(7) for q in honest)
    assert play(everyone).roster.leader != s.id  # round 7: ranked last, S leads no more
    assert not any(q.proto.seer.left_out for q in honest[1:])  # nobody else was left out


def test_a_leader_that_lists_the_peer_unserved_is_not_marked_and_the_peer_keeps_its_appearance(monkeypatch):
    """S could not fetch P's update (P stalls for it) and says so in `unserved`: P's claim, seen by
    the other honest peers, still counts as P's appearance, but it excuses S: no mark, twice over."""
    honest, (s,) = established_crowd(5, 1)
    p, everyone = honest[0], [*honest, s]
    favour(monkeypatch, {0: {s.id}, 1: {s.id}})
    swarm = p.swarm
    real = s.proto.builder.build

    def stalled(*args, **kwargs):
        swarm.dht.stalls.add(p.id)
        try:
            return real(*args, **kwargs)
        finally:
            swarm.dht.stalls.discard(p.id)

    for _ in range(2):
        s.proto.builder.build = stalled
        omitted = play(everyone)
        assert omitted.roster.leader == s.id and omitted.roster.unserved == (p.id,)
        del s.proto.builder.build
        play(everyone)
    found = omission.claims(p.ledger.rosters, K)
    assert {(c.claimant, c.round, c.excused) for c in found} == {(p.id, 3, True), (p.id, 5, True)}
    assert omission.claimed(p.ledger.rosters, K)[p.id] == 2
    assert not marks.omission_marked(p.ledger, 7, K)


def test_a_roster_whose_cutoff_is_under_the_floor_is_refused():
    """The chain's floor is the roster before's time plus the median announcement delay of the
    8 rosters before (2 s here): a leader that closes collection at the previous roster's time,
    before anyone could announce, is refused by round readers and by the chain check alike; so is
    a cutoff after the roster's own time. The honest leader's cutoff passes."""
    honest, _ = established_crowd(4, 0)
    for _ in range(3):
        play(honest)
    swarm = honest[0].swarm
    swarm.dht.clock.t += 2
    for q in honest:
        q.heartbeat()
        q.announce(f"update {q.id} 5".encode())
    r = honest[0].round + 1
    first = election.ranking(honest[0].proto.beacon(r), 0, {q.id for q in honest}, tickets=honest[0].proto.tickets(r))[
        0
    ]
    leader = next(q for q in honest if q.id == first)
    reader = next(q for q in honest if q is not leader)
    least = omission.floor(reader.ledger.rosters, r, CFG.collect_timeout)
    assert least == pytest.approx(reader.ledger.rosters[r - 1].roster.time + 2.0, abs=1.0)
    built = leader.proto.builder.build(
        r, leader.digest, leader.ledger.prev_hash(r), {q.id for q in honest}, 1, beacon=leader.proto.beacon(r),
        attempt=0, floor=least,
    )  # fmt: skip
    assert built.roster.cutoff >= least
    cands = reader.proto.candidates(reader.proto.peers(), reader.digest, reader.round)
    reader.proto.seen[r] = {q.id for q in honest}
    reader.proto.opened[r] = reader.net.monotonic() - 100
    link = chain.after(reader.ledger.rosters[r - 1])
    chain.check(built.envelope, link, reader.ledger, reader.proto.rules)  # the honest one passes
    early = signed.seal(leader.key, replace(built.roster, cutoff=reader.ledger.rosters[r - 1].roster.time))
    ahead = signed.seal(leader.key, replace(built.roster, cutoff=built.roster.time + 1))
    for env, why in ((early, "before the chain's floor"), (ahead, "after its own time")):
        with pytest.raises(ProtocolError, match=why):
            reader.proto.check_roster(env, leader.id, r, reader.digest, cands)
        with pytest.raises(ProtocolError, match=why):
            chain.check(env, link, reader.ledger, reader.proto.rules)


def test_sybils_vouching_for_a_sybil_hold_half_the_jury_or_less_and_mark_no_honest_leader(monkeypatch):
    """Five honest peers and three established Sybils (8 established; a claim's jury is 6, less
    the claimant and the leader: it needs 4 seers). Z never stores its round-3 announcement; in
    round 4 X and Y list it in `seen_late` and Z claims it. Two seers: the claim counts nothing,
    the honest leader of round 3 gets no mark. Nor would a third (a third of 8, which counted
    before protocol 7); a fourth makes it count (the rule's threshold, shown on the same rosters)."""
    honest, (x, y, z) = established_crowd(5, 3)
    favour(monkeypatch, {0: set(), 1: set()})  # real ranks
    omitted = play(honest, silent=[z], announcing=[x, y])
    r = omitted.roster.round
    assert omitted.roster.leader in {q.id for q in honest}
    ghost = signed.seal(
        z.key,
        Announcement(
            run=z.swarm.run, round=r, peer=z.id, nbytes=64, sha256="1" * 64, tokens=100, base=omitted.roster.base,
            time=omitted.roster.time - 60,
        ),
    )  # fmt: skip
    for seer in (x, y):
        seer.proto.seer.late = (r, (omission.prefix(ghost),))
    z.proto.seer.left_out[r] = ghost
    carried = play(honest, announcing=[x, y, z])
    assert {a.peer for a in carried.announcements} >= {x.id, y.id, z.id}
    rosters = honest[0].ledger.rosters
    assert len(omission.base(rosters, r, K)) == 8
    assert omission.claims(rosters, K) == [] and not omission.claimed(rosters, K)
    assert not marks.omission_marked(honest[0].ledger, r + 2, K)

    def with_seers(more: list[Peer]) -> dict:
        """The same rosters, the entries of `more` (honest peers) listing the ghost too."""
        forged = dict(rosters)
        forged[r + 1] = replace(
            rosters[r + 1],
            announcements=tuple(
                replace(a, seen_late=(omission.prefix(ghost),)) if a.peer in {q.id for q in more} else a
                for a in carried.announcements
            ),
        )
        return forged

    others = [q for q in honest if q.id != omitted.roster.leader]
    assert omission.claims(with_seers(others[:1]), K) == []  # 3 of 6: half, not more
    assert [c.claimant for c in omission.claims(with_seers(others[:2]), K)] == [z.id]  # 4 of 6


def sealed(key, **fields) -> dict:
    return signed.seal(key, Announcement(**fields))


def test_a_malformed_claim_or_seen_late_is_refused_cleanly():
    """Every shape of bad `seen_late` or `claim` raises ProtocolError (from_wire, or the signed
    checks), the DHT validator refuses to store it, and a leader reading the updates key skips it."""
    honest, (mallory,) = established_crowd(3, 1)
    run, r = mallory.swarm.run, 10  # a round with CLAIM_ROUNDS + 1 rounds before it
    ann = Announcement(
        run=run, round=r, peer=mallory.id, nbytes=64, sha256="1" * 64, tokens=1, base=mallory.digest, time=0.0
    )
    wire = ann.to_wire()
    assert "seen_late" not in wire and "claim" not in wire  # absent when empty: an older peer's bytes
    good = b"\x01" * SEEN_PREFIX
    for bad in (
        "text",
        [good] * 2,
        [b"\x02" * (SEEN_PREFIX - 1)],
        [bytes([i]) * SEEN_PREFIX for i in range(MAX_SEEN_LATE + 1)],
        [[1], [2]],
        [None],
    ):
        with pytest.raises(ProtocolError):
            Announcement.from_wire({**wire, "seen_late": bad}, max_bytes=2**20)
    mine = sealed(mallory.key, **{**ann.__dict__, "round": r - 1, "claim": None})
    for bad in ([1], "x", {"kind": "heartbeat", **{k: mine[k] for k in ("body", "key", "sig")}}, {**mine, "sig": 3}):
        with pytest.raises(ProtocolError):
            Announcement.from_wire({**wire, "claim": bad}, max_bytes=2**20)
    other = honest[0]
    claims = {
        "another author's": sealed(other.key, **{**ann.__dict__, "peer": other.id, "round": r - 1}),
        "its own round": sealed(mallory.key, **ann.__dict__),
        "a later round": sealed(mallory.key, **{**ann.__dict__, "round": r + 1}),
        "too old": sealed(mallory.key, **{**ann.__dict__, "round": r - CLAIM_ROUNDS - 1}),
        "another run": sealed(mallory.key, **{**ann.__dict__, "run": "other-0123456789ab", "round": r - 1}),
        "a claim of a claim": sealed(
            mallory.key,
            **{**ann.__dict__, "round": r - 1, "claim": sealed(mallory.key, **{**ann.__dict__, "round": r - 2})},
        ),
        "a broken signature": {**mine, "sig": mine["sig"][:-1] + bytes([mine["sig"][-1] ^ 1])},
    }
    key = keys.updates_key(run, r)
    for why, claim in claims.items():
        env = signed.seal(mallory.key, replace(ann, claim=claim))
        with pytest.raises(ProtocolError):
            signed.open_record(env, Announcement, signer=mallory.id)
        assert not mallory.net.store(key, mallory.id, env, ttl=60.0), why
    fine = signed.seal(mallory.key, replace(ann, claim=mine, seen_late=(good,)))
    assert signed.open_record(fine, Announcement, signer=mallory.id).claim == mine
    assert len(fine["body"]) < signed.MAX_BODY["announcement"]
    mallory.swarm.dht.data.setdefault(key, {})[mallory.id] = (
        signed.seal(mallory.key, replace(ann, claim=claims["a broken signature"])),
        mallory.net.now() + 60,
    )  # stored by a hostile DHT node, past the validator
    assert mallory.id not in honest[0].proto.builder.announcements(r, mallory.digest)


def test_the_leader_reads_the_updates_key_again_after_fetching():
    """An announcement that lands while the leader fetches is in its roster: the second read
    finds it, and the cutoff is after that read. The leader is the round's rank 0, so the owners'
    gates serve it (protocol 18: node/round/trust/gate.py)."""
    honest, _ = established_crowd(4, 0)
    swarm = honest[0].swarm
    swarm.dht.clock.t += 2
    for q in honest:
        q.heartbeat()
    r = honest[0].round + 1
    ids = {q.id for q in honest}
    order = election.ranking(honest[0].proto.beacon(r), 0, ids, tickets=honest[0].proto.tickets(r))
    leader, latecomer = (next(q for q in honest if q.id == order[i]) for i in (0, -1))
    for q in honest:
        if q is not latecomer:
            q.announce(f"update {q.id} 3".encode())
    real = leader.proto.updates.fetch

    def fetch(*args, **kwargs):
        if latecomer.net.held_update(r, latecomer.id) is None:
            latecomer.announce(b"late")  # lands during the first fetch
        return real(*args, **kwargs)

    leader.proto.updates.fetch = fetch
    built = leader.proto.builder.build(
        r, leader.digest, leader.ledger.prev_hash(r), {q.id for q in honest}, 1, beacon=leader.proto.beacon(r),
        attempt=0,
    )  # fmt: skip
    assert {a.peer for a in built.announcements} == {q.id for q in honest}
    assert built.roster.cutoff <= built.roster.time


def test_roster_cutoff_is_left_off_the_wire_when_zero():
    plain = Roster(run="r", round=1, leader="x", prev="0" * 64, base="a" * 64, result="b" * 64, time=5.0, entries=({},))
    assert "cutoff" not in plain.to_wire()
    assert Roster.from_wire({**plain.to_wire(), "leader": "1" * 46}).cutoff == 0.0
    with pytest.raises(ProtocolError):
        Roster.from_wire({**plain.to_wire(), "leader": "1" * 46, "cutoff": float("nan")})
