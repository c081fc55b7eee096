"""Costly delays cost their author, not every round (issue 16, design step 8).

Two lists a leader writes into its roster, and what the chain makes of them:

- `skip`: the candidates it passed over, in its own view. They ranked ahead of it (ranks 0-2 of
  each earlier attempt, and the ranks before its own in its attempt) and no roster of theirs
  came. A peer with MARKS_TO_DROP skip marks in the last MARK_WINDOW rosters of the chain may
  not lead (it is no candidate) until the marks age out. So silent Sybils that draw the first
  ranks stall one attempt each, then drop out, where they once stalled every round they drew.
- `unserved`: announcers whose update the leader could not fetch within the fetch bound. A peer
  listed by MARKS_TO_DROP distinct leaders in the window is no longer waited for (lead.collected's
  `expected`) and its update is fetched last, with SLOW_FETCH seconds: a peer that announces and
  never serves costs a round that, not a whole fetch bound. Listing marks nobody else. The
  listings only suggest: a listing counts for a peer only if it came after the last round
  whose update of that announcer the peer fetched itself (slow_to_me). Two hostile leaders no
  longer frame a peer that serves: an honest roster holding its update between their listings
  voids the first for every peer that applied it.

A third kind, `omission` marks, comes from claims the chain counts (omission.py, design step 5):
MARKS_TO_DROP rounds in the window in which a leader left out a peer it did not list unserved
rank it last, as skip marks do (omission_marked).

A reader checks each list before taking a roster, with what the roster itself carries and the
window before it, so every reader decides alike: a skipped peer must rank ahead of the leader
under the roster's beacon in some attempt up to its own (the rank keys alone, with the tickets of
the rosters before it: no set of candidates, which readers may see differently), at most
ATTEMPT_RANKS per attempt; the leader may not list itself, nor list as
unserved an update its roster holds. A hostile leader can so mark only peers ranked ahead of it
whose rosters did not arrive: had one arrived, readers would have taken it (smaller slot).

The cost to an honest peer: a rank 0-2 that was slow (its roster came after the next rank's)
gets one mark; 2 in 32 rounds keep it from leading (it still trains and is credited) for at most
32 rounds. An honest announcer whose uplink failed twice is fetched with SLOW_FETCH seconds until
the listings age out: a slow uplink's update may be left out for those rounds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from node.round.election import ATTEMPT_RANKS, NO_TICKETS, Slot, rank_key, ranking
from node.round.ledger import Ledger
from node.round.trust import omission
from protocol.errors import ProtocolError
from protocol.records import MAX_SKIP, MAX_UNSERVED, Roster

MARK_WINDOW = 32  # rosters a mark counts in (design: W)
# Marks count up to the last roster, like the beacon: a round is ranked after its reader has
# converged on the best sibling of the round before (RoundProtocol.converge), whose lists count.
MARK_LAG = 1
MARKS_TO_DROP = 2  # skip marks (or unserved listings by distinct leaders) that take effect
SLOW_FETCH = 2.0  # seconds the leader gives the update of a peer that twice did not serve


def passed_over(
    beacon: str,
    slot: Slot,
    peers: set[str],
    me: str,
    last: set[str] = frozenset(),
    tickets: Mapping[str, int] = NO_TICKETS,
) -> tuple[str, ...]:
    """The `skip` list of a leader in `slot` among `peers` (the candidates it ranked, `last` the
    marked ones it ranked after the rest, `tickets` the window's, Ledger.tickets): ranks
    0..ATTEMPT_RANKS-1 of each earlier attempt and the ranks before its own in its attempt,
    latest first, at most MAX_SKIP; only peers that `check` will find ahead of it (a marked
    leader, leading because few others are live, does not mark the unmarked peers ranked before
    it by their mark alone)."""
    out: list[str] = []
    for attempt in range(slot.attempt, -1, -1):
        order = ranking(beacon, attempt, peers | {me}, last, tickets)
        ahead = order[: order.index(me)] if attempt == slot.attempt else order[:ATTEMPT_RANKS]
        out += [
            p
            for p in reversed(ahead)
            if p != me and p not in out and ranked_ahead(beacon, slot.attempt, p, me, tickets)
        ]
    return tuple(out[:MAX_SKIP])


def ranked_ahead(beacon: str, attempt: int, peer: str, leader: str, tickets: Mapping[str, int] = NO_TICKETS) -> bool:
    """`peer`'s rank key comes before `leader`'s in some attempt up to `attempt` (each with its
    `tickets`): what a reader can check of a skip mark without knowing whom the leader saw live."""
    mine, theirs = tickets.get(peer, 1), tickets.get(leader, 1)
    return any(rank_key(beacon, a, peer, mine) < rank_key(beacon, a, leader, theirs) for a in range(attempt + 1))


def check(roster: Roster, entries: set[str], tickets: Mapping[str, int] | None = NO_TICKETS) -> None:
    """Raises ProtocolError unless `roster`'s skip and unserved lists could be an honest leader's
    (`entries`: the peers whose updates it lists; `tickets`: the window's before it, Ledger.tickets;
    None: we do not hold that window (Ledger.holds_window) and judge no skip by rank, since our
    tickets are not the swarm's: we would refuse honest leaders' marks)."""
    if roster.leader in roster.skip or roster.leader in roster.unserved:
        raise ProtocolError("its leader lists itself as skipped or unserved")
    if len(roster.skip) > ATTEMPT_RANKS * (roster.attempt + 1):
        raise ProtocolError(f"skips {len(roster.skip)} peers in attempt {roster.attempt}")
    behind = (
        None
        if tickets is None
        else next(
            (p for p in roster.skip if not ranked_ahead(roster.beacon, roster.attempt, p, roster.leader, tickets)), None
        )
    )
    if behind is not None:
        raise ProtocolError(f"skips {behind[:16]}, which ranks behind its leader in every attempt")
    if entries & set(roster.unserved):
        raise ProtocolError("lists as unserved an update it holds")


def _window(ledger: Ledger, round_no: int) -> list[Roster]:
    """The chain's rosters of the MARK_WINDOW rounds up to round_no - MARK_LAG."""
    newest = round_no - MARK_LAG
    return [a.roster for r, a in ledger.rosters.items() if newest - MARK_WINDOW < r <= newest]


def skip_marked(ledger: Ledger, round_no: int) -> set[str]:
    """Peers that may not lead round `round_no`: MARKS_TO_DROP skip marks in the window."""
    marks = Counter(p for roster in _window(ledger, round_no) for p in roster.skip)
    return {p for p, n in marks.items() if n >= MARKS_TO_DROP}


def omission_marked(ledger: Ledger, round_no: int, k: int) -> set[str]:
    """Leaders ranked after every unmarked candidate in round `round_no`: the claims the chain
    counts up to the last roster (omission.py; `k`: established_rounds) show MARKS_TO_DROP rounds
    of the window in which each left out a peer it did not list `unserved`."""
    newest = round_no - MARK_LAG
    rounds: dict[str, set[int]] = {}
    for c in omission.claims(ledger.rosters, k, upto=newest):
        if not c.excused and newest - MARK_WINDOW < c.round:
            rounds.setdefault(c.leader, set()).add(c.round)
    return {p for p, rs in rounds.items() if len(rs) >= MARKS_TO_DROP}


def slow_servers(ledger: Ledger, round_no: int) -> set[str]:
    """Announcers listed unserved by MARKS_TO_DROP distinct leaders in the window: not waited
    for in round `round_no`, and fetched last with SLOW_FETCH seconds: the chain's suggestion,
    before a peer's own fetches overrule it (slow_to_me)."""
    return slow_to_me(ledger, round_no, {})


def slow_to_me(ledger: Ledger, round_no: int, fetched: dict[str, int]) -> set[str]:
    """The slow servers this peer treats so in round `round_no`: announcers listed unserved by
    MARKS_TO_DROP distinct leaders in rosters of the window after the last round whose update of
    theirs this peer fetched itself (`fetched`: peer -> round, UpdateFetcher.fetched; as leader
    from the owner, or gathering a roster). The chain's listings only suggest: every peer gathers
    every update of the rounds it applies, so once an honest leader's roster holds an announcer's
    update, listings before it no longer count for anyone that applied it. An announcer that
    stopped serving (or never did) is in no roster after the listings: it is treated at once."""
    leaders: dict[str, set[str]] = {}
    for roster in _window(ledger, round_no):
        for p in roster.unserved:
            if roster.round > fetched.get(p, 0):
                leaders.setdefault(p, set()).add(roster.leader)
    return {p for p, who in leaders.items() if len(who) >= MARKS_TO_DROP}


def unserved_list(peers: list[str]) -> tuple[str, ...]:
    """A leader's `unserved` field: distinct, sorted, at most MAX_UNSERVED."""
    return tuple(sorted(set(peers))[:MAX_UNSERVED])
