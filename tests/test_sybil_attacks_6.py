"""A crowd that mixes the round's honest updates (issue 16, docs/security.md "Cheap updates that
pass"). Before protocol 18 any peer could fetch an announced update before its roster existed, so
a Sybil key announced, a few seconds after the honest peers, a random convex mix of their updates:
no direction test tells such a mix from work, and 12 crowd keys beside 4 honest peers were
credited every round, 75% of the tickets (the counterfactual below still measures it). Sealed
rounds (docs/protocol.md "Sealed rounds") keep a round's payloads behind the owners' gates until
its roster: played here with the real path: the owners' gates on FakeNet (node/round/trust/
gate.py), DiLoCo's codec (its default float16 wire, and int8 and int1), a leader Applier that
writes each roster's credit and a member Applier that recomputes and checks it (node/peer/
applier.py Crediting, node/outer/useful.py, node/round/trust/sealed.py), over consecutive rounds
whose updates share a direction that persists (cos 0.9 from round to round), so from round 4 on
each entry is judged against the span of the 3 rounds before. Every roster is sealed and
receipted (tests/fakes.py sealed_roster) unless a test says otherwise.

What holds: the crowd's requests for this round's updates are refused until the roster, so it can
mix only the rounds before, which earns nothing (0 tickets, 0%; on int1 because the others' sum
weighs each entry by its author's credit in the 3 rounds before, protocol 20: a crowd that has
some keeps itself credited, open); a crowd leader that is served
legitimately cannot get mixes made after its seal credited, in its roster or the next attempt's;
and a byte copy or near-copy is credited to the earliest announcement only (the honest author)."""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import replace

import pytest
import torch

from node.config import RobustConfig, StrategyConfig
from node.outer import scoring
from node.peer.applier import Applier
from node.round import election
from node.round.ledger import AcceptedRoster
from node.round.trust import credit, sealed, votes
from protocol import signed
from protocol.errors import ProtocolError
from protocol.records import Announcement, Roster
from tests.fakes import new_key, sealed_roster
from tests.test_round_protocol import Peer, play_round, swarm
from tests.test_score_checks import RUN, applier
from tests.test_sealed_rounds import ask, seal_of

KEYS = {pid: key for key, pid in (new_key() for _ in range(16))}  # peer id -> its signing key
HONEST, CROWD = sorted(KEYS)[:4], sorted(KEYS)[4:]  # 4 honest peers and a crowd of 12 keys
BASE = "b" * 64
ROUNDS = 6  # rounds 4-6 judge every entry against the 3 rounds before (useful.SPAN_ROUNDS)
PERSIST = 0.9  # cosine of one round's common direction with the next's (tests/test_sybil_attacks_4.py)
SPREAD = 0.7  # each honest peer's own part (its data), against the common direction's 1
HONEST_TIME, LATE = 100.0, 103.0  # signed times: the crowd announces after the honest peers
BEACONS = 400
SPREAD_OUT = 0.995  # the crowd keeps its mixes this far from copies (scoring.DUPLICATE_COS 0.999)


class Work:
    """The run's training as its updates show it: a common direction that persists, and each
    honest peer's update that direction plus its own part, encoded (int1: without the error
    buffer a peer keeps, as its first round's update)."""

    def __init__(self, a: Applier, seed: int):
        self.codec, self.gen = a.strategy.codec, torch.Generator().manual_seed(seed)
        self.common = [self.randn(p) for p in a.state.params]

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.gen)

    def next_round(self) -> None:
        self.common = [PERSIST * c + math.sqrt(1 - PERSIST**2) * self.randn(c) for c in self.common]

    def honest(self) -> bytes:
        return self.codec.encode([0.01 * (c + SPREAD * self.randn(c)) for c in self.common])

    def mix(self, payloads: list[bytes], noise: float = 0.0) -> bytes:
        """A random convex mix of `payloads` (decoded as any peer decodes them), plus `noise` x an
        honest peer's own part, encoded: no training at all."""
        w = -torch.log(torch.rand(len(payloads), generator=self.gen))  # uniform on the simplex
        w = w / w.sum()
        decoded = [self.codec.decode(p) for p in payloads]
        mixed = [sum(wi * d[j] for wi, d in zip(w.tolist(), decoded)) for j in range(len(decoded[0]))]
        return self.codec.encode([m + 0.01 * noise * SPREAD * self.randn(m) for m in mixed])


