"""A crowd rank 0 that hides its first seal (issue 16, docs/security.md "Same-round mixes"; protocol 21).

Played on FakeNet with the owners' gates (node/round/trust/gate.py): a crowd key A holds rank 0 of
round r and a second crowd key B announces too. A seals the four honest announcements (S0) and
fetches their updates under it, A and B announce mixes of them, A signs a second seal S1 listing
the mixes and puts it first in its roster (S0 hidden); the honest entries ride a later seal, whose
entries earn nothing. Through protocol 20 every reader credited the mixes in full (the receipts of
A and B name S1). Now every honest owner that released under S0 carries it in its next announcement
(`hidden`), and once an entry carrying it is on the chain every reader takes roster r's credit as
nobody's (node/round/trust/sealed.py hiding, credit.py weights). An honest leader never signs a
seal that its roster omits without naming that roster's first seal (`after`), so the evidence never
frames it: played with rebuilds that signed different second seals. Forged or mismatched evidence
is refused (protocol/signed.py) or counts nothing."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from node.round import election
from node.round.trust import credit, sealed
from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.sealed import Seal, SealHead
from protocol.records import Announcement
from tests.test_round_protocol import RUN, play_round, swarm
from tests.test_sealed_rounds import ask, seal_of


def ranked(peers, r: int) -> list:
    order = election.ranking(peers[0].proto.beacon(r), 0, {p.id for p in peers}, tickets=peers[0].proto.tickets(r))
    return sorted(peers, key=lambda p: order.index(p.id))


def head_of(env: dict) -> SealHead:
    """The head of the seal `env` (what its signature covers, protocol 23)."""
    return SealHead.of(signed.open_record(env, Seal))


def evidence_about(env: dict, entry: str | None = None) -> dict:
    """Evidence about the seal `env` proving `entry` listed (default: the first it lists)."""
    return signed.evidence(env, entry or signed.open_record(env, Seal).announcements[0])


def about(evidence: dict | None, env: dict) -> bool:
    """Whether `evidence` (an announcement's `hidden`) is about the seal `env`."""
    return evidence is not None and signed.open_evidence(evidence).head == head_of(env)


def crowd_units(peers, crowd) -> tuple[list[int], list[int]]:
    """What a reader (each peer's own ledger) counts of the crowd: its credit units and tickets."""
    p = peers[0]
    units = credit.weights(p.ledger.rosters).units
    tickets = p.ledger.tickets(p.round + 1, p.proto.cfg.established_rounds)
    return [units.get(c.id, 0) for c in crowd], [tickets.get(c.id, 0) for c in crowd]


def test_a_crowd_rank_0_that_hides_its_first_seal_gets_its_mixes_credited_until_the_owners_evidence():
    _, _, peers = swarm(6)
    for _ in range(2):
        play_round(peers)
    plot = {}

    def hide(r: int) -> None:
        a, b, *honest = ranked(peers, r)
        envs = [a.proto.builder.announcements(r, h.digest)[h.id].envelope for h in honest]
        s0 = seal_of(a, r, envs)
        got = [ask(a, h, r, s0) for h in honest]
        assert all(g == h.net.held_update(r, h.id) for g, h in zip(got, honest))  # A's turn: served under S0
        a.net.dht.clock.t += 1  # a later announcement replaces the earlier one in the DHT
        for p in (a, b):
            p.announce(b"mix " + b"|".join(got) + p.id.encode())
        mixes = [a.proto.builder.announcements(r, p.digest)[p.id].envelope for p in (a, b)]
        s1 = seal_of(a, r, mixes)
        a.proto.builder.sealed[(r, a.digest)] = s1  # A's own code: S1 first, S0 never shown
        plot.update(r=r, crowd=(a, b), honest=honest, s0=s0, s1=s1)

    played = play_round(peers, meanwhile=hide)
    r, crowd, honest, s0 = plot["r"], plot["crowd"], plot["honest"], plot["s0"]
    roster, anns = played[peers[0].id].accepted.roster, played[peers[0].id].accepted.announcements
    assert roster.leader == crowd[0].id and roster.attempt == 0 and roster.seals[0] == plot["s1"]
    assert signed.body_hash(s0) not in {signed.body_hash(s) for s in roster.seals}
    credited = {a.peer: u for a, u in zip(anns, roster.credit)}
    assert credited == {crowd[0].id: credit.UNITS, crowd[1].id: credit.UNITS, **{h.id: 0 for h in honest}}
    credit.check(roster, anns, set())  # a valid roster: members take it and its credit
    assert sealed.hides(roster, head_of(s0)) and all(about(h.proto.gate.evidence(r + 1), s0) for h in honest)
    hidden_units, hidden_tickets = crowd_units(peers, crowd)  # the hole: what protocol 20 kept for good

    played = play_round(peers)  # round r+1: the honest owners' announcements carry S0
    carriers = [a.peer for a in played[peers[0].id].accepted.announcements if about(a.hidden, s0)]
    assert set(carriers) == {h.id for h in honest}
    after_units, after_tickets = crowd_units(peers, crowd)
    for p in peers:  # every reader, from its own ledger
        assert sealed.hiding(p.ledger.rosters) == {r}
    assert all(h.proto.gate.evidence(r + 2) is None for h in honest)  # on the chain: carried no more
    # the figures (6 peers; rounds 1, 2 honest, r = 3 hidden, r + 1 = 4 honest work by everyone)
    print(
        f"crowd units/tickets after round r: {hidden_units} {hidden_tickets}; after r+1: {after_units} {after_tickets}"
    )
    print(f"without the evidence (protocol 20) after r+1: {[raw_units(peers[0], c) for c in crowd]}")
    assert hidden_units == [3 * credit.UNITS] * 2 and hidden_tickets == [3, 3]  # r's mixes credited
    assert [raw_units(peers[0], c) for c in crowd] == [4 * credit.UNITS] * 2  # what protocol 20 kept
    assert after_units == [3 * credit.UNITS] * 2 and after_tickets == [3, 3]  # r's credit is nobody's
    assert [credit.weights(peers[0].ledger.rosters).units[h.id] for h in honest] == [3 * credit.UNITS] * 4


def raw_units(p, c) -> int:
    """`c`'s credit as the rosters write it, no roster voided (what readers counted through protocol 20)."""
    return sum(
        u
        for held in p.ledger.rosters.values()
        for a, u in zip(held.announcements, credit.units_of(held))
        if a.peer == c.id
    )


def test_an_honest_leader_that_rebuilt_with_other_second_seals_is_never_shown_hiding_one():
    """Before it leads, the rank-0 leader builds twice and publishes neither (too few updates): the
    first build's seal is its round's first seal (kept, node/round/lead.py), the second signed a
    second seal S1a that the owner X released under first; its published roster carries another
    second seal. S1a names the roster's first seal (`after`), so it is no evidence; the same seal
    without `after` would be. Over 4 more rounds no honest peer carries or counts any evidence."""
    _, _, peers = swarm(5)
    play_round(peers)
    plot = {}

    def rebuild(r: int) -> None:
        lead, x, y, *_ = ranked(peers, r)
        everyone = {p.id for p in peers}
        for left in ({x.id, y.id}, {y.id}):
            built = lead.proto.builder.build(
                r, lead.digest, lead.ledger.prev_hash(r), everyone - left, 99, beacon=lead.proto.beacon(r), attempt=0
            )
            assert built is None  # fetched, never published
        s1a = next(
            e
            for d, e in x.proto.gate.released[r].items()
            if d != signed.body_hash(lead.proto.builder.sealed[(r, lead.digest)])
        )
        plot.update(lead=lead, x=x, s1a=s1a)

    played = play_round(peers, meanwhile=rebuild)
    roster = played[peers[0].id].accepted.roster
    lead, s1a = plot["lead"], plot["s1a"]
    assert roster.leader == lead.id and len(roster.seals) == 2 and s1a not in roster.seals
    assert signed.open_record(s1a, Seal).after == signed.body_hash(roster.seals[0])
    assert not sealed.hides(roster, head_of(s1a))
    bare = signed.seal(lead.key, replace(signed.open_record(s1a, Seal), after=""))
    assert sealed.hides(roster, head_of(bare))  # what a second seal naming nothing would have framed
    for _ in range(4):
        played = play_round(peers)
        assert not any(a.hidden for a in played[peers[0].id].accepted.announcements)
    for p in peers:
        assert sealed.hiding(p.ledger.rosters) == set() and not p.proto.gate.hidden
    units = credit.weights(peers[0].ledger.rosters).units  # no roster voided: every credit counts
    assert all(units[p.id] == raw_units(peers[0], p) > 0 for p in peers)


def carrier(p, r: int, seal_env) -> SimpleNamespace:
    """A held roster of round r whose one entry, `p`'s announcement, carries evidence about `seal_env`."""
    ann = Announcement(
        run=RUN,
        round=r,
        peer=p.id,
        nbytes=9,
        sha256="2" * 64,
        tokens=1,
        base=p.digest,
        time=0.0,
        hidden=evidence_about(seal_env),
    )
    env = signed.seal(p.key, ann)
    return SimpleNamespace(roster=None, announcements=(signed.open_record(env, Announcement, signer=p.id),))


def test_forged_or_mismatched_evidence_is_refused_or_counts_nothing():
    _, _, peers = swarm(4)
    played = play_round(peers)
    held = played[peers[0].id].accepted
    roster, r = held.roster, held.roster.round
    lead = next(p for p in peers if p.id == roster.leader)
    other = next(p for p in peers if p.id != roster.leader)
    envs = list(roster.entries)

    def sign(p, round_no=r, base=roster.base, listed=envs[:1], after=""):
        return sealed.signed_seal(
            p.key, run=RUN, round_no=round_no, base=base, leader=p.id, time=0.0, envelopes=listed, after=after
        )

    hidden = sign(lead)  # a true hidden seal: counts (the control)
    forged = {
        "another leader's seal": sign(other),
        "another round": sign(lead, round_no=r + 1),
        "another base": sign(lead, base="b" * 64),
        "the roster's own first seal": roster.seals[0],
        "a later seal naming its first": sign(lead, listed=envs, after=signed.body_hash(roster.seals[0])),
    }
    for why, env in forged.items():
        assert not sealed.hides(roster, head_of(env)), why
        assert (
            sealed.hiding(
                {r: held, r + 1: carrier(other, r + 2, env) if why == "another round" else carrier(other, r + 1, env)}
            )
            == set()
        ), why
    # a first seal put second, under a seal of the crowd's mixes: still evidence, and the roster
    # credits nobody at once (a second seal must name seals[0])
    demoted = replace(roster, seals=(roster.seals[0], hidden))
    assert sealed.hides(demoted, head_of(hidden))
    assert not any(sealed.creditable(demoted, held.announcements)) and any(
        sealed.creditable(roster, held.announcements)
    )
    assert sealed.hiding({r: held, r + 1: carrier(other, r + 1, hidden)}) == {r}
    # refused at the door (protocol/signed.py, records.py): a bad signature, another kind, too late a round
    ann = Announcement(
        run=RUN, round=r + 1, peer=other.id, nbytes=9, sha256="2" * 64, tokens=1, base="a" * 64, time=0.0
    )
    true = evidence_about(hidden)
    head = true["head"]
    for why, ev in (
        ("bad signature", {**true, "head": {**head, "sig": bytes(len(head["sig"]))}}),
        ("another kind", {**true, "head": {**head, "kind": "receipt"}}),
        ("not an envelope", {**true, "head": {"body": "x"}}),
        ("a whole seal", hidden),
        ("an entry the seal does not list", {**true, "entry": "f" * 64}),
        ("a path of another entry", {**true, "path": ["0" * 64]}),
        ("a path too long", {**true, "path": ["0" * 64] * 9}),
    ):
        with pytest.raises(ProtocolError):
            signed.open_record(signed.seal(other.key, replace(ann, hidden=ev)), Announcement, signer=other.id)
            pytest.fail(why)
    with pytest.raises(ProtocolError, match="evidence of round"):
        signed.open_record(signed.seal(other.key, replace(ann, round=r + 5, hidden=true)), Announcement)
    signed.open_record(signed.seal(other.key, replace(ann, hidden=true)), Announcement)  # the true one opens
