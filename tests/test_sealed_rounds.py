"""Sealed rounds (protocol 18, docs/protocol.md "Sealed rounds"; issue 16): the owner gate refuses a
round's payloads to anyone but a sealing leader whose turn has come until the round has a roster,
and only sealed, receipted entries of a rank-0 attempt-0 roster earn credit."""

from __future__ import annotations

from dataclasses import replace

import pytest

from node.round import election
from node.round.trust import credit, sealed
from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.sealed import Receipt, Seal
from protocol.messages import ReceiptAnswer, Request
from protocol.records import Announcement
from tests.fakes import in_step
from tests.test_round_protocol import RUN, NoSleep, play_round, swarm


def announced(peers) -> tuple[int, str, list]:
    """Every peer beats and announces round r; (r, the rank-0 leader's id, the peers in rank order)."""
    peers[0].net.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    for p in peers:
        p.announce(f"update {p.id} {p.round}".encode())
    r = peers[0].round + 1
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    return r, order[0], sorted(peers, key=lambda p: order.index(p.id))


def seal_of(p, r: int, envs: list[dict]) -> dict:
    return sealed.signed_seal(p.key, run=RUN, round_no=r, base=p.digest, leader=p.id, time=p.net.now(), envelopes=envs)


def ask(requester, owner, r: int, seal: dict | None, released: str = "", of=None) -> bytes | Exception:
    request = Request(op="update", run=RUN, round=r, peer=(of or owner).id, seal=seal, released=released)
    return requester.net.fetch_many([(owner.id, request, None)], timeout=5.0)[0]


def test_honest_rounds_seal_receipt_and_credit_every_entry():
    """The leader path on FakeNet: one seal, a receipt of each entry's owner (its own included),
    every entry credited, and every member gathered the updates (from owners, relays, the leader)."""
    _, _, peers = swarm(4)
    for _ in range(3):
        played = play_round(peers)
        accepted = next(iter(played.values())).accepted
        roster, anns = accepted.roster, accepted.announcements
        assert len(roster.seals) == 1 and len(roster.receipts) == 4 == len(anns)
        assert roster.credit == (credit.UNITS,) * 4 and sealed.creditable(roster, anns) == [True] * 4
        credit.check(roster, anns, set())  # what every chain reader checks
    assert peers[0].ledger.established(2) == {p.id for p in peers}


def test_the_gate_refuses_every_request_but_a_sealing_leader_whose_turn_came():
    """Before the round has a roster: no seal, someone else's seal, a seal not listing the update,
    or a requester whose turn has not come: refused ("sealed: ..."); the rank-0 leader with its
    seal: served; a member presenting that seal afterwards: served; after the roster: anyone."""
    _, _, peers = swarm(5)
    play_round(peers)
    r, _, ranked = announced(peers)
    leader, late, owner, other = ranked[0], ranked[-1], ranked[1], ranked[2]
    envs = {p.id: s.envelope for p, s in ((p, leader.proto.builder.announcements(r, p.digest)[p.id]) for p in peers)}
    mine = seal_of(leader, r, list(envs.values()))
    for requester, seal, why in (
        (late, None, "presents no seal"),
        (late, mine, "not the requester's"),
        (late, seal_of(late, r, [envs[other.id]]), "does not list the update"),
        (late, seal_of(late, r, list(envs.values())), "turn to lead has not come"),
    ):
        got = ask(requester, owner, r, seal)
        assert isinstance(got, ProtocolError) and "sealed" in str(got) and why in str(got), (why, got)
    assert isinstance(ask(leader, other, r, None), ProtocolError)  # the leader too needs its seal
    assert ask(leader, owner, r, mine) == owner.net.held_update(r, owner.id)
    assert ask(late, owner, r, mine) == owner.net.held_update(r, owner.id)  # released under that seal
    # a member after the roster names the seal by its body hash (the roster holds it): served; a
    # hash we released under no seal of, or a copy we hold of another's update, is not
    assert ask(late, owner, r, None, signed.body_hash(mine)) == owner.net.held_update(r, owner.id)
    assert "no seal of that hash" in str(ask(late, owner, r, None, "ab" * 32))
    owner.net.keep_update(r, other.id, other.net.held_update(r, other.id))
    assert "sealed" in str(ask(late, owner, r, None, signed.body_hash(mine), of=other))
    assert owner.proto.gate.refused >= 4
    got, _ = owner.proto.gate.receipt(r, mine)
    receipt = signed.open_record(got, Receipt, signer=owner.id)
    assert receipt.seal == signed.body_hash(mine) and receipt.round == r
    # a second seal of the same leader (its set plus others) gets the update but no receipt
    again = seal_of(leader, r, [envs[owner.id]])
    assert ask(leader, owner, r, again) == owner.net.held_update(r, owner.id)
    assert owner.proto.gate.receipt(r, again)[0] is None
    shown = ReceiptAnswer.decode(owner.proto.gate.answer(r, again)[0])  # protocol 19: its receipt and first seal
    assert shown.seal == mine and signed.open_record(shown.receipt, Receipt).seal == signed.body_hash(mine)
    assert owner.proto.gate.answer(r, seal_of(late, r, list(envs.values())))[0] is None  # never released under it
    owner.proto.gate.opened(r)
    assert ask(late, owner, r, None) == owner.net.held_update(r, owner.id)  # after the roster: anyone