def announced(round_no: int, peers: list[str], late: int) -> list[Announcement]:
    """The round's announcements: the first len(peers) - late at HONEST_TIME, the last `late` at LATE."""
    return [
        Announcement(
            run="r", round=round_no, peer=p, nbytes=1, sha256="1" * 64, tokens=100, base=BASE,
            time=HONEST_TIME if i < len(peers) - late else LATE,
        )
        for i, p in enumerate(peers)
    ]  # fmt: skip


def led(
    leader: Applier,
    payloads: list[bytes],
    anns: list[Announcement],
    *,
    by: str,
    listed: int | None = None,
    units: tuple[int, ...] | None = None,
    receipted: list[str] | None = None,
    **fields,
) -> AcceptedRoster:
    """The roster `by` publishes: the leader Applier's result and credit (or `units`), its entries
    signed by their authors, seals[0] by `by` listing the first `listed` entries (default all) with
    their authors' receipts naming it (of the `receipted` only, if given: tests/fakes.py
    sealed_roster); `fields`: attempt, skip."""
    r = leader.state.round + 1
    outcome = leader.roster_result(payloads, [a.tokens for a in anns])
    entries = tuple(signed.seal(KEYS[a.peer], a) for a in anns)
    roster = Roster(
        run="r", round=r, leader=by, prev=leader.ledger.prev_hash(r), base=BASE, result=outcome.digest,
        time=HONEST_TIME + 10, entries=entries, full=outcome.full,
        credit=units if units is not None else tuple(leader.credit_round(payloads, anns)), **fields,
    )  # fmt: skip
    roster = sealed_roster(roster, KEYS, listed=entries[:listed], receipted=receipted)
    body = repr(roster.to_wire()).encode()  # unsigned: the next roster's prev names its hash
    return AcceptedRoster({"body": body}, roster, tuple(anns))


def play(leader: Applier, member: Applier, payloads: list[bytes], anns: list[Announcement]) -> tuple[int, ...]:
    """One round led by an honest peer: the leader writes the roster (its result and credit), both
    apply it (the member recomputes the credit and refuses a roster whose credit is not its own);
    the credit written."""
    r = leader.state.round + 1
    accepted = led(leader, payloads, anns, by=HONEST[r % 4])
    assert leader.apply_round(accepted, payloads) and member.apply_round(accepted, payloads)
    assert member.crediting.refused == 0 and member.state.round == r
    return accepted.roster.credit


def pair(wire: str) -> tuple[Applier, Applier]:
    run = replace(RUN, strategy=StrategyConfig(wire_dtype=wire), robust=RobustConfig())  # scoring off: the default
    return applier(HONEST[0], io.StringIO(), run), applier("member", io.StringIO(), run)


def unit_direction(payload: bytes, a: Applier) -> torch.Tensor:
    d = torch.cat([t.flatten() for t in a.strategy.direction(payload)]).double()
    return d / d.norm()


def most_alike(payloads: list[bytes], a: Applier) -> float:
    """The largest cosine between two of `payloads`' directions (scoring.DUPLICATE_COS makes copies)."""
    dirs = torch.stack([unit_direction(p, a) for p in payloads])
    cos = dirs @ dirs.T
    return float((cos - 2 * torch.eye(len(payloads), dtype=cos.dtype)).max())


def crowd(work: Work, honest: list[bytes], source: list[bytes], noise: float, a: Applier) -> list[bytes]:
    """The round's entries: `honest`, then a mix of `source` for each crowd key (none without a
    source), redrawn (as the crowd can, at no cost) while it is within cosine SPREAD_OUT of an
    entry already there: mixes near the middle of the simplex are all the common direction, and a
    copy is credited once."""
    out, dirs = list(honest), [unit_direction(p, a) for p in honest]
    while source and len(out) < len(honest) + len(CROWD):
        m = work.mix(source, noise)
        d = unit_direction(m, a)
        if max(float(d @ e) for e in dirs) < SPREAD_OUT:
            out.append(m)
            dirs.append(d)
    return out


