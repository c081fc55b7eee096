"""Round protocol v3 in a round's life (docs/protocol.md "v3"): the leader's call, each member's
part in the reduce-scatter, and the roster that follows, mixed into RoundProtocol.

node/round may not import node/scatter (tests/test_imports.py): the reduce-scatter is a `Scatter`
injected from outside (node/scatter/runner.py NodeScatter), as Hooks is for the strategy. The default, OFF, says
no round uses it, so every round is verify-all (v2), byte for byte as before.

  lead    with the announcements collected and the hook saying v3 for this many members, the
          leader signs and stores the call (protocol/kinds/call.py: members, reachable ones,
          beacon, attempt), runs the round (its Leader and its Member), applies the aggregate on a
          copy (Hooks.aggregate) and signs the roster as in v2, with the board's outcome (caught,
          passed over, the final parts' digests);
  follow  a member that reads a call listing it (checked as a roster is) runs its Member with its
          own announced update and keeps the aggregate; it takes that leader's roster only if it
          lists the call's entries, the final parts' digests it gathered and the owners its board
          caught with the proofs it checked (each fetched from the leader and re-run), and applies
          it only if the state after its aggregate has the roster's digests (node/peer/applier.py),
          as a v2 peer does. A member whose call's leader went silent (no board for a phase, or no
          news on it for 2.5 phases) or framed an owner (a conviction whose proof it does not serve
          or that shows no lie) gives its round up and hands the round to the next slot's turn
          (`leader_gone`), leaving the silent leader's update out.
Whether a roster is v3 is the hook's word on its number of entries, unless the organizer leads it
(a young run: v2): every peer decides alike. A
peer that took no part in a v3 round cannot gather it (RoundFailed): it resyncs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import NamedTuple, Protocol

from node.round import election
from node.round.election import RosterCheck, Slot
from node.round.hooks import NonFinite
from node.round.lead import Picked
from node.round.ledger import AcceptedRoster
from node.round.trust import credit
from protocol import keys, signed, signing
from protocol.errors import ProtocolError
from protocol.kinds.call import Call
from protocol.records import Heartbeat, Roster

log = logging.getLogger("swarmtrain.rounds")


class Ran(Protocol):
    """One member's v3 round, as it ended for it (node/scatter/runner.py Ran)."""

    aggregate: object
    """The flat aggregate it gathered (a tensor, in model order): what it applies."""
    finals: bytes
    """Each final part's SHA-256 (32 bytes), in task order: the roster lists them."""
    caught: tuple[tuple[str, str], ...]
    """Owners convicted, each with the SHA-256 of the fraud proof it checked (the leader's: it convicted on)."""
    passed: tuple[str, ...]
    """Owners passed over for withholding (the leader's word)."""


class Aggregate(NamedTuple):
    """What a v3 round gives a member to apply, where a v2 round gives the payloads."""

    flat: object


class Scatter:
    """v3 switched off (OFF): no round uses it. The node's is node/scatter/runner.py NodeScatter."""

    def uses(self, members: int) -> bool:
        """Whether a round of `members` entries is a v3 round (a function of the run's settings)."""
        return False

    def reachable(self, members: list[str], peers: dict[str, Heartbeat]) -> set[str]:
        """The members others can dial: the call lists them as those that may own chunks."""
        return set()

    def owners(self, reach: set[str], passed: dict[str, int], round_no: int) -> set[str]:
        """Of `reach`, those that may own chunks in `round_no`: not struck for withholding lately
        (`passed`: Ledger.passed). All of `reach` when that would leave nobody."""
        return reach

    def run(self, call: AcceptedRoster, update: bytes, leads: bool, stop: threading.Event | None = None) -> Ran:
        """This peer's part in the round of `call` (its roster field holds the Call), with its own
        announced update envelope; `leads`: it runs the Leader too. Raises ProtocolError,
        TimeoutError, OSError or ValueError when the round fails for it, TimeoutError at once
        when `stop` is set (the peer is leaving: it owes the round nothing more)."""
        raise ProtocolError("v3 is off in this run")


