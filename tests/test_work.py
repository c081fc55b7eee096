"""Step 7 of the trust design: an identity costs work (protocol/admission: work.py, rule.py).

Puzzles here are cheap (a few bits at scrypt n 2^1..2^4) and every nonce searched from a fixed
start over fixed keys, so each test is deterministic and fast. The fake network (tests/fakes.py)
runs the real round protocol, chain checks and validators."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace

import msgpack
import pytest

from node.round import checks
from node.round.ledger import AcceptedRoster, Ledger
from node.round.trust import chain
from protocol import signed, signing
from protocol.admission import rule, work
from protocol.admission.rule import DISABLED, LOOKBACK, Admission
from protocol.errors import ProtocolError
from protocol.records import Announcement, Roster
from tests.fakes import ungated
from tests.test_round_protocol import BASE0, RUN, Peer, play_round, swarm

PUZZLE = work.Puzzle(run_id=RUN, bits=3, n_log2=4, r=8, stamp_bits=3)
STOP = threading.Event()  # never set: the searches here end by finding


def admit(peers: list[Peer], *, solve: bool = True, newcomers: int = 4) -> list[Admission]:
    """Give each peer the run's admission rule (and, with `solve`, its proof)."""
    out = []
    for p in peers:
        adm = Admission(PUZZLE, newcomers=newcomers)
        p.proto.admission = p.proto.builder.admission = adm
        if solve:
            adm.proof = tuple(PUZZLE.solve(signing.public_der(p.key), STOP, first=0))
        out.append(adm)
    return out


class Counted:
    """protocol.work.scrypt, counting its calls."""

    def __init__(self):
        self.calls, self.real = 0, work.scrypt

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


@pytest.fixture
def scrypt_calls(monkeypatch) -> Counted:
    counted = Counted()
    monkeypatch.setattr(work, "scrypt", counted)
    return counted


# ------------------------------------------------------------------------------- the puzzle
def test_a_proof_admits_its_key_in_its_run_only(scrypt_calls):
    puzzle = work.Puzzle(run_id=RUN, bits=10, n_log2=1, r=1, stamp_bits=4)  # 1,024 evaluations, ~microseconds each
    a, b = b"DER of key A", b"DER of key B"
    proof = puzzle.solve(a, STOP, first=0)
    assert proof is not None and puzzle.valid(a, proof)
    assert not puzzle.valid(b, proof)  # bound to the key
    other_run = replace(puzzle, run_id="other-0123456789ab")
    assert not other_run.valid(a, proof)  # bound to the run
    assert not replace(puzzle, n_log2=2).valid(a, proof)  # and to the run's parameters
    calls = scrypt_calls.calls
    assert not puzzle.valid(a, proof._replace(nonce=proof.nonce[:7]))  # malformed: refused without an evaluation
    assert not puzzle.valid(a, proof._replace(epoch=1))  # an epoch whose seed is not built
    assert scrypt_calls.calls == calls
    stopped = threading.Event()
    stopped.set()
    assert puzzle.solve(a, stopped) is None  # Ctrl+C: the search ends within one evaluation
    assert puzzle.stamp(a, proof, stopped) is None  # and the stamp's


