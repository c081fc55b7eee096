"""The run's signed ledger: the rosters this peer applied, chained by hash.

Each roster names the SHA-256 of the previous roster's body (`prev`), the state digest it
starts from (`base`) and the one it ends at (`result`), and carries the signed announcements
of its updates. Appending checks the chain; `verify` (node/round/accepted.py, with the file's
format) re-checks a whole ledger file, every signature included (`swarmtrain audit`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import msgpack

from node.round.accepted import AcceptedRoster, read_file, siblings, verify
from node.round.trust import credit, omission
from protocol import signed
from protocol.errors import ProtocolError
from protocol.records import GENESIS

log = logging.getLogger("swarmtrain.ledger")
WINDOW = 64  # rosters kept in memory: enough for election, votes and ban windows
SERVE_BYTES = 4 * 2**20  # one `ledger` RPC answer holds rosters up to about this many bytes
TICKET_MEMO = 4  # windows whose tickets a ledger remembers (the round awaited, the one before, a sibling's)


class ScoredRound(NamedTuple):
    """One applied roster's scores: what a ban is made of."""

    round: int
    leader: str
    """The peer that signed the roster, and so wrote the scores."""
    scores: dict[str, float]
    """Peer id -> its update's loss-change score (lower is better)."""


class CheckpointKeeper(Protocol):
    """What a ledger tells of each roster it takes: node/round/trust/anchor.Anchor (named here by
    its interface: the anchor reads rosters, so the ledger cannot import it back)."""

    organizer: str
    checkpoint: object | None

    def keep_carried(self, accepted: AcceptedRoster) -> None: ...


