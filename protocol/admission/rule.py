"""Admission: an author's updates count only with a proof of work bound to its key (work.py).

Checking a proof costs one scrypt evaluation (~0.1 s at the defaults), so a flood of fresh keys
with junk proofs must not buy that per key per read. Hence:
  * proofs are checked only for authors *new to the chain* (in none of the last LOOKBACK
    rosters): the others entered through a roster whose readers checked them;
  * a leader lists at most `newcomers` new authors per roster and checks at most that many
    proofs to find them, taking unchecked newcomers in the order of SHA-256(beacon | peer), which
    no announcer chooses; the rest wait for later rounds;
  * a reader refuses a roster with more new authors than that, or with an invalid proof;
  * a proof's stamp (one SHA-256, work.py) is checked before its scrypt evaluation: a proof
    without one costs no check, so every check a junk proof takes cost its author a stamp
    (2^stamp_bits hashes) on that key and nonce;
  * every check is remembered by the exact proof (peer, epoch, nonce, stamp), failures included,
    and a peer whose stamped proof failed a check here is not checked again by this leader for
    the epoch (`failed`): honest peers never fail one (they solved it);
  * a leader lists in its roster's `failed` (at most `newcomers`) the signed announcements whose
    exact stamped proof failed its check and that the chain does not list yet; a reader checks
    each (its stamp, then one evaluation, remembered as above) and refuses the roster if one is
    valid, unstamped, an entry, or of another round. Every leader then skips, for the epoch, the
    keys its window's rosters list (`listed_failed`), so a junk key costs one check in the
    swarm's leading, not one per leader, and each reader one evaluation (the leader's roster
    can spend at most `newcomers` of them). Readers judge each proof on its own.
Epochs (work.py, protocol 9): an entry's proof must be of its round's epoch or the one before
(one comparison, every entry); an author known to the chain but not with a proof of this epoch
(`proven`: (peer, epoch) of the lookback's entries) has it checked once, as a newcomer's is, but
outside the newcomers' share: the chain bounds how many known authors there are, and each
renews once an epoch. A reader that cannot know an epoch's seed (a joiner from a checkpoint
whose window lacks the epoch's first round) checks no proof of that epoch; a leader lists none.
The order is left a draw (not oldest first): a crowd of stamped keys announced early would stand
ahead of a later newcomer at every leader until the chain had listed them all, where the draw
lets the first lucky leader take it.
The organizer is exempt (it signed the manifest). Heartbeats carry the proof (protocol 11): only
a joiner whose organizer is offline checks it, to order its donors (node/round/trust/catchup.py).
A run without work (identity_work_bits 0) gets DISABLED, which admits everyone and checks nothing.
Pure: who is known comes from the caller's chain (node/round/ledger.py: Ledger.authors_before).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping

from protocol import signed
from protocol.admission import work
from protocol.errors import ProtocolError
from protocol.records import MAX_FAILED, Announcement, Roster

NEWCOMERS = 4  # most authors new to the chain one roster may list: a leader checks at most this many proofs a roster
# ... unless the organizer leads it (a young run): it lists every proven newcomer up to this. With
# 4, a crowd that ground keys drawing first under round 1's public beacon filled round 1 and was
# established before any honest peer (tests/test_sybil_attacks_3.py); stamps keep junk cheap to refuse
YOUNG_NEWCOMERS = 64
LOOKBACK = 32  # rosters before a round in which an author counts as known (< the ledger's 64, which holds them)
REMEMBERED = 65536  # checked proofs, and failed keys, kept (a flood past this costs one evaluation per proof again)

Seeds = Mapping[int, bytes] | None
"""epoch -> seed (work.Puzzle.seeds) for the epochs a round's proofs may be of; None: epoch 0's only."""


class Admission:
    """One run's admission rule, and what this peer has checked of it."""

    def __init__(self, puzzle: work.Puzzle | None, *, newcomers: int = NEWCOMERS, organizer: str = ""):
        self.puzzle = puzzle if puzzle is not None and puzzle.bits > 0 else None
        self.newcomers, self.organizer = newcomers, organizer
        self.lookback = LOOKBACK
        self.proof: tuple = ()
        """Ours, as our announcements carry it (set once solved or loaded: node/peer/wiring.py)."""
        self.checked: dict[tuple, bool] = {}  # (peer, epoch, nonce, stamp, seed) -> valid
        self.failed: dict[tuple[str, int], None] = {}  # (peer, epoch) whose stamped proof failed a check here
        self.lock = threading.Lock()

    def valid(self, peer: str, key_der: bytes, proof: tuple, seeds: Seeds = None) -> bool:
        """Is `proof` (an announcement's `work`) valid for `peer`'s key under its epoch's seed of
        `seeds` (None: epoch 0's only; an unknown seed: False)? Its stamp first (one hash, nothing
        remembered), then one evaluation per stamped proof, remembered with the seed."""
        if self.puzzle is None or peer == self.organizer:
            return True
        if not proof or not self.puzzle.stamped(key_der, work.Proof(*proof), seeds):
            return False  # no work (an old peer) or no stamp: refused for one hash at most
        memo = self._memo(peer, proof, seeds)
        with self.lock:
            known = self.checked.get(memo)
        if known is None:
            known = self.puzzle.solved(key_der, work.Proof(*proof), seeds)
            with self.lock:
                _remember(self.checked, memo, known)
                if not known:
                    _remember(self.failed, (peer, proof[0]), None)
        return known

    def remembered(self, peer: str, proof: tuple, seeds: Seeds = None) -> bool | None:
        """What a check of `peer`'s `proof` found here (None: not checked yet), with no evaluation."""
        if self.puzzle is None or peer == self.organizer:
            return True
        with self.lock:
            return self.checked.get(self._memo(peer, proof, seeds))

    def _memo(self, peer: str, proof: tuple, seeds: Seeds) -> tuple:
        """How a check of `peer`'s `proof` under its epoch's seed of `seeds` is remembered in `checked`."""
        return (peer, *proof, self.puzzle.seed_of(work.Proof(*proof), seeds))

    def admit(
        self,
        announced: dict[str, tuple[dict, Announcement]],
        known: set[str],
        beacon: str,
        last: set[str] = frozenset(),
        leader: str = "",
        listed: frozenset[tuple[str, int]] = frozenset(),
        proven: set[tuple[str, int]] | None = None,
        seeds: Seeds = None,
    ) -> set[str]:
        """The leader's side: which of the `announced` peers (peer -> (envelope, announcement)) its
        roster may list, given the authors `known` to the chain before it. Known authors all; of
        the new ones at most `newcomers` with a valid proof, checking at most `newcomers` proofs,
        in the order of SHA-256(beacon | peer), those in `last` after the rest: a newcomer that
        two leaders could not fetch from (marks.slow_servers) is admitted, left out unfetched and
        so stays new; first, it held a slot every round (tests/test_sybil_attacks_2.py). A proof
        without a stamp, or from a peer whose proof failed here this epoch or that the chain
        `listed` as failed ((peer, epoch): listed_failed), takes no check. The organizer
        (`leader`, in a young run) takes up to YOUNG_NEWCOMERS. `seeds`: the round's epochs'
        seeds we know (Puzzle.seeds; None: epoch 0's): a proof of another epoch is left out. A
        known author whose (peer, epoch) is not `proven` (None: every known author is) renews:
        its proof is checked, outside the newcomers' share."""
        if self.puzzle is None:
            return set(announced)
        cap = self.cap(leader)
        known = known | {self.organizer}
        seeds = {0: self.puzzle.first_seed()} if seeds is None else seeds
        out = {p for p in announced if p == self.organizer}
        for p in sorted(set(announced) & known - out):
            env, ann = announced[p]
            if not ann.work or ann.work[0] not in seeds:
                continue  # a stale proof (or none): it counts again once its author solves this epoch's
            if proven is None or (p, ann.work[0]) in proven:
                out.add(p)
            elif (
                (p, ann.work[0]) not in listed
                and self._unfailed(p, ann.work[0])
                and self.valid(p, env["key"], ann.work, seeds)
            ):
                out.add(p)  # a renewal: one check per key and epoch (failures are remembered)
        new = sorted((p for p in announced if p not in known), key=lambda p: (p in last, _order(beacon, p)))
        taken = checks = 0
        for p in new:
            if taken >= cap:
                break
            env, ann = announced[p]
            if not ann.work or not self.puzzle.stamped(env["key"], work.Proof(*ann.work), seeds):
                continue  # no proof, or no stamp on it: one hash, no check
            if (p, ann.work[0]) in listed:
                continue  # a roster of the chain showed its proof failing this epoch: no leader checks it again
            if not self._unfailed(p, ann.work[0]):
                continue  # its proof failed here this epoch: an honest peer's never does
            with self.lock:
                cached = self._memo(p, ann.work, seeds) in self.checked
            if not cached:
                if checks >= cap:
                    continue  # no check left this roster: a cached newcomer may still come
                checks += 1
            if self.valid(p, env["key"], ann.work, seeds):
                out.add(p)
                taken += 1
        return out

    def seeds(self, round_no: int, beacon: str, beacon_of: Callable[[int], str | None]) -> Seeds:
        """The seeds of the epochs whose proofs count in round `round_no` (ranked under `beacon`)
        that a chain tells (`beacon_of`: round -> beacon, or None: node/round/ledger.py); None: no work."""
        if self.puzzle is None:
            return None
        return self.puzzle.seeds(round_no, lambda r: beacon if r == round_no else beacon_of(r))

    def _unfailed(self, peer: str, epoch: int) -> bool:
        with self.lock:
            return (peer, epoch) not in self.failed

    def failures(
        self,
        announced: dict[str, tuple[dict, Announcement]],
        admitted: set[str],
        listed: frozenset[tuple[str, int]] = frozenset(),
        seeds: Seeds = None,
    ) -> tuple[dict, ...]:
        """What a roster lists as `failed`: the signed envelopes of `announced` peers, not `admitted`,
        whose exact stamped proof failed a check here and whose (peer, epoch) the chain has not
        `listed` yet; at most `newcomers`, by peer id. No check is made: only what we know to fail,
        so every reader's one evaluation agrees."""
        if self.puzzle is None:
            return ()
        out = []
        seeds = {0: self.puzzle.first_seed()} if seeds is None else seeds
        with self.lock:
            for p in sorted(set(announced) - admitted):
                env, ann = announced[p]
                if not ann.work or ann.work[0] not in seeds or (p, ann.work[0]) in listed:
                    continue
                if self.checked.get(self._memo(p, ann.work, seeds)) is False:
                    out.append(env)
        return tuple(out[: min(self.newcomers, MAX_FAILED)])

    def cap(self, leader: str) -> int:
        """How many newcomers a roster led by `leader` may list: more for the organizer, who leads
        only while the run is young, so that every peer there from the start is in its first rosters."""
        return max(self.newcomers, YOUNG_NEWCOMERS) if leader and leader == self.organizer else self.newcomers

    def check(
        self,
        roster: Roster,
        anns: list[Announcement],
        known: set[str],
        whole: bool,
        *,
        max_bytes: int = 2**40,
        proven: set[tuple[str, int]] | None = None,
        seeds: Seeds = None,
    ) -> None:
        """The reader's side: raise ProtocolError if `roster` lists an author (the organizer aside)
        whose proof is not of the round's epoch or the one before, more than `newcomers` authors
        not `known` to the chain before it, or such an author, or a known one whose (peer, epoch)
        is not `proven` (a renewal; None: none checked), without a valid proof, or lists as
        `failed` a proof that does not fail (check_failed). Newness is counted only when the
        reader's window is `whole` (it holds every roster of the lookback; a joiner's may not):
        otherwise every author's proof is checked (once each). `seeds`: the epochs' seeds this
        reader knows (None: epoch 0's); a proof of an epoch whose seed it cannot know is not checked."""
        if getattr(roster, "failed", ()):  # a v3 call (protocol/kinds/call.py) lists none
            self.check_failed(roster, anns, max_bytes, seeds)
        if self.puzzle is None:
            return
        epochs = self.puzzle.window(roster.round)
        stale = next((a for a in anns if a.peer != self.organizer and a.work and a.work[0] not in epochs), None)
        if stale is not None:
            raise ProtocolError(f"lists {stale.peer[:16]}, whose proof is not of epoch {' or '.join(map(str, epochs))}")
        known = (known if whole else set()) | {self.organizer}
        new = [(env, a) for env, a in zip(roster.entries, anns) if a.peer not in known]
        cap = self.cap(roster.leader)
        if whole and len(new) > cap:
            raise ProtocolError(f"lists {len(new)} authors new to the chain; at most {cap} a roster")
        renew = [
            (env, a)
            for env, a in zip(roster.entries, anns)
            if a.peer in known
            and a.peer != self.organizer
            and proven is not None
            and (a.peer, *a.work[:1]) not in proven
        ]
        for env, a in new + renew:
            if seeds is not None and a.work and a.work[0] not in seeds:
                continue  # a seed this reader cannot know (a joiner's window): nothing checked
            if not self.valid(a.peer, env["key"], a.work, seeds):
                raise ProtocolError(f"lists {a.peer[:16]}, whose announcement carries no valid admission proof")

    def check_failed(self, roster: Roster, anns: list[Announcement], max_bytes: int, seeds: Seeds = None) -> None:
        """`roster.failed`: at most `newcomers` signed announcements of its run and round, by distinct
        peers that are not its entries, each with a stamped proof that fails its scrypt evaluation
        (one each, remembered: a reader that leads later skips them). A valid proof listed is
        refused, so a leader cannot keep an honest newcomer out this way; so is an unstamped one
        (a failure its author did not pay for, which no leader checks). Nothing listed: nothing checked."""
        if roster.failed and self.puzzle is None:
            raise ProtocolError("lists failed admission proofs in a run without admission work")
        if len(roster.failed) > min(self.newcomers, MAX_FAILED):
            raise ProtocolError(f"lists {len(roster.failed)} failed admission proofs; at most {self.newcomers}")
        seen = {a.peer for a in anns}
        for env in roster.failed:
            a = signed.open_record(env, Announcement, max_bytes=max_bytes)
            if a.run != roster.run or a.round != roster.round:
                raise ProtocolError(f"lists as failed {a.peer[:16]}'s announcement of another run or round")
            if a.peer in seen:
                raise ProtocolError(f"lists {a.peer[:16]} as failed and as an entry, or twice")
            seen.add(a.peer)
            if not a.work or a.work[0] not in self.puzzle.window(roster.round):
                raise ProtocolError(f"lists as failed {a.peer[:16]}'s proof, of an epoch no leader checks there")
            if seeds is not None and a.work[0] not in seeds:
                continue  # a seed this reader cannot know (a joiner's window): nothing checked
            if not self.puzzle.stamped(env["key"], work.Proof(*a.work), seeds):
                raise ProtocolError(f"lists as failed {a.peer[:16]}'s proof, which carries no stamp")
            if self.valid(a.peer, env["key"], a.work, seeds):
                raise ProtocolError(f"lists as failed {a.peer[:16]}'s valid admission proof")


DISABLED = Admission(None)
"""A run without admission work: everyone is admitted and nothing is checked."""


def listed_failed(rosters: Iterable[Roster], max_bytes: int = 2**40) -> frozenset[tuple[str, int]]:
    """(peer, epoch) of every proof the `rosters` list as failed: accepted rosters, whose listings
    their readers checked (the envelopes open from protocol/signed.py's memory: no new check)."""
    out = set()
    for roster in rosters:
        for env in roster.failed:
            a = signed.open_record(env, Announcement, max_bytes=max_bytes)
            if a.work:
                out.add((a.peer, a.work[0]))
    return frozenset(out)


def _remember(memory: dict, key: tuple, value: object) -> None:
    if len(memory) >= REMEMBERED:
        memory.pop(next(iter(memory)))  # the oldest first
    memory[key] = value


def _order(beacon: str, peer: str) -> bytes:
    return hashlib.sha256(f"{beacon}|{peer}".encode()).digest()