def crowd_rounds(wire: str, noise: float, *, fresh: bool, seed: int = 5):
    """ROUNDS rounds of 4 honest updates and the crowd's 12 mixes: of this round's honest updates
    (`fresh`: what the gate keeps from the crowd) or of the round before's (what it may fetch: each
    round's updates are served to anyone once its roster is out), from round 2 on. Each round's
    credit, the member (its ledger holds the rosters) and the largest cosine between two entries."""
    leader, member = pair(wire)
    work, credits, alike, before = Work(member, seed), [], 0.0, []
    for r in range(1, ROUNDS + 1):
        honest = [work.honest() for _ in HONEST]
        payloads = crowd(work, honest, honest if fresh else before, noise, member)
        alike = max(alike, most_alike(payloads, member))
        late = len(payloads) - len(HONEST)
        credits.append(play(leader, member, payloads, announced(r, HONEST + CROWD[:late], late)))
        before = honest
        work.next_round()
    return credits, member, alike


def crowd_share(tickets: dict[str, int]) -> float:
    """The crowd's share of rank 0 (attempt 0) over BEACONS beacons, ranked by `tickets`."""
    everyone = set(HONEST) | set(CROWD)
    beacons = [hashlib.sha256(b"beacon %d" % i).hexdigest() for i in range(BEACONS)]
    return sum(election.ranking(b, 0, everyone, tickets=tickets)[0] in CROWD for b in beacons) / BEACONS


def crowd_fetches(rounds: int) -> tuple[int, int, int]:
    """The real gate on FakeNet: the 4 honest Peers, established (2 rounds), and the 12 crowd keys
    as Peers that beat on the honest state (live, not established). Each round, after the
    announcements and before anyone awaits the roster, every crowd key asks every honest owner for
    its update, without a seal and with its own seal listing every announcement; after the roster,
    again without a seal. (served before, refused before, served after the roster)."""
    dht, registry, _ = swarm(0)
    honest = [Peer(dht, registry, (KEYS[p], p)) for p in HONEST]
    mob = [Peer(dht, registry, (KEYS[p], p)) for p in CROWD]
    for _ in range(2):
        play_round(honest)
    served = refused = after = 0

    def meanwhile(r: int) -> None:
        nonlocal served, refused
        envs = [s.envelope for s in honest[0].proto.builder.announcements(r, honest[0].digest).values()]
        assert len(envs) == len(HONEST)
        for c in mob:
            c.digest, c.round = honest[0].digest, honest[0].round
            c.heartbeat()
            for owner in honest:
                for seal in (None, seal_of(c, r, envs)):
                    got = ask(c, owner, r, seal)
                    no = isinstance(got, ProtocolError) and "sealed" in str(got)
                    served, refused = served + (not no), refused + no

    for _ in range(rounds):
        play_round(honest, meanwhile=meanwhile)
        r = honest[0].round
        after += sum(ask(c, o, r, None) == o.net.held_update(r, o.id) for c in mob for o in honest)
    return served, refused, after


WIRES = (("float16", 0.0), ("float16", 0.1), ("int8", 0.1), ("int1", 0.1))


def test_a_crowd_refused_this_rounds_updates_mixes_only_the_rounds_before_and_earns_nothing():
    """The gate: over 3 rounds none of the crowd's 288 requests for the round's honest updates
    before its roster is served (no seal, or its own seal: its turn to lead has not come); all 144
    after the roster are. So 12 keys each announce, 3 s after the honest peers, a different random
    convex mix of the round before's honest updates (and, a variant, plus a tenth of an honest
    peer's own part as noise), on the float16 and int8 wires: they have no fresh part and are
    credited 0, every round; the crowd holds 0 tickets (0%), is never established, so never a candidate, and carries
    no catch-up quorum. Counterfactual, the same sealed rounds with mixes of this round's updates
    (the open attack before protocol 18): the crowd is credited a full round each, every round,
    12 of 16 credited keys, 75% of the tickets and ~75% of the leader ranks."""
    served, refused, after = crowd_fetches(3)
    assert served == 0 and refused == 3 * len(CROWD) * len(HONEST) * 2 and after == 3 * len(CROWD) * len(HONEST)
    for wire, noise in WIRES[:3]:  # int1: test_on_int1_...
        credits, member, alike = crowd_rounds(wire, noise, fresh=False)
        assert alike < scoring.DUPLICATE_COS, (wire, alike)  # no copies
        full, crowd0 = (credit.UNITS,) * len(HONEST), (0,) * len(CROWD)
        assert credits == [full] + [full + crowd0] * (ROUNDS - 1), (wire, noise, credits)
        tickets = member.ledger.tickets(ROUNDS + 1, 2)
        assert tickets == {p: ROUNDS for p in HONEST}  # the crowd: 0 tickets
        assert credit.established(member.ledger.rosters, 2) == set(HONEST)
    assert sum(tickets.get(p, 0) for p in CROWD) / sum(tickets.values()) == 0.0
    assert votes.carried(set(HONEST), tickets) and not votes.carried(set(CROWD), tickets)
    credits, member, alike = crowd_rounds("float16", 0.0, fresh=True)  # what the gate keeps from the crowd
    assert alike < scoring.DUPLICATE_COS and credits == [(credit.UNITS,) * 16] * ROUNDS
    tickets = member.ledger.tickets(ROUNDS + 1, 2)
    assert sum(tickets[p] for p in CROWD) / sum(tickets.values()) == 0.75
    assert votes.carried(set(CROWD), tickets) and 0.65 < crowd_share(tickets) < 0.85  # 78% measured


