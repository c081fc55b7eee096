"""Leader ranks nobody can grind, reshuffled per attempt (node/round/election.py); rosters that
cannot frame a peer they left out; announcements that cannot make anyone read more than the
run's exact update size (issue 16: steps 3, 6 and 9 of the design). Each attack runs over the
in-memory fake (tests/fakes.py), as tests/test_round_protocol.py's do."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from node.round import election
from node.round.fetch import UpdateShape, envelope_bytes
from node.round.ledger import AcceptedRoster
from node.round.protocol import RoundFailed
from protocol import keys, signed, signing
from protocol.errors import ProtocolError
from protocol.messages import UpdateEnvelope
from protocol.records import GENESIS, Announcement
from tests.fakes import in_step, new_key
from tests.test_round_protocol import BASE0, CFG, RUN, NoSleep, Peer, play_round, sibling_of, swarm

SHAPE = UpdateShape(codec="dense-float16", payload_bytes=64)


def ids(peers: list[Peer]) -> set[str]:
    return {p.id for p in peers}


def by_id(peers: list[Peer], pid: str) -> Peer:
    return next(p for p in peers if p.id == pid)


def start_round(peers: list[Peer], announcing: list[Peer] | None = None) -> None:
    """Everyone's heartbeat, and the announcements of round 1 (of `announcing`, default all)."""
    peers[0].net.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    for p in peers if announcing is None else announcing:
        p.announce(hashlib.sha256(p.id.encode()).digest() * 2)  # 64 bytes: SHAPE's payload


def reader_of(reader: Peer) -> set[str]:
    """The reader's candidates for round 1, after it saw the live peers (as await_roster does)."""
    peers = reader.proto.peers()
    reader.proto.seen[1] = set(peers)
    return reader.proto.candidates(peers, BASE0, 0)


def build(leader: Peer, eligible: set[str], *, attempt: int = 0) -> AcceptedRoster:
    beacon = election.first_beacon(RUN)
    return leader.proto.builder.build(1, BASE0, GENESIS, eligible, 1, beacon=beacon, attempt=attempt)


def resealed(leader: Peer, accepted: AcceptedRoster, **fields) -> dict:
    return signed.seal(leader.key, replace(accepted.roster, **fields))


def labelled(monkeypatch, peers: list[Peer]) -> None:
    """Rank by a stable label instead of the random key's peer id: the ranks (and so each test's
    outcome) are then fixed for the fixed RUN, as the attacker's ground ids would be."""
    labels = {p.id: f"peer-{i:02d}" for i, p in enumerate(peers)}
    real = election.rank_key
    monkeypatch.setattr(
        election,
        "rank_key",
        lambda beacon, attempt, peer, tickets=1: real(beacon, attempt, labels.get(peer, peer), tickets),
    )


# --------------------------------------------------------------------------- unique reveals
def test_a_unique_signature_is_one_value_while_a_pss_one_is_a_grind():
    key, _ = new_key()
    message = election.reveal_message(RUN, 7)
    reveal = signing.sign_unique(key, message)
    assert signing.sign_unique(key, message) == reveal  # deterministic: nothing to draw from
    assert signing.sign(key, message)["sig"] != signing.sign(key, message)["sig"]  # PSS: a fresh salt each time
    der = signing.public_der(key)
    signing.verify_unique(reveal, message, der)
    n = key.public_key().public_numbers().n
    shifted = int.from_bytes(reveal, "big") + n  # the same e-th power mod n, another byte string
    others = [signing.sign_unique(key, election.reveal_message(RUN, 8)), reveal[:-1] + bytes([reveal[-1] ^ 1])]
    if shifted < 2**2048:
        others.append(shifted.to_bytes(256, "big"))
    for other in others:
        with pytest.raises(ProtocolError):
            signing.verify_unique(other, message, der)
    with pytest.raises(ProtocolError):
        signing.verify_unique(reveal, message, signing.public_der(new_key()[0]))
    weak = rsa.RSAPublicNumbers(3, n).public_key()  # e = 3: refused by shape, before any RSA math
    before = signing.cache_info().verifications
    with pytest.raises(ProtocolError, match="exponent"):
        signing.verify_unique(reveal, message, _der(weak))
    assert signing.cache_info().verifications == before


