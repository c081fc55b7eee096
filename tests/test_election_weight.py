"""Power follows credit once peers are established (issue 16, protocol 16): a leader rank key is the
least of a candidate's tickets' keys, one ticket per whole round of credit in the window
(node/round/election.py, node/round/trust/credit.py tickets), so identities count by the work the
chain credited them for, not one each. The crowd: 4 honest peers credited every round of a
64-roster window beside 12 Sybil keys each credited in just 2 rounds (the least that establishes
them): a share c = 24 / 280 of the credited work, 8.6%."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from node.round import election
from node.round.ledger import AcceptedRoster, Ledger
from node.round.trust import chain, credit, marks, omission, votes
from protocol import signed
from protocol.errors import ProtocolError
from tests.fakes import new_key
from tests.test_credit import held, pid
from tests.test_sybil_attacks_3 import ROSTER, announcement

HONEST = [pid(f"h{i}") for i in range(4)]
SYBILS = [pid(f"s{i:02d}") for i in range(12)]
BEACONS = 500


def window() -> dict:
    """64 rosters led in turn by the honest peers, each crediting the 4 of them a full round, and
    Sybil i a full round in rounds 2i + 1 and 2i + 2 (two leaders: established)."""
    out = {}
    for r in range(1, 65):
        units = {h[:2]: 64 for h in HONEST} | {s[:3]: 64 for i, s in enumerate(SYBILS) if r in (2 * i + 1, 2 * i + 2)}
        out[r] = held(r, HONEST[r % 4][:2], units)
    return out


def sybil_share(tickets) -> float:
    """Sybil keys' share of rank 0 in attempt 0 over BEACONS beacons."""
    everyone = set(HONEST) | set(SYBILS)
    beacons = [hashlib.sha256(b"beacon %d" % i).hexdigest() for i in range(BEACONS)]
    firsts = [election.ranking(b, 0, everyone, tickets=tickets)[0] for b in beacons]
    return sum(p in SYBILS for p in firsts) / BEACONS


def test_sybil_keys_lead_about_their_credit_share_not_their_share_of_identities():
    rosters = window()
    assert credit.established(rosters, 2) == set(HONEST) | set(SYBILS)  # 12 of 16 established keys
    tickets = Ledger(rosters=rosters).tickets(65, 2)
    assert tickets == {h: 64 for h in HONEST} | {s: 2 for s in SYBILS}
    before = sybil_share(election.NO_TICKETS)  # protocol 14: every established key ranks alike
    after = sybil_share(tickets)
    assert before > 0.65, before  # 12 / 16 = 75% expected; 79.6% measured (74.8% over 5000)
    assert after < 0.15, after  # 24 / 280 = 8.6% expected; 8.0% measured (8.5% over 5000)
    # credit beyond a full window's (claims' carried credit, a longer span) buys no more tickets
    assert credit.tickets({r: held(r, "a", {"x": 64}) for r in range(1, 101)}) == {pid("x"): 64}
    assert election.rank_key("00" * 32, 0, pid("x"), 10**6) == election.rank_key("00" * 32, 0, pid("x"), 64)


def test_one_ticket_each_is_the_old_order_and_more_tickets_only_ever_move_a_peer_up():
    """Ticket 0's key is protocol 14's key: a run whose peers nobody credited yet (each holds 1)
    ranks as before; a ticket more can only lower a peer's key (the least of more draws)."""
    b = hashlib.sha256(b"b").hexdigest()
    everyone = set(HONEST) | set(SYBILS)
    plain = sorted(everyone, key=lambda p: election.rank_key(b, 3, p))
    assert election.ranking(b, 0, everyone) == sorted(everyone, key=lambda p: election.rank_key(b, 0, p, 1))
    assert all(election.rank_key(b, 3, p, 5) <= election.rank_key(b, 3, p, 4) for p in plain)
    assert election.ranking(b, 0, everyone, tickets={p: 1 for p in everyone}) == election.ranking(b, 0, everyone)


def test_readers_check_skip_marks_against_the_weighted_ranks():
    """A leader may list a peer in `skip` only if that peer ranked ahead of it under the window's
    tickets (marks.check, every reader): where a Sybil's weighted key and its ticket-0 key fall on
    either side of an honest leader's, the weighted order decides, both ways."""
    rosters = window()
    tickets = Ledger(rosters=rosters).tickets(65, 2)
    base, leader = rosters[64].roster, HONEST[0]
    seen = set()
    for i in range(400):
        beacon = hashlib.sha256(b"mark %d" % i).hexdigest()
        for s in SYBILS:
            plain = election.rank_key(beacon, 0, s) < election.rank_key(beacon, 0, leader)
            weighted = marks.ranked_ahead(beacon, 0, s, leader, tickets)
            if plain == weighted:
                continue
            roster = replace(base, round=65, leader=leader, beacon=beacon, attempt=0, skip=(s,))
            if weighted:
                marks.check(roster, set(), tickets)
            else:
                with pytest.raises(ProtocolError, match="ranks behind its leader"):
                    marks.check(roster, set(), tickets)
            seen.add(weighted)
    assert seen == {True, False}