def test_a_stamp_is_bound_to_the_key_the_run_and_the_nonce_and_checked_before_scrypt(scrypt_calls):
    puzzle = work.Puzzle(run_id=RUN, bits=6, n_log2=1, r=1, stamp_bits=12)  # a stamp: 4,096 hashes on average
    a, b = b"DER of key A", b"DER of key B"
    proof = puzzle.solve(a, STOP, first=0)
    assert len(proof.stamp) == 8 and puzzle.stamped(a, proof) and puzzle.valid(a, proof)
    assert work.leading_zero_bits(bytes([0, 0x7F]) + bytes(30)) == 9
    assert not puzzle.stamped(b, proof)  # bound to the key
    assert not replace(puzzle, run_id="other-0123456789ab").stamped(a, proof)  # to the run (the seed)
    other = puzzle.solve(a, STOP, first=int.from_bytes(proof.nonce, "big") + 1)
    assert other.nonce != proof.nonce and not puzzle.stamped(a, other._replace(stamp=proof.stamp))  # to the nonce
    assert not puzzle.stamped(a, proof._replace(stamp=b""))  # a proof saved before stamps
    scrypt_calls.calls = 0
    for junk in (b, b"DER of key C", b"DER of key D"):  # stamps of other keys on a valid nonce
        assert not puzzle.valid(junk, proof)
    assert not puzzle.valid(a, other._replace(stamp=proof.stamp))
    assert scrypt_calls.calls == 0  # a stamp that fails costs one hash, no scrypt
    assert puzzle.valid(a, proof) and scrypt_calls.calls == 1  # a stamped proof costs its evaluation
    assert puzzle.stamp(a, proof._replace(stamp=b""), STOP) == proof  # the first counter from 0 that passes
    assert replace(puzzle, stamp_bits=0).stamped(b, proof)  # 0 bits: any 8 bytes


def test_a_leader_checks_a_failed_key_once_a_reader_judges_each_proof_alone(scrypt_calls):
    puzzle = work.Puzzle(run_id=RUN, bits=12, n_log2=1, r=1, stamp_bits=3)
    env, ann = flood_announcement(7, ())
    junk = puzzle.stamp(env["key"], work.Proof(0, (2**40).to_bytes(8, "big")), STOP)
    assert not puzzle.solved(env["key"], junk)  # a stamped junk nonce (right 1 time in 4,096)
    scrypt_calls.calls = 0
    leader = Admission(puzzle, newcomers=4)
    assert leader.admit({ann.peer: (env, replace(ann, work=tuple(junk)))}, set(), beacon="0" * 64) == set()
    assert scrypt_calls.calls == 1 and (ann.peer, 0) in leader.failed
    for i in range(1, 20):  # fresh stamped junk nonces on the same key: no check
        fresh = puzzle.stamp(env["key"], work.Proof(0, (2**40 + i).to_bytes(8, "big")), STOP)
        assert leader.admit({ann.peer: (env, replace(ann, work=tuple(fresh)))}, set(), beacon=f"{i:064x}") == set()
    assert scrypt_calls.calls == 1
    good = tuple(puzzle.solve(env["key"], STOP, first=0))
    assert leader.admit({ann.peer: (env, replace(ann, work=good))}, set(), beacon="1" * 64) == set()  # this leader
    assert leader.valid(ann.peer, env["key"], good)  # but as a reader it judges the proof, so peers never split


def test_the_announcement_carries_work_only_when_asked():
    plain = Announcement(run=RUN, round=1, peer="p" * 46, nbytes=8, sha256="1" * 64, tokens=1, base=BASE0, time=1.0)
    assert "work" not in plain.to_wire()  # a run without work keeps its bytes
    proven = Announcement(**{**plain.__dict__, "work": (0, b"\x00" * 8, b"\x01" * 8)})
    wire = proven.to_wire()
    assert wire["work"] == [0, b"\x00" * 8, b"\x01" * 8]
    assert Announcement.from_wire(wire, max_bytes=64) == proven
    nonce = b"\x00" * 8
    for bad in (
        [0, nonce],
        [0, nonce, nonce[:7]],
        [0, nonce[:7], nonce],
        [0],
        [True, nonce, nonce],
        [-1, nonce, nonce],
        "x",
    ):
        with pytest.raises(ProtocolError):
            Announcement.from_wire({**wire, "work": bad}, max_bytes=64)


# ---------------------------------------------------------------------- a flood of junk proofs
def flood_announcement(i: int, proof: tuple, round_no: int = 1) -> tuple[dict, Announcement]:
    ann = Announcement(
        run=RUN, round=round_no, peer=f"sybil{i:05d}", nbytes=8, sha256="1" * 64, tokens=1, base=BASE0, time=1.0
    )
    return {"key": b"DER of sybil %d" % i}, Announcement(**{**ann.__dict__, "work": proof})