def _der(public) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -------------------------------------------------------------------------- grinding the next
def test_a_leader_cannot_choose_who_ranks_first_next_round():
    """1,000 valid variants of one leader's roster (entry subsets, its own update's bytes) all
    give round 2 the same first rank. Under the old key, SHA-256(run|round|base|peer) with base
    = the roster's result, each variant previewed its successor and every peer was on offer."""
    dht, _, peers = swarm(4)
    start_round(peers)
    everyone = ids(peers)
    attacker = by_id(peers, election.ranking(election.first_beacon(RUN), 0, everyone)[0])
    reader = next(p for p in peers if p is not attacker)
    cands = reader_of(reader)
    others = sorted(everyone - {attacker.id})
    firsts, old_firsts = set(), set()
    for i in range(1000):
        dht.clock.t += 0.001  # a new announcement of its own update replaces the last one
        attacker.announce(f"variant {i}".encode())
        eligible = {attacker.id} | {p for j, p in enumerate(others) if i >> j & 1}
        variant = build(attacker, eligible)
        assert {a.peer for a in variant.announcements} == eligible
        reader.proto.check_roster(variant.envelope, attacker.id, 1, BASE0, cands)  # a valid roster, each one
        beacon = election.next_beacon(variant.roster.beacon, variant.roster.reveal)
        firsts.add(election.ranking(beacon, 0, everyone)[0])
        old_firsts.add(
            min(everyone, key=lambda p: hashlib.sha256(f"{RUN}|2|{variant.roster.result}|{p}".encode()).digest())
        )
    assert len(firsts) == 1
    assert old_firsts == everyone


# ------------------------------------------------------------------------ silent first ranks
def test_ten_silent_sybils_at_the_first_ranks_hold_the_round_for_one_attempt(monkeypatch):
    """Ten live, signed Sybils that never lead hold ranks 0-9 of attempt 0. Only ranks 0-2 may
    lead in an attempt, and attempt 1 reshuffles every rank: an honest roster lands in it. With
    one ranking for every try, as before, the first honest peer was rank 10, whose turn
    (collect + 10 x backoff) comes after round_timeout, and a retry met the same ranks."""
    cfg = replace(CFG, round_timeout=45.0)
    _, _, peers = swarm(15, cfg=cfg)
    labelled(monkeypatch, peers)
    beacon = election.first_beacon(RUN)
    sybils = set(election.ranking(beacon, 0, ids(peers))[:10])
    honest = [p for p in peers if p.id not in sybils]
    start_round(peers, announcing=honest)
    landing = next(a for a in itertools.count() if set(election.ranking(beacon, a, ids(peers))[:3]) - sybils)
    order = election.ranking(beacon, landing, ids(peers))
    first = next(p for p in order if p not in sybils)
    slot = election.Slot(landing, order.index(first))
    assert landing == 1 and election.turn(slot, cfg) < cfg.round_timeout
    assert cfg.collect_timeout + 10 * cfg.leader_backoff > cfg.round_timeout  # the old rule's first honest turn
    now = [by_id(peers, first)]  # a swarm awaits at once: the owners' gates follow the leader's turn
    for p in peers:
        in_step(p, now)
    accepted = by_id(peers, first).proto.await_roster(1, BASE0, 0, NoSleep())
    now.clear()
    assert accepted is not None and accepted.roster.leader == first and accepted.roster.attempt == landing
    assert {a.peer for a in accepted.announcements} == ids(honest)
    for p in honest:  # every honest peer takes that roster (after its turn on its own clock)
        assert p.proto.await_roster(1, BASE0, 0, NoSleep()).hash == accepted.hash