def test_on_int1_a_crowd_of_mixes_of_the_round_before_without_standing_is_not_credited():
    """On the int1 wire the same crowd, refused this round's updates, announces mixes of the round
    before's (plus a tenth of an honest part as noise, or none). int1's sign quantization is not
    linear, so each mix's encoding leaves the span of the rounds before by a residual that the
    crowd's other mixes, re-quantized from the same sources, share. The others' sum an entry is
    measured against weighs each entry by its author's credit in the rosters of the 3 rounds
    before (protocol 20), which the crowd has none of: 0 of 12 credited, 0 tickets, every round
    (crowd fresh cosines <= 0.012; the honest peers' rose from 0.17-0.24 to 0.32-0.37).
    Counterfactual, every entry alike (protocol 19): 7 to 11 of the 12 mixes credited a round from
    round 2, 46 of 70 tickets (66%); noise 0: 40 of 64 (62%)."""
    for noise in (0.1, 0.0):
        credits, member, _ = crowd_rounds("int1", noise, fresh=False)
        full, crowd0 = (credit.UNITS,) * len(HONEST), (0,) * len(CROWD)
        assert credits == [full] + [full + crowd0] * (ROUNDS - 1), (noise, credits)
        assert member.ledger.tickets(ROUNDS + 1, 2) == {p: ROUNDS for p in HONEST}


def standing_rounds(work_rounds: set[int], nobody: set[int], rounds: int) -> list[int]:
    """`rounds` int1 rounds of 4 honest updates and the crowd's 12 entries: real work (honest-like
    updates) in `work_rounds`, mixes of the round before's honest updates otherwise; the rosters of
    `nobody` credit nobody (their leaders had synced). The crowd's credited entries, per round."""
    leader, member = pair("int1")
    work, before, out = Work(member, 5), [], []
    for r in range(1, rounds + 1):
        honest = [work.honest() for _ in HONEST]
        payloads = (
            honest + [work.honest() for _ in CROWD] if r in work_rounds else crowd(work, honest, before, 0.1, member)
        )
        late = len(payloads) - len(HONEST)
        anns = announced(r, HONEST + CROWD[:late], late)
        accepted = led(leader, payloads, anns, by=HONEST[r % 4], units=(0,) * len(anns) if r in nobody else None)
        assert leader.apply_round(accepted, payloads) and member.apply_round(accepted, payloads)
        assert member.crediting.refused == 0
        out.append(sum(u > 0 for u in accepted.roster.credit[len(HONEST) :]))
        before = honest
        work.next_round()
    return out


def test_open_on_int1_a_crowd_with_standing_keeps_its_mixes_credited():
    """Open (docs/security.md): standing is credit in the rosters of the 3 rounds before, so a crowd
    that once has some keeps it. (a) Its 12 keys train for real in round 2 (credited 12 of 12, as
    work), then mix: 7-10 of 12 credited every round after. (b) The rosters of rounds 2-4 credit
    nobody (leaders that synced lately, as after a swarm-wide restart): round 5 weighs all alike
    (nobody has standing) and the mixes are credited from then on, 7-11 a round. Measured too (by
    hand): one round of work at round 8 of 14 kept 1-9 a round credited after it; weighing by the
    credit of the whole ledger window instead closed (b) and the round-8 case (0 after it), not
    (a) nor 3 rounds of work by the crowd (4-6 a round)."""
    worked = standing_rounds({2}, set(), 6)
    assert worked[:2] == [0, 12] and min(worked[2:]) >= 4, worked
    drained = standing_rounds(set(), {2, 3, 4}, 7)
    assert drained[:4] == [0, 0, 0, 0] and min(drained[4:]) >= 4, drained