def sealed_round():
    _, _, peers = swarm(4)
    played = play_round(peers)
    return peers, next(iter(played.values())).accepted


def test_a_crowd_leaders_roster_whose_seal_is_not_the_one_owners_receipted_credits_nobody():
    """A leader that fetched under seal v1 and publishes seals[0] = v1 plus its crowd's mixes: the
    honest receipts name v1, so nobody may be credited and readers refuse any credit; publishing v1
    itself, the mixes (outside seals[0]) earn nothing."""
    peers, accepted = sealed_round()
    roster, anns = accepted.roster, list(accepted.announcements)
    leader = next(p for p in peers if p.id == roster.leader)
    mix = signed.seal(
        leader.key,
        Announcement(
            run=RUN, round=roster.round, peer=leader.id, nbytes=9, sha256="2" * 64, tokens=100, base=roster.base,
            time=0.0,
        ),
    )  # fmt: skip
    v1 = signed.open_record(roster.seals[0], Seal)
    widened = signed.seal(
        leader.key, replace(v1, announcements=tuple(sorted({*v1.announcements, signed.body_hash(mix)})))
    )
    forged = replace(roster, seals=(widened,))
    assert sealed.creditable(forged, anns) == [False] * len(anns)
    with pytest.raises(ProtocolError, match="protocol 18"):
        credit.check(forged, anns, set())
    credit.check(replace(forged, credit=(0,) * len(anns)), anns, set())  # crediting nobody is taken
    later = replace(v1, announcements=(signed.body_hash(mix),), after=signed.body_hash(roster.seals[0]))
    second = replace(roster, seals=(roster.seals[0], signed.seal(leader.key, later)))
    assert sealed.creditable(second, anns) == [True] * len(anns)  # an entry outside seals[0] would earn 0
    unnamed = replace(roster, seals=(roster.seals[0], signed.seal(leader.key, replace(later, after=""))))
    assert sealed.creditable(unnamed, anns) == [False] * len(anns)  # a second seal must name seals[0] (protocol 21)


def test_a_roster_of_a_later_rank_or_attempt_credits_nobody():
    """A crowd candidate served then silent leaked the round: the next rank's roster (skip marks
    it) or a later attempt's credits nobody; readers refuse any credit there."""
    peers, accepted = sealed_round()
    roster, anns = accepted.roster, list(accepted.announcements)
    for later in (replace(roster, skip=(peers[0].id,)), replace(roster, attempt=1)):
        assert sealed.creditable(later, anns) == [False] * len(anns)
        with pytest.raises(ProtocolError, match="not sealed and receipted"):
            credit.check(later, anns, set())


def test_a_leader_building_for_a_later_rank_writes_no_credit():
    _, _, peers = swarm(4)
    play_round(peers)
    r, _, ranked = announced(peers)
    leader = ranked[0]
    built = leader.proto.builder.build(
        r, leader.digest, leader.ledger.prev_hash(r), {p.id for p in peers}, 1, beacon=leader.proto.beacon(r),
        attempt=0, skip=(ranked[-1].id,),
    )  # fmt: skip
    assert built is not None and not any(built.roster.credit) and built.roster.seals