def test_a_thousand_junk_proofs_cost_at_most_newcomers_evaluations_per_roster(scrypt_calls):
    puzzle = work.Puzzle(run_id=RUN, bits=12, n_log2=1, r=1, stamp_bits=2)  # a junk nonce passes 1 time in 4,096
    flood = {}
    for i in range(1000):  # stamped, so that each takes a check (an unstamped one takes none)
        env, ann = flood_announcement(i, ())
        flood[ann.peer] = (
            env,
            replace(ann, work=tuple(puzzle.stamp(env["key"], work.Proof(0, i.to_bytes(8, "big")), STOP))),
        )
    honest_env, honest = flood_announcement(99999, ())
    honest = Announcement(**{**honest.__dict__, "work": tuple(puzzle.solve(honest_env["key"], STOP, first=0))})
    flood[honest.peer] = (honest_env, honest)
    leader = Admission(puzzle, newcomers=4)
    rounds_to_admit = None
    for r in range(1, 400):
        scrypt_calls.calls = 0
        admitted = leader.admit(flood, set(), beacon=f"{r:064x}")
        assert scrypt_calls.calls <= 4, f"roster {r}: {scrypt_calls.calls} scrypt evaluations"
        assert admitted <= {honest.peer}, "a junk proof was admitted"
        if admitted:
            rounds_to_admit = r
            break
    assert rounds_to_admit is not None  # the honest newcomer waits its turn in the queue, then is admitted
    checked = len(leader.checked)
    scrypt_calls.calls = 0
    leader.admit(flood, set(), beacon="0" * 64)  # known failures are never evaluated again
    assert scrypt_calls.calls <= 4 and len(leader.checked) >= checked


# -------------------------------------------------------------------- rounds on the fake network
def test_six_peers_starting_together_enter_four_a_roster_and_a_joiner_verifies_the_chain():
    _, _, peers = swarm(6)
    admit(peers)
    first = play_round(peers)
    assert {len(p.accepted.announcements) for p in first.values()} == {4}  # 4 newcomers a roster
    second = play_round(peers)
    assert {len(p.accepted.announcements) for p in second.values()} == {6}  # the 2 waited one round
    rules = peers[0].proto.rules
    joiner = Admission(PUZZLE, newcomers=4)  # a fresh reader checks every new author's proof once
    envelopes = [first[peers[0].id].accepted.envelope, second[peers[0].id].accepted.envelope]
    checked = chain.verify(envelopes, chain.genesis(RUN, BASE0), Ledger(), replace(rules, admission=joiner))
    assert checked.problem == "" and len(joiner.checked) == 6


def test_a_roster_listing_an_unproven_author_is_refused_by_readers():
    _, registry, peers = swarm(4)
    admit(peers)
    for _ in range(2):
        play_round(peers)
    newcomer = Peer(peers[0].net.dht, registry)
    newcomer.digest, newcomer.round = peers[0].digest, peers[0].round
    admit([newcomer], solve=False)  # it did not solve: its announcement carries no work
    leader, reader = peers[0], peers[1]
    leader.proto.admission = leader.proto.builder.admission = DISABLED  # a leader that ignores the rule
    ungated(*peers, newcomer)  # built by hand, outside any round's turns
    for p in [*peers, newcomer]:
        p.heartbeat()
        p.announce(f"update {p.id}".encode())
    r = leader.round + 1
    built = leader.proto.builder.build(
        r, leader.digest, leader.ledger.prev_hash(r), {p.id for p in [*peers, newcomer]}, 1,
        beacon=leader.proto.beacon(r), attempt=0,
    )  # fmt: skip
    assert newcomer.id in {a.peer for a in built.announcements}
    reader.proto.seen.setdefault(r, set()).update(p.id for p in [*peers, newcomer])
    with pytest.raises(ProtocolError, match="no valid admission proof"):
        reader.proto.check_roster(built.envelope, leader.id, r, reader.digest, None)
    with pytest.raises(ProtocolError, match="no valid admission proof"):
        chain.check(built.envelope, chain.after(reader.ledger.rosters[r - 1]), reader.ledger, reader.proto.rules)