def test_a_retry_of_the_round_goes_on_with_the_attempts(monkeypatch):
    """A peer that gave a round up (round_timeout) and waits for it again does not start over at
    attempt 0, where the same silent ranks would hold it again."""
    cfg = replace(CFG, round_timeout=15.0)  # shorter than one attempt (collect + 3 x backoff = 20 s)
    _, _, peers = swarm(6, cfg=cfg)
    labelled(monkeypatch, peers)
    beacon = election.first_beacon(RUN)
    sybils = set(election.ranking(beacon, 0, ids(peers))[:3])
    honest = [p for p in peers if p.id not in sybils]
    start_round(peers, announcing=honest)
    first = next(p for p in election.ranking(beacon, 1, ids(peers)) if p not in sybils)
    leader = by_id(peers, first)
    results = [leader.proto.await_roster(1, BASE0, 0, NoSleep()) for _ in range(3)]
    assert results[0] is None  # attempt 0: its ranks 0-2 are silent
    accepted = next(r for r in results if r is not None)
    assert accepted.roster.leader == first and accepted.roster.attempt == 1


# ------------------------------------------------------------------ slots, beacons and reveals
def test_rosters_out_of_turn_or_off_the_beacon_chain_are_refused():
    _, _, peers = swarm(6)
    start_round(peers)
    beacon = election.first_beacon(RUN)
    reader = by_id(peers, election.ranking(beacon, 0, ids(peers))[5])
    cands = reader_of(reader)
    rank3 = by_id(peers, election.ranking(beacon, 0, ids(peers))[3])
    with pytest.raises(ProtocolError, match="ranks 3 in attempt 0"):
        reader.proto.check_roster(build(rank3, ids(peers)).envelope, rank3.id, 1, BASE0, cands)
    # a later attempt in which it ranks first: refused until that attempt comes on the reader's clock
    later = next(a for a in itertools.count(1) if election.ranking(beacon, a, ids(peers))[0] == rank3.id)
    early = build(rank3, ids(peers), attempt=later)
    with pytest.raises(ProtocolError, match="whose turn comes"):
        reader.proto.check_roster(early.envelope, rank3.id, 1, BASE0, cands)
    reader.proto.opened[1] = reader.net.monotonic() - later * election.attempt_seconds(CFG)
    assert reader.proto.check_roster(early.envelope, rank3.id, 1, BASE0, cands).slot == (later, 0)
    leader = by_id(peers, election.ranking(beacon, 0, ids(peers))[0])
    good = build(leader, ids(peers))
    assert reader.proto.check_roster(good.envelope, leader.id, 1, BASE0, cands).slot == (0, 0)
    pss = signing.sign(leader.key, election.reveal_message(RUN, 1))["sig"]
    for fields, why in [
        ({"beacon": hashlib.sha256(b"chosen").hexdigest()}, "claims beacon"),
        ({"reveal": pss}, "unique signature"),  # valid signature, but one of many: not the reveal
        ({"reveal": signing.sign_unique(leader.key, election.reveal_message(RUN, 2))}, "unique signature"),
        ({"reveal": signing.sign_unique(reader.key, election.reveal_message(RUN, 1))}, "unique signature"),
    ]:
        with pytest.raises(ProtocolError, match=why):
            reader.proto.check_roster(resealed(leader, good, **fields), leader.id, 1, BASE0, cands)


def test_a_contributor_cannot_reseed_the_beacon_with_a_sibling_roster():
    """Any contributor can publish a sibling of the round's roster (same updates and result) under
    its own name, so its own reveal. Were it swapped in, each contributor would offer another
    next beacon; only a better-ranked sibling is ever taken, and the next round chains on it."""
    _, _, peers = swarm(4)
    first = play_round(peers)[peers[0].id].accepted
    for p in peers:
        p.announce(p.id.encode())
    for c in [p for p in peers if p.id != first.roster.leader]:
        twin = signed.body_hash(sibling_of(first, c))
        assert all(p.proto.find_sibling(1, twin) is None for p in peers)
        reseeded = election.next_beacon(
            first.roster.beacon, signing.sign_unique(c.key, election.reveal_message(RUN, 1))
        )
        attempt = next(a for a in itertools.count() if election.ranking(reseeded, a, ids(peers))[0] == c.id)
        fork = c.proto.builder.build(2, c.digest, twin, ids(peers), 1, beacon=reseeded, attempt=attempt)
        reader = next(p for p in peers if p is not c)
        cands = (reader.proto.candidates(reader.proto.peers(), reader.digest, 1) or set()) | {c.id}  # may lead
        with pytest.raises(ProtocolError, match="follows roster"):
            reader.proto.check_roster(fork.envelope, c.id, 2, reader.digest, cands)
    for p in peers:
        p.proto.converge(1)
        assert p.ledger.rosters[1].hash == first.hash


