"""A crowd against protocols 19-21's evidence (docs/security.md "Same-round mixes").

1. An owner's "first release" evidence is its own word: a Sybil owner listed in an honest rank 0's
   seals[0] answers the receipt request with a receipt naming a seal it signed itself (or a fellow
   crowd key signed) listing its own announcement. The key is live and established, so it was among
   the round's candidates (Gate.candidates: every key the views named), and the honest leader kept
   the Sybil and credited nobody: one Sybil voided every honest rank-0 roster that listed it. Now a
   key counts only once its turn has come on the leader's own clock (within omission.AHEAD): a
   release to it before then is no release an honest owner makes (its gate refuses such a seal).
2. Two crowd keys at ranks 0 and 1. Rank 1's turn comes on the owners' clocks while rank 0 stays
   silent; rank 1 is served, the crowd mixes, and rank 0 seals only the mixes first (the honest
   entries under a second seal naming it): the mixes were credited. Now the honest owners carry
   rank 1's seal, which their receipts name (protocol 22), and once they hold more than half of the
   roster's entries' weight on the chain every reader takes its credit as nobody's; crowd carriers
   below half void nothing.
3. `hidden` was a whole seal (up to 16 KiB of junk evidence per crowd announcement: an honest
   roster's 4 MiB DHT reply filled with ~210 crowd keys instead of ~1,170); since protocol 23 it is
   the seal's signed head and one Merkle path, under 2 KB (~750 keys).
4. A `ledger` answer (window fill, catch-up) of empty msgpack maps cost ~70x its size before any
   check; now it is decoded under bounds.
5. A padded hidden seal carried beside an omission claim of an announcement that carried it passed
   the announcement cap: every reader refused the carrier; now the claim waits a round.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from node.round import election
from node.round.trust import credit, sealed
from protocol import signed
from protocol.kinds.sealed import Receipt
from protocol.messages import ReceiptAnswer
from protocol.records import Announcement
from tests.test_round_protocol import CFG, RUN, play_round, swarm
from tests.test_sealed_rounds import ask, seal_of
from tests.test_sybil_attacks_7 import about, crowd_units, head_of, ranked

# the defaults' turns (rank 1 leads 40 s after the round opened, rank 2 50 s): the tests' CFG has
# rank 1 at 10 s, within what a rank 0 takes to collect and fetch on FakeNet's clock
SLOW = replace(CFG, collect_timeout=30.0, leader_backoff=10.0, round_timeout=160.0)


def self_sealing(sybil, helper=None):
    """`sybil` answers every receipt request with a receipt naming a seal signed by `helper` (a crowd
    key; itself when None) listing its own announcement, and that seal: 'I released it first there'."""
    real, signer = sybil.net.answer, helper or sybil

    def answer(request):
        if request.op != "receipt":
            return real(request)
        r = request.round
        own = sybil.proto.builder.announcements(r, sybil.digest)[sybil.id].envelope
        seal_env = seal_of(signer, r, [own])
        receipt = Receipt(run=RUN, round=r, owner=sybil.id, seal=signed.body_hash(seal_env), time=sybil.net.now())
        return ReceiptAnswer(receipt=signed.seal(sybil.key, receipt), seal=seal_env).encode()

    sybil.net.answer = answer


def test_a_sybil_owners_self_signed_first_release_no_longer_voids_honest_rosters():
    """5 established peers, one a Sybil that lies in every receipt answer; 8 rounds. Before: each
    roster an honest rank 0 led listed the Sybil, kept it, and credited nobody, so only the Sybil's
    own rounds credited anyone (measured: 2 of 2 and 5 of 5 honest-led rounds voided, 0 honest units
    from them). Now the Sybil's evidence counts only for a key whose turn came: it is left out
    (`unserved`) and the honest entries are credited."""
    _, _, peers = swarm(5, cfg=SLOW)
    for _ in range(2):
        play_round(peers)
    sybil = peers[-1]
    self_sealing(sybil)
    honest_led, voided, credited = 0, 0, 0
    for _ in range(8):
        played = play_round(peers)
        held = played[peers[0].id].accepted
        roster, anns = held.roster, held.announcements
        credit.check(roster, anns, set())
        if roster.leader == sybil.id:
            continue
        honest_led += 1
        voided += not any(roster.credit)
        credited += sum(u for a, u in zip(anns, roster.credit) if a.peer != sybil.id)
        assert roster.attempt == 0 and not roster.skip
    print(f"honest-led rounds {honest_led}, voided {voided}, honest units credited {credited}")
    assert honest_led >= 1
    assert voided == 0 and credited == honest_led * 4 * credit.UNITS  # before: voided == honest_led, 0 units


def test_a_fellow_crowd_keys_seal_counts_only_once_its_turn_came_on_the_leaders_clock():
    """The same lie with a fellow crowd key's seal (ranked after the honest leader): no release to
    it could have happened before its turn, so the Sybil is left out and the others credited."""
    _, _, peers = swarm(5, cfg=SLOW)
    for _ in range(2):
        play_round(peers)
    r = peers[0].round + 1
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    ranked = sorted(peers, key=lambda p: order.index(p.id))
    lead, helper, sybil = ranked[0], ranked[1], ranked[2]
    self_sealing(sybil, helper)
    held = next(iter(play_round(peers).values())).accepted
    roster, anns = held.roster, held.announcements
    assert roster.leader == lead.id and sybil.id in roster.unserved and sybil.id not in {a.peer for a in anns}
    assert roster.credit == (credit.UNITS,) * 4


def test_crowd_ranks_0_and_1_sealing_only_the_mixes_get_nothing_once_the_owners_evidence_is_on_the_chain():
    """Rank 1 (B) is served after its turn came, A and B announce mixes of the 4 honest updates, and A
    (rank 0, attempt 0; its turn stays) puts first a seal of the mixes only, the honest entries under
    a second seal naming it. The roster is valid (credit.check): both mixes credited in full, the
    honest entries 0. Before: no honest owner held evidence (its seals are B's, and A's second seal
    names A's first), so every reader kept the mixes' credit. Now each honest owner whose receipt
    names B's seal carries it (`hidden`, protocol 22: Gate.took, sealed.leaks); once the carriers,
    4 of 6 entries' weight, are on the chain, every reader takes round r's credit as nobody's."""
    _, _, peers = swarm(6)
    for _ in range(2):
        play_round(peers)
    plot = {}

    def leak(r: int) -> None:
        a, b, *honest = ranked(peers, r)
        a.net.dht.clock.t += election.turn(election.Slot(0, 1), a.proto.cfg) + 1  # B's turn, A silent
        for p in peers:
            p.heartbeat()
        envs = [h.proto.builder.announcements(r, h.digest)[h.id].envelope for h in honest]
        first = seal_of(b, r, envs)
        got = [ask(b, h, r, first) for h in honest]
        assert all(g == h.net.held_update(r, h.id) for g, h in zip(got, honest))  # B's turn came: served
        a.net.dht.clock.t += 1  # a later announcement replaces the earlier one in the DHT
        for p in (a, b):
            p.announce(b"mix " + b"|".join(got) + p.id.encode())
        mixes = [a.proto.builder.announcements(r, p.digest)[p.id].envelope for p in (a, b)]
        a.proto.builder.sealed[(r, a.digest)] = seal_of(a, r, mixes)  # A's own code: the mixes first
        plot.update(r=r, crowd=(a, b), honest=honest, first=first)

    played = play_round(peers, meanwhile=leak)
    r, (a, b), honest, first = plot["r"], plot["crowd"], plot["honest"], plot["first"]
    held = played[peers[0].id].accepted
    roster, anns = held.roster, held.announcements
    assert roster.leader == a.id and roster.attempt == 0 and not roster.skip
    credited = {x.peer: u for x, u in zip(anns, roster.credit)}
    assert credited == {a.id: credit.UNITS, b.id: credit.UNITS, **{h.id: 0 for h in honest}}
    credit.check(roster, anns, set())  # a valid roster: members take it and its credit
    assert not any(sealed.hides(roster, head_of(e)) for h in honest for e in h.proto.gate.released[r].values())
    assert all(about(h.proto.gate.evidence(r + 1), first) for h in honest)  # before: None
    leaked_units, leaked_tickets = crowd_units(peers, (a, b))  # what every reader kept before

    played = play_round(peers)  # round r+1: the honest owners' announcements carry B's seal
    carriers = [x.peer for x in played[peers[0].id].accepted.announcements if about(x.hidden, first)]
    assert set(carriers) == {h.id for h in honest}
    after_units, after_tickets = crowd_units(peers, (a, b))
    for p in peers:  # every reader, from its own ledger
        assert credit.leaked(p.ledger.rosters) == {r} and sealed.hiding(p.ledger.rosters) == set()
    assert all(h.proto.gate.evidence(r + 2) is None for h in honest)  # on the chain: carried no more
    # the figures (6 peers; rounds 1, 2 honest, r = 3 leaked, r + 1 = 4 honest work by everyone)
    print(
        f"crowd units/tickets after round r: {leaked_units} {leaked_tickets}; after r+1: {after_units} {after_tickets}"
    )
    assert leaked_units == [3 * credit.UNITS] * 2 and leaked_tickets == [3, 3]  # r's mixes credited
    raw = [
        sum(
            u
            for x in peers[0].ledger.rosters.values()
            for y, u in zip(x.announcements, credit.units_of(x))
            if y.peer == c.id
        )
        for c in (a, b)
    ]
    print(f"without the evidence (protocol 21) after r+1: {raw}")
    assert raw == [4 * credit.UNITS] * 2  # what every reader kept before
    assert after_units == [3 * credit.UNITS] * 2 and after_tickets == [3, 3]  # r's credit is nobody's
    assert [credit.weights(peers[0].ledger.rosters).units[h.id] for h in honest] == [3 * credit.UNITS] * 4


def test_crowd_carriers_holding_less_than_half_the_weight_void_no_honest_roster():
    """The framing the majority keeps out: an honest roster lists crowd keys C1, C2, and their next
    announcements carry a seal a third crowd key C3 signed of the round listing their entries. Their
    receipts in the roster name its seals[0], so the evidence contradicts them and counts nothing;
    and with those receipts gone (a roster that kept their entries outside seals[0]), 2 of 6
    entries' weight is no majority: nothing voided. 4 of 6 carriers would void it (the control)."""
    _, _, peers = swarm(6)
    for _ in range(2):
        play_round(peers)
    held = play_round(peers)[peers[0].id].accepted
    roster, r = held.roster, held.roster.round
    others = [p for p in peers if p.id != roster.leader]
    c3 = others[-1]
    assert all(credit.units_of(held))

    def framed(carriers) -> set[int]:
        entries = {x.peer: e for e, x in zip(roster.entries, held.announcements)}
        listed = [entries[c.id] for c in carriers]
        evidence = sealed.signed_seal(
            c3.key, run=RUN, round_no=r, base=roster.base, leader=c3.id, time=0.0, envelopes=listed
        )
        carried = {c.id: signed.evidence(evidence, signed.body_hash(entries[c.id])) for c in carriers}
        for c in carriers:
            assert sealed.leaks(roster, c.id, signed.body_hash(entries[c.id]), signed.open_evidence(carried[c.id]))
        later = SimpleNamespace(
            roster=SimpleNamespace(credit=()), announcements=tuple(carrier(c, r + 1, carried[c.id]) for c in carriers)
        )
        rosters = {q: x for q, x in peers[0].ledger.rosters.items() if q <= r}
        kept = {**rosters, r + 1: later}
        unreceipted = replace(held, roster=replace(roster, receipts=()))
        return credit.leaked(kept), credit.leaked({**kept, r: unreceipted})

    assert framed(others[:2]) == (set(), set())  # receipted: contradicted; unreceipted: 2 of 6, no majority
    assert framed(others[:4]) == (set(), {r})  # the control: 4 of 6 carriers' weight voids it


def carrier(p, round_no: int, hidden: dict):
    """A held entry of `p` in round `round_no` carrying `hidden` (as a roster's reader opens it)."""
    ann = Announcement(
        run=RUN, round=round_no, peer=p.id, nbytes=9, sha256="2" * 64, tokens=1, base="a" * 64, time=0.0, hidden=hidden
    )
    return signed.open_record(signed.seal(p.key, ann), Announcement, signer=p.id)


def test_evidence_about_a_seal_of_any_size_costs_an_announcement_2_kb():
    """Through protocol 22 evidence (`hidden`) was a whole seal, checked for its signature, run and
    round only: a crowd key could carry, every round, a seal it signed itself listing MAX_SEALED
    junk digests (15.8 KB). The honest leaders' rosters, which must list the crowd's announcements
    (omission claims), then reached hivemind's 4 MiB DHT reply (what a reader gets of a roster key)
    with ~210 such keys in a round instead of ~1,170 announcements at the old 3 KiB cap. Since
    protocol 23 a seal's signature covers its head (the announcements' Merkle root), and evidence is
    that head and one entry's path: under 2 KB whatever the seal lists, so the announcement cap is
    3 KiB + 2 KiB and ~750 keys fill a reply."""
    from protocol.kinds.sealed import MAX_SEALED, SEAL_BODY, Seal
    from tests.fakes import new_key

    key, me = new_key()
    digests = tuple(f"{i:064x}" for i in range(MAX_SEALED))
    junk = Seal(run=RUN, round=4, base="b" * 64, leader=me, time=0.0, announcements=digests)
    evidence = signed.evidence(signed.seal(key, junk), digests[100])
    padded = Announcement(run=RUN, round=5, peer=me, nbytes=9, sha256="2" * 64, tokens=1, base="a" * 64, time=0.0)
    plain = signed.seal(key, padded)
    heavy = signed.seal(key, replace(padded, hidden=evidence))
    assert signed.open_record(heavy, Announcement, signer=me).hidden == evidence  # valid: taken by every reader
    cap = signed.MAX_BODY["announcement"]
    fits, before, old = (4 * 2**20 // (n + 512) for n in (cap, 3 * 1024 + SEAL_BODY, 3 * 1024))  # + a receipt
    print(f"plain {len(plain['body'])} B, with evidence {len(heavy['body'])} B (cap {cap}); 4 MiB: {fits} entries")
    print(f"through protocol 22: {before} entries; at the 3 KiB cap before evidence: {old}")
    assert len(heavy["body"]) - len(plain["body"]) < 2048 and cap <= 3 * 1024 + 2048
    assert before < 230 and 740 < fits and old > 1_100


def test_a_junk_ledger_answer_is_refused_before_it_costs_70x_its_size():
    """A window-fill (or catch-up) donor answers `ledger` with max_bytes (256 MiB by default) of
    msgpack: a list of empty maps, one byte each. Unbounded, each became a Python dict (~70x the
    answer: 256 MiB asked for ~18 GB before any check, in the fill's thread: the node is killed).
    Now the answer is read under bounds (reader.decode_rosters) and refused at once."""
    import tracemalloc

    import msgpack
    import pytest

    from node.round.trust.reader import decode_rosters
    from protocol.errors import ProtocolError

    n = 2**20
    bomb = b"\xdd" + n.to_bytes(4, "big") + b"\x80" * n  # 1 MiB: an array of 2^20 empty maps
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode_rosters(bomb)
        nested = msgpack.packb([{"body": [{}] * (n // 8)}])  # maps inside an envelope
        with pytest.raises(ProtocolError):
            decode_rosters(nested)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    unbounded = len(msgpack.unpackb(bomb)) * 64  # what each empty dict costs at least, as before
    print(f"1 MiB junk answer: peak {peak / 2**20:.1f} MiB read now; before >= {unbounded / 2**20:.0f} MiB")
    assert peak < 8 * 2**20 < unbounded
    envs = [{"body": b"x" * 300, "key": b"k" * 294, "sig": b"s" * 256, "kind": "roster"}] * 3
    assert decode_rosters(msgpack.packb(envs, use_bin_type=True)) == envs  # honest answers read as before


def test_an_owner_carrying_padded_evidence_and_a_claim_still_announces_a_valid_update(monkeypatch):
    """A crowd rank 0 that hides pads its hidden seal to MAX_SEALED digests (15.8 KB); an owner that
    released under it carries evidence about it (`hidden`), and a leader leaves that announcement out
    (the crowd omits the carriers, or any roster that does not list it): the owner's next
    announcement carries an omission claim of it and the evidence again. Through protocol 22 that
    was 32 KB, over the announcement cap (19 KB): every reader refused it, so the owner's update was
    out of every round while both were carried (up to CLAIM_ROUNDS - 1 = 3 rounds) and the evidence
    never landed; protocol 22's fix made the claim wait a round when both do not fit. Since protocol
    23 evidence is the seal's head and one Merkle path (~2 KB whatever the seal lists): both fit
    (4 KB against a 5 KB cap). The wait stays for what still could not fit (a cap lowered here)."""
    from protocol.kinds.sealed import MAX_SEALED, Seal

    _, _, peers = swarm(4)
    for _ in range(3):
        play_round(peers)
    owner, crowd = peers[0], peers[1]
    r = owner.round + 1
    digests = tuple(f"{i:064x}" for i in range(MAX_SEALED))

    def padded(q: int) -> dict:
        s = Seal(run=RUN, round=q, base=crowd.digest, leader=crowd.id, time=0.0, announcements=digests)
        return signed.seal(crowd.key, s)

    left = Announcement(
        run=RUN, round=r - 1, peer=owner.id, nbytes=9, sha256="2" * 64, tokens=1, base="a" * 64, time=0.0,
        hidden=(evidence := signed.evidence(padded(r - 2), digests[0])),
    )  # fmt: skip
    owner.proto.seer.left_out[r - 1] = signed.seal(owner.key, left)  # the crowd left that one out
    owner.proto.gate.hidden[r - 2] = evidence  # and its evidence is still to be carried
    peers[0].net.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    owner.announce(b"work of the owner")
    held = owner.proto.builder.announcements(r, owner.digest)  # opened as every leader and reader opens it
    assert owner.id in held, "the owner's announcement is refused by every reader"
    ann = held[owner.id].announcement
    body = len(held[owner.id].envelope["body"])
    print(f"claim and evidence: {body} B (cap {signed.MAX_BODY['announcement']})")
    assert body < 4500 and ann.hidden == evidence and ann.claim is not None  # both at once
    monkeypatch.setitem(signed.MAX_BODY, "announcement", body - 1)  # what would not fit together
    owner.net.dht.clock.t += 1  # a later announcement replaces the earlier one in the DHT
    owner.announce(b"more work of the owner")
    ann = owner.proto.builder.announcements(r, owner.digest)[owner.id].announcement
    assert ann.hidden == evidence and ann.claim is None  # the evidence now, the claim next round
