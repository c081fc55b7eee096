"""The run's signed ledger: the rosters this peer applied, chained by hash.

Each roster names the SHA-256 of the previous roster's body (`prev`), the state digest it
starts from (`base`) and the one it ends at (`result`), and carries the signed announcements
of its updates. Appending checks the chain; `verify` re-checks a whole ledger file, every
signature included (`swarmtrain audit`). A line of the file is one roster:
    {"round": r, "envelope": base64(msgpack(signed roster envelope))}
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgpack

from protocol import signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS, Announcement, Roster

log = logging.getLogger("swarmtrain.ledger")
WINDOW = 64  # rosters kept in memory: enough for election, votes and ban windows


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


class ScoredRound(NamedTuple):
    """One applied roster's scores: what a ban is made of."""

    round: int
    leader: str
    """The peer that signed the roster, and so wrote the scores."""
    scores: dict[str, float]
    """Peer id -> its update's loss-change score (lower is better)."""


@dataclass
class Ledger:
    path: Path | None = None
    """Append-only file of applied rosters (None keeps the ledger in memory only)."""
    rosters: dict[int, AcceptedRoster] = field(default_factory=dict)
    """Round -> the roster we applied, for the last WINDOW rounds."""
    complete_from: int = 1
    """First round this ledger holds without a gap up to its head (1: the whole run)."""

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Our ledger file's last WINDOW rosters (a restarted peer remembers who it trained with);
        lines that do not verify are skipped with a warning: the file is ours, but disks fail."""
        ledger = cls(path=None)
        if path.is_file():
            try:
                lines = read_file(path)[-WINDOW:]
            except ProtocolError as e:
                log.warning("ledger %s: %s; starting a new chain", path, e)
                lines = []
            accepted, problems = verify([line.envelope for line in lines])
            for p in problems:
                log.warning("ledger %s: %s", path, p)
            ledger.rosters = {a.roster.round: a for a in accepted}
            ledger.complete_from = min(ledger.rosters, default=1)
        ledger.path = path
        return ledger

    def prev_hash(self, round_no: int) -> str:
        """What roster `round_no` must name as `prev`: the hash of our roster round_no - 1."""
        before = self.rosters.get(round_no - 1)
        return before.hash if before else (GENESIS if round_no == 1 else "")

    def append(self, accepted: AcceptedRoster) -> None:
        """Add the roster we applied; a gap (we synced state instead) restarts the chain there."""
        roster = accepted.roster
        expected = self.prev_hash(roster.round)
        if expected and roster.prev != expected:
            raise ProtocolError(f"roster {roster.round} names prev {roster.prev[:12]}, our ledger has {expected[:12]}")
        if roster.round - 1 not in self.rosters and roster.round != 1:
            self.complete_from = roster.round
        self.rosters[roster.round] = accepted
        for old in [r for r in self.rosters if r <= roster.round - WINDOW]:
            del self.rosters[old]
        self._write(accepted)

    def _write(self, accepted: AcceptedRoster) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "round": accepted.roster.round,
                            "envelope": base64.b64encode(msgpack.packb(accepted.envelope, use_bin_type=True)).decode(),
                        }
                    )
                    + "\n"
                )

    def swap(self, sibling: AcceptedRoster) -> None:
        """Replace our roster of sibling's round by a sibling (see `siblings`) that the swarm chains
        on: two leaders led that round at once and the next roster names the other one. Our state
        is unchanged; the file gets the sibling as a new line, which `verify` reads as a swap."""
        mine = self.rosters.get(sibling.roster.round)
        if mine is None or not siblings(mine, sibling):
            raise ProtocolError(f"round {sibling.roster.round}: not a sibling of our roster")
        self.rosters[sibling.roster.round] = sibling
        self._write(sibling)

    def restart(self, state_round: int, digest: str) -> None:
        """We took state `state_round` from peers instead of applying its roster: the rosters we
        hold describe another stretch of the run, so forget them (the file keeps them). Otherwise
        a peer frozen or offline for many rounds would count the peers of its old rounds as the
        established ones and refuse every leader the swarm has now."""
        held = self.rosters.get(state_round)
        if held is not None and held.roster.result == digest:
            return  # the state our own ledger ends at: nothing to forget
        if self.rosters:
            log.info(
                "ledger: state synced to round %d; forgetting %d rosters of rounds %d-%d",
                state_round,
                len(self.rosters),
                min(self.rosters),
                max(self.rosters),
            )
        self.rosters.clear()
        self.complete_from = state_round + 1

    def complete(self, state_round: int) -> bool:
        """Do we hold every roster of the run up to `state_round` (so 'nobody established' means
        the run is young, not that we just joined)?"""
        return self.complete_from == 1 and all(r in self.rosters for r in range(1, state_round + 1))

    def appearances(self) -> Counter:
        return Counter(a.peer for accepted in self.rosters.values() for a in accepted.announcements)

    def established(self, k: int) -> set[str]:
        """Peers named in at least k rosters of the window: who may lead."""
        return {p for p, n in self.appearances().items() if n >= k}

    def members(self) -> set[str]:
        """Peers named in any roster of the window: who may vote."""
        return set(self.appearances())

    def score_history(self) -> list[ScoredRound]:
        """Per round, oldest first, who led it and the scores it wrote (for node/outer/scoring.py's
        ban rule, which counts the leaders behind a peer's flags)."""
        return [
            ScoredRound(r, self.rosters[r].roster.leader, dict(self.rosters[r].roster.scores))
            for r in sorted(self.rosters)
        ]


def siblings(a: AcceptedRoster, b: AcceptedRoster) -> bool:
    """Two rosters of one round by different leaders with the same chain link, the same start and
    end states and the same signed updates: either may stand in the ledger."""
    ra, rb = a.roster, b.roster
    return (ra.run, ra.round, ra.prev, ra.base, ra.result) == (rb.run, rb.round, rb.prev, rb.base, rb.result) and {
        (x.peer, x.sha256) for x in a.announcements
    } == {(x.peer, x.sha256) for x in b.announcements}


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