def test_a_leader_whose_turn_came_is_served_into_the_next_attempt():
    """A rank-1 leader whose turn came late in attempt 0 fetches into attempt 1, where it ranks
    after the attempt's fresh candidates: the gate still serves it, as readers take its roster
    (election.check_turn). Before, owners refused it there and it listed them unserved."""
    from node.round.trust.gate import LeadView
    from tests.test_round_protocol import CFG

    turns = frozenset(f"Qm{c}" for c in "abcdef")
    beacon = "0" * 64
    second = election.ranking(beacon, 0, set(turns))[1]
    view = LeadView(1, beacon, turns, frozenset(), {}, 0.0, CFG)
    came = election.turn(election.Slot(0, 1), CFG)
    assert not view.may_lead(second, came - 1) and view.may_lead(second, came)
    later = election.attempt_seconds(CFG) + 1  # attempt 1: its slot there has not come
    assert not election.may_lead(election.slot_of(beacon, 1, set(turns), second), later, CFG)
    assert view.may_lead(second, later) and not view.may_lead("Qmzz", later)


def test_a_receipt_lost_once_is_asked_again():
    """One owner's first receipt answer is lost: the leader asks it once more, and the round is
    credited (without the second ask the whole roster would credit nobody)."""
    _, _, peers = swarm(4)
    play_round(peers)
    lost = []
    for p in peers:
        real = p.net.answer

        def answer(request, real=real, p=p):
            if request.op == "receipt" and p.id not in lost:
                lost.append(p.id)
                return None  # the answer never came
            return real(request)

        p.net.answer = answer
    accepted = next(iter(play_round(peers).values())).accepted
    assert len(lost) == 3 and len(accepted.roster.receipts) == 4  # the leader signs its own
    assert accepted.roster.credit == (credit.UNITS,) * 4


def left_out_alone(peers, leader: str, owner) -> None:
    """Play a round: `leader` leads it at rank 0 of attempt 0, lists `owner` as unserved, and
    credits the 3 other entries in full (what every chain reader checks)."""
    accepted = next(iter(play_round(peers).values())).accepted
    roster, anns = accepted.roster, accepted.announcements
    assert roster.leader == leader and roster.attempt == 0 and not roster.skip
    assert owner.id not in {a.peer for a in anns} and owner.id in roster.unserved
    assert len(anns) == 3 and roster.credit == (credit.UNITS,) * 3
    credit.check(roster, anns, set())


def test_an_owner_that_serves_but_withholds_its_receipt_costs_only_its_own_entry():
    """Receipt griefing: an owner the leader sealed serves its update and never answers for its
    receipt. One sealed entry without a receipt makes a roster credit nobody (sealed.creditable),
    so the leader asks for receipts right after the seals[0] fetch and leaves out (as `unserved`)
    whoever gave none: the other entries are credited, the griefer is not listed."""
    _, _, peers = swarm(4)
    play_round(peers)
    r = peers[0].round + 1
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    griefer = next(p for p in peers if p.id == order[1])  # served by rank 0, which leads
    real = griefer.net.answer
    griefer.net.answer = lambda request: None if request.op == "receipt" else real(request)
    left_out_alone(peers, order[0], griefer)


def crowd_at_ranks_0_and_1():
    """Six established peers; round r's heartbeats are in and ranks 0 and 1 (A, B) are the crowd's,
    the other four honest owners announce. (peers, r, A, B, honest)"""
    _, _, peers = swarm(6)
    for _ in range(2):
        play_round(peers)
    peers[0].net.dht.clock.t += 2
    for p in peers:
        p.heartbeat()
    r = peers[0].round + 1
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    ranked = sorted(peers, key=lambda p: order.index(p.id))
    a, b, honest = ranked[0], ranked[1], ranked[2:]
    for p in honest:
        p.announce(f"update {p.id} {p.round}".encode())
    return peers, r, a, b, honest


