"""Who may lead a round, in which order: ranks nobody can grind, reshuffled per attempt.

Candidates are live peers (valid signed heartbeat, active) that hold the round's base state
(or have already moved past the round: a fast leader that applied its roster is still the one
who led it) and are established in the ledger.

They are ranked under the round's beacon. beacon(1) = SHA-256(run id); the leader of round r
puts in its roster `reveal`, its unique signature of (run, r) (protocol/signing.py:
sign_unique: PKCS#1 v1.5, one valid signature per key and message), and
beacon(r + 1) = SHA-256("beacon" | beacon(r) | reveal(r)). So the next round's ranks follow
from who led this one, never from what it put in its roster (which updates, its own bytes):
a leader that could once preview its successor per variant of its roster now has no choice
but to publish or withhold. (The old key hashed the base state, which the previous leader
chooses: one attacker led 8 rounds of 8.)

A round runs in attempts of ATTEMPT_RANKS leader turns. In attempt a the candidates are
sorted by their rank keys; only ranks 0..ATTEMPT_RANKS-1 may lead, rank i from
`turn(Slot(a, i))` seconds after the round opened. When no acceptable roster came within
attempt_seconds, attempt a + 1 reshuffles every rank, the first ranks of earlier attempts after
the rest: silent peers that drew the first ranks hold the round for one attempt, not for ever
(and skip-marked peers, node/round/trust/marks.py, rank after every other).

Rank keys follow credit (protocol 16, issue 16): a candidate holds t tickets, its whole rounds of
credit in the window's rosters before the round (node/round/trust/credit.py: tickets; at least 1,
at most MAX_TICKETS), and its key is the least of SHA-256(beacon | a | i | peer) over its tickets
i < t (ticket 0 is the key of protocol 14). The least of t uniform draws comes first among all
candidates' draws with chance t / (all tickets), so a peer leads about in proportion to its credit,
whatever number of keys that credit is spread over: 12 Sybil keys with 2 rounds' credit each lead
about 9% of rounds beside 4 honest peers with the window's full credit, not 75% (tests/
test_election_weight.py). Integers and hashes only: every reader holding the window ranks alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import NamedTuple

from node.config import SwarmConfig
from node.round.ledger import AcceptedRoster, siblings
from node.round.trust.credit import MAX_TICKETS
from protocol import signed, signing
from protocol.errors import ProtocolError
from protocol.maddrs import dialable
from protocol.records import MAX_ATTEMPT, Heartbeat, Roster

ATTEMPT_RANKS = 3  # ranks that may lead in one attempt (design: [trust] attempt_ranks)
REVEAL_DOMAIN = b"swarmtrain-reveal-v1\x00"


class Slot(NamedTuple):
    """Where a leader stands in a round's election: smaller is preferred, attempt first."""

    attempt: int
    rank: int


class RosterCheck(NamedTuple):
    """A roster that passed RoundProtocol.check_roster, and its place in the election."""

    accepted: AcceptedRoster
    sibling: AcceptedRoster | None
    """A sibling of our ledger's last roster that this one chains on, for Ledger.swap."""
    slot: Slot
    """Its leader's (attempt, rank): readers take the smallest."""

    def preference(self) -> tuple:
        """Smallest first: (attempt, rank), then a roster on our own chain before one that needs a
        swap (a sibling's beacon is its leader's), then the leader id: every reader picks alike."""
        return (*self.slot, self.sibling is not None, self.accepted.roster.leader)


def reveal_message(run: str, round_no: int) -> bytes:
    """What the leader of `round_no` signs with sign_unique: its reveal for that round."""
    return REVEAL_DOMAIN + run.encode() + b"\x00" + str(int(round_no)).encode()


def first_beacon(run: str) -> str:
    """beacon(1): nobody led before round 1, so the run id (the manifest's hash) seeds the chain."""
    return hashlib.sha256(run.encode()).hexdigest()


def next_beacon(beacon: str, reveal: bytes) -> str:
    """beacon(r + 1) from beacon(r) and the reveal of round r's leader (hex in, hex out)."""
    return hashlib.sha256(b"beacon" + bytes.fromhex(beacon) + reveal).hexdigest()


