"""The sealed-round credit rule (protocol 18, docs/protocol.md "Sealed rounds"; issue 16).

Without an information barrier a crowd of keys fetches the round's honest updates before the
roster exists and announces convex mixes of them, which no direction test tells from work
(tests/test_sybil_attacks_6.py). So a roster's credit is bound to what was fixed before any
payload moved: an entry may be credited only if

- its announcement is listed by the roster's first seal (`seals[0]`, signed by the roster's
  leader for its run, round and base before it fetched: protocol/kinds/sealed.py), and
- the roster carries its author's receipt naming `seals[0]` (an owner signs one receipt a
  round, for the first seal it released its update under: node/round/trust/gate.py);

and a roster credits nobody when an entry listed by `seals[0]` has no such receipt (a leader that
sealed one set and published another), or when it is not rank 0 of attempt 0 (`skip` non-empty or
`attempt` > 0: a candidate that was served and went silent would otherwise have leaked the round to
its crowd, whose mixes the next leader would list). Entries outside `seals[0]` (the second read's)
are aggregated as before and earn nothing. A pure function of the roster: every reader (members,
catch-up, the audit) computes it alike (`check`); signatures are verified once per envelope
(protocol/signed.py remembers what it opened).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import msgpack

from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.sealed import MAX_SEALED, Receipt, Seal, SealHead
from protocol.records import CLAIM_ROUNDS, Announcement, Roster

log = logging.getLogger("swarmtrain.rounds")
SEALS_FILE = "first-seals.msgpack"  # in the run's data dir (node/peer/wiring.py)


def signed_seal(
    key, *, run: str, round_no: int, base: str, leader: str, time: float, envelopes, after: str = ""
) -> dict:
    """`leader`'s Seal of the announcement `envelopes` (their body hashes, sorted, once each; the
    first MAX_SEALED: the others' owners refuse this seal and are left out), signed with `key`:
    what a leader presents before it fetches (node/round/lead.py). `after`: our first seal of the
    round and base (its body hash), on every later seal of it."""
    digests = tuple(sorted({signed.body_hash(e) for e in envelopes}))[:MAX_SEALED]
    seal = Seal(run=run, round=round_no, base=base, leader=leader, time=time, announcements=digests, after=after)
    return signed.seal(key, seal)


class FirstSeals(dict):
    """(round, base) -> our first seal of it as leader (RosterBuilder.sealed), written through to
    `path` when given one before the seal is presented. `hides` holds an honest leader to one first
    seal of a round and base: a leader that fetched under S0, restarted mid-round and led the same
    round again signed a second first seal, and any owner that released under S0 (a crowd key
    among them) made every reader void its roster (tests/test_sybil_attacks_9.py). A file that
    cannot be read or written is said and ignored: that restart is the case above, not a crash
    (a write that failed raised out of the leader's build: tests/test_sybil_attacks_10.py)."""

    def __init__(self, path: Path | None = None, me: str | None = None):
        super().__init__()
        self.path = path
        if path is None or not path.is_file():
            return
        try:
            kept = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
            for round_no, base, env in kept:
                seal = signed.open_record(env, Seal, signer=me)
                if (seal.round, seal.base) == (round_no, base):
                    super().__setitem__((round_no, base), env)
        except Exception as e:  # noqa: BLE001 -- our own file, but disks fail
            log.warning("first seals %s: %s: %s; starting without them", path, type(e).__name__, e)
            super().clear()

    def __setitem__(self, key: tuple[int, str], env: dict) -> None:
        super().__setitem__(key, env)
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("wb") as f:
                f.write(msgpack.packb([[r, b, e] for (r, b), e in self.items()], use_bin_type=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:  # a full or read-only disk: lead as before this file (only a restart is exposed)
            log.warning("first seals %s not written: %s: %s", self.path, type(e).__name__, e)


def first_seal(roster: Roster) -> Seal | None:
    """The roster's seals[0], when it is its leader's seal of the roster's run, round and base."""
    if not roster.seals:
        return None
    try:
        seal = signed.open_record(roster.seals[0], Seal, signer=roster.leader)
    except ProtocolError:
        return None
    return seal if (seal.run, seal.round, seal.base) == (roster.run, roster.round, roster.base) else None


def receipted(roster: Roster, digest: str) -> set[str]:
    """The owners whose receipt in `roster` names the seal whose body hashes to `digest`."""
    out = set()
    for env in roster.receipts:
        try:
            r = signed.open_record(env, Receipt)
        except ProtocolError:
            continue
        if (r.run, r.round, r.seal) == (roster.run, roster.round, digest):
            out.add(r.owner)
    return out


def creditable(roster: Roster, anns: Sequence[Announcement]) -> list[bool]:
    """Which of the roster's entries (`anns`: them opened, in order) may earn credit."""
    none = [False] * len(anns)
    seal = first_seal(roster)
    if seal is None or roster.skip or roster.attempt > 0 or len(roster.entries) != len(anns):
        return none
    if any(not follows(roster, s) for s in roster.seals[1:]):
        return none  # a first seal put second (protocol 21): the round's own first seal is not seals[0]
    listed = set(seal.announcements)
    owners = receipted(roster, signed.body_hash(roster.seals[0]))
    sealed = [signed.body_hash(e) in listed for e in roster.entries]
    if any(s and a.peer not in owners for s, a in zip(sealed, anns)):
        return none  # sealed one set, fetched or published another: nobody's round
    return sealed


def released_before(evidence: dict, ours: Seal, announcement: dict, candidates: Collection[str]) -> bool:
    """Whether `evidence`, the seal an owner's receipt names instead of our seal `ours` (protocol 19,
    protocol/messages.py ReceiptAnswer), shows that the owner released its update of the round first
    to another leader that may lead it: a seal that verifies, of our run, round and base, listing the
    owner's `announcement` (envelope), signed by another key among the round's `candidates`. Then the
    round went out before our seal: the leader keeps the entry (its roster credits nobody, as
    `creditable` says of an entry without a receipt naming seals[0]). Else the owner is a withholder."""
    try:
        seal = signed.open_record(evidence, Seal)
    except ProtocolError:
        return False
    return (
        (seal.run, seal.round, seal.base) == (ours.run, ours.round, ours.base)
        and signed.body_hash(announcement) in seal.announcements
        and seal.leader != ours.leader
        and seal.leader in candidates
    )


def masked(units: Sequence[int], allowed: Sequence[bool]) -> list[int]:
    """`units` with the entries that may not earn credit at 0."""
    return [u if ok else 0 for u, ok in zip(units, allowed)]


def check(roster: Roster, anns: Sequence[Announcement]) -> None:
    """Raises ProtocolError when the roster credits an entry that may not earn credit."""
    if not any(roster.credit):
        return
    allowed = creditable(roster, anns)
    for a, u, ok in zip(anns, roster.credit, allowed):
        if u and not ok:
            raise ProtocolError(f"credits {a.peer[:16]}, whose update is not sealed and receipted (protocol 18)")


def presented(roster: Roster, anns: Sequence[Announcement]) -> dict[str, str]:
    """Entry author -> the body hash of the seal a member names when it fetches that update after
    the roster (the first of the roster's seals that lists it): an owner whose roster read has not
    caught up serves its update under a seal it released it under (node/round/trust/gate.py)."""
    listing: dict[str, str] = {}
    for env in reversed(roster.seals):
        try:
            listing.update(dict.fromkeys(signed.open_record(env, Seal).announcements, signed.body_hash(env)))
        except ProtocolError:
            continue
    out = {}
    for e, a in zip(roster.entries, anns):
        seal = listing.get(signed.body_hash(e))
        if seal is not None:
            out[a.peer] = seal
    return out


def follows(roster: Roster, env: object) -> bool:
    """Whether `env` is a later seal of the roster's leader naming the roster's seals[0] (`after`):
    what an honest leader's second seal is (node/round/lead.py)."""
    try:
        seal = signed.open_record(env, Seal, signer=roster.leader)
    except ProtocolError:
        return False
    return seal.after == signed.body_hash(roster.seals[0])


def hides(roster: Roster, head: SealHead) -> bool:
    """Whether `head` (a seal's head, its signature checked) shows that `roster`'s leader hid a
    seal (protocol 21): its own seal of the roster's run, round and base that is not its seals[0]
    and does not name seals[0] as the first seal it follows (`after`): hidden, or put second
    (`creditable` credits nobody then). An honest leader signs one first seal of a round and base,
    keeps it through every rebuild and attempt (node/round/lead.py `sealed`), puts it first in any
    roster it publishes of them, and names it in every later seal; so no seal of its own is such
    evidence. A crowd leader that fetched the honest updates under a first seal S0 and put first a
    seal S1 listing its crowd's mixes of them cannot have S0 name S1 (S1 lists announcements of
    updates made from what S0 fetched): S0 is evidence."""
    first = first_seal(roster)
    if first is None:
        return False  # such a roster credits nobody anyway (`creditable`)
    return (
        (head.run, head.round, head.base, head.leader) == (roster.run, roster.round, roster.base, roster.leader)
        and head != SealHead.of(first)
        and head.after != signed.body_hash(roster.seals[0])
    )


def hiding(rosters: Mapping[int, object]) -> set[int]:
    """The rounds whose roster (in `rosters`: round -> a held roster, node/round/ledger.py
    AcceptedRoster) an entry of one of the CLAIM_ROUNDS rosters after it shows hiding a seal: its
    announcement's `hidden` (protocol/records.py) is evidence that `hides` holds. Every reader takes
    those rosters' credit as nobody's (node/round/trust/credit.py). Needs no jury: the evidence is
    the leader's own signature. A pure function of the rosters held, so all readers agree."""
    out: set[int] = set()
    for _, ev, r, hid in carried(rosters):
        if r not in out and hides(hid.roster, ev.head):
            out.add(r)
    return out


def carried(rosters: Mapping[int, object]) -> Iterator[tuple[Announcement, signed.Evidence, int, object]]:
    """(entry, its evidence opened, r, the held roster of r) for each entry of the rosters in
    `rosters` whose `hidden` names a round r held there, at most CLAIM_ROUNDS before the entry's
    own: what `hiding` and `leak_carriers` judge."""
    for q, held in rosters.items():
        for a, ev in _opened(held.announcements):
            hid = rosters.get(ev.head.round)
            if hid is not None and ev.head.round < q <= ev.head.round + CLAIM_ROUNDS:
                yield a, ev, ev.head.round, hid


OPENED_ROSTERS = 80  # held rosters whose evidence `carried` keeps opened: a window (64) and some
_opened_memo: OrderedDict[int, tuple[Sequence[Announcement], tuple]] = OrderedDict()
_opened_lock = threading.Lock()


def _opened(anns: Sequence[Announcement]) -> tuple[tuple[Announcement, signed.Evidence], ...]:
    """The entries of a held roster (`anns`) whose `hidden` opens, with it opened; kept per roster
    (by identity, the tuple held alongside: no reuse of its id). protocol/signed.py remembers 8,192
    envelopes, and a crowd of ~130 keys carrying a fresh head every round overflowed that over a
    64-round window: each `voided` checked every head's signature again (tests/test_sybil_attacks_9.py)."""
    with _opened_lock:
        hit = _opened_memo.get(id(anns))
        if hit is not None and hit[0] is anns:
            _opened_memo.move_to_end(id(anns))
            return hit[1]
    out = []
    for a in anns:
        if a.hidden is not None:
            try:
                out.append((a, signed.open_evidence(a.hidden)))
            except ProtocolError:
                continue
    if isinstance(anns, tuple):  # a list could change under us
        with _opened_lock:
            _opened_memo[id(anns)] = (anns, tuple(out))
            while len(_opened_memo) > OPENED_ROSTERS:
                _opened_memo.popitem(last=False)
    return tuple(out)


def leaks(roster: Roster, carrier: str, entry: str, evidence: signed.Evidence) -> bool:
    """Whether `evidence` (opened) shows that `carrier`, whose entry in `roster` has the body hash
    `entry`, released its update of the round first under another leader's seal (protocol 22): a
    seal of the roster's run, round and base, listing that entry, signed by a key that is neither
    the roster's leader nor the carrier. An honest owner carries the seal its one receipt of the
    round names (Gate.took), so a roster that credits someone while such owners are listed outside
    its seals[0] credited a set fixed after the round went out: a crowd at ranks 0 and 1 served rank
    1 first, mixed, and rank 0 sealed only the mixes first (tests/test_sybil_attacks_8.py). One
    carrier's word frames nobody: readers void the roster only when carriers hold most of its
    entries' weight (credit.leaked)."""
    head = evidence.head
    return (
        first_seal(roster) is not None
        and (head.run, head.round, head.base) == (roster.run, roster.round, roster.base)
        and head.leader not in (roster.leader, carrier)
        and evidence.entry == entry
    )


def leak_carriers(rosters: Mapping[int, object]) -> dict[int, set[str]]:
    """Round -> the authors of its roster's entries (in `rosters`, as `hiding` reads them) that an
    entry of one of the CLAIM_ROUNDS rosters after it carries evidence of (`leaks`) in its `hidden`,
    other than an author whose receipt in that roster names its seals[0] (its one receipt of the
    round says it released first there: its evidence contradicts it)."""
    out: dict[int, set[str]] = {}
    for a, ev, r, hid in carried(rosters):
        if a.peer in out.get(r, ()):
            continue
        entry = next((e for e, x in zip(hid.roster.entries, hid.announcements) if x.peer == a.peer), None)
        if entry is not None and leaks(hid.roster, a.peer, signed.body_hash(entry), ev):
            out.setdefault(r, set()).add(a.peer)
    for r, carriers in out.items():
        carriers -= receipted(rosters[r].roster, signed.body_hash(rosters[r].roster.seals[0]))
    return out