# --------------------------------------------------------------------------------- framing
def test_scores_naming_a_peer_the_roster_left_out_are_refused():
    dht, _, peers = swarm(4)
    start_round(peers)
    beacon = election.first_beacon(RUN)
    leader = by_id(peers, election.ranking(beacon, 0, ids(peers))[0])
    victim = next(p for p in peers if p is not leader)
    reader = next(p for p in peers if p not in (leader, victim))
    cands = reader_of(reader)
    kept = build(leader, ids(peers) - {victim.id})
    entries = [a.peer for a in kept.announcements]
    honest = resealed(leader, kept, scores=tuple((p, -0.05) for p in entries))
    assert reader.proto.check_roster(honest, leader.id, 1, BASE0, cands)
    framed = tuple((p, -0.05) for p in entries[:-1]) + ((victim.id, 10.0),)  # a bad score: flagged, then banned
    for scores, why in [
        (framed, "not an entry"),
        (tuple(reversed(tuple((p, -0.05) for p in entries))), "entry order"),
        (tuple((p, -0.05) for p in entries[:-1]), "scores for"),
        (tuple((p, -0.05) for p in entries) + ((victim.id, 10.0),), "not an entry"),
    ]:
        env = resealed(leader, kept, scores=scores)
        with pytest.raises(ProtocolError, match=why):
            signed.open_roster(env)
        with pytest.raises(ProtocolError):
            reader.proto.check_roster(env, leader.id, 1, BASE0, cands)
        assert not dht.store(keys.roster_key(RUN, 1), leader.id, env, dht.clock() + 60)  # validators refuse it


# ------------------------------------------------------------------------------ exact sizes
@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 10**6])
def test_the_envelope_size_is_exact(n):
    _, peer = new_key()
    for r in (1, 127, 128, 255, 256, 65536, 2**33):
        shape = UpdateShape(codec="topk-2bit-i12", payload_bytes=n)
        blob = UpdateEnvelope(run=RUN, round=r, peer=peer, codec=shape.codec, payload=b"\x07" * n).encode()
        assert envelope_bytes(RUN, r, peer, shape) == len(blob)


def test_an_announcement_of_another_size_is_never_fetched():
    dht, registry, peers = swarm(4, update_shape=SHAPE)
    beacon = election.first_beacon(RUN)
    order = election.ranking(beacon, 0, ids(peers))
    leader, liar = by_id(peers, order[0]), by_id(peers, order[1])
    honest = [p for p in peers if p is not liar]
    start_round(peers, announcing=honest)
    blob = liar.proto.envelope(1, SHAPE.codec, b"\x01" * 10_000)  # 10 kB where the run's updates are 64 B
    liar.net.keep_update(1, liar.id, blob)
    ann = Announcement(
        run=RUN,
        round=1,
        peer=liar.id,
        nbytes=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        tokens=100,
        base=BASE0,
        time=dht.clock(),
    )
    assert dht.store(keys.updates_key(RUN, 1), liar.id, signed.seal(liar.key, ann), dht.clock() + 60)

    def asked_for_liar() -> int:
        return sum(ask == (1, liar.id) for net in registry.values() for ask in net.asked)

    accepted = leader.proto.await_roster(1, BASE0, 0, NoSleep())
    assert accepted is not None and {a.peer for a in accepted.announcements} == ids(honest)
    assert asked_for_liar() == 0
    # a roster that lists it anyway is refused before a byte is asked for, and cannot be gathered
    liar_env = dht.get(keys.updates_key(RUN, 1))[liar.id]
    padded = tuple(sorted((*accepted.roster.entries, liar_env), key=lambda e: signed.open_record(e, Announcement).peer))
    env = resealed(leader, accepted, entries=padded, scores=(), credit=(0,) * len(padded))  # credit is not its point
    reader = next(p for p in honest if p is not leader)
    with pytest.raises(ProtocolError, match="every update of this run is"):
        reader.proto.check_roster(env, leader.id, 1, BASE0, reader_of(reader))
    roster, anns = signed.open_roster(env)
    with pytest.raises(RoundFailed):
        reader.proto.gather(AcceptedRoster(env, roster, tuple(anns)))
    assert asked_for_liar() == 0
    with pytest.raises(ValueError, match="run's"):  # and we never announce one ourselves
        leader.proto.announce(2, leader.proto.envelope(2, SHAPE.codec, b"\x00" * 65), tokens=1, base=BASE0)