NO_TICKETS: Mapping[str, int] = {}  # every candidate holds 1 ticket (a run whose peers nobody credited yet)
TICKET = b"\xff"  # starts ticket i > 0's field: never a byte of UTF-8, so never the start of a peer id


def rank_key(beacon: str, attempt: int, peer: str, tickets: int = 1) -> bytes:
    """`peer`'s key in `attempt`: the least of its `tickets` draws (at least 1, at most
    MAX_TICKETS). Fixed-width fields, so no (attempt, ticket, peer) hashes like another; ticket 0
    is protocol 14's key, so with 1 ticket each the order is the old one."""
    return _key(beacon, int(attempt), peer, max(1, min(MAX_TICKETS, int(tickets))))


@lru_cache(maxsize=8192)  # asked on every poll, for each attempt up to the running one
def _key(beacon: str, attempt: int, peer: str, tickets: int) -> bytes:
    head = bytes.fromhex(beacon) + attempt.to_bytes(8, "big")
    keys = [hashlib.sha256(head + peer.encode()).digest()]
    keys += [hashlib.sha256(head + TICKET + i.to_bytes(1, "big") + peer.encode()).digest() for i in range(1, tickets)]
    return min(keys)


def ranking(
    beacon: str, attempt: int, peers: set[str], last: set[str] = frozenset(), tickets: Mapping[str, int] = NO_TICKETS
) -> list[str]:
    """Candidates in the order they may lead in this attempt: rank 0 first. Those in `last`
    (skip-marked by the chain, node/round/trust/marks.py) come after every other, and so do the first
    ranks of the round's earlier attempts (an attempt runs only when theirs brought no roster):
    silent peers that drew the first ranks hold one attempt, not one each time a reshuffle
    draws them again, so S silent candidates fail at most S / ATTEMPT_RANKS attempts in a row.
    Once every candidate had a first rank, later attempts are plain reshuffles. `tickets`: peer ->
    its tickets (Ledger.tickets; 1 for a peer not in it)."""
    passed: set[str] = set()
    for earlier in range(attempt):
        if passed >= peers:
            passed = set()  # everyone was passed over: order by the keys alone from here
            break
        passed |= set(_order(beacon, earlier, peers, last, passed, tickets)[:ATTEMPT_RANKS])
    return _order(beacon, attempt, peers, last, passed, tickets)


def _order(
    beacon: str, attempt: int, peers: set[str], last: set[str], passed: set[str], tickets: Mapping[str, int]
) -> list[str]:
    return sorted(peers, key=lambda p: (p in last, p in passed, rank_key(beacon, attempt, p, tickets.get(p, 1))))


def slot_of(
    beacon: str,
    attempt: int,
    peers: set[str],
    leader: str,
    last: set[str] = frozenset(),
    tickets: Mapping[str, int] = NO_TICKETS,
) -> Slot:
    """`leader`'s slot in `attempt` among `peers` (itself counted whether listed or not; `last`
    and `tickets` as in `ranking`)."""
    return Slot(attempt, ranking(beacon, attempt, peers | {leader}, last, tickets).index(leader))


def attempt_seconds(cfg: SwarmConfig) -> float:
    """One attempt: rank 0's collect, then a backoff for each rank."""
    return cfg.collect_timeout + ATTEMPT_RANKS * cfg.leader_backoff


