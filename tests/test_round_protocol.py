"""Round protocol v2 against an in-memory DHT and transport: honest rounds, and each attack of
issue 8 as a fast unit test (tests/fakes.py; the real RunValidator guards the fake DHT)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from typing import NamedTuple

import pytest

from node.config import SwarmConfig
from node.p2p.validators import RunValidator
from node.round import election
from node.round.hooks import Hooks, NonFinite, Outcome
from node.round.ledger import AcceptedRoster, Ledger, read_file, verify
from node.round.net import read_peers
from node.round.protocol import RoundProtocol
from protocol import keys, signed, signing
from protocol.errors import ProtocolError
from protocol.records import GENESIS, Announcement, Heartbeat, Roster
from tests.fakes import FakeDHT, FakeNet, digest_of, in_step, new_key

RUN = "test-0123456789ab"
# bootstrap_peers=0: these fakes play runs whose volunteers lead from round 1 (no organizer's
# witness among them); the organizer-led young run is played in tests/test_young_run.py
CFG = SwarmConfig(
    collect_timeout=5.0,
    round_timeout=40.0,
    heartbeat_ttl=8.0,
    leader_backoff=5.0,
    established_rounds=2,
    bootstrap_peers=0,
)
BASE0 = "a" * 64


class NoSleep(threading.Event):
    def wait(self, timeout=None):  # the fake clock moves on by itself
        return self.is_set()


class Peer:
    def __init__(self, dht: FakeDHT, registry: dict, key=None, *, cfg: SwarmConfig = CFG, update_shape=None):
        self.key, self.id = key or new_key()
        self.net = FakeNet(self.id, dht, registry)
        self.ledger = Ledger()
        self.net.ledger = self.ledger  # answers `ledger` requests (node/round/trust/catchup.py)
        self.digest, self.round = BASE0, 0
        self.proto = RoundProtocol(
            self.net,
            RUN,
            cfg,
            self.key,
            self.ledger,
            Hooks(validate=lambda p: None, result=self.result),
            max_bytes=1 << 20,
            update_shape=update_shape,
        )

    def result(self, payloads, tokens):
        assert len(tokens) == len(payloads)  # the signed token counts travel with the payloads
        return Outcome(digest_of(payloads, self.digest))

    def heartbeat(self, *, round_no=None, digest=None, active=True, time=None):
        hb = Heartbeat(
            run=RUN,
            peer=self.id,
            name="p",
            round=self.round + 1 if round_no is None else round_no,
            state_round=self.round,
            digest=digest or self.digest,
            device="cpu",
            maddrs=(),
            time=self.net.now() if time is None else time,
            active=active,
            work=self.proto.admission.proof,  # what our publisher puts there: the proof we announce with
        )
        return self.net.store(keys.peers_key(RUN), self.id, signed.seal(self.key, hb), CFG.heartbeat_ttl)

    def announce(self, payload: bytes):
        r = self.round + 1
        self.proto.announce(r, self.proto.envelope(r, "dense-float16", payload), tokens=100, base=self.digest)

    def finish(self, accepted: AcceptedRoster, payloads: list[bytes]):
        assert digest_of(payloads, self.digest) == accepted.roster.result
        self.digest, self.round = accepted.roster.result, accepted.roster.round
        self.ledger.append(accepted)


def swarm(n: int, **peer_options):
    dht = FakeDHT()
    dht.validator = RunValidator(RUN, heartbeat_ttl=CFG.heartbeat_ttl, round_ttl=600.0)
    registry: dict = {}
    return dht, registry, [Peer(dht, registry, **peer_options) for _ in range(n)]


class Played(NamedTuple):
    """What one peer did in a round."""

    accepted: AcceptedRoster
    payloads: list[bytes]


def play_round(peers: list[Peer], payloads: dict | None = None, *, meanwhile=None, owners=()) -> dict[str, Played]:
    """Every peer announces, then each awaits the roster in leader-rank order; returns the accepted
    rosters. `meanwhile(r)` runs after the announcements, before anyone awaits the roster.
    `owners`: other peers that announced this round but await nothing here; in a swarm they
    follow the round as the peers do, so their gates are kept in step too (in_step)."""
    peers[0].net.dht.clock.t += 2  # time moves on: new heartbeats expire later than the last ones
    for p in peers:
        p.heartbeat()
    for p in peers:
        p.announce((payloads or {}).get(p.id, f"update {p.id} {p.round}".encode()))
    r = peers[0].round + 1
    if meanwhile is not None:
        meanwhile(r)
    # the beacon most peers rank under (a joiner knows none; a peer on a worse sibling another one)
    beacons = Counter(p.proto.beacon(r) for p in peers if p.proto.beacon(r) is not None)
    knows = next(p for p in peers if p.proto.beacon(r) == beacons.most_common(1)[0][0])
    rank = election.ranking(knows.proto.beacon(r), 0, {p.id for p in peers}, tickets=knows.proto.tickets(r))

    # those that may lead first: in a real swarm the others wait for them concurrently
    def may_lead(p: Peer) -> bool:
        return p.id in (p.proto.candidates(p.proto.peers(), p.digest, p.round) or ())

    played, now = {}, []
    for p in [*peers, *owners]:  # a swarm awaits at once: here one after another (bench/fakenet.py in_step)
        in_step(p, now)
    for p in sorted(peers, key=lambda p: (not may_lead(p), rank.index(p.id))):
        now[:] = [p]
        pid = p.id
        accepted = p.proto.await_roster(r, p.digest, p.round, NoSleep())
        assert accepted is not None, f"peer {pid[:8]} got no roster"
        played[pid] = Played(accepted, p.proto.gather(accepted))
    now.clear()  # the owners' gates are their own again
    for p in peers:
        p.finish(*played[p.id])
    return played


def test_honest_rounds_agree_and_chain_into_a_ledger():
    _, _, peers = swarm(3)
    for _ in range(3):
        played = play_round(peers)
        assert len({p.accepted.roster.result for p in played.values()}) == 1
        assert all(len(p.accepted.announcements) == 3 for p in played.values())
    assert len({p.digest for p in peers}) == 1
    accepted, problems = verify([peers[0].ledger.rosters[r].envelope for r in (1, 2, 3)])
    assert problems == [] and accepted[0].roster.prev == GENESIS
    assert peers[0].ledger.established(2) == {p.id for p in peers}


def test_dht_refuses_overwrites_far_expiries_plain_values_and_garbage():
    dht, _, (alice, mallory) = swarm(2)
    assert alice.heartbeat()
    now = dht.clock()
    hb = Heartbeat(
        run=RUN, peer=alice.id, name="x", round=9, state_round=8, digest="f" * 64, device="cpu", maddrs=(), time=now
    )
    key = keys.peers_key(RUN)
    assert not dht.store(key, alice.id, signed.seal(mallory.key, hb), now + 5)  # another peer's subkey
    assert not dht.store(key, mallory.id, signed.seal(mallory.key, hb), now + 5)  # body names alice
    mine = replace(hb, peer=mallory.id)
    assert not dht.store(key, mallory.id, signed.seal(mallory.key, mine), now + 10 * 365 * 86400)  # 10 years
    assert not dht.store(key, mallory.id, signed.seal(mallory.key, replace(mine, time=now + 3600)), now + 3600)
    assert dht.store(key, mallory.id, signed.seal(mallory.key, mine), now + CFG.heartbeat_ttl)  # its own: fine
    from hivemind.dht.routing import DHTID
    from hivemind.utils.serializer import MSGPackSerializer as S

    plain = dht.validator.check(DHTID.generate(source=key).to_bytes(), S.dumps(None), S.dumps({"x": 1}), now, now)
    assert not plain  # a plain value would hide the whole peer table
    assert not dht.store(key, mallory.id, b"garbage", now + 5)
    assert not dht.store(keys.roster_key(RUN, 1), mallory.id, {"kind": "roster", "body": b"\x80"}, now + 5)
    # a replay of alice's own old heartbeat with a far expiry cannot outlive her fresh one
    old = dht.data[key][alice.id][0]
    dht.clock.t += 100
    assert not dht.store(key, alice.id, old, dht.clock() + 3600)


def test_forged_and_sybil_rosters_are_refused():
    dht, registry, peers = swarm(3)
    for _ in range(2):
        play_round(peers)
    sybil = Peer(dht, registry)
    sybil.digest, sybil.round = peers[0].digest, peers[0].round
    sybil.heartbeat()
    dht.clock.t += 2
    for p in peers:
        p.heartbeat()
        p.announce(b"honest")
    me = peers[0]
    r, base = me.round + 1, me.digest
    anns = [signed.open_record(e, Announcement) for e in dht.get(keys.updates_key(RUN, r)).values()]
    entries = tuple(dht.get(keys.updates_key(RUN, r))[a.peer] for a in sorted(anns, key=lambda a: a.peer))
    roster = Roster(
        run=RUN,
        round=r,
        leader=sybil.id,
        prev=me.ledger.prev_hash(r),
        base=base,
        result="e" * 64,
        time=dht.clock(),
        entries=entries,
    )
    env = signed.seal(sybil.key, roster)
    # a made-up id that sorts first cannot even store a roster it did not sign...
    assert not dht.store(keys.roster_key(RUN, r), "1" * 46, env, dht.clock() + 60)
    # ...and a correctly signed roster of a peer that is not established is refused by readers
    assert dht.store(keys.roster_key(RUN, r), sybil.id, env, dht.clock() + 60)
    cands = me.proto.candidates(read_peers(dht.get, RUN, dht.clock(), 8.0), base, me.round)
    assert sybil.id not in cands
    with pytest.raises(ProtocolError, match="not an established peer"):
        me.proto.check_roster(env, sybil.id, r, base, cands)
    # a roster whose entry claims another peer's update, signed by someone else, does not open
    leader = next(
        p for p in peers if p.id == election.ranking(me.proto.beacon(r), 0, cands, tickets=me.proto.tickets(r))[0]
    )
    fake_ann = Announcement(
        run=RUN, round=r, peer=peers[1].id, nbytes=9, sha256="0" * 64, tokens=1, base=base, time=0.0
    )
    forged = {**signed.seal(sybil.key, fake_ann)}
    bad = replace(roster, leader=leader.id, entries=(forged,))
    with pytest.raises(ProtocolError):
        me.proto.check_roster(signed.seal(leader.key, bad), leader.id, r, base, cands)
    # a roster from the right leader that does not continue our ledger, or starts elsewhere
    for wrong in (replace(roster, leader=leader.id, prev="1" * 64), replace(roster, leader=leader.id, base="2" * 64)):
        with pytest.raises(ProtocolError):
            me.proto.check_roster(signed.seal(leader.key, wrong), leader.id, r, base, cands)
    # the honest round still completes, with the sybil's roster ignored
    order = election.ranking(me.proto.beacon(r), 0, cands, tickets=me.proto.tickets(r))
    results = set()
    for pid in order:
        p = next(x for x in peers if x.id == pid)
        accepted = p.proto.await_roster(r, p.digest, p.round, NoSleep())
        results.add((accepted.roster.leader, accepted.roster.result))
    assert len(results) == 1 and {leader for leader, _ in results} == {order[0]}


def test_a_fake_first_ranked_peer_cannot_stall_a_young_run():
    dht, registry, peers = swarm(3)
    silent = Peer(dht, registry)  # live, signed, never leads
    silent.heartbeat()
    for p in peers:
        p.heartbeat()
        p.announce(b"u")
    base, r = BASE0, 1
    cands = {p.id for p in peers} | {silent.id}
    order = election.ranking(peers[0].proto.beacon(r), 0, cands)
    waiting = [next(p for p in peers if p.id == pid) for pid in order if pid != silent.id]
    accepted = waiting[0].proto.await_roster(r, base, 0, NoSleep())  # leads after the backoff if it ranks behind
    assert accepted is not None and accepted.roster.leader == waiting[0].id


def test_leader_leaves_out_an_update_that_makes_the_state_non_finite():
    _, _, peers = swarm(3)
    poison = peers[2].id

    def result(payloads, tokens, base=BASE0):
        if any(b"poison" in p for p in payloads):
            raise NonFinite("inf")
        return Outcome(digest_of(payloads, base))

    for p in peers:
        p.proto.hooks.result = result
    played = play_round(peers, payloads={poison: b"poison"})
    for accepted, _ in played.values():
        assert poison not in {a.peer for a in accepted.announcements} and len(accepted.announcements) == 2
    assert peers[2].proto.left_out == 1


def test_a_peer_serving_other_bytes_than_announced_is_refused():
    _, _, peers = swarm(3)
    liar = peers[1]
    for p in peers:
        p.heartbeat()
        p.announce(b"honest" + p.id.encode())
    liar.net.serve_override[(1, liar.id)] = b"x" * 5000  # answers more bytes than it announced
    order = election.ranking(election.first_beacon(RUN), 0, {p.id for p in peers})
    leader = next(p for p in peers if p.id == order[0])
    accepted = leader.proto.await_roster(1, BASE0, 0, NoSleep())
    if leader is not liar:
        assert liar.id not in {a.peer for a in accepted.announcements}


def test_manifest_is_signed_by_its_organizer_and_hashes_to_the_run_id():
    from node.peer import manifest as manifests

    key, organizer = new_key()
    other, _ = new_key()
    run_id, env = manifests.sign(key, {"name": "demo", "protocol": 2, "model": {"d_model": 8}})
    assert signed.open_manifest(env, run_id)["organizer"] == organizer
    with pytest.raises(ProtocolError):
        signed.open_manifest(env, "demo-000000000000")  # filed under another run id
    m = signed.open_manifest(env, run_id)
    forged = signed.seal_manifest(other, {**m, "model": {"d_model": 9999}})
    with pytest.raises(ProtocolError):
        signed.open_manifest(forged, run_id)  # another model: another hash
    resigned = signed.seal_manifest(other, m)  # same content, another key: not the organizer's signature
    with pytest.raises(ProtocolError):
        signed.open_manifest(resigned, run_id)
    dht = FakeDHT(validator=RunValidator(run_id))
    assert dht.store(keys.runs_key(), run_id, env, dht.clock() + 3600)
    assert not dht.store(keys.runs_key(), run_id, resigned, dht.clock() + 3601)


def sibling_of(accepted: AcceptedRoster, peer: Peer, *, drop: int = 0) -> dict:
    """The roster `peer` would have published had it led that round at the same time (stored)."""
    r = accepted.roster
    reveal = signing.sign_unique(peer.key, election.reveal_message(RUN, r.round))
    kept = {"entries": r.entries[drop:], "credit": r.credit[drop:]}
    twin = replace(r, leader=peer.id, time=r.time + 0.5, reveal=reveal, **kept)
    env = signed.seal(peer.key, twin)
    peer.net.store(keys.roster_key(RUN, r.round), peer.id, env, 600.0)
    return env


def test_peers_that_took_sibling_rosters_converge_on_one_chain(tmp_path):
    """Two leaders led round 1 at once with the same updates: peers that took either roster must
    keep accepting each other's next rosters (once, these peers refused each other for ever).
    Each sibling's reveal seeds another next beacon, so peers converge on the better-ranked one
    (election.better_siblings), never on a worse one."""
    _, _, peers = swarm(3)
    for i, p in enumerate(peers):
        p.ledger.path = tmp_path / f"ledger{i}.jsonl"
    first = play_round(peers)[peers[0].id].accepted  # led by rank 0
    other = next(p for p in peers if p.id != first.roster.leader)
    twin_env = sibling_of(first, other)
    twin = AcceptedRoster(twin_env, *(lambda r, a: (r, tuple(a)))(*signed.open_roster(twin_env)))
    assert all(p.proto.find_sibling(1, twin.hash) is None for p in peers if p is not other)  # worse: never
    other.ledger.swap(twin)  # `other` took its own roster of round 1 (it did not see the better one in time)
    assert other.proto.find_sibling(1, first.hash) == first
    play_round(peers)
    play_round(peers)
    assert len({p.ledger.rosters[1].hash for p in peers}) == 1  # someone swapped: one chain again
    assert len({p.digest for p in peers}) == 1
    for p in peers:  # each file, swap lines included, verifies as one chain
        accepted, problems = verify([line.envelope for line in read_file(p.ledger.path)])
        assert problems == [] and [a.roster.round for a in accepted] == [1, 2, 3]


def test_a_sibling_with_other_updates_is_not_swapped_in():
    _, _, peers = swarm(3)
    first = play_round(peers)[peers[0].id].accepted
    other = next(p for p in peers if p.id != first.roster.leader)
    partial = sibling_of(first, other, drop=1)  # leaves one update out: another state in truth
    assert peers[0].proto.find_sibling(1, signed.body_hash(partial)) is None
    roster, anns = signed.open_roster(partial)
    with pytest.raises(ProtocolError, match="not a sibling"):
        peers[0].ledger.swap(AcceptedRoster(partial, roster, tuple(anns)))


def test_a_relay_that_passes_on_other_bytes_is_refused_and_the_owner_asked():
    """Upload once: members fetch each update down a relay tree; a relay's copy must match the
    owner's signed size and SHA-256, else the member asks the owner (then the leader)."""
    _, _, peers = swarm(6)
    rank3 = election.ranking(election.first_beacon(RUN), 0, {p.id for p in peers})[3]
    liar = next(p for p in peers if p.id == rank3)  # not the leader: the leader relays nothing (it holds all)
    for p in peers:
        if p is not liar:
            liar.net.serve_override[(1, p.id)] = b"y" * 64  # passes on junk for every update but its own
    played = play_round(peers)
    assert any(owner != liar.id for _, owner in liar.net.asked)  # it was asked to relay
    assert len({p.accepted.roster.result for p in played.values()}) == 1
    assert all(len(p.accepted.announcements) == 6 for p in played.values())
    assert len({p.digest for p in peers}) == 1
