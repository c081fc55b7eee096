"""A crowd against protocol 23's seal heads and evidence (docs/security.md "Same-round mixes").

1. An owner dropped its evidence (Gate.took) once any entry of a roster it took carried a head with
   the same body, whoever carried it and for whichever entry. `hiding` needs one carrier, but
   `leaks` counts each carrier only for its own entry, and only carriers holding most of the
   roster's weight void it: a crowd key listed in the leaking seal (or copying an honest owner's
   evidence word for word) carried the head in the next roster, and every honest owner left out of
   that roster stopped carrying its own: the leaked round kept its credit. Now an owner stops only
   once its own announcement carrying the head is in a roster.
2. An owner that announced round r again (its round failed and its state did not move) still held
   the seals it released its earlier update under; taking a roster of r that hid one or credited
   someone while listing the new entry asked for a Merkle path of the new entry in the old seal,
   and the ProtocolError escaped Gate.took (RoundProtocol._took): the node did not take the roster.
   Now a seal that does not list our entry is no evidence of ours.
3. Hostile evidence (non-hex, upper-case, wrong types, long paths, heads whose count disagrees) is
   refused with ProtocolError or counts nothing; Merkle paths do not pass a node or a promoted odd
   node for a leaf.
4. A leader's first seal was kept in memory only: restarted mid-round, an honest leader signed a
   second first seal, and the owners that released under the first voided its roster. Now the
   first seals are written to the run's data dir before they are presented (sealed.FirstSeals).
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import msgpack
import pytest

from node.round.trust.gate import First, Gate
from protocol import signed, signing
from protocol.errors import ProtocolError
from protocol.kinds.sealed import Seal, SealHead, evidence_fields, merkle_listed, merkle_path, merkle_root
from protocol.records import Announcement
from tests.fakes import new_key
from tests.test_round_protocol import RUN

BASE = "b" * 64


def ann(key, peer: str, round_no: int, hidden: dict | None = None, sha: str = "2" * 64) -> dict:
    a = Announcement(
        run=RUN, round=round_no, peer=peer, nbytes=9, sha256=sha, tokens=1, base="a" * 64, time=0.0, hidden=hidden
    )
    return signed.seal(key, a)


def opened(env: dict) -> Announcement:
    return signed.open_record(env, Announcement)


def a_gate(key, me: str) -> Gate:
    return Gate(RUN, me, key, clock=lambda: 0.0, now=lambda: 0.0)


@pytest.mark.parametrize("copy", [False, True])
def test_a_crowd_key_carrying_the_same_head_no_longer_stops_an_honest_owners_evidence(copy):
    """Round r: crowd rank 1 (B) sealed the honest owner H's announcement and a crowd key X's (S),
    H released first under S, and crowd rank 0's roster credited mixes while listing H outside its
    seals[0]: H holds evidence (S's head, H's path), which `leaks` counts only for H's own entry.
    Round r+1's roster lists X carrying S's head (X's own path, or H's evidence copied) but not H.
    Before: H, taking it, dropped its evidence (the head was "carried"), so no later roster held
    H as a carrier and the majority of weight that voids round r never formed."""
    (kb, b), (kh, h), (kx, x) = new_key(), new_key(), new_key()
    r = 4
    mine, theirs = ann(kh, h, r), ann(kx, x, r, sha="3" * 64)
    s = signed.seal(
        kb,
        Seal(
            run=RUN,
            round=r,
            base=BASE,
            leader=b,
            time=0.0,
            announcements=tuple(sorted(signed.body_hash(e) for e in (mine, theirs))),
        ),
    )
    gate = a_gate(kh, h)
    ours = signed.evidence(s, signed.body_hash(mine))
    gate.hidden[r] = ours  # what taking round r's roster left (Gate._evidence, sealed.leaks)
    carried = ours if copy else signed.evidence(s, signed.body_hash(theirs))
    later = [opened(ann(kx, x, r + 1, hidden=carried))]
    gate.took(SimpleNamespace(round=r + 1), later)  # we did not announce r+1 here: no evidence of r+1
    assert gate.evidence(r + 2) == ours  # before: None
    gate.took(SimpleNamespace(round=r + 2), [opened(ann(kh, h, r + 2, hidden=ours))])  # ours on the chain
    assert gate.evidence(r + 3) is None


def test_an_owner_that_announced_its_round_again_takes_a_roster_of_it():
    """H released its first announcement of round r under leader L's seal S (its receipt names S),
    the round failed, H announced r again. A roster of r that lists H's new entry and credits
    someone: before, Gate.took asked for S's path to the new entry and raised ProtocolError."""
    (kl, lead), (kh, h) = new_key(), new_key()
    r = 4
    old, new = ann(kh, h, r), ann(kh, h, r, sha="4" * 64)
    s = signed.seal(
        kl, Seal(run=RUN, round=r, base=BASE, leader=lead, time=0.0, announcements=(signed.body_hash(old),))
    )
    gate = a_gate(kh, h)
    gate.announced(r, old)
    gate.released[r] = {signed.body_hash(s): s}
    gate.first[r] = First(signed.body_hash(s), s, None)
    gate.announced(r, new)
    roster = SimpleNamespace(round=r, credit=(1,), entries=(new,), seals=(), leader=lead, run=RUN, base=BASE)
    gate.took(roster, [opened(new)])  # before: ProtocolError("evidence: the seal does not list that entry")
    assert gate.evidence(r + 1) is None