OFF = Scatter()
FAILED = (ProtocolError, TimeoutError, OSError, ValueError, EOFError)


class ScatterRounds:
    """v3's steps, mixed into RoundProtocol (node/round/protocol.py: its net, keys, hooks, checks)."""

    leaving: threading.Event | None = None
    """The node's stop event, as await_roster last handed it to take_call: set, our part ends."""

    def is_v3(self, accepted: AcceptedRoster) -> bool:
        return self.v3_round(len(accepted.announcements), accepted.roster.leader)

    def v3_round(self, members: int, leader: str) -> bool:
        """Whether `leader`'s round of `members` entries is v3: the hook's word on its size, unless
        the organizer leads it (a young run's rounds: its witness trains nothing, so it has no update
        to run a member with, and leads verify-all). Every peer reads both from the roster alike."""
        return leader != self.rules.organizer and self.scatter.uses(members)

    # --------------------------------------------------------------------------- as leader
    def lead_v3(
        self,
        round_no: int,
        base: str,
        prev: str,
        beacon: str,
        slot: Slot,
        chosen: Picked,
        skip: tuple,
        floor: float | None,
    ):
        """Lead round `round_no` as v3 with the announcements `chosen` picked: our signed roster,
        or None (the round failed; the call's attempt is not led again). Its cutoff is the call's
        time (collection stopped there), at least the chain's `floor`; it lists the proofs that
        failed our admission checks (Picked.failed) as a v2 roster does."""
        picked = chosen.announcements
        members = [s.announcement.peer for s in picked]
        peers = self.table.last()
        if any(p not in peers or peers[p].digest != base for p in members):
            # a member's heartbeat still names its last state: our rank may be read from a stale
            # table, and a second leader's call would split the members (it catches up in a beat)
            return None
        self.led_v3.add((round_no, slot.attempt))
        # a member the chain passed over for withholding owns nothing for a while (a strike)
        reach = self.scatter.owners(self.scatter.reachable(members, peers), self.ledger.passed(), round_no)
        blob = self.net.held_update(round_no, self.me)
        if blob is None or self.me not in members or self.me not in reach:
            log.warning("round %d: cannot lead v3 (our update is not listed, or nobody can dial us)", round_no)
            return None
        call = Call(
            run=self.run_id,
            round=round_no,
            leader=self.me,
            prev=prev,
            base=base,
            time=self.net.now(),
            entries=tuple(s.envelope for s in picked),
            reveal=signing.sign_unique(self.key, election.reveal_message(self.run_id, round_no)),
            beacon=beacon,
            attempt=slot.attempt,
            reach=tuple(sorted(reach)),
            skip=skip,
        )
        called = AcceptedRoster(signed.seal(self.key, call), call, tuple(s.announcement for s in picked))
        self.net.store(keys.call_key(self.run_id, round_no), self.me, called.envelope, ttl=self.ttl)
        log.info(
            "round %d: called a v3 round of %d (attempt %d, %d reachable)",
            round_no,
            len(members),
            slot.attempt,
            len(reach),
        )
        try:
            ran = self.scatter.run(called, blob, leads=True, stop=self.leaving)
            outcome = self.hooks.aggregate(ran.aggregate)
        except (*FAILED, NonFinite) as e:
            log.warning("round %d: the v3 round we led failed: %s", round_no, e)
            return None
        self.ran[(round_no, self.me)] = (call, ran)
        roster = Roster(
            run=self.run_id,
            round=round_no,
            leader=self.me,
            prev=prev,
            base=base,
            result=outcome.digest,
            time=max(self.net.now(), call.time, floor or 0.0),
            entries=call.entries,
            reveal=call.reveal,
            beacon=beacon,
            attempt=slot.attempt,
            skip=skip,
            checkpoint=self.builder.carry(round_no),
            full=outcome.full,
            caught=ran.caught,
            passed=ran.passed,
            finals=ran.finals,
            cutoff=max(call.time, floor or 0.0),
            failed=chosen.failed,
            # no peer holds each update of a v3 round: it credits only peers established before it
            credit=tuple(credit.carried(called.announcements, self.ledger.established(self.cfg.established_rounds))),
        )
        return AcceptedRoster(signed.seal(self.key, roster), roster, called.announcements)

    # --------------------------------------------------------------------------- as member
    def take_call(
        self, round_no: int, base: str, cands: set[str] | None, ranked: set[str] | None, stop: threading.Event
    ) -> None:
        """Run our part in the best acceptable v3 call of this round that lists us, once per leader;
        `stop` (the node's: await_roster's) ends it at once, and the round we lead too (lead_v3)."""
        self.leaving = stop
        passed: list[RosterCheck] = []
        for leader, env in self.net.get_subkeys(keys.call_key(self.run_id, round_no)).items():
            if (round_no, leader) in self.called or leader == self.me:
                continue
            try:
                check = self.check_call(env, str(leader), round_no, base, cands, ranked)
                if not self.is_v3(check.accepted):
                    raise ProtocolError(f"calls a v3 round of {len(check.accepted.announcements)}: it is v2's size")
                passed.append(check)
            except ProtocolError as e:
                if (round_no, f"call {leader}") not in self.refused:
                    self.refused.add((round_no, f"call {leader}"))
                    log.warning("round %d: refusing the call of %s: %s", round_no, str(leader)[:16], e)
        if not passed:
            return
        best = min(passed, key=RosterCheck.preference)
        called = best.accepted
        call, leader = called.roster, called.roster.leader
        self.called.add((round_no, leader))
        blob = self.net.held_update(round_no, self.me)
        mine = next((a for a in called.announcements if a.peer == self.me), None)
        if blob is None or mine is None or mine.sha256 != hashlib.sha256(blob).hexdigest():
            log.info("round %d: the v3 call of %s does not list our update: we take no part", round_no, leader[:16])
            return
        try:
            self.ran[(round_no, leader)] = (call, self.scatter.run(called, blob, leads=False, stop=stop))
        except FAILED as e:
            log.warning("round %d: our part in the v3 round of %s failed: %s", round_no, leader[:16], e)
            if getattr(e, "leader_silent", False):
                self.leader_gone(round_no, leader, best.slot)

    def leader_gone(self, round_no: int, leader: str, slot: Slot) -> None:
        """The leader of the call we took (its `slot`) sent no board for a phase, or no news on it
        for 2.5 phases: its turn is over, and the next slot's turn comes now. Our round's clock
        moves to that turn (back too: ranks whose turn passed while we all waited inside the call
        get it, as in v2, instead of a skip mark), so every member, giving up alike, hands the
        round to the same next leader, who skips the silent one; its update, which never reached
        anyone, we leave out of what we lead."""
        self.silent.setdefault(round_no, set()).add(leader)
        after = election.next_slot(slot)
        self.opened[round_no] = self.net.monotonic() - election.turn(after, self.cfg)
        log.warning("round %d: the v3 leader %s went silent; slot %s leads now", round_no, leader[:16], tuple(after))

    def check_v3(self, accepted: AcceptedRoster) -> None:
        """A v3 roster must be what the round we ran under its leader's call ended with (one we
        took no part in passes here: we cannot gather it, and resync). Raises ProtocolError."""
        roster = accepted.roster
        took = self.ran.get((roster.round, roster.leader))
        if took is None:
            return
        call, ran = took
        if (roster.entries, roster.beacon, roster.attempt, roster.prev) != (
            call.entries,
            call.beacon,
            call.attempt,
            call.prev,
        ):
            raise ProtocolError("a v3 roster whose entries or grid are not its call's")
        if roster.finals != ran.finals:
            raise ProtocolError("its final parts' digests are not those we gathered")
        if set(roster.caught) != set(ran.caught):  # each proof's digest too: the one we checked
            raise ProtocolError("the owners it says were caught, or their proofs, are not those we checked")

    def gathered(self, accepted: AcceptedRoster) -> Aggregate | None:
        """The aggregate of a v3 roster we took part in (None: we did not)."""
        took = self.ran.get((accepted.roster.round, accepted.roster.leader))
        return None if took is None else Aggregate(took[1].aggregate)