def test_a_round_leaked_to_a_crowd_candidate_first_credits_nobody_and_keeps_the_honest_owners():
    """Two crowd keys at ranks 0 and 1: rank 1's turn comes on the owners' clocks while rank 0 stays
    silent; the owners release to rank 1's seal, its crowd mixes the payloads, then rank 0 seals the
    mixes with the honest announcements and is served (rank 0's turn came). Owners asked for a receipt
    under a seal that is not their first answer with their one receipt and that first seal (protocol
    19): the leader keeps them and its roster credits nobody. Before, it left them out as receipt
    withholders (`unserved`) and credited the mixes in full."""
    peers, r, a, b, honest = crowd_at_ranks_0_and_1()
    a.net.dht.clock.t += election.turn(election.Slot(0, 1), a.proto.cfg) + 1  # rank 1's turn comes, rank 0 silent
    for p in peers:
        p.heartbeat()  # every peer stays live
    envs = [h.proto.builder.announcements(r, h.digest)[h.id].envelope for h in honest]
    first = seal_of(b, r, envs)
    leaked = [ask(b, h, r, first) for h in honest]
    assert all(got == h.net.held_update(r, h.id) for got, h in zip(leaked, honest))  # B's turn came: served
    for p in (a, b):  # the crowd's mixes of the round's own updates
        p.announce(b"mix " + b"|".join(leaked) + p.id.encode())
    accepted = a.proto.await_roster(r, a.digest, a.round, NoSleep())
    roster, anns = accepted.roster, list(accepted.announcements)
    assert roster.leader == a.id and roster.attempt == 0 and not roster.skip
    assert {h.id for h in honest} <= {x.peer for x in anns} and not set(roster.unserved) & {h.id for h in honest}
    assert not any(roster.credit) and sealed.creditable(roster, anns) == [False] * len(anns)
    credit.check(roster, anns, set())  # crediting nobody is taken
    mixes = [credit.UNITS if x.peer in (a.id, b.id) else 0 for x in anns]
    with pytest.raises(ProtocolError, match="not sealed and receipted"):  # members refuse crediting the mixes
        credit.check(replace(roster, credit=tuple(mixes)), anns, set())


@pytest.mark.parametrize("forged", ["signer is no candidate", "seal does not list the owner", "seal of another base"])
def test_an_owner_with_fabricated_evidence_of_an_earlier_release_is_left_out(forged):
    """A Sybil owner answers the receipt request with its receipt naming another seal and that seal,
    fabricated: signed by a key that is no candidate of the round, or not listing its announcement,
    or of another base. It is left out as unserved (its grief costs its own entry) and the roster
    credits the others."""
    from tests.fakes import new_key

    _, _, peers = swarm(4)
    play_round(peers)
    r = peers[0].round + 1
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    sybil = next(p for p in peers if p.id == order[1])
    stranger_key, stranger = new_key()
    real = sybil.net.answer

    def answer(request):
        if request.op != "receipt":
            return real(request)
        own = sybil.proto.builder.announcements(r, sybil.digest)[sybil.id].envelope
        listed = [own] if forged != "seal does not list the owner" else []
        key, leader = (stranger_key, stranger) if forged == "signer is no candidate" else (sybil.key, sybil.id)
        base = "b" * 64 if forged == "seal of another base" else sybil.digest
        seal_env = sealed.signed_seal(
            key, run=RUN, round_no=r, base=base, leader=leader, time=sybil.net.now(), envelopes=listed
        )
        receipt = Receipt(run=RUN, round=r, owner=sybil.id, seal=signed.body_hash(seal_env), time=sybil.net.now())
        return ReceiptAnswer(receipt=signed.seal(sybil.key, receipt), seal=seal_env).encode()

    sybil.net.answer = answer
    left_out_alone(peers, order[0], sybil)


def rank0_served_then_gone(n: int, *, cfg=None, crowd: bool = False):
    """n established peers; round r is announced and its rank 0 (A) seals every announcement and is
    served by the owners (its turn came: a rank 0 fetches at close), then A's process dies: it answers
    nothing and its heartbeat lapses, so it is no candidate of the round any more. `crowd`: A's seal
    leaves out rank 1's and the last rank's announcements (a crowd A fetching the others). (peers
    left, r, A)"""
    from tests.test_round_protocol import CFG

    _, registry, peers = swarm(n, cfg=cfg or CFG)
    for _ in range(2):
        play_round(peers)
    r, _, ranked = announced(peers)
    a, rest = ranked[0], ranked[1:]
    envs = {p.id: p.proto.builder.announcements(r, p.digest)[p.id].envelope for p in rest}
    taken = [e for pid, e in envs.items() if not (crowd and pid in (rest[0].id, rest[-1].id))]
    first = seal_of(a, r, taken)
    for p in rest:
        if envs[p.id] in taken:
            assert ask(a, p, r, first) == p.net.held_update(r, p.id)  # released to A's seal
    del registry[a.id]  # A is gone: its heartbeat lapses on the next beats
    peers[0].net.dht.clock.t += 2 * CFG.heartbeat_ttl + 1  # PeerTable keeps a sighting 2 x ttl
    for p in rest:
        p.heartbeat()
    assert all(a.id not in p.proto.peers() for p in rest)
    return rest, r, a


