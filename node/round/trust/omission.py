"""A roster must hold what was announced in time: cutoffs, seers and omission claims (issue 16,
design step 5, docs/trust-model.md).

- **Cutoff.** A roster carries `cutoff`, its leader's time when it stopped collecting (after its
  last read of the updates key), at most its `time`, and at least the chain's floor: the time of
  the roster before plus the median delay, over the FLOOR_ROSTERS rosters before, between a
  roster's time and its entries' signed times (capped at collect_timeout). A leader cannot close
  a round before the median announcer of recent rounds could announce.
- **Seers.** While it awaits roster r, a peer notes when it first saw each valid announcement of
  r (LOOK_EVERY s). Its next announcement lists in `seen_late` (the first SEEN_PREFIX bytes of
  the body hash, at most MAX_SEEN_LATE) those it saw LATE_MARGIN s before the cutoff (or before
  it took the roster, if earlier) whose author the roster does not hold, is live, not banned and
  known to the chain (an author of the KNOWN rosters before r: newcomers wait for their share).
- **Claims.** A peer left out of roster r puts its own announcement of r in `claim` of its next
  announcements (one of rounds r+1..r+CLAIM_ROUNDS, checked by protocol/signed.py) until the
  chain counts it. It counts when the entries of rosters r+1..r+CLAIM_ROUNDS whose `seen_late`
  lists it hold more than half of its jury's credit: `base(r)` (the peers with established_rounds
  rounds' credit in the BASE_SPAN rosters before r, from plain entries, no claims, so nothing is
  recursive; or, while nobody has, everyone they credit) less the two parties, the claimant and
  r's leader, each juror weighing its whole rounds of credit in that span (at least 1; protocol 16:
  before, one a key). Then its author earns for r the credit of the entry that carried the claim
  (credit.py, Ledger.established), and unless roster r lists it `unserved`
  its leader gets an omission mark (marks.py). Nothing ties a claim to an announcement anyone
  stored, so the jury's word is all there is: framing an honest leader takes jurors holding more
  than half of the jury's credit vouching for a ghost (protocol 16; a crowd of about half of base(r)'s
  keys, whatever their credit, in protocols 7-14; a third, before, let N/3 + 1 identities of N frame:
  tests/test_sybil_attacks_3.py, tests/test_election_weight.py). A hostile leader censoring
  an honest peer is still caught while honest peers are over half of base(r) and see in time.

Everything here is a pure function of the rosters held (`rosters`: round -> AcceptedRoster),
so every reader with the same window decides alike. A claim counts only while its reader holds
all BASE_SPAN rosters before its round: about 32 rounds after it, in a 64-roster window.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from node.round.trust import credit
from protocol import signed
from protocol.errors import ProtocolError
from protocol.records import CLAIM_ROUNDS, MAX_SEEN_LATE, SEEN_PREFIX, Announcement, Roster

LATE_MARGIN = 10.0  # seconds before the cutoff a seer must have seen an announcement it lists
LOOK_EVERY = 2.0  # seconds between a waiting peer's reads of the updates key
FLOOR_ROSTERS = 8  # rosters whose entries' delays the cutoff floor takes the median of
BASE_SPAN = 32  # rosters before round r whose established peers are a claim of r's jury
AHEAD = 5.0  # seconds a roster's time may be ahead of a live reader's clock (honest clocks: NTP, ~1 s apart)
KNOWN = 32  # rosters before round r an author must be in to be listed or to claim (admission's LOOKBACK)


class Held(Protocol):
    """What this module reads of a roster the chain holds (node/round/ledger.py: AcceptedRoster)."""

    roster: Roster
    announcements: tuple[Announcement, ...]


class Claim(NamedTuple):
    """A claim the chain counts."""

    claimant: str
    round: int
    """The round whose roster left the claimant out."""
    leader: str
    """That roster's leader."""
    excused: bool
    """That roster listed the claimant `unserved`: no mark for its leader."""
    carried: int = 0
    """The round of the roster whose entry (the claimant's later update) carried the claim: the
    claim earns what that entry earned (node/round/trust/credit.py)."""


def prefix(envelope: dict) -> bytes:
    """How `seen_late` names a signed announcement: the first bytes of its body's SHA-256."""
    return hashlib.sha256(envelope["body"]).digest()[:SEEN_PREFIX]


# ------------------------------------------------------------------------------------ cutoff
def floor(rosters: Mapping[int, Held], round_no: int, collect_timeout: float) -> float | None:
    """The earliest cutoff roster `round_no` may carry; None without the roster before. A reader
    that lacks some of the FLOOR_ROSTERS rosters (and the one before each) takes the roster
    before's time alone: it may take more than a whole reader, never refuse what one takes."""
    before = rosters.get(round_no - 1)
    if before is None:
        return None
    span = range(max(2, round_no - FLOOR_ROSTERS), round_no)
    if not all(k in rosters and k - 1 in rosters for k in span):
        return before.roster.time
    delays = [max(0.0, a.time - rosters[k - 1].roster.time) for k in span for a in rosters[k].announcements]
    return before.roster.time + (min(statistics.median(delays), collect_timeout) if delays else 0.0)