def test_hostile_evidence_is_refused_with_a_protocol_error():
    key, me = new_key()
    listed = tuple(f"{i:064x}" for i in range(1, 6))
    s = signed.seal(key, Seal(run=RUN, round=3, base=BASE, leader=me, time=0.0, announcements=listed))
    good = signed.evidence(s, listed[4])
    assert signed.open_evidence(good).entry == listed[4]
    bad = [
        None,
        [],
        {**good, "entry": "zz" * 32},
        {**good, "entry": "A" * 64},
        {**good, "entry": listed[4] + "\n"},  # a lax `$` would take it: fromhex skips the newline
        {**good, "path": [*good["path"], "0" * 64] * 3},
        {**good, "path": ["xyz"]},
        {**good, "path": "0" * 64},
        {**good, "path": [1, 2]},
        {**good, "head": {**good["head"], "body": "text"}},
        {**good, "head": {**good["head"], "kind": "seal"}},
        {**good, "head": s},  # the whole seal where its head belongs
        {**good, "head": {**good["head"], "sig": b"\0" * 256}},
    ]
    for wire in bad:
        with pytest.raises(ProtocolError):
            signed.open_evidence(wire)
    # a head whose count disagrees with its root (the leader's own word) proves what its root proves
    lying = SealHead(run=RUN, round=3, base=BASE, leader=me, time=0.0, root=merkle_root(listed), count=1)
    env = signing.sign(key, msgpack.packb(lying.to_wire(), use_bin_type=True), "sealhead")
    ev = {"head": env, "entry": listed[0], "path": list(merkle_path(listed, listed[0]))}
    assert signed.open_evidence(ev).head.count == 1  # counts nothing: no rule reads a head's count
    with pytest.raises(ProtocolError):
        evidence_fields({**good, "path": ["0" * 64] * 9})


@pytest.mark.parametrize("n", [3, 5, 7])
def test_a_promoted_odd_node_or_an_inner_node_passes_for_no_leaf(n):
    listed = tuple(f"{i:064x}" for i in range(1, n + 1))
    root = merkle_root(listed)
    last = merkle_path(listed, listed[-1])  # promoted: a shorter path
    assert merkle_listed(listed[-1], last, root)
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(d)).digest() for d in listed]
    pair = hashlib.sha256(b"\x01" + min(leaves[:2]) + max(leaves[:2])).hexdigest()
    for fake in (leaves[0].hex(), pair, root):
        assert not any(merkle_listed(fake, merkle_path(listed, d)[k:], root) for d in listed for k in range(3))


def test_a_value_with_a_final_newline_is_no_second_spelling():
    """A regex `$` matches before a final newline: "<digest>\\n" passed as a digest (fromhex skips
    the newline, so a Merkle path proved it listed), "<peer id>\\n" as a peer id, "1/2/3\\n" or
    non-ASCII digits as a task name. Protocol 24 refuses them."""
    from protocol.fields import peer_id_field, sha256_field
    from protocol.kinds.scatter import task_of

    _, me = new_key()
    assert sha256_field("a" * 64, "t") and peer_id_field(me, "t") and task_of("1/2/3") == (1, 2, 3)
    for bad in (lambda: sha256_field("a" * 64 + "\n", "t"), lambda: peer_id_field(me + "\n", "t")):
        with pytest.raises(ProtocolError):
            bad()
    for name in ("1/2/3\n", "1/\u0662/3"):
        with pytest.raises(ProtocolError):
            task_of(name)


def restarted_leader_roster(tmp_path, *, persisted: bool):
    """A round whose rank-0 leader builds once (too few updates: fetched under its first seal S0,
    published nothing), restarts (its builder's memory gone; `persisted`: its first seals read back
    from the file, as node/peer/wiring.py wires them) and leads the round; then one more round.
    Returns (S0, the roster it published, every peer's voided rounds after the next round)."""
    from node.round.trust import credit, sealed
    from tests.test_round_protocol import play_round, swarm
    from tests.test_sybil_attacks_7 import ranked

    _, _, peers = swarm(5)
    play_round(peers)
    plot = {}

    def restart(r: int) -> None:
        lead = ranked(peers, r)[0]
        path = tmp_path / lead.id[:8] / sealed.SEALS_FILE
        lead.proto.builder.sealed = sealed.FirstSeals(path, me=lead.id)
        everyone = {p.id for p in peers}
        built = lead.proto.builder.build(
            r, lead.digest, lead.ledger.prev_hash(r), everyone, 99, beacon=lead.proto.beacon(r), attempt=0
        )
        assert built is None  # the owners released under S0; nothing published
        plot["s0"] = lead.proto.builder.sealed[(r, lead.digest)]
        lead.proto.builder.sealed = sealed.FirstSeals(path if persisted else None, me=lead.id)  # the restart
        lead.proto.builder.answers.clear()
        lead.net.dht.clock.t += 1  # a restart takes time: a second first seal is another body

    roster = next(iter(play_round(peers, meanwhile=restart).values())).accepted.roster
    play_round(peers)  # the owners that released under S0 carry what they hold
    return plot["s0"], roster, [credit.voided(p.ledger.rosters) for p in peers]