def test_a_roster_with_more_newcomers_than_allowed_is_refused():
    _, registry, peers = swarm(2)
    admit(peers)
    play_round(peers)
    crowd = [Peer(peers[0].net.dht, registry) for _ in range(5)]
    admit(crowd)  # five valid proofs: the count alone refuses the roster
    leader, reader = peers[0], peers[1]
    r = leader.round + 1
    entries = tuple(
        signed.seal(
            s.key,
            Announcement(
                run=RUN, round=r, peer=s.id, nbytes=64, sha256="1" * 64, tokens=1, base=leader.digest,
                time=leader.net.now(), work=s.proto.admission.proof,
            ),
        )
        for s in sorted(crowd, key=lambda s: s.id)
    )  # fmt: skip
    roster = Roster(
        run=RUN, round=r, leader=leader.id, prev=leader.ledger.prev_hash(r), base=leader.digest, result=BASE0,
        time=leader.net.now(), entries=entries,
        reveal=signing.sign_unique(leader.key, chain.election.reveal_message(RUN, r)), beacon=leader.proto.beacon(r),
    )  # fmt: skip
    env = signed.seal(leader.key, roster)
    with pytest.raises(ProtocolError, match="5 authors new to the chain"):
        chain.check(env, chain.after(reader.ledger.rosters[r - 1]), reader.ledger, reader.proto.rules)
    assert LOOKBACK < 64  # the ledger's window (WINDOW) always holds the rosters newness is counted on


# ------------------------------------------------------- failed proofs as a chain fact (protocol 7)
def stamped_junk(key_der: bytes) -> tuple:
    """A stamped proof whose nonce fails (a nonce that solves, 1 time in 8 here, is passed over)."""
    nonces = (work.Proof(0, n.to_bytes(8, "big")) for n in range(2**40, 2**41))
    return tuple(PUZZLE.stamp(key_der, next(x for x in nonces if not PUZZLE.solved(key_der, x)), STOP))


def test_a_leader_lists_a_failed_proof_and_no_leader_checks_the_key_again(scrypt_calls):
    _, registry, peers = swarm(4)
    admit(peers)
    play_round(peers)
    junk = Peer(peers[0].net.dht, registry)
    (adm,) = admit([junk], solve=False)
    adm.proof = stamped_junk(signing.public_der(junk.key))
    junk.digest, junk.round = peers[0].digest, peers[0].round
    played = play_round([*peers, junk])
    for p in peers:  # every reader took the listing, and checked it (one evaluation, remembered)
        roster = played[p.id].accepted.roster
        assert junk.id not in {a.peer for a in played[p.id].accepted.announcements}
        assert rule.listed_failed([roster]) == {(junk.id, 0)} and (junk.id, 0) in p.proto.admission.failed
    for p in peers:  # restarted: no memory of its own, only the chain's
        fresh = Admission(PUZZLE, newcomers=4)
        fresh.proof = p.proto.admission.proof
        p.proto.admission = p.proto.builder.admission = fresh
    scrypt_calls.calls = 0
    played = play_round([*peers, junk])
    assert scrypt_calls.calls == 0  # every leader skips the listed key: no check, and nothing new to list
    assert all(not x.accepted.roster.failed and len(x.accepted.announcements) == 4 for x in played.values())


def failing_roster(leader: Peer, reader: Peer, failed: tuple) -> dict:
    """`leader`'s signed roster of the next round, listing its own announcement and `failed`."""
    r = leader.round + 1
    mine = Announcement(
        run=RUN, round=r, peer=leader.id, nbytes=64, sha256="1" * 64, tokens=1, base=leader.digest,
        time=leader.net.now(), work=leader.proto.admission.proof,
    )  # fmt: skip
    roster = Roster(
        run=RUN, round=r, leader=leader.id, prev=leader.ledger.prev_hash(r), base=leader.digest, result=BASE0,
        time=leader.net.now(), entries=(signed.seal(leader.key, mine),),
        reveal=signing.sign_unique(leader.key, chain.election.reveal_message(RUN, r)), beacon=leader.proto.beacon(r),
        failed=failed,
    )  # fmt: skip
    reader.proto.seen.setdefault(r, set()).add(leader.id)
    return signed.seal(leader.key, roster)


