"""Credit and establishment from verified contribution (issue 16, design step 4, docs/trust-model.md).

A roster's `credit` gives each entry 0..UNITS sixty-fourths of a full round's credit. Its leader
writes it (Hooks.credit: node/outer/useful.py judges each update useful or not, where the round
decodes them) and every peer that applies the roster recomputes it and refuses a roster whose
credit is not its own, unless it credits nobody (node/peer/applier.py, `wrong`: a leader that
synced lately judges nothing); so the number in the chain is one every reader takes alike. Here is
what the chain makes of it, a pure function of the rosters held:

- weight(p): the sum of p's credit over the window's rosters (at most UNITS a roster: a token
  claim of 10^9 counts as one round's; none of a roster shown hiding a seal, protocol 21:
  sealed.hiding, or credited after its round went out to another key, protocol 22: `leaked`),
  plus the credit of the updates that carried p's counted omission claims (node/round/trust/
  omission.py: the carried-over work, so a claim earns what the claimant's next update earned,
  and nothing for junk, nor of a roster that credits nobody);
- established: weight >= k x UNITS (k = [swarm] established_rounds: k full rounds' credit) and
  credited under at least min(LEADERS, the distinct leaders of the rosters that list it and
  credit someone) leaders, so a young run led by the organizer alone is enough, and once others lead and list
  it a peer needs credit from 3 of them. Heartbeats, announcements and appearances in rosters earn nothing.

Hooks that cannot judge updates (the tests' stand-in states) credit each entry its token share
(`token_units`), which is the appearance rule with token claims capped. A v3 roster (node/round/
v3.py: no peer holds each update) credits only authors established before it, at their token
share among those (`carried`): v3 rounds keep established peers' weight but establish nobody
new, and every reader checks that exactly (`check`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import NamedTuple, Protocol

from node.round.trust import sealed
from protocol.errors import ProtocolError
from protocol.records import CREDIT_UNITS, Announcement, Roster

UNITS = CREDIT_UNITS  # one full round's credit
MAX_TICKETS = 64  # a full window's credit (node/round/ledger.py WINDOW): more buys no rank, no vote
LEADERS = 3  # distinct leaders whose rosters must credit a peer before it is established


class Held(Protocol):
    """What this module reads of a roster the chain holds (node/round/ledger.py: AcceptedRoster)."""

    roster: Roster
    announcements: tuple[Announcement, ...]


class Carried(Protocol):
    """A claim the chain counts (omission.Claim): its claimant, the round that left it out and the
    roster whose entry carried it."""

    claimant: str
    round: int
    carried: int


class Weights(NamedTuple):
    units: Counter
    """Peer -> its credit over the rosters, in 1/UNITS of a round's."""
    leaders: dict[str, set[str]]
    """Peer -> the leaders of the rosters that credited it."""


def units_of(held: Held) -> tuple[int, ...]:
    """Each entry's credit in `held`'s roster (none where the roster carries none)."""
    credit = held.roster.credit
    return credit if len(credit) == len(held.announcements) else (0,) * len(held.announcements)


def judged_none(held: Held) -> bool:
    """Does `held`'s roster credit nobody (its leader had synced lately and judged nothing, `wrong`)?
    Such a roster neither counts as a leader that listed its entries (`established`) nor earns the
    peers it left out anything by their claims (`weights`), so an attacker's rosters that credit
    nobody cost its own keys what they cost everyone (protocol 17)."""
    return not any(units_of(held))


def voided(rosters: Mapping[int, Held]) -> set[int]:
    """The rounds whose roster's credit every reader takes as nobody's: shown hiding a seal
    (protocol 21: sealed.hiding) or shown credited after the round went out (protocol 22: `leaked`)."""
    hid = sealed.hiding(rosters)
    return hid | leaked(rosters, hid)


def leaked(rosters: Mapping[int, Held], hid: AbstractSet[int] = frozenset()) -> set[int]:
    """The rounds whose roster credits someone while the authors of its entries that carry evidence
    of having released first under another key's seal (sealed.leak_carriers) hold more than half of
    its entries' weight: their credit units in `rosters` before that round (no claims; rosters
    `hid` and those found here count nothing), or their number when all of those are 0. A
    majority, so a crowd (under a third of the credit) carrying seals its own keys signed cannot
    void an honest roster that lists it; an honest rank 0 whose owners released to another
    candidate first credits nobody already (protocol 19: their receipts do not name seals[0]).
    Rounds in order, so each count is a pure function of the window: every reader agrees."""
    carriers = sealed.leak_carriers(rosters)
    out: set[int] = set()
    if not carriers:
        return out
    units: Counter = Counter()
    for r in sorted(rosters):
        held = rosters[r]
        if r in carriers and not judged_none(held):
            listed = {a.peer for a in held.announcements}
            weight = {p: units[p] for p in listed} if any(units[p] for p in listed) else dict.fromkeys(listed, 1)
            if 2 * sum(weight[p] for p in carriers[r] & listed) > sum(weight.values()):
                out.add(r)
        if r not in hid and r not in out:
            for a, u in zip(held.announcements, units_of(held)):
                units[a.peer] += u
    return out