def test_an_honest_leader_that_restarts_mid_round_keeps_its_first_seal(tmp_path):
    """`hides` holds an honest leader to one first seal of a round and base (node/round/lead.py
    keeps it through rebuilds), but that memory was not persisted: a leader that fetched under S0,
    restarted and led the same round and base again signed S0' (after ""), the owners that released
    under S0 carried S0's head, and every reader took the honest roster's credit as nobody's (any
    crowd key among those owners could do it; FakeNet, 5 peers: the restarted leader left the 4
    owners out, as their receipts named S0, and every peer voided the round). Now the first
    seals are written to the run's data dir before they are presented (sealed.FirstSeals) and read
    back on start: the roster's seals[0] is S0 and nothing is voided."""
    s0, roster, voided = restarted_leader_roster(tmp_path / "before", persisted=False)
    assert signed.body_hash(roster.seals[0]) != signed.body_hash(s0)
    assert all(v == {roster.round} for v in voided)  # before: framed
    s0, roster, voided = restarted_leader_roster(tmp_path / "after", persisted=True)
    assert signed.body_hash(roster.seals[0]) == signed.body_hash(s0)
    assert any(roster.credit) and all(v == set() for v in voided)


def test_a_first_seals_file_that_does_not_read_is_said_and_ignored(tmp_path, caplog):
    from node.round.trust import sealed

    key, me = new_key()
    other_key, _ = new_key()
    path = tmp_path / sealed.SEALS_FILE
    kept = sealed.FirstSeals(path, me=me)
    env = signed.seal(key, Seal(run=RUN, round=3, base=BASE, leader=me, time=1.0, announcements=()))
    kept[(3, BASE)] = env
    assert sealed.FirstSeals(path, me=me) == {(3, BASE): env}  # read back
    forged = signed.seal(other_key, Seal(run=RUN, round=3, base=BASE, leader=me, time=1.0, announcements=()))
    for junk in (b"not msgpack", msgpack.packb([[3, BASE, forged]], use_bin_type=True), msgpack.packb({"a": 1})):
        path.write_bytes(junk)
        assert sealed.FirstSeals(path, me=me) == {}
    assert "starting without them" in caplog.text


def test_a_window_of_carried_evidence_is_checked_once_not_on_every_reading(monkeypatch):
    """`voided` (credit.weights, established: several times a round) opened every carried evidence
    of the window twice (hiding, leak_carriers); a signature is remembered 8,192 envelopes deep
    (protocol/signed.py, 4,096 in signing.py), so a crowd of ~130 keys carrying a fresh self-signed
    head every round overflows a 64-round window and every reading re-checks every one (85 us
    each here: 750 keys, 48,000 heads, ~8 s a reading, estimated). Played with the memories cut to 64: 200
    carried heads, 400 RSA checks every reading before; now 200 the first (one opening for both
    rules) and 0 after: the opened evidence is kept per roster (sealed.carried)."""
    from node.round.trust import credit

    monkeypatch.setattr(signed, "OPENED_ENTRIES", 64)
    monkeypatch.setattr(signed, "REFUSED_ENTRIES", 64)
    monkeypatch.setattr(signing, "CACHE_ENTRIES", 64)
    key, me = new_key()
    rosters = {}
    for q in range(2, 10):  # 8 rosters of 25 carriers, each head fresh (of the round before)
        anns = []
        for i in range(25):
            d = f"{q * 100 + i + 1:064x}"
            s = signed.seal(key, Seal(run=RUN, round=q - 1, base=BASE, leader=me, time=float(i), announcements=(d,)))
            anns.append(opened(ann(key, me, q, hidden=signed.evidence(s, d))))
        unsealed = SimpleNamespace(credit=(), seals=(), entries=())  # hides, leaks: nothing (no seals[0])
        rosters[q] = SimpleNamespace(roster=unsealed, announcements=tuple(anns))
    checks = []
    real = signing._check_signature
    monkeypatch.setattr(signing, "_check_signature", lambda *a: checks.append(1) or real(*a))
    assert credit.voided(rosters) == set()
    first = len(checks)
    assert credit.voided(rosters) == set()
    print(f"RSA checks: first reading {first}, second {len(checks) - first}")
    assert len(checks) - first == 0  # before: 400