def refused(leader: Peer, reader: Peer, failed: tuple, match: str) -> None:
    """Round readers and chain readers both refuse `leader`'s roster listing `failed`, with a ProtocolError."""
    env, r = failing_roster(leader, reader, failed), leader.round + 1
    with pytest.raises(ProtocolError, match=match):
        reader.proto.check_roster(env, leader.id, r, reader.digest, None)
    with pytest.raises(ProtocolError, match=match):
        chain.check(env, chain.after(reader.ledger.rosters[r - 1]), reader.ledger, reader.proto.rules)
    try:  # a better-ranked sibling of an honest roster with this listing is never swapped in either
        sibling = AcceptedRoster(env, *signed.open_roster(env, max_bytes=reader.proto.max_bytes))
    except ProtocolError:
        return  # election.better_siblings opens a sibling so too
    assert not checks._lists_valid(sibling, reader.proto.admission, reader.proto.max_bytes)


def announced_by(p: Peer, r: int, proof: tuple) -> dict:
    a = Announcement(run=RUN, round=r, peer=p.id, nbytes=64, sha256="1" * 64, tokens=1, base=p.digest, time=1.0)
    return signed.seal(p.key, replace(a, work=proof))


def test_a_roster_listing_a_valid_proof_as_failed_is_refused():
    """A hostile leader cannot keep an honest newcomer out by listing its proof as failed: every
    reader checks the listed proof (one evaluation) and refuses the roster; nor by listing a
    proof without a stamp (a failure nobody paid for), an entry, or another round's announcement."""
    _, registry, peers = swarm(2)
    admit(peers)
    play_round(peers)
    leader, reader = peers
    honest, other = Peer(peers[0].net.dht, registry), Peer(peers[0].net.dht, registry)
    admit([honest])
    r = leader.round + 1
    for p in (honest, other):
        p.digest = leader.digest
    refused(leader, reader, (announced_by(honest, r, honest.proto.admission.proof),), "valid admission proof")
    der = signing.public_der(other.key)
    junk = stamped_junk(der)
    unstamped = next(
        junk[:2] + (s,)
        for s in (n.to_bytes(8, "big") for n in range(99))
        if not PUZZLE.stamped(der, work.Proof(*junk[:2], s))
    )
    refused(leader, reader, (announced_by(other, r, unstamped),), "carries no stamp")
    refused(leader, reader, (announced_by(other, r + 1, junk),), "another run or round")
    refused(leader, reader, (announced_by(leader, r, stamped_junk(signing.public_der(leader.key))),), "as an entry")
    accepted = chain.check(
        failing_roster(leader, reader, (announced_by(other, r, junk),)), chain.after(reader.ledger.rosters[r - 1]),
        reader.ledger, replace(reader.proto.rules, collect_timeout=0.0),
    )  # fmt: skip
    assert rule.listed_failed([accepted.roster]) == {(other.id, 0)}  # a true listing passes
    assert checks._lists_valid(accepted, reader.proto.admission, reader.proto.max_bytes)


def test_a_roster_listing_more_failed_proofs_than_the_cap_or_a_malformed_listing_is_refused():
    _, registry, peers = swarm(2)
    admit(peers)
    play_round(peers)
    leader, reader = peers
    r = leader.round + 1
    crowd = [Peer(peers[0].net.dht, registry) for _ in range(rule.NEWCOMERS + 1)]
    listing = tuple(announced_by(p, r, stamped_junk(signing.public_der(p.key))) for p in crowd)
    refused(leader, reader, listing, "at most 4 signed announcement envelopes")
    envelope = listing[0]
    for bad, match in (
        ({**envelope, "body": b"\x92junk"}, "failed|announcement"),  # the shape of an envelope, not its contents
        ({**envelope, "sig": b"\0" * 256}, "signature"),
        ({**envelope, "kind": "roster"}, "signed announcement envelopes"),
    ):
        refused(leader, reader, (bad,), match)
    wire = Roster.from_wire(msgpack.unpackb(failing_roster(leader, reader, ())["body"]), max_bytes=64).to_wire()
    for bad in ("x", ["x"], [{**envelope, "body": "x"}], [envelope] * 5):  # refused as the body is read
        with pytest.raises(ProtocolError, match="failed"):
            Roster.from_wire({**wire, "failed": bad}, max_bytes=64)