def check_cutoff(roster: Roster, rosters: Mapping[int, Held], collect_timeout: float) -> None:
    """Raises ProtocolError unless `roster`'s cutoff is at least the floor the chain before it
    (`rosters`, holding the roster its `prev` names) gives, and at most its time."""
    if roster.cutoff > roster.time:
        raise ProtocolError(f"its cutoff {roster.cutoff:.1f} is after its own time {roster.time:.1f}")
    least = floor(rosters, roster.round, collect_timeout)
    if least is not None and roster.cutoff < least:
        raise ProtocolError(f"closed collection at {roster.cutoff:.1f}, before the chain's floor {least:.1f}")


def dated_ahead(roster: Roster, now: float) -> str:
    """Why a live reader whose clock reads `now` does not take `roster` yet ("": it may): dated
    more than AHEAD s ahead of it. A clock skew (the leader's or ours) or a lie: the floor of
    the next round starts from that time, so a lie of 29 s stalled its leader a collect_timeout."""
    ahead = roster.time - now
    if ahead <= AHEAD:
        return ""
    return (
        f"dated {ahead:.1f} s ahead of our clock (clock skew over {AHEAD:.0f} s: its leader's clock or ours"
        f" is off, or it lies); not taken before our clock is within {AHEAD:.0f} s of it"
    )


# ------------------------------------------------------------------------------------ claims
def base(rosters: Mapping[int, Held], round_no: int, k: int) -> set[str]:
    """The peers a claim of `round_no` is judged among (less its claimant and the round's
    leader): those with k rounds' credit in the BASE_SPAN rosters before it (every one credited
    while nobody has; credit.py: a crowd the rosters list but never credit is no juror); empty
    unless all of those are held."""
    return set(jurors(rosters, round_no, k))