def test_an_omission_jury_counts_credit_not_keys():
    """Ghost claim (tests/test_sybil_attacks_3.py) by a crowd of keys with little credit: 8 Sybils
    credited 2 rounds each in the 32 rosters before round 35, beside 4 honest peers credited in
    all 32. Sybil 0 claims an announcement of round 35 it never stored, and the other 7 list it
    `seen_late`. Its jury is 3 honest peers and 7 Sybils: by keys (protocols 7-14) 7 seers of 10
    counted the claim and marked an honest leader; by credit (protocol 16) they hold 14 of 110
    rounds and it counts nothing. The same claim seen by the honest jurors counts."""
    honest, sybils = [new_key() for _ in range(4)], [new_key() for _ in range(8)]
    ghost = signed.seal(sybils[0][0], announcement(sybils[0][1], 35))

    def rosters(seers: list) -> dict:
        out = {}
        for r in range(1, 40):
            anns = [announcement(who, r) for _, who in honest]
            units = [64] * len(honest)
            for i, (_, who) in enumerate(sybils):
                if r in (2 * i + 3, 2 * i + 4) or (r > 35 and i):
                    anns.append(announcement(who, r))
                    units.append(64 if r < 35 else 0)
            if r > 35:
                anns = [replace(a, seen_late=(omission.prefix(ghost),)) if a.peer in seers else a for a in anns]
                anns.append(replace(announcement(sybils[0][1], r), claim=ghost if r == 36 else None))
                units.append(0)
            roster = replace(ROSTER, round=r, leader=honest[r % 4][1], base=f"{r:064x}", entries=({},) * len(anns))
            out[r] = AcceptedRoster({}, replace(roster, credit=tuple(units)), tuple(anns))
        return out

    crowd = [who for _, who in sybils[1:]]
    jurors = omission.jurors(rosters(crowd), 35, 2)
    assert jurors == {who: 32 for _, who in honest} | {who: 2 for _, who in sybils}
    assert omission.claims(rosters(crowd), 2) == []  # 7 of 10 jurors, 14 of 110 rounds: nothing
    counted = omission.claims(rosters([who for _, who in honest]), 2)
    assert [(c.claimant, c.round, c.leader) for c in counted] == [(sybils[0][1], 35, honest[3][1])]


def test_catch_up_quorums_and_fork_choice_count_credit_not_keys():
    """The same crowd holds a head of its own (a state the honest peers do not hold). By keys
    (protocol 14: a majority of at least 3 of the live established peers) its 12 of 16 carried
    an extension to that head and outweighed the honest branch in fork choice, and the 4 honest
    peers could not carry theirs; by tickets (chain.voters, votes.carried) the crowd holds 24 of
    280 and the honest peers 256."""
    window_ = Ledger(rosters=window())
    voters = chain.voters(window_, 2)
    assert voters == {h: 64 for h in HONEST} | {s: 2 for s in SYBILS}
    crowd, honest = set(SYBILS), set(HONEST)
    assert len(crowd) >= max(votes.MIN_QUORUM, len(voters) // 2 + 1)  # the old majority of keys
    assert not votes.carried(crowd, voters) and votes.carried(honest, voters)
    assert chain.weight([], honest, voters) > chain.weight([], crowd, voters)  # fork choice: 256 to 24
    assert chain.voters(window_, 2, live=crowd | {HONEST[0]}) == {s: 2 for s in SYBILS} | {HONEST[0]: 64}
    # fewer than MIN_QUORUM voters: all of them; never one heavy peer alone among 3 or more
    assert votes.carried({"a", "b"}, {"a": 1, "b": 64}) and not votes.carried({"b"}, {"a": 1, "b": 64})
    assert not votes.carried({"b"}, {"a": 1, "b": 64, "c": 1}) and not votes.carried(set(), {})


def test_a_late_peer_counts_who_moved_past_the_round_by_tickets():
    """`moved_on` (a late peer takes the roster the swarm took instead of leading the round again)
    weighs the other candidates' tickets: a peer back from a long freeze, with 2 rounds' credit and
    not yet past the round, no longer ties one with 60 that led it. By heads (one each) it tied, the
    late peer refused the rank-1 roster by its own clock and led a second one: the frozen-peer swarm
    test forked at the first round after the thaw (CI)."""
    from protocol.records import Heartbeat

    def hb(peer: str, state_round: int) -> Heartbeat:
        return Heartbeat(
            run="r", peer=peer, name="", round=state_round + 1, state_round=state_round, digest="1" * 64,
            device="cpu", maddrs=(), time=1.0,
        )  # fmt: skip

    peers = {"me": hb("me", 63), "led": hb("led", 64), "thawed": hb("thawed", 63)}
    cands = set(peers)
    assert not election.moved_on(peers, cands, "me", 64)  # one head of two: no majority
    assert election.moved_on(peers, cands, "me", 64, {"me": 60, "led": 60, "thawed": 2})
    assert not election.moved_on(peers, cands, "me", 64, {"led": 2, "thawed": 60})  # the credit is not past it
    assert not election.moved_on({"me": peers["me"]}, cands, "me", 64)  # nobody else known


def test_a_ledgers_tickets_are_remembered_per_window_and_counted_again_when_a_roster_changes():
    """Ledger.tickets is asked several times a poll (our turn, the owner gate's view, moved_on,
    each roster read): it counts a window once, and again when any roster of it is replaced."""
    ledger = Ledger(rosters=window())
    first = ledger.tickets(65, 2)
    assert ledger.tickets(65, 2) == first and len(ledger.counted) == 1  # remembered, not counted again
    first[HONEST[0]] = 0  # a caller's copy: the memo is not changed through it
    assert ledger.tickets(65, 2)[HONEST[0]] == 64
    ledger.rosters[64] = held(64, HONEST[0][:2], {s[:3]: 64 for s in SYBILS})  # a swap: another roster
    changed = ledger.tickets(65, 2)
    assert changed[HONEST[1]] == 63 and changed[SYBILS[0]] == 3
    assert changed == credit.tickets(ledger.rosters, omission.claims(ledger.rosters, 2))
    for r in range(60, 66):  # older windows fall out of the memo
        ledger.tickets(r, 2)
    assert len(ledger.counted) == 4