def test_a_banned_identity_back_with_a_new_key_is_not_credited_before_it_solves():
    _, registry, peers = swarm(4)
    admit(peers)
    for _ in range(2):
        play_round(peers)
    back = Peer(peers[0].net.dht, registry)  # the banned peer's new identity: a fresh key, no history
    (adm,) = admit([back], solve=False)

    def play_with_back() -> set[str]:
        back.digest, back.round = peers[0].digest, peers[0].round
        back.heartbeat()
        back.announce(b"the returning peer's update")
        played = play_round(peers, owners=[back])  # it announces too: its gate follows the round (in_step)
        return {a.peer for a in played[peers[0].id].accepted.announcements}

    assert back.id not in play_with_back()  # no proof: left out, so no credit
    # a guessed proof without a stamp (takes no check: a stamped one that fails keeps the key out
    # for the epoch, by rule, and the test's cheap stamps are right one time in 8)
    der = signing.public_der(back.key)
    guesses = (work.Proof(0, b"\x00" * 8, i.to_bytes(8, "big")) for i in range(256))
    adm.proof = tuple(next(g for g in guesses if not PUZZLE.stamped(der, g)))
    assert back.id not in play_with_back()  # refused for its stamp's one hash
    adm.proof = tuple(PUZZLE.solve(signing.public_der(back.key), STOP, first=1))
    assert back.id in play_with_back()  # solved: listed, and so credited like any entry


# ------------------------------------------------------------------------ the volunteer's proof
def test_a_volunteer_solves_once_keeps_its_proof_and_stops_at_once(tmp_path, scrypt_calls):
    from types import SimpleNamespace

    from node.config import NodeConfig
    from node.peer.wiring import NodeParts
    from tests.fakes import new_key

    key, me = new_key()
    said: list[str] = []

    def node(admission: Admission) -> SimpleNamespace:
        return SimpleNamespace(
            rounds=SimpleNamespace(admission=admission),
            key=key,
            me=me,
            manifest={"organizer": "someone else"},
            cfg=NodeConfig(data_dir=str(tmp_path)),
            run_id=RUN,
            out=SimpleNamespace(say=said.append),
            ledger=Ledger(),  # no chain yet: epoch 0's seed only
        )

    stopped = threading.Event()
    stopped.set()
    assert not NodeParts.obtain_proof(node(Admission(PUZZLE)), stopped)  # Ctrl+C: no proof, no wait
    first = Admission(PUZZLE)
    assert NodeParts.obtain_proof(node(first), STOP) and PUZZLE.valid(signing.public_der(key), work.Proof(*first.proof))
    assert any("admission work" in line for line in said)
    again = Admission(PUZZLE)  # a restart: the kept proof is checked (one evaluation), not solved again
    scrypt_calls.calls = 0
    assert NodeParts.obtain_proof(node(again), stopped) and again.proof == first.proof
    assert scrypt_calls.calls == 1
    key_file = tmp_path / RUN / f"work-{hashlib.sha256(signing.public_der(key)).hexdigest()[:16]}.json"
    key_file.write_text(json.dumps({"epoch": 0, "nonce": first.proof[1].hex()}))  # saved before stamps
    said.clear()
    older = Admission(PUZZLE)
    assert NodeParts.obtain_proof(node(older), STOP) and PUZZLE.valid(signing.public_der(key), work.Proof(*older.proof))
    assert "has no stamp (saved before protocol 5): solving again" in said[0]
    assert json.loads(key_file.read_text())["stamp"] == older.proof[2].hex()  # kept with its stamp
    organizer = Admission(PUZZLE)
    assert NodeParts.obtain_proof(SimpleNamespace(**{**vars(node(organizer)), "manifest": {"organizer": me}}), STOP)
    assert organizer.proof == ()  # the organizer is exempt: it solves nothing