def await_in_rank_order(peers, r):
    """The live peers await round r as play_round has them (their gates in step); (roster, the
    leader's builds until it had a roster, the fake seconds the leader waited)."""
    builds, now = [], []
    for p in peers:
        in_step(p, now)
        real = p.proto.builder.build
        p.proto.builder.build = lambda *a, real=real, p=p, **k: builds.append(p.id) or real(*a, **k)
    leader = peers[0]
    now[:] = [leader]
    t0 = leader.net.monotonic()
    accepted = leader.proto.await_roster(r, leader.digest, leader.round, NoSleep())
    waited = leader.net.monotonic() - t0
    now.clear()
    assert accepted is not None
    return accepted, builds.count(leader.id), waited


def test_a_rank_0_served_then_dead_does_not_stall_the_round_nor_drop_its_owners():
    """The donor_dies swarm test's stall: rank 0 sealed, was served, and died. Every owner it was
    served by answers the next leader's receipt request with its receipt naming rank 0's seal and
    that seal (protocol 19); rank 0 is no candidate any more (its heartbeat lapsed), so the leader
    took the evidence for a withheld receipt and left the owners out: with min_peers = the live
    peers it rebuilt every poll until 0.8 x round_timeout, then published itself alone (before: 1
    entry, 2 owners `unserved`, after 30+ builds and 32+ s). Now a key that was a candidate of the
    round on this node's view (the gate's views since the round opened) counts: one build, every
    live owner listed, and the roster credits nobody (the round went out to rank 0)."""
    from tests.test_round_protocol import CFG

    cfg = replace(CFG, min_peers=3)
    rest, r, a = rank0_served_then_gone(4, cfg=cfg)
    accepted, builds, waited = await_in_rank_order(rest, r)
    roster, anns = accepted.roster, accepted.announcements
    assert roster.leader == rest[0].id and roster.attempt == 0 and not roster.skip
    assert {x.peer for x in anns} == {p.id for p in rest} and not set(roster.unserved) & {p.id for p in rest}
    assert builds == 1 and waited < 0.5 * cfg.round_timeout
    assert not any(roster.credit)
    credit.check(roster, anns, set())


def test_a_crowd_rank_0_served_then_gone_gets_no_mix_credited_by_the_next_leader():
    """A crowd rank 0 seals the honest announcements but rank 1's, is served, and goes offline; a
    crowd key ranked last announces a mix of what it fetched. The honest rank 1 is now rank 0 of
    attempt 0: before, it took the owners' evidence (a seal of a key no longer a candidate) for
    withheld receipts, left the 3 honest owners out as `unserved` and credited itself and the mix in
    full. Now it keeps them and credits nobody (the round went out before its seal)."""
    rest, r, a = rank0_served_then_gone(6, crowd=True)
    leader, honest, mixer = rest[0], rest[1:-1], rest[-1]
    leaked = [h.net.held_update(r, h.id) for h in honest]  # what A fetched and handed its crowd
    mixer.net.updates.pop((r, mixer.id))
    mixer.announce(b"mix " + b"|".join(leaked))
    accepted, _, _ = await_in_rank_order(rest, r)
    roster, anns = accepted.roster, list(accepted.announcements)
    assert roster.leader == leader.id and roster.attempt == 0 and not roster.skip
    assert {h.id for h in honest} <= {x.peer for x in anns} and not set(roster.unserved) & {h.id for h in honest}
    assert not any(roster.credit)
    mixes = [credit.UNITS if x.peer == mixer.id else 0 for x in anns]
    with pytest.raises(ProtocolError, match="not sealed and receipted"):
        credit.check(replace(roster, credit=tuple(mixes)), anns, set())


def test_a_rebuild_asks_only_the_owners_that_gave_no_receipt_yet():
    """Too few updates for min_peers: the leader rebuilds every poll (until 0.8 x round_timeout lets
    it publish fewer). An owner's receipt answer under the leader's seal is final (its first release
    never changes), so each owner is asked once however many rebuilds; before, every rebuild asked
    every owner again (the donor_dies swarm test: 39 rebuilds in 11 s)."""
    _, _, peers = swarm(4)
    play_round(peers)
    r, _, ranked = announced(peers)
    leader = ranked[0]

    def build(at_least: int):
        return leader.proto.builder.build(
            r, leader.digest, leader.ledger.prev_hash(r), {p.id for p in peers}, at_least,
            beacon=leader.proto.beacon(r), attempt=0,
        )  # fmt: skip

    assert build(5) is None and build(5) is None
    accepted = build(1)
    assert accepted.roster.credit == (credit.UNITS,) * 4  # the kept receipts are the roster's
    assert [p.net.requests.count(("receipt", r)) for p in ranked[1:]] == [1, 1, 1]