def test_a_crowd_leader_served_the_round_gets_none_of_its_crowds_later_mixes_credited():
    """A crowd key at rank 0 (say established by work earlier) is served the 4 honest updates
    legitimately, under its seal v1 of the announcements it took; its crowd then mixes them and
    announces 12 mixes (useful-looking: the leader Applier credits them). On each wire, round 4
    (after 3 honest rounds): (a) its roster with seals[0] = v1 and the mixes under a second seal
    credits the honest 4 only; crediting a mix is refused by the member; (b) seals[0] widened to
    list the mixes (the honest receipts name v1) credits nobody; (c) it goes silent and the next
    rank leads attempt 1, every entry sealed and receipted: nobody (the honest peers lose the round
    too). Only (a) with the mixes at 0 is applied: the crowd's tickets stay 0."""
    for wire, noise in WIRES:
        leader, member = pair(wire)
        work = Work(member, 9)
        for r in range(1, 4):
            play(leader, member, [work.honest() for _ in HONEST], announced(r, HONEST, 0))
            work.next_round()
        honest = [work.honest() for _ in HONEST]
        payloads = crowd(work, honest, honest, noise, member)
        anns = announced(4, HONEST + CROWD, len(CROWD))
        useful = leader.credit_round(payloads, anns)
        assert sum(u > 0 for u in useful[len(HONEST) :]) >= 10, (wire, useful)  # the mixes pass as work
        mine = led(leader, payloads, anns, by=CROWD[0], listed=len(HONEST))
        widened = led(leader, payloads, anns, by=CROWD[0], receipted=CROWD)
        later = led(leader, payloads, anns, by=HONEST[1], attempt=1, skip=(CROWD[0],))
        allowed = [True] * len(HONEST) + [False] * len(CROWD)
        assert sealed.creditable(mine.roster, anns) == allowed
        for lying in (mine, widened, later):
            if lying is not mine:
                assert not any(sealed.creditable(lying.roster, anns))
            with pytest.raises(ProtocolError, match="protocol 18"):
                credit.check(lying.roster, anns, set())  # every chain reader (the audit too)
            assert not member.apply_round(lying, payloads) and member.state.round == 3
        fair = led(leader, payloads, anns, by=CROWD[0], listed=len(HONEST), units=tuple(sealed.masked(useful, allowed)))
        assert leader.apply_round(fair, payloads) and member.apply_round(fair, payloads)
        assert member.ledger.tickets(5, 2) == {p: 4 for p in HONEST}, wire


def test_mixes_of_the_rounds_before_and_copies_are_not_credited():
    """What holds, on each wire: beside the round's 4 honest updates, announced 3 s after them, a
    byte copy and a near-copy (cosine > 0.999) of honest updates, and a mix of the honest updates
    of each of the (up to 3) rounds before. Every round only the honest peers are credited: the
    copies go to their earliest announcement (their authors keep theirs), the stale mixes have
    no fresh part (measured fresh cosines within +-0.02; honest 0.30-0.87)."""
    for wire in ("float16", "int8", "int1"):
        leader, member = pair(wire)
        work, rounds = Work(member, 7), []
        for r in range(1, ROUNDS + 1):
            honest = [work.honest() for _ in HONEST]
            near = work.codec.encode([t + 1e-3 * t.abs().mean() * work.randn(t) for t in work.codec.decode(honest[1])])
            assert near != honest[1] and most_alike([honest[1], near], member) > scoring.DUPLICATE_COS
            stale = [work.mix(rounds[-back]) for back in (1, 2, 3) if back <= len(rounds)]
            payloads = [*honest, honest[0], near, *stale]
            late = len(payloads) - len(HONEST)
            credits = play(leader, member, payloads, announced(r, HONEST + CROWD[:late], late))
            assert credits == (credit.UNITS,) * len(HONEST) + (0,) * late, (wire, r, credits)
            rounds.append(honest)
            work.next_round()
        assert member.ledger.tickets(ROUNDS + 1, 2) == {p: ROUNDS for p in HONEST}