def attempt_at(elapsed: float, cfg: SwarmConfig) -> int:
    """The attempt running `elapsed` seconds after the round opened."""
    return max(0, int(elapsed // attempt_seconds(cfg)))


def turn(slot: Slot, cfg: SwarmConfig) -> float:
    """Seconds after the round opened from which `slot` may lead: its attempt's start, and for
    ranks after the first, collect_timeout + rank x leader_backoff more (as the single attempt
    of protocol v2 had it). Rank 0 of attempt 0 also waits for the announcements; later
    attempts' rank 0 finds them in and leads at once."""
    start = slot.attempt * attempt_seconds(cfg)
    return start if slot.rank == 0 else start + cfg.collect_timeout + slot.rank * cfg.leader_backoff


def next_slot(slot: Slot) -> Slot:
    """The slot whose turn follows `slot`'s: the next rank, else rank 0 of the next attempt."""
    return Slot(slot.attempt, slot.rank + 1) if slot.rank + 1 < ATTEMPT_RANKS else Slot(slot.attempt + 1, 0)


def may_lead(slot: Slot, elapsed: float, cfg: SwarmConfig) -> bool:
    return slot.rank < ATTEMPT_RANKS and elapsed >= turn(slot, cfg)


def check_turn(slot: Slot, elapsed: float, cfg: SwarmConfig) -> None:
    """Raises ProtocolError unless `slot` may lead `elapsed` seconds after the round opened (on
    the reader's own clock: a roster's signed time is its leader's claim). A roster refused
    because its turn has not come is read again on the next poll."""
    if slot.rank >= ATTEMPT_RANKS:
        raise ProtocolError(f"its leader ranks {slot.rank} in attempt {slot.attempt}; ranks 0-{ATTEMPT_RANKS - 1} lead")
    if elapsed < turn(slot, cfg):
        raise ProtocolError(
            f"its leader is rank {slot.rank} of attempt {slot.attempt}, whose turn comes "
            f"{turn(slot, cfg) - elapsed:.0f} s from now"
        )


def sibling_slot(accepted: AcceptedRoster, among: set[str], tickets: Mapping[str, int] = NO_TICKETS) -> Slot:
    """A roster's slot ranked among `among` (its round's contributors that may lead) with the
    window's `tickets` before its round: the same for every sibling (they list the same updates)
    and for every reader, so readers order siblings alike; a rank that may not lead sorts after
    every one that may."""
    roster = accepted.roster
    slot = slot_of(roster.beacon, roster.attempt, among, roster.leader, tickets=tickets)
    return slot if slot.rank < ATTEMPT_RANKS else Slot(MAX_ATTEMPT + 1, slot.rank)


def check_reveal(roster: Roster, leader_key: bytes) -> None:
    """Raises ProtocolError unless the roster's reveal is its leader's unique signature of its
    round (`leader_key`: the DER key its envelope was verified with)."""
    signing.verify_unique(roster.reveal, reveal_message(roster.run, roster.round), leader_key)


def better_siblings(
    mine: AcceptedRoster,
    stored: dict,
    max_bytes: int,
    leaders: set[str] | None,
    came_late: Callable[[Slot], bool] = lambda slot: False,
    tickets: Mapping[str, int] = NO_TICKETS,
) -> list[AcceptedRoster]:
    """Of `stored` (the DHT's rosters of mine's round, leader -> envelope), those that may replace
    `mine`, best first: siblings (two leaders led the round at once, with the same updates and
    result; accepted.siblings) by a contributor of the round among `leaders` (established peers;
    None: anyone, a young run), with mine's beacon, their leader's unique reveal and a better
    sibling_slot. Swaps only ever go to a better slot, so peers converge on the best sibling;
    were any sibling good enough, each contributor (newcomers included) could offer its own
    reveal and so pick among as many next beacons as it has identities.

    `skip` lists overrule the slot where the reader saw it for itself (issue 16, design step 8):
    - a sibling whose leader mine lists in `skip` never replaces mine. We took mine while that
      leader's roster was not there (had it been, we would have taken it: the smaller slot), so
      it came after its turn had passed: a rank 0 that stayed silent and then published a copy
      of rank 1's roster (its own reveal, an empty skip) erased its mark; now it stays.
    - a sibling whose `skip` lists mine's leader replaces mine, whatever its slot, when
      `came_late(its slot)`: we watched the round from before that slot's turn and took mine
      only from it on, on our own clock (two leaders raced; the passed-over one was late).
    Both use the reader's own view, not the two rosters alone, because from the rosters alone an
    honest rank 1 that passed over a silent rank 0 looks like a hostile rank 1 that copies an
    honest rank 0's roster and lists it in `skip` (tests/test_delays.py): a rule that let the
    skipper win would let any contributor mark the leader of every round it ranks behind. Here a
    hostile rank 1 still marks rank 0 only where leading does: readers that took rank 0's roster
    before rank 1's turn keep it. What it can do is split readers that came to the round after
    its turn and see both rosters at once (they take rank 0's, the smaller slot): they hold
    what the swarm holds in the attack above, the other sibling in the silent-rank-0 one, and
    then refuse the next roster and resync, as after any round they could not follow."""
    among = {a.peer for a in mine.announcements}
    among = among if leaders is None else among & leaders

    def slot(accepted: AcceptedRoster) -> Slot:
        return sibling_slot(accepted, among, tickets)

    better = []
    for leader, env in stored.items():
        try:
            roster, anns = signed.open_roster(env, signer=str(leader), max_bytes=max_bytes)
            theirs = AcceptedRoster(env, roster, tuple(anns))
            passes_mine = mine.roster.leader in roster.skip and came_late(slot(theirs))
            if (
                siblings(mine, theirs)
                and roster.leader in among
                and roster.beacon == mine.roster.beacon
                and roster.leader not in mine.roster.skip
                and (slot(theirs) < slot(mine) or passes_mine)
            ):
                check_reveal(roster, env["key"])
                better.append(theirs)
        except ProtocolError:
            continue
    return sorted(better, key=slot)


def moved_on(
    peers: dict[str, Heartbeat], cands: set[str], me: str, round_no: int, tickets: Mapping[str, int] = NO_TICKETS
) -> bool:
    """Other candidates holding more than half of the others' `tickets` (1 a peer not in it) hold a
    state past `round_no`: the swarm took a roster of it while we were still training. Every slot's
    turn came long ago, then: the waiting peer treats the round as opened round_timeout before, so
    it takes the roster the swarm took (say rank 1's, led while we were late) instead of refusing it
    until its own clock reaches that turn and leading the round again as rank 0. Weighed by tickets,
    as ranks are: a peer back from a long freeze, with little credit in the window and not yet past
    the round, no longer ties one that led it (CI: the frozen-peer swarm test forked so). Heartbeats
    are their signers' word, so candidates holding most of the tickets could make a late peer take
    a roster early; they cannot stop a leader."""
    others = {p: tickets.get(p, 1) for p in cands - {me} if p in peers}
    past = sum(w for p, w in others.items() if peers[p].state_round >= round_no)
    return 2 * past > sum(others.values()) > 0


def candidates(
    peers: dict[str, Heartbeat], base: str, established: set[str] | None, round_no: int, ahead: int | None = None
) -> set[str]:
    """Live, active peers on state `base` or past round `round_no` (a leader that applied its
    roster first), restricted to `established` (None: no restriction, the start of a run, when
    no live peer is established yet). `ahead` bounds how far past: whom we wait for to lead is
    only a peer just past the round (ahead=1), not one far ahead, on the other side of a split
    swarm; whose roster we accept is any (a peer catching up reads rosters led long ago), also
    one whose heartbeat says it is leaving (it led, then left: max_rounds, Ctrl+C). A
    peer's digest is its own claim either way; what makes a leader is the ledger and the
    signatures. Where some of them can be dialled from anywhere (a public address or a relay:
    protocol/maddrs.py), only those: a swarm on one LAN, or on this machine, is unchanged."""
    live = {
        p
        for p, hb in peers.items()
        if (hb.active or ahead is None)  # a leader may leave after leading
        and _on_round(hb, base, round_no, ahead)
    }
    eligible = live if established is None else live & established
    if any(dialable(peers[p].maddrs) for p in eligible):
        # a peer behind NAT cannot fetch the updates of other peers behind NAT (nobody dialled
        # it): it would leave them out of its rosters; eligible peers that can be dialled lead
        # instead (and where none can, NAT'd ones still do: a round led without some is better
        # than no round)
        eligible = {p for p in eligible if dialable(peers[p].maddrs)}
    return eligible


def organizer_candidate(
    peers: dict[str, Heartbeat], base: str, organizer: str, round_no: int, ahead: int | None = None
) -> set[str]:
    """A young run's candidates (node/round/trust/chain.py: young): the organizer alone, while its
    witness's heartbeat is live on state `base` or past round `round_no` (`ahead` as in
    `candidates`). Its heartbeat is inactive (it trains nothing, so no leader waits for an update
    of it), and it is dialled by every member, so neither filter of `candidates` applies."""
    hb = peers.get(organizer)
    return {organizer} if hb is not None and _on_round(hb, base, round_no, ahead) else set()


def _on_round(hb: Heartbeat, base: str, round_no: int, ahead: int | None) -> bool:
    """Does the heartbeat hold state `base`, or a state at most `ahead` rounds past `round_no`?"""
    top = float("inf") if ahead is None else round_no + ahead
    return hb.digest == base or round_no <= hb.state_round <= top