def jurors(rosters: Mapping[int, Held], round_no: int, k: int) -> dict[str, int]:
    """`base`'s peers, each with its vote: its whole rounds of credit in the span (at least 1;
    protocol 16), so a jury's majority is one of credited work, not of keys: a crowd of keys
    with 2 rounds' credit each weighs 2 a key beside an honest peer's 32."""
    span = range(max(1, round_no - BASE_SPAN), round_no)
    if not span or not all(r in rosters for r in span):
        return {}
    units = credit.weights({r: rosters[r] for r in span}).units
    chosen = {p: u for p, u in units.items() if u >= k * credit.UNITS} or units
    return {p: max(1, u // credit.UNITS) for p, u in chosen.items()}


def claims(rosters: Mapping[int, Held], k: int, upto: int | None = None) -> list[Claim]:
    """The claims the rosters up to round `upto` (default: all held) count, one per (claimant, round).
    Remembered by the rosters' identities: a peer asks on every poll (Ledger.established, marks),
    and a crowd whose every entry carries a claim made each call cost entries x window (tests/
    test_sybil_attacks_3.py)."""
    upto = max(rosters, default=0) if upto is None else upto
    held = sorted(rosters.items(), key=lambda item: item[0])
    key = (k, upto, tuple((r, id(a)) for r, a in held))  # ids stay unique: the memo holds the rosters
    with _lock:
        hit = _memo.get(key)
    if hit is not None:
        return list(hit[1])
    out = _count_claims(rosters, k, upto)
    with _lock:
        if len(_memo) >= MEMO:
            _memo.pop(next(iter(_memo)))
        _memo[key] = (held, tuple(out))
    return out


MEMO = 16  # windows whose claims are remembered (a peer's ledger, its marks' view, a catch-up's copy)
_memo: dict[tuple, tuple[list, tuple[Claim, ...]]] = {}
_lock = threading.Lock()


def _count_claims(rosters: Mapping[int, Held], k: int, upto: int) -> list[Claim]:
    out: dict[tuple[str, int], Claim] = {}
    bases: dict[int, dict[str, int]] = {}  # one base and one set of known authors per claimed round, not per claim
    known: dict[int, set[str]] = {}
    for c in sorted(r for r in rosters if r <= upto):
        for a in rosters[c].announcements:
            if a.claim is None:
                continue
            try:
                claimed = signed.open_record(a.claim, Announcement, signer=a.peer)  # remembered: no RSA
            except ProtocolError:
                continue  # protocol/signed.py refused it already: no roster holds such an entry
            r = claimed.round
            if (a.peer, r) in out:
                continue
            if r not in bases:
                bases[r] = jurors(rosters, r, k)
                known[r] = {
                    x.peer for q in range(max(1, r - KNOWN), r) if q in rosters for x in rosters[q].announcements
                }
            if _counts(rosters, claimed, prefix(a.claim), upto, bases[r], known[r]):
                omitted = rosters[r].roster
                out[(a.peer, r)] = Claim(a.peer, r, omitted.leader, a.peer in omitted.unserved, c)
    return list(out.values())


def _counts(
    rosters: Mapping[int, Held], claimed: Announcement, name: bytes, upto: int, among: dict[str, int], known: set[str]
) -> bool:
    r = claimed.round
    omitted = rosters.get(r)
    if omitted is None or claimed.run != omitted.roster.run or claimed.base != omitted.roster.base:
        return False  # an announcement for another state was rightly left out
    if any(a.peer == claimed.peer for a in omitted.announcements):
        return False  # not left out
    if claimed.peer not in known:
        return False  # a newcomer: a leader may leave it out (admission's share)
    seers = {
        a.peer
        for q in range(r + 1, min(r + CLAIM_ROUNDS, upto) + 1)
        if q in rosters
        for a in rosters[q].announcements
        if name in a.seen_late
    }
    jury = {p: w for p, w in among.items() if p not in (claimed.peer, omitted.roster.leader)}  # neither party vouches
    return bool(jury) and 2 * sum(jury.get(p, 0) for p in seers) > sum(jury.values())  # over half the rest's credit


def claimed(rosters: Mapping[int, Held], k: int) -> Counter:
    """Rounds the chain's claims count per claimant: one per claimant and round."""
    return Counter(c.claimant for c in claims(rosters, k))


# ------------------------------------------------------------------------------------- seers
class Seer:
    """One peer's memory for step 5: when it first saw each announcement of the rounds it awaits
    (wall time, which cutoffs are in), what its next announcement lists, and its own
    announcements that rosters left out. No I/O: RoundProtocol feeds it."""

    def __init__(self, me: str):
        self.me = me
        self.first: dict[int, dict[bytes, tuple[float, str]]] = {}  # round -> prefix -> (first seen, author)
        self.looked: dict[int, float] = {}  # round -> when (monotonic) we last read its announcements
        self.late: tuple[int, tuple[bytes, ...]] = (0, ())  # (round, prefixes) for our next announcement
        self.mine: dict[int, dict] = {}  # round -> our announcement envelope (without a claim: claimable)
        self.left_out: dict[int, dict] = {}  # round -> that envelope, which its roster left out
        self.floor_at: dict[int, float] = {}  # round -> when (monotonic) we may lead it at the latest

    def due(self, round_no: int, monotonic: float) -> bool:
        """Time for a look at round `round_no`'s announcements (every LOOK_EVERY s)?"""
        if monotonic - self.looked.get(round_no, -LOOK_EVERY) < LOOK_EVERY:
            return False
        self.looked = {round_no: monotonic}
        return True

    def saw(self, round_no: int, envelopes: Mapping[str, dict], now: float) -> None:
        """Note what a read of round `round_no`'s valid announcements (author -> envelope) showed at `now`."""
        first = self.first.setdefault(round_no, {})
        for r in [r for r in self.first if r < round_no - 1]:
            del self.first[r]
        for author, env in envelopes.items():
            first.setdefault(prefix(env), (now, author))

    def announced(self, round_no: int, envelope: dict, claims: bool) -> None:
        """We announced; an announcement carrying a claim cannot be claimed in turn (signed.py)."""
        self.mine = {r: e for r, e in self.mine.items() if r >= round_no - CLAIM_ROUNDS}
        if not claims:
            self.mine[round_no] = envelope

    def took(self, roster: Roster, entries: set[str], now: float, listable: set[str]) -> None:
        """Roster `roster` (holding `entries`' updates) arrived at `now`: what we saw in time of
        `listable` authors that it left out, and whether it left us out."""
        r = roster.round
        by = min(roster.cutoff, now) - LATE_MARGIN
        seen = self.first.pop(r, {})
        late = sorted(
            (t, p)
            for p, (t, author) in seen.items()
            if t <= by and author in listable and author not in entries and author not in (roster.leader, self.me)
        )
        self.late = (r, tuple(p for _, p in late[:MAX_SEEN_LATE]))
        if self.me not in entries and r in self.mine:
            self.left_out[r] = self.mine[r]

    def fields(self, round_no: int, counted: set[tuple[str, int]]) -> tuple[tuple[bytes, ...], dict | None]:
        """`seen_late` and `claim` of our announcement of `round_no` (`counted`: the claims the
        chain counts already); the oldest omission not yet counted is claimed until it is."""
        (r, late), self.late = self.late, (0, ())
        late = late if round_no - CLAIM_ROUNDS <= r < round_no else ()
        self.left_out = {
            q: e
            for q, e in self.left_out.items()
            if round_no - CLAIM_ROUNDS <= q < round_no and (self.me, q) not in counted
        }
        return late, self.left_out[min(self.left_out)] if self.left_out else None

    def may_close(self, round_no: int, least: float | None, now: float, monotonic: float, most: float) -> bool:
        """May we close round `round_no`'s collection now, given the chain's floor `least`? We wait
        for our clock to pass it, or (a clock behind the chain's, or a floor a roster's lying
        time pushed ahead) at most `most` s of our own: then the cutoff is the floor itself."""
        if least is None or now >= least:
            return True
        deadline = self.floor_at.setdefault(round_no, monotonic + min(least - now, most))
        self.floor_at = {round_no: deadline}
        return monotonic >= deadline