@dataclass
class Ledger:
    path: Path | None = None
    """Append-only file of applied rosters (None keeps the ledger in memory only)."""
    rosters: dict[int, AcceptedRoster] = field(default_factory=dict)
    """Round -> the roster we applied, for the last WINDOW rounds."""
    complete_from: int = 1
    """First round this ledger holds without a gap up to its head (1: the whole run)."""
    offsets: dict[int, int] = field(default_factory=dict)
    """Round -> byte offset in the file of the line holding our chain's roster of that round."""
    anchor: CheckpointKeeper | None = None
    """Keeps the newest organizer checkpoint the rosters we take carry (node/round/trust/anchor.py)."""
    epoch_rounds: int = 0
    """[swarm] identity_epoch_rounds: the beacons of rounds that start epochs are kept (0: none)."""
    seeds: dict[int, str] = field(default_factory=dict)
    """Round -> beacon of the last 3 epoch-starting rosters taken: admission seeds (protocol/admission/work.py)."""
    counted: dict[tuple, tuple[list, dict[str, int]]] = field(default_factory=dict, repr=False, compare=False)
    """The last windows' tickets, by the rosters' identities (`tickets`): asked several times a poll."""

    @classmethod
    def load(cls, path: Path, epoch_rounds: int = 0) -> Ledger:
        """Our ledger file's last WINDOW rosters (a restarted peer remembers who it trained with) and
        seeds; lines that do not verify are skipped with a warning: the file is ours, but disks fail."""
        ledger = cls(path=None, epoch_rounds=epoch_rounds)
        if path.is_file():
            try:
                lines = read_file(path)
            except ProtocolError as e:
                log.warning("ledger %s: %s; starting a new chain", path, e)
                lines = []
            starts = [x.envelope for x in lines[-3 * epoch_rounds :] if epoch_rounds and x.round % epoch_rounds == 0]
            for start in verify(starts)[0]:  # in the file's order: a later line of a round is our chain's
                ledger.keep_seed(start)
            accepted, problems = verify([line.envelope for line in last_rounds(lines, WINDOW)])
            for p in problems:
                log.warning("ledger %s: %s", path, p)
            ledger.rosters = {a.roster.round: a for a in accepted}
            top = max(ledger.rosters, default=0)
            ledger.rosters = {r: a for r, a in ledger.rosters.items() if r > top - WINDOW}
            ledger.complete_from = min(ledger.rosters, default=1)
            ledger.index_file(path)
        ledger.path = path
        return ledger

    def index_file(self, path: Path) -> None:
        offset = 0
        with path.open("rb") as f:
            for raw in f:
                try:
                    self._index_line(int(json.loads(raw)["round"]), offset)
                except Exception:  # a torn line is served as the end of our chain
                    pass
                offset += len(raw)

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

    def window(self, rosters: dict[int, AcceptedRoster]) -> Ledger:
        """A window of `rosters` (ours, or a branch's) that knows our epoch seeds before them."""
        seeds = {r: b for r, b in self.seeds.items() if r < min(rosters, default=0) or r in rosters}
        return Ledger(rosters=rosters, epoch_rounds=self.epoch_rounds, seeds=seeds)

    def keep_seed(self, accepted: AcceptedRoster) -> None:
        """Keep `accepted`'s beacon if its round starts an epoch (our chain's: a later one replaces it)."""
        r = accepted.roster.round
        if self.epoch_rounds and r % self.epoch_rounds == 0:  # later ones are of a branch we left
            self.seeds = {k: b for k, b in self.seeds.items() if r - 2 * self.epoch_rounds <= k < r}
            self.seeds[r] = accepted.roster.beacon

    def beacon_of(self, round_no: int) -> str | None:
        """The beacon of our roster `round_no`, if we hold it or its seed."""
        held = self.rosters.get(round_no)
        return held.roster.beacon if held else self.seeds.get(round_no)

    def _write(self, accepted: AcceptedRoster) -> None:
        self.keep_seed(accepted)
        if self.anchor is not None:  # every roster we take passed chain.check, its checkpoint too
            self.anchor.keep_carried(accepted)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {
            "round": accepted.roster.round,
            "envelope": base64.b64encode(msgpack.packb(accepted.envelope, use_bin_type=True)).decode(),
        }
        with self.path.open("ab") as f:
            self._index_line(accepted.roster.round, f.tell())
            f.write((json.dumps(line) + "\n").encode())

    def _index_line(self, round_no: int, offset: int) -> None:
        """A line for `round_no` at `offset` holds our chain's roster of that round from now on;
        rounds after it belonged to a branch we left (Ledger.extend writes them again)."""
        for later in [r for r in self.offsets if r > round_no]:
            del self.offsets[later]
        self.offsets[round_no] = offset

    def envelopes_from(self, first: int, most_bytes: int = SERVE_BYTES) -> list[dict]:
        """Our chain's roster envelopes from round `first` on, in order, up to about `most_bytes`
        (the `ledger` RPC: a joiner verifies them from the genesis, a peer from its own ledger)."""
        out, size = [], 0
        if self.path is None:  # a ledger kept in memory (tests): its window
            held = [r for r in sorted(self.rosters) if r >= first]
            return [self.rosters[r].envelope for r in held] if first in self.rosters else []
        if first not in self.offsets:
            return out
        with self.path.open("rb") as f:
            for r in range(first, max(self.offsets) + 1):
                if r not in self.offsets or (out and size >= most_bytes):
                    break
                f.seek(self.offsets[r])
                raw = f.readline()
                size += len(raw)
                try:
                    out.append(msgpack.unpackb(base64.b64decode(json.loads(raw)["envelope"]), raw=False))
                except Exception:  # a torn line: serve what came before it
                    break
        return out

    def swap(self, sibling: AcceptedRoster) -> None:
        """Replace our roster of sibling's round by a sibling (see `siblings`) that the swarm chains
        on: two leaders led that round at once and the next roster names the other one. Our state
        is unchanged; the file gets the sibling as a new line, which `verify` reads as a swap."""
        mine = self.rosters.get(sibling.roster.round)
        if mine is None or not siblings(mine, sibling):
            raise ProtocolError(f"round {sibling.roster.round}: not a sibling of our roster")
        self.rosters[sibling.roster.round] = sibling
        self._write(sibling)

    def extend(self, ancestor: int, rosters: list[AcceptedRoster]) -> None:
        """Take rosters verified from our roster `ancestor` (0: the genesis) by node/round/trust/chain.py:
        ours after the ancestor (a branch the swarm left) are dropped, theirs appended. The ledger
        keeps what proves the state it now ends at; it never forgets its way there."""
        if ancestor and ancestor not in self.rosters:
            raise ProtocolError(f"extending from round {ancestor}, which this ledger does not hold")
        left = sorted(r for r in self.rosters if r > ancestor)
        if left:
            log.info("ledger: leaving our rosters of rounds %d-%d for a branch the swarm prefers", left[0], left[-1])
        for r in left:
            del self.rosters[r]
        if ancestor == 0:
            self.rosters.clear()
            self.complete_from = 1
        for accepted in rosters:
            self.rosters[accepted.roster.round] = accepted
            self._write(accepted)
        head = max(self.rosters, default=0)
        for old in [r for r in self.rosters if r <= head - WINDOW]:
            del self.rosters[old]

    def complete(self, state_round: int) -> bool:
        """Do we hold every roster of the run up to `state_round` (so 'nobody established' means
        the run is young, not that we just joined)?"""
        return self.complete_from == 1 and all(r in self.rosters for r in range(1, state_round + 1))

    def appearances(self) -> Counter:
        return Counter(a.peer for accepted in self.rosters.values() for a in accepted.announcements)

    def authors_before(self, round_no: int, lookback: int) -> tuple[set[str], bool]:
        """Authors of the rosters we hold of the `lookback` rounds before `round_no` (from round 1),
        and whether we hold each of those rosters (protocol/admission: who is new to the chain)."""
        rounds = range(max(1, round_no - lookback), round_no)
        held = [self.rosters[r] for r in rounds if r in self.rosters]
        return {a.peer for accepted in held for a in accepted.announcements}, len(held) == len(rounds)

    def proofs_before(self, round_no: int, lookback: int) -> set[tuple[str, int]]:
        """(author, its proof's epoch) of authors_before's entries (protocol/admission: renewals)."""
        held = [self.rosters[r] for r in range(max(1, round_no - lookback), round_no) if r in self.rosters]
        return {(a.peer, a.work[0]) for accepted in held for a in accepted.announcements if a.work}

    def established(self, k: int) -> set[str]:
        """Peers whose credit in the window's rosters (and for the omissions their claims proved,
        node/round/trust/omission.py) is k full rounds', from several leaders
        (node/round/trust/credit.py): who may lead and vouch. Appearances earn nothing."""
        return credit.established(self.rosters, k, omission.claims(self.rosters, k))

    def holds_window(self, round_no: int) -> bool:
        """Do we hold every roster of the WINDOW rounds before `round_no`? Only then are our tickets
        the swarm's (a ledger that synced from a checkpoint, or lost a line, counts fewer), so only
        then do we judge what tickets decide of a roster: its leader's turn and its skip list."""
        return all(r in self.rosters for r in range(max(1, round_no - WINDOW), round_no))

    def missing(self) -> list[int]:
        """Rounds of the window before our head's that we lack (a ledger that synced state, or lost
        lines): what node/round/trust/reader.py WindowFill fetches, in order."""
        head = max(self.rosters, default=0)
        return [r for r in range(max(1, head - WINDOW + 1), head) if r not in self.rosters]

    def backfill(self, envelopes: list) -> tuple[int, list[str]]:
        """Take, from `envelopes` (a donor's, unchecked), the missing rosters of our window that link
        to our head by hash: walking down from the head, roster r is the one whose body hashes to
        roster r+1's `prev` (and ends at its `base`). Our head passed the chain rules (a member's
        check, or catch-up's from the genesis or a checkpoint), so its links authenticate every
        roster before it; no rule is judged again. They are held as a member holds them (opened,
        every signature checked), in memory only: the file stays append-only in chain order.
        Returns how many it took and why it stopped short (a roster that does not link)."""
        by_hash = {}
        for env in envelopes:
            try:
                by_hash[signed.body_hash(env)] = env
            except Exception:  # noqa: BLE001 -- a donor's junk links to nothing
                continue
        found: dict[int, AcceptedRoster] = {}
        problems: list[str] = []
        head = max(self.rosters, default=0)
        for r in range(head - 1, max(0, head - WINDOW), -1):
            after = found.get(r + 1) or self.rosters[r + 1]
            held = self.rosters.get(r)
            if held is not None:
                if held.hash != after.roster.prev:  # our own rosters disagree: link nothing below
                    problems.append(f"our roster {r} is not the one roster {r + 1} names")
                    break
                continue
            env = by_hash.get(after.roster.prev)
            if env is None:
                if envelopes:
                    problems.append(f"no roster of round {r} hashes to roster {r + 1}'s prev {after.roster.prev[:12]}")
                break
            try:
                roster, anns = signed.open_roster(env)
            except Exception as e:  # noqa: BLE001 -- the body is the chain's; the rest is the donor's word
                problems.append(f"round {r}: {type(e).__name__}: {e}")
                break
            if roster.round != r or roster.result != after.roster.base:
                problems.append(f"round {r}: roster {r + 1} names a roster of round {roster.round} or another end")
                break
            found[r] = AcceptedRoster(env, roster, tuple(anns))
        self.rosters.update(found)  # one update: readers on other threads see all of it or none
        for r in sorted(found):  # epoch starts' beacons (admission seeds) we had no roster for
            if self.epoch_rounds and r % self.epoch_rounds == 0:
                self.seeds.setdefault(r, found[r].roster.beacon)
        low = head
        while low - 1 in self.rosters:
            low -= 1
        if found:  # the stretch without a gap now starts lower (at 1: we hold the whole young run)
            self.complete_from = low
        return len(found), problems

    def tickets(self, round_no: int, k: int) -> dict[str, int]:
        """Each credited peer's tickets for round `round_no` (node/round/election.py rank keys): its
        whole rounds of credit in the rosters before that round, claims counted as `established`
        counts them. Only rosters before it, so a reader that holds the round's roster already (a
        sibling's slot, election.better_siblings) ranks it as its leader did."""
        before = sorted((r, a) for r, a in self.rosters.items() if r < round_no)
        key = (k, tuple((r, id(a)) for r, a in before))  # ids stay unique: the memo holds the rosters
        hit = self.counted.get(key)
        if hit is None:
            held = dict(before)
            hit = (before, credit.tickets(held, omission.claims(held, k)))
            if len(self.counted) >= TICKET_MEMO:
                self.counted.pop(next(iter(self.counted)))
            self.counted[key] = hit
        return dict(hit[1])

    def caught(self) -> set[str]:
        """Owners the window's v3 rosters convicted of lying with a fraud proof: banned, as a
        score ban is (node/round/protocol.py banned)."""
        return {p for a in self.rosters.values() for p, _ in a.roster.caught}

    def passed(self) -> dict[str, int]:
        """v3 owners the window's rosters passed over (they withheld), each with the last round it
        did: their strikes (node/scatter/grid.py may_own), the same for every peer of the chain."""
        out: dict[str, int] = {}
        for r in sorted(self.rosters):
            out.update(dict.fromkeys(self.rosters[r].roster.passed, r))
        return out

    def score_history(self) -> list[ScoredRound]:
        """Per round, oldest first, who led it and the scores it wrote (for node/outer/scoring.py's
        ban rule, which counts the leaders behind a peer's flags)."""
        return [
            ScoredRound(r, self.rosters[r].roster.leader, dict(self.rosters[r].roster.scores))
            for r in sorted(self.rosters)
        ]


def last_rounds(lines: list, rounds: int) -> list:
    """The file's lines from the last one that starts its last `rounds` rounds: a swap or a branch
    switch (Ledger.swap, Ledger.extend) writes a round again, so the last `rounds` lines held
    fewer rounds, and a restarted peer counted fewer tickets and less establishment than the swarm
    (tests/test_sybil_attacks_5.py)."""
    seen: set[int] = set()
    start = len(lines)
    while start > 0 and len(seen) < rounds:
        start -= 1
        seen.add(lines[start].round)
    return lines[start:]
