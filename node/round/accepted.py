"""Rosters as a ledger holds them, and its file's lines: what a roster that passed every check
is (`AcceptedRoster`), when two of one round may stand for each other (`siblings`), and reading
and re-checking a ledger file (`read_file`, `verify`: `swarmtrain audit`, `Ledger.load`). A line
of the file is one roster:
    {"round": r, "envelope": base64(msgpack(signed roster envelope))}
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgpack

from protocol import signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS, Announcement, Roster


@dataclass(frozen=True)
class AcceptedRoster:
    """A roster that passed every check (node/round/protocol.py): what a round applies and the
    ledger keeps."""

    envelope: dict
    """The leader's signed roster envelope, as stored in the DHT and the ledger file."""
    roster: Roster
    """Its opened body."""
    announcements: tuple[Announcement, ...]
    """The signed announcements it lists, opened, in roster order."""

    @property
    def hash(self) -> str:
        return signed.body_hash(self.envelope)

    @property
    def contributors(self) -> list[tuple[str, int]]:
        return [(a.peer, a.tokens) for a in self.announcements]


def siblings(a: AcceptedRoster, b: AcceptedRoster) -> bool:
    """Two rosters of one round by different leaders with the same chain link, the same start and
    end states (`full` too: a joiner checks a donor's buffers against it), the same signed
    updates and the same credit (a sibling swapped in is not re-assessed): either may stand in
    the ledger."""
    ra, rb = a.roster, b.roster
    fields = ("run", "round", "prev", "base", "result", "full", "credit")
    same = all(getattr(ra, f, None) == getattr(rb, f, None) for f in fields)
    return same and {(x.peer, x.sha256) for x in a.announcements} == {(x.peer, x.sha256) for x in b.announcements}


class LedgerLine(NamedTuple):
    """One line of a ledger file."""

    round: int
    envelope: dict
    """The signed roster envelope."""


def read_file(path: Path) -> list[LedgerLine]:
    """The file's lines, in file order; ProtocolError names the first unreadable line."""
    out = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{path}: unreadable ledger ({type(e).__name__})") from None
    for n, line in enumerate(text.splitlines(), 1):
        try:
            d = json.loads(line)
            out.append(LedgerLine(int(d["round"]), msgpack.unpackb(base64.b64decode(d["envelope"]), raw=False)))
        except Exception as e:  # a torn or edited line
            raise ProtocolError(f"{path}:{n}: unreadable ledger line ({type(e).__name__})") from None
    return out


def switches(accepted: list[AcceptedRoster], roster: Roster) -> bool:
    """Does `roster`, read after `accepted`, continue an earlier roster of them (a branch switch,
    Ledger.extend)? Then the rosters after that one are dropped and the walk goes on from it."""
    if roster.round == 1 and roster.prev == GENESIS:
        del accepted[:]
        return True
    back = next((i for i, a in enumerate(accepted) if a.roster.round == roster.round - 1), None)
    if back is None or accepted[back].hash != roster.prev or accepted[back].roster.result != roster.base:
        return False
    del accepted[back + 1 :]
    return True


def verify(envelopes: list[dict]) -> tuple[list[AcceptedRoster], list[str]]:
    """Check signatures and the hash chain of rosters given in round order.
    Returns the rosters that verified and one line per problem."""
    accepted: list[AcceptedRoster] = []
    problems: list[str] = []
    for env in envelopes:
        try:
            roster, anns = signed.open_roster(env)
        except ProtocolError as e:
            problems.append(f"a roster does not verify: {e}")
            continue
        before = accepted[-1] if accepted else None
        this = AcceptedRoster(env, roster, tuple(anns))
        if before is not None and before.roster.round == roster.round and siblings(before, this):
            accepted[-1] = this  # a sibling swap (Ledger.swap)
            continue
        if before is not None and roster.round <= before.roster.round and switches(accepted, roster):
            accepted.append(this)
            continue
        if before is not None and before.roster.round == roster.round - 1 and roster.prev != before.hash:
            problems.append(
                f"round {roster.round}: prev {roster.prev[:12]} is not the hash of round "
                f"{before.roster.round}'s roster ({before.hash[:12]})"
            )
        if before is not None and before.roster.round == roster.round - 1 and roster.base != before.roster.result:
            problems.append(
                f"round {roster.round}: starts from {roster.base[:12]}, round "
                f"{before.roster.round} ended at {before.roster.result[:12]}"
            )
        if before is not None and roster.round <= before.roster.round:
            problems.append(f"round {roster.round} follows round {before.roster.round}: out of order")
        accepted.append(this)
    return accepted, problems