def test_a_peer_late_to_the_round_takes_the_swarms_roster_instead_of_leading_it_again():
    """Rank 0 of attempt 0 still trains when rank 1's turn comes: rank 1 leads and the others take
    its roster. On the late peer's own clock rank 1's turn has not come; it must still follow
    that roster (the others' heartbeats say they moved on), not lead the round again alone."""
    _, _, peers = swarm(4)
    order = election.ranking(election.first_beacon(RUN), 0, ids(peers))
    late = by_id(peers, order[0])
    on_time = [by_id(peers, pid) for pid in order[1:]]
    start_round(peers, announcing=on_time)  # the late peer is live, but has no update yet
    taken = [p.proto.await_roster(1, BASE0, 0, NoSleep()) for p in on_time]
    assert {a.roster.leader for a in taken} == {order[1]} and taken[0].roster.attempt == 0
    late.net.dht.clock.t += 2  # their next heartbeats
    for p, accepted in zip(on_time, taken):
        p.finish(accepted, p.proto.gather(accepted))
        assert p.heartbeat()
    late.announce(b"late")
    accepted = late.proto.await_roster(1, BASE0, 0, NoSleep())
    assert accepted.hash == taken[0].hash
    assert late.id not in late.net.get_subkeys(keys.roster_key(RUN, 1))  # it did not lead round 1 again


def test_a_newcomer_cannot_reseed_the_beacon_with_a_better_ranked_sibling(monkeypatch):
    """Siblings are ranked among the round's contributors that may lead (established ones): a
    newcomer, whose update any roster may list, ranks among them nowhere, so its sibling is never
    'better' than the leader's, however its key ranks."""
    dht, registry, peers = swarm(3)
    newcomer = Peer(dht, registry)
    real = election.rank_key  # its key outranks everyone's, in every attempt: what a newcomer grinds for
    monkeypatch.setattr(election, "rank_key", lambda b, a, p, t=1: b"" if p == newcomer.id else real(b, a, p, t))
    for _ in range(2):
        play_round(peers)  # all three are established (established_rounds = 2)
    tickets = peers[0].ledger.tickets(3, 2)  # rank keys weigh credit (protocol 16)
    leader = election.ranking(peers[0].proto.beacon(3), 0, ids(peers), tickets=tickets)[0]
    newcomer.digest, newcomer.round = peers[0].digest, peers[0].round  # it took the state and its chain
    newcomer.ledger.extend(0, [peers[0].ledger.rosters[r] for r in (1, 2)])
    played = play_round([*peers, newcomer])
    canonical = played[peers[0].id].accepted
    assert canonical.roster.leader == leader and newcomer.id in {a.peer for a in canonical.announcements}
    twin_env = sibling_of(canonical, newcomer)
    stored = dht.get(keys.roster_key(RUN, 3))
    assert [s.hash for s in election.better_siblings(canonical, stored, 1 << 20, None)] == [
        signed.body_hash(twin_env)
    ]  # ranked among every contributor, the newcomer's sibling would win
    for p in peers:
        assert p.proto.find_sibling(3, signed.body_hash(twin_env)) is None
        p.proto.converge(3)
        assert p.ledger.rosters[3].hash == canonical.hash
