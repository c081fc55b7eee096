"""A crowd against protocols 19-21's evidence (docs/security.md "Same-round mixes").

1. An owner's "first release" evidence is its own word: a Sybil owner listed in an honest rank 0's
   seals[0] answers the receipt request with a receipt naming a seal it signed itself (or a fellow
   crowd key signed) listing its own announcement. The key is live and established, so it was among
   the round's candidates (Gate.candidates: every key the views named), and the honest leader kept
   the Sybil and credited nobody: one Sybil voided every honest rank-0 roster that listed it. Now a
   key counts only once its turn has come on the leader's own clock (within omission.AHEAD): a
   release to it before then is no release an honest owner makes (its gate refuses such a seal).
2. Open: two crowd keys at ranks 0 and 1. Rank 1's turn comes on the owners' clocks while rank 0
   stays silent; rank 1 is served, the crowd mixes, and rank 0 seals only the mixes first (the honest
   entries under a second seal naming it). No honest owner is asked for a receipt under seals[0] and
   no seal of rank 0 hides: the mixes are credited.
3. Open: `hidden` is checked for signature, run and round only: 16 KiB of junk evidence per crowd
   announcement fills an honest roster's 4 MiB DHT reply with ~250 crowd keys instead of ~1,170.
4. A `ledger` answer (window fill, catch-up) of empty msgpack maps cost ~70x its size before any
   check; now it is decoded under bounds.
5. A padded hidden seal carried beside an omission claim of an announcement that carried it passed
   the announcement cap: every reader refused the carrier; now the claim waits a round.
"""

from __future__ import annotations

from dataclasses import replace

from node.round import election
from node.round.trust import credit, sealed
from protocol import signed
from protocol.kinds.sealed import Receipt
from protocol.messages import ReceiptAnswer
from tests.test_round_protocol import CFG, RUN, NoSleep, play_round, swarm
from tests.test_sealed_rounds import ask, crowd_at_ranks_0_and_1, seal_of

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


def test_open_crowd_ranks_0_and_1_get_their_mixes_credited_when_rank_0_seals_only_the_mixes():
    """Rank 1 (B) is served after its turn came, A and B announce mixes of the 4 honest updates, and A
    (rank 0, attempt 0; its turn stays) puts first a seal of the mixes only. Today: both mixes are
    credited in full, the honest entries 0, no honest owner holds evidence (its seals are B's, and
    A's second seal names A's first), and members take the roster (credit.check)."""
    peers, r, a, b, honest = crowd_at_ranks_0_and_1()
    a.net.dht.clock.t += election.turn(election.Slot(0, 1), a.proto.cfg) + 1
    for p in peers:
        p.heartbeat()
    envs = [h.proto.builder.announcements(r, h.digest)[h.id].envelope for h in honest]
    first = seal_of(b, r, envs)
    leaked = [ask(b, h, r, first) for h in honest]
    assert all(got == h.net.held_update(r, h.id) for got, h in zip(leaked, honest))
    a.net.dht.clock.t += 1
    for p in (a, b):
        p.announce(b"mix " + b"|".join(leaked) + p.id.encode())
    mixes = [a.proto.builder.announcements(r, p.digest)[p.id].envelope for p in (a, b)]
    a.proto.builder.sealed[(r, a.digest)] = seal_of(a, r, mixes)  # A's own code: the mixes first
    accepted = a.proto.await_roster(r, a.digest, a.round, NoSleep())
    roster, anns = accepted.roster, list(accepted.announcements)
    assert roster.leader == a.id and roster.attempt == 0 and not roster.skip
    credited = {x.peer: u for x, u in zip(anns, roster.credit)}
    assert credited == {a.id: credit.UNITS, b.id: credit.UNITS, **{h.id: 0 for h in honest}}
    credit.check(roster, anns, set())
    for h in honest:
        h.proto.gate.took(roster, anns)
        assert h.proto.gate.evidence(r + 1) is None
        assert not any(sealed.hides(roster, e) for e in h.proto.gate.released[r].values())


def test_open_every_crowd_announcement_may_carry_16_kib_of_valid_evidence():
    """`hidden` is checked for its signature, run and round only (protocol/signed.py): a crowd key
    may carry, every round, a seal it signed itself listing MAX_SEALED junk digests (15.8 KB; the
    body's other 3 KiB can be padded too). Each such entry is ~4.5x a plain announcement padded to
    the old 3 KiB cap, so the honest leaders' rosters, which must list the crowd's announcements
    (omission claims), reach hivemind's 4 MiB DHT reply (what a reader gets of a roster key) with
    ~250 such keys in a round instead of ~1,170. Today: taken."""
    from protocol.kinds.sealed import MAX_SEALED, Seal
    from protocol.records import Announcement
    from tests.fakes import new_key

    key, me = new_key()
    junk = Seal(
        run=RUN,
        round=4,
        base="b" * 64,
        leader=me,
        time=0.0,
        announcements=tuple(f"{i:064x}" for i in range(MAX_SEALED)),
    )
    padded = Announcement(run=RUN, round=5, peer=me, nbytes=9, sha256="2" * 64, tokens=1, base="a" * 64, time=0.0)
    plain = signed.seal(key, padded)
    heavy = signed.seal(key, replace(padded, hidden=signed.seal(key, junk)))
    assert signed.open_record(heavy, Announcement, signer=me).hidden is not None  # valid: taken by every reader
    per_entry = len(heavy["body"]) + len(heavy["sig"]) + 512  # its receipt (when sealed first)
    old_cap = 3 * 1024 + 512
    fits, before = 4 * 2**20 // per_entry, 4 * 2**20 // old_cap
    print(f"plain {len(plain['body'])} B, with evidence {len(heavy['body'])} B; 4 MiB: {fits} entries, {before} before")
    assert len(heavy["body"]) > 15_000 and 4 * 2**20 // per_entry < 260 < 1_100 < 4 * 2**20 // old_cap


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


def test_an_owner_carrying_padded_evidence_and_a_claim_still_announces_a_valid_update():
    """A crowd rank 0 that hides pads its hidden seal to MAX_SEALED digests (15.8 KB); an owner that
    released under it carries it (`hidden`), and a leader leaves that announcement out (the crowd
    omits the carriers, or any roster that does not list it): the owner's next announcement carries
    an omission claim of it (16 KB) and the evidence again. Before: 32 KB, over the announcement cap
    (19 KB): every reader refused it, so the owner's update was out of every round while both were
    carried (up to CLAIM_ROUNDS - 1 = 3 rounds) and the evidence never landed. Now the claim waits a
    round when both do not fit (it stays pending): the update and the evidence are taken."""
    from protocol.kinds.sealed import MAX_SEALED, Seal
    from protocol.records import Announcement

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
        hidden=(evidence := padded(r - 2)),
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
    assert ann.hidden == evidence and ann.claim is None  # the evidence now, the claim next round
    assert r - 1 in owner.proto.seer.left_out  # still pending
