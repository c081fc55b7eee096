"""The checks a peer runs on a round's rosters before it takes one (RoundProtocol's reads).

A roster is taken only when its leader could be elected in its slot, it starts from our state,
continues our ledger (or a better sibling of our last roster: the swarm converges on the best
one), carries the beacon the chain gives and its leader's unique reveal, and lists signed
announcements of live, unbanned, admitted peers of the run's exact size. RoundProtocol inherits these;
they read its net, ledger, hooks and what it saw live (`seen`) and when it opened each round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node.round import election
from node.round.election import RosterCheck
from node.round.ledger import AcceptedRoster, Ledger
from node.round.trust import chain, gate, marks, omission
from protocol import keys, signed
from protocol.admission.rule import Admission
from protocol.errors import ProtocolError

log = logging.getLogger("swarmtrain.rounds")


class RosterChecks:
    """Roster checks and sibling convergence, mixed into RoundProtocol (node/round/protocol.py)."""

    def young(self) -> bool:
        """Is the run young on our ledger (chain.young): the organizer is its only leader."""
        return chain.young(self.ledger, self.rules)

    def check_roster(
        self, env: object, leader: str, round_no: int, base: str, cands: set[str] | None, ranked: set[str] | None = None
    ) -> RosterCheck:
        """Accept a roster only when it is signed by a leader we could elect, in a slot (attempt,
        rank) whose turn has come on our clock (ranks counted among `ranked`, default `cands`),
        starts from our state, continues our ledger (or a better sibling of our last roster,
        returned for a swap) with the beacon that follows from it and its leader's unique
        reveal, lists signed announcements of live, unbanned, admitted peers of the run's exact
        size, and is dated at most omission.AHEAD s ahead of our clock (not yet, else)."""
        if cands is not None and leader not in cands and leader != self.me:  # before any RSA: a flood is cheap
            raise ProtocolError("its leader is not an established peer on this state")
        problem = chain.leader_problem(leader, self.ledger, self.rules) if self.young() else ""
        if problem:  # also where our ledger cannot tell who else leads (cands None): a young run's rule
            raise ProtocolError(problem)
        roster, anns = signed.open_roster(env, signer=leader, max_bytes=self.max_bytes)
        ahead = omission.dated_ahead(roster, self.net.now())  # the next floor starts from its time
        if ahead:
            raise ProtocolError(ahead)
        sibling, slot = self.check_record(roster, anns, env, round_no, base, cands, ranked)
        held = self.ledger.rosters if sibling is None else {**self.ledger.rosters, round_no - 1: sibling}
        omission.check_cutoff(roster, held, self.cfg.collect_timeout)  # the chain before it: what it chains on
        return RosterCheck(AcceptedRoster(env, roster, tuple(anns)), sibling, slot)

    def check_call(
        self, env: object, leader: str, round_no: int, base: str, cands: set[str] | None, ranked: set[str] | None = None
    ) -> RosterCheck:
        """A v3 round's call (protocol/kinds/call.py), checked as a roster is; its RosterCheck
        holds the call where a roster's holds the roster."""
        if cands is not None and leader not in cands and leader != self.me:
            raise ProtocolError("its leader is not an established peer on this state")
        call, anns = signed.open_call(env, signer=leader, max_bytes=self.max_bytes)
        sibling, slot = self.check_record(call, anns, env, round_no, base, cands, ranked)
        return RosterCheck(AcceptedRoster(env, call, tuple(anns)), sibling, slot)

    def check_record(
        self, roster, anns: list, env: dict, round_no: int, base: str, cands: set[str] | None, ranked: set[str] | None
    ) -> tuple[AcceptedRoster | None, election.Slot]:
        """check_roster's checks of an opened roster or call: (a better sibling of our last roster
        it follows, or None; its leader's slot). Raises ProtocolError."""
        leader = roster.leader
        if roster.run != self.run_id or roster.round != round_no:
            raise ProtocolError("names another run or round")
        if roster.base != base:
            raise ProtocolError(f"starts from state {roster.base[:12]}, ours is {base[:12]}")
        expected_prev, sibling = self.ledger.prev_hash(round_no), None
        if expected_prev and roster.prev != expected_prev:
            sibling = self.find_sibling(round_no - 1, roster.prev)
            if sibling is None:
                raise ProtocolError(f"follows roster {roster.prev[:12]}, our ledger's is {expected_prev[:12]}")
        seen = self.seen.get(round_no, set())
        if cands is None and leader not in seen:
            raise ProtocolError("its leader has no live signed heartbeat")
        # Without the roster before (a joiner) we take the claimed beacon as is: a later step
        # verifies the chain of beacons from genesis. Ranks are judged only where our ledger
        # tells who may lead (cands); a joiner accepts any live leader, as before.
        expected = self.beacon(round_no, sibling)
        if expected is not None and roster.beacon != expected:
            raise ProtocolError(f"claims beacon {roster.beacon[:12]}, the chain gives {expected[:12]}")
        among = (cands if ranked is None else ranked) or set()
        if cands is not None and leader != self.me:  # a far attempt is refused before it is ranked
            started = roster.attempt * election.attempt_seconds(self.cfg)
            if self.elapsed(round_no) < started:
                raise ProtocolError(
                    f"its leader leads in attempt {roster.attempt}, whose turn comes "
                    f"{started - self.elapsed(round_no):.0f} s from now"
                )
        tickets, whole = self.tickets(round_no), self.ledger.holds_window(round_no)
        slot = election.slot_of(roster.beacon, roster.attempt, among, leader, self.marked(round_no), tickets)
        if cands is not None and leader != self.me and whole:  # without the window our ranks are not the swarm's
            election.check_turn(slot, self.elapsed(round_no), self.cfg)
        marks.check(roster, {a.peer for a in anns}, tickets if whole else None)
        election.check_reveal(roster, env["key"])
        strangers = [a.peer for a in anns if a.peer not in seen and a.peer != self.me]
        if strangers:
            raise ProtocolError(f"lists {strangers[0][:16]}, which has no live signed heartbeat")
        chain.check_entries(roster, anns, self.ledger, self.rules)  # base, bans, admission of new authors
        wrong = next((w for w in map(self.updates.wrong_size, anns) if w is not None), None)
        if wrong is not None:
            raise ProtocolError(f"lists an update that {wrong}")
        return sibling, slot

    # ------------------------------------------------------------------ reading and taking
    def read_roster(
        self, round_no: int, base: str, cands: set[str] | None, ranked: set[str] | None = None
    ) -> AcceptedRoster | None:
        """The acceptable roster of this round with the smallest (attempt, rank), if any."""
        passed: list[RosterCheck] = []
        for leader, env in self.net.get_subkeys(keys.roster_key(self.run_id, round_no)).items():
            if (round_no, leader) in self.failed:
                continue
            try:
                check = self.check_roster(env, str(leader), round_no, base, cands, ranked)
                if self.is_v3(check.accepted):
                    self.check_v3(check.accepted)
                passed.append(check)
            except ProtocolError as e:
                if (round_no, leader) not in self.refused:
                    self.refused.add((round_no, leader))
                    log.warning("round %d: refusing the roster of %s: %s", round_no, str(leader)[:16], e)
        if not passed:
            return None
        best = min(passed, key=RosterCheck.preference)
        if best.sibling is not None:
            self._swap(best.sibling)
        return best.accepted

    def elapsed(self, round_no: int) -> float:
        """Seconds since we first awaited `round_no` (0 before: only the first slot's turn has come)."""
        opened = self.opened.get(round_no)
        return 0.0 if opened is None else self.net.monotonic() - opened

    def opening(self, round_no: int, local: float) -> float:
        """When we date `round_no`'s opening (gate.opening), having opened it at `local`: from the
        signed time of the roster before, by how late we took that roster (at most omission.AHEAD:
        honest clocks and a DHT read; a past-dated roster buys no more) or, after a sync, that
        round's state (at most collect_timeout: a joiner's first round, ours alone)."""
        before = self.ledger.rosters.get(round_no - 1)
        took, synced = self.took.get(round_no - 1), self.synced.get(round_no - 1)
        if before is None or (took is None and synced is None):
            return local
        signed_at = self.net.monotonic() - (self.net.now() - before.roster.time)  # on our clock
        if synced is not None and (took is None or synced > took):  # we trained on from the synced state
            return gate.opening(local, synced, signed_at, self.cfg.collect_timeout)
        return gate.opening(local, took, signed_at, omission.AHEAD)

    def _took(self, round_no: int, accepted: AcceptedRoster) -> AcceptedRoster:
        self.took[round_no] = self.net.monotonic()
        self.gate.opened(round_no)  # its updates are no secret now (protocol 18: trust/gate.py)
        self.gate.took(accepted.roster, accepted.announcements)  # a seal it hid: our evidence (protocol 21)
        known, _ = self.ledger.authors_before(round_no, omission.KNOWN)  # seers list no newcomer
        listable = (self.seen.get(round_no, set()) & known) - self.banned(self.ledger)
        self.seer.took(accepted.roster, {a.peer for a in accepted.announcements}, self.net.now(), listable)
        if self.net.held_update(round_no, self.me) is not None and all(
            a.peer != self.me for a in accepted.announcements
        ):
            self.left_out += 1
            log.warning(
                "round %d: leader %s left our announced update out (%d rounds so far)",
                round_no,
                accepted.roster.leader[:16],
                self.left_out,
            )
        return accepted

    def find_sibling(self, round_no: int, wanted: str) -> AcceptedRoster | None:
        """The DHT's roster of `round_no` whose hash is `wanted`, if it is a better sibling of ours
        (election.better_siblings). Without this, peers that took different siblings would
        refuse each other's rosters for ever although their states are equal."""
        return next((s for s in self._better_siblings(round_no) if s.hash == wanted), None)

    def converge(self, round_no: int) -> None:
        """Take the best sibling of our roster of `round_no` in the DHT, if better than ours, before
        the next round is ranked from it (its beacon is its leader's) and before we chain on it."""
        better = self._better_siblings(round_no)
        if better:
            self._swap(better[0])

    def _better_siblings(self, round_no: int) -> list[AcceptedRoster]:
        mine = self.ledger.rosters.get(round_no)
        if mine is None:
            return []
        stored = self.net.get_subkeys(keys.roster_key(self.run_id, round_no))
        # a young run's only leader is the organizer, never a contributor: no sibling replaces its
        # roster; None: nobody established yet in a run without a young run, anyone
        established = self.ledger.established(self.cfg.established_rounds) or None
        leaders = {self.rules.organizer} if self.young() else established
        tickets = self.tickets(round_no)  # the rosters before round_no's: as its leaders ranked
        better = election.better_siblings(mine, stored, self.max_bytes, leaders, self._came_late(round_no), tickets)
        # its lists count once swapped in (marks, failed proofs), and its time in the next round's floor
        now = self.net.now()
        return [
            s
            for s in better
            if _lists_valid(s, self.admission, self.max_bytes, self.ledger, self.cfg.established_rounds)
            and not omission.dated_ahead(s.roster, now)
        ]

    def _came_late(self, round_no: int) -> Callable[[election.Slot], bool]:
        """Whether our roster of `round_no` came late for a slot: we awaited the round from before
        that slot's turn and took our roster only from it on, on our own clock (a round we came
        to late, `moved_on`, dates back `opened`: then we never know). election.better_siblings."""
        opened, first, took = self.opened.get(round_no), self.first_look.get(round_no), self.took.get(round_no)

        def came_late(slot: election.Slot) -> bool:
            if opened is None or first is None or took is None:
                return False
            return first - opened < election.turn(slot, self.cfg) <= took - opened

        return came_late

    def _swap(self, sibling: AcceptedRoster) -> None:
        self.ledger.swap(sibling)
        log.info(
            "round %d: our ledger now holds %s's roster (same updates and state), a better-ranked sibling",
            sibling.roster.round,
            sibling.roster.leader[:16],
        )


def _lists_valid(
    accepted: AcceptedRoster,
    admission: Admission,
    max_bytes: int,
    window: Ledger | None = None,
    established_rounds: int = 0,
) -> bool:
    """Could a sibling's skip, unserved and failed lists be an honest leader's (marks.check,
    Admission.check_failed)? Siblings compare no lists (accepted.siblings), so without this a
    better-ranked contributor's sibling put any skip marks in the chain (tests/test_sybil_attacks_2.py),
    or an honest newcomer's valid proof among the failures every leader skips (tests/test_work.py)."""
    try:
        r = accepted.roster.round
        tickets = {} if window is None else window.tickets(r, established_rounds) if window.holds_window(r) else None
        marks.check(accepted.roster, {a.peer for a in accepted.announcements}, tickets)
        beacon_of = window.beacon_of if window is not None else lambda r: None  # None: epoch 0's seed only
        seeds = admission.seeds(accepted.roster.round, accepted.roster.beacon, beacon_of)
        admission.check_failed(accepted.roster, list(accepted.announcements), max_bytes, seeds)
        return True
    except ProtocolError:
        return False