def weights(rosters: Mapping[int, Held], claims: Iterable[Carried] = ()) -> Weights:
    """Every credited peer's weight over `rosters`, and who credited it; `claims` add their carrier's
    credit, unless the roster that left the claimant out credited nobody (`judged_none`)."""
    units: Counter = Counter()
    leaders: dict[str, set[str]] = defaultdict(set)
    void = voided(rosters)  # protocols 21, 22: a roster shown hiding a seal or leaked credits nobody
    for r, held in rosters.items():
        if r in void:
            continue
        for a, u in zip(held.announcements, units_of(held)):
            if u:
                units[a.peer] += u
                leaders[a.peer].add(held.roster.leader)
    for c in claims:
        carrier, omitted = rosters.get(c.carried), rosters.get(c.round)
        if carrier is None or c.carried in void or c.round in void or (omitted is not None and judged_none(omitted)):
            continue
        u = next((u for a, u in zip(carrier.announcements, units_of(carrier)) if a.peer == c.claimant), 0)
        if u:
            units[c.claimant] += u
            leaders[c.claimant].add(carrier.roster.leader)
    return Weights(units, dict(leaders))


def established(rosters: Mapping[int, Held], k: int, claims: Iterable[Carried] = ()) -> set[str]:
    """Peers with k rounds' credit in `rosters`, credited by at least min(LEADERS, the leaders of
    the rosters that list them and credit someone) distinct leaders. Counted among the rosters that list the peer, not
    all of the window's: a peer that one leader left out, in a young run that only the organizer
    leads afterwards, could otherwise never meet the count while that roster stays in the window
    (the run stayed young for good: seen in the swarm tests)."""
    w = weights(rosters, claims)
    listing: dict[str, set[str]] = defaultdict(set)
    void = voided(rosters)
    for r, held in rosters.items():
        if judged_none(held) or r in void:  # a leader that judged nothing (it synced) vouches neither way
            continue
        for a in held.announcements:
            listing[a.peer].add(held.roster.leader)
    return {
        p
        for p, u in w.units.items()
        if u >= k * UNITS and len(w.leaders[p]) >= min(LEADERS, len(listing[p] | w.leaders[p]))
    }


def tickets(rosters: Mapping[int, Held], claims: Iterable[Carried] = ()) -> dict[str, int]:
    """Peer -> its whole rounds of credit in `rosters` (weight // UNITS, at most MAX_TICKETS), for
    the peers with one at least: how much a peer counts where power follows credit (protocol 16:
    leader ranks, node/round/election.py). Whole rounds, so a peer's tickets are an integer every
    reader computes alike; a peer not listed counts 1 where it counts at all."""
    return {p: min(MAX_TICKETS, u // UNITS) for p, u in weights(rosters, claims).units.items() if u >= UNITS}


def credited(rosters: Mapping[int, Held]) -> set[str]:
    """Peers any of `rosters` credits (who vouches while nobody is established)."""
    return set(weights(rosters).units)


def token_units(tokens: Sequence[int], useful: Sequence[bool] | None = None, nominal: int = 0) -> list[int]:
    """Each entry's token share in units: min(t, d) / d of UNITS, floored, where d is the lower
    median claim of the `useful` entries (all, when None), at most `nominal` (a full round's
    tokens; 0: no bound). So a claim above the median buys nothing, and junk entries claiming
    10^9 tokens cannot raise the median that the useful ones are measured by. Integers only."""
    useful = [True] * len(tokens) if useful is None else list(useful)
    claims = sorted(t for t, ok in zip(tokens, useful) if ok)
    if not claims:
        return [0] * len(tokens)
    d = claims[(len(claims) - 1) // 2]
    d = min(d, nominal) if nominal > 0 else d
    if d <= 0:
        return [0] * len(tokens)
    return [UNITS * min(t, d) // d if ok else 0 for t, ok in zip(tokens, useful)]


def carried(anns: Sequence[Announcement], before: set[str]) -> list[int]:
    """A v3 roster's credit: the token share among the entries whose author `before` (the
    peers established on the chain before it) holds, 0 for the others."""
    return token_units([a.tokens for a in anns], [a.peer in before for a in anns])


def is_v3(roster: Roster) -> bool:
    """A v3 roster names its round's final parts (node/round/v3.py); a v2 roster, and a v3
    round's call (protocol/kinds/call.py, which credits nothing), name none."""
    return bool(getattr(roster, "finals", b""))


def check(roster: Roster, anns: Sequence[Announcement], before: set[str]) -> None:
    """What the chain alone decides of a roster's credit (every reader: members, catch-up, the
    audit): a v3 roster's is exactly `carried`; a v2 roster's, the peers that applied it checked.
    A v2 roster credits only sealed and receipted entries (protocol 18: sealed.check). Raises ProtocolError."""
    if is_v3(roster):
        if list(roster.credit) != carried(anns, before):
            raise ProtocolError("a v3 roster credits other than its established authors' token shares")
    elif isinstance(roster, Roster):  # a v3 round's call credits nothing
        sealed.check(roster, anns)


def wrong(written: Sequence[int], low: Sequence[int], high: Sequence[int], peers: Sequence[str]) -> str | None:
    """Why a roster's credit is not ours (None: it is). `low` and `high` are our own credit with the
    usefulness threshold a hair above and below its value (node/outer/useful.py), so an entry
    within float rounding of the threshold may go either way. A roster that credits nobody is
    taken (`judged_none`): a leader that synced lately lacks the rounds before that a fresh part
    is measured against and credits nothing (Applier.credit_round); refusing that stalled a young
    run whose organizer had resynced. Any other credit must be ours, entry by entry (protocol 17):
    when less was taken, a leader that credited honest peers 0 and its own keys in full raised
    its keys' tickets against theirs round by round (a share c of the work led c / (1 - c) of
    the rounds), and kept listed newcomers from being established, with no claim against it
    (tests/test_sybil_attacks_5.py)."""
    if len(written) != len(low):
        return f"credits {len(written)} of its {len(low)} entries"
    if not any(written):
        return None
    for peer, w, a, b in zip(peers, written, low, high):
        if not min(a, b) <= w <= max(a, b):
            return f"credits {peer[:16]} {w}/{UNITS}, we compute {a}/{UNITS}"
    return None
