"""The life of one round (protocol v2, docs/protocol.md), as pure logic over a RoundNet.

1. Each peer keeps its encoded update, and announces it signed: (run, round, size, SHA-256, tokens).
2. The candidates (live, on the round's base state, established in the ledger) are ranked under
   the round's beacon, afresh in each attempt (node/round/election.py). Rank 0 waits for the
   expected announcements (or collect_timeout), fetches and checks every update (fetch.py),
   applies them to a copy of the state (Hooks.result) and publishes the signed roster
   (lead.py). Ranks 1 and 2 may lead after collect_timeout + rank x leader_backoff.
3. Every peer accepts only rosters that pass `check_roster`, picks the smallest (attempt, rank),
   gathers its updates (exact sizes, SHA-256 pinned by the signed announcements) down relay
   trees rooted at their owners (node/round/relay.py: an owner sends its update twice,
   whatever N), else from their owner or the leader, and applies them in roster order: the
   same bits everywhere.
4. A peer that cannot gather a roster gives the round up (RoundFailed): it takes the state of
   peers that did, or redoes the round and ignores that roster.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import replace

from node.config import SwarmConfig
from node.round import election, lead, relay
from node.round.checks import RosterChecks
from node.round.election import Slot
from node.round.fetch import UpdateFetcher, UpdateShape, envelope_bytes
from node.round.hooks import Hooks
from node.round.lead import RosterBuilder
from node.round.ledger import AcceptedRoster, Ledger
from node.round.net import PeerTable, RoundNet
from node.round.trust import marks, omission, sealed
from node.round.trust.chain import ChainRules
from node.round.trust.gate import Gate
from node.round.v3 import OFF, Aggregate, Scatter, ScatterRounds
from protocol import keys, signed
from protocol.admission.rule import DISABLED, Admission
from protocol.messages import UpdateEnvelope
from protocol.records import Announcement, Heartbeat, Roster

log = logging.getLogger("swarmtrain.rounds")
POLL = 0.25  # seconds between two looks at the DHT while waiting


def round_record_ttl(cfg: SwarmConfig) -> float:
    """How long announcements and rosters live in the DHT (and the longest life validators allow)."""
    return max(2 * cfg.round_timeout, 600.0)


class RoundFailed(Exception):
    """This peer cannot complete the round identically; it must resync its state."""


class RoundProtocol(RosterChecks, ScatterRounds):
    """One peer's side of the rounds of a run: announce, await (or lead) a roster, gather it;
    rounds the `scatter` hook says are v3 go through a call and the reduce-scatter (v3.py)."""

    def __init__(
        self,
        net: RoundNet,
        run_id: str,
        cfg: SwarmConfig,
        key,
        ledger: Ledger,
        hooks: Hooks,
        max_bytes: int,
        update_shape: UpdateShape | None = None,
        admission: Admission = DISABLED,
        organizer: str = "",
        trains: bool = True,
        scatter: Scatter = OFF,
    ):
        self.net, self.run_id, self.cfg, self.key, self.ledger, self.hooks = net, run_id, cfg, key, ledger, hooks
        self.me, self.max_bytes, self.admission = net.me, max_bytes, admission  # admission: protocol/admission
        self.organizer = organizer  # the manifest's organizer: a young run's only leader ("": no young run)
        self.trains = trains  # False: the organizer's witness, which leads and applies but announces nothing
        self.opened: dict[int, float] = {}  # round -> when (monotonic) we first awaited it: its attempts' clock
        self.core_in: dict[int, dict[str, float]] = {}  # round -> seconds waited when the core (most of it) was in
        self.first_look: dict[int, float] = {}  # round -> when (monotonic) we first awaited it
        self.took: dict[int, float] = {}  # round -> when (monotonic) we took its roster (better_siblings)
        self.synced: dict[int, float] = {}  # round -> when (monotonic) we took its state from peers (opening)
        self.ttl = round_record_ttl(cfg)
        self.failed: set[tuple[int, str]] = set()  # (round, leader) rosters this peer could not gather
        self.members: dict[int, set[str]] = {}  # round -> peers of the roster this peer gathered
        self.seen: dict[int, set[str]] = {}  # round -> peers seen live (signed) during it
        self.refused: set[tuple[int, str]] = set()  # rosters already logged as refused
        self.left_out = 0  # rounds whose roster omitted our announced update
        self.last_announced = 0  # the last round we announced an update for
        self.table = PeerTable(net, run_id, cfg.heartbeat_ttl)
        self.updates = UpdateFetcher(net, run_id, cfg, hooks.validate, update_shape)
        self.builder = RosterBuilder(net, run_id, key, hooks, self.updates, max_bytes, admission, ledger)
        self.scatter = scatter  # v3 (node/round/v3.py); OFF: every round verify-all
        self.ran: dict[tuple[int, str], tuple] = {}  # (round, leader) -> (its call, our v3 Ran)
        self.called: set[tuple[int, str]] = set()  # (round, leader) calls we took (or could not)
        self.led_v3: set[tuple[int, int]] = set()  # (round, attempt) we called a v3 round in
        self.silent: dict[int, set[str]] = {}  # round -> v3 leaders that went silent on our part (v3.py)
        self.seer = omission.Seer(self.me)  # what we saw in time, and our own left out (design step 5)
        self.gate = self.builder.gate = Gate(run_id, self.me, key, net.monotonic, net.now)  # protocol 18
        getattr(net, "set_gate", lambda gate: None)(self.gate)  # the exchange serves updates through it

    def rewound(self, state_round: int) -> None:
        """We took a state of `state_round` from peers: what we remember of later rounds (when we
        opened them, who we saw) belongs to a branch we left, and would date our attempts wrong."""
        for memory in (self.opened, self.seen, self.core_in, self.first_look, self.took, self.silent):
            for r in [r for r in memory if r > state_round]:
                del memory[r]
        self.synced[state_round] = self.net.monotonic()  # our late start dates the next round (opening)

    @property
    def rules(self) -> ChainRules:
        """What a roster read as part of a chain is checked by (node/round/trust/chain.py)."""
        return ChainRules(
            run_id=self.run_id,
            established_rounds=self.cfg.established_rounds,
            max_bytes=self.max_bytes,
            banned=self.banned,
            organizer=self.organizer or (self.ledger.anchor.organizer if self.ledger.anchor else ""),
            admission=self.admission,
            bootstrap_peers=self.cfg.bootstrap_peers,
            collect_timeout=self.cfg.collect_timeout,
        )

    def banned(self, ledger: Ledger) -> set[str]:
        """Peers the chain bans: by the strategy's scores (Hooks.banned), and v3 owners caught lying."""
        return self.hooks.banned(ledger) | ledger.caught()

    # ------------------------------------------------------------------------------- announce
    def envelope(self, round_no: int, codec: str, payload: bytes) -> bytes:
        return UpdateEnvelope(run=self.run_id, round=round_no, peer=self.me, codec=codec, payload=payload).encode()

    def announce(self, round_no: int, blob: bytes, tokens: int, base: str) -> None:
        """Publish our update of `round_no`, which applies to state `base` (our state now)."""
        shape = self.updates.shape
        if shape is not None and len(blob) != envelope_bytes(self.run_id, round_no, self.me, shape):
            raise ValueError(f"our update is {len(blob)} bytes, not the run's {shape}: every peer would refuse it")
        self.net.keep_update(round_no, self.me, blob)
        self.last_announced = round_no
        late, claim = self.seer.fields(round_no, {(c.claimant, c.round) for c in self.claims()})
        ann = Announcement(
            run=self.run_id,
            round=round_no,
            peer=self.me,
            nbytes=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            tokens=tokens,
            base=base,
            time=self.net.now(),
            work=self.admission.proof,
            seen_late=late,
            claim=claim,
            hidden=self.gate.evidence(round_no),  # a seal a roster we took hid (protocol 21: trust/gate.py)
        )
        env = signed.seal(self.key, ann)
        if len(env["body"]) > signed.MAX_BODY["announcement"]:  # a claim and evidence (both up to 16 KiB)
            env = signed.seal(self.key, replace(ann, claim=None))  # refused by all: the claim waits a round
        self.gate.announced(round_no, env)  # before it is stored: a leader may ask for it at once
        peers = self.peers()  # the gate's view till await_roster's; a joiner ranks the live peers (security.md: open)
        turns = self.candidates(peers, base, round_no - 1, ahead=1) or election.candidates(peers, base, None, round_no)
        since = self.took.get(round_no - 1, self.net.monotonic())  # since we trained it
        opened = self.opened[round_no] if round_no in self.opened else self.opening(round_no, since)
        self.gate.show(round_no, self.beacon(round_no), turns, self.marked, self.tickets, opened, self.cfg)
        self.seer.announced(round_no, env, claims=claim is not None)
        self.net.store(keys.updates_key(self.run_id, round_no), self.me, env, ttl=self.ttl)

    # ------------------------------------------------------------------------- who may lead
    def peers(self) -> dict[str, Heartbeat]:
        """Live peers (net.PeerTable: merged over reads, so one partial read does not drop one)."""
        return self.table.read()

    def candidates(
        self, peers: dict[str, Heartbeat], base: str, state_round: int, ahead: int | None = None
    ) -> set[str] | None:
        """Who may lead this round (`ahead`: election.candidates); None when our ledger cannot tell
        (we joined mid-run and the chain is not known yet): then we accept any live leader and
        never lead ourselves."""
        if self.young():
            return election.organizer_candidate(peers, base, self.rules.organizer, state_round + 1, ahead)
        live_established = self.ledger.established(self.cfg.established_rounds) & set(peers)
        if live_established:
            return election.candidates(peers, base, live_established, state_round + 1, ahead)
        if self.ledger.complete(state_round):  # a young run: nobody is established yet
            return election.candidates(peers, base, None, state_round + 1, ahead)
        return None

    # ------------------------------------------------------------------------ await a roster
    def await_roster(self, round_no: int, base: str, state_round: int, stop: threading.Event) -> AcceptedRoster | None:
        """Block until round `round_no` has an acceptable roster (leading it if it falls to us)."""
        started = self.net.monotonic()
        self.opened = {r: t for r, t in self.opened.items() if r >= round_no - 2}
        for memory in (self.core_in, self.first_look, self.took, self.synced, self.silent):
            for r in [r for r in memory if r < round_no - 2]:
                del memory[r]
        opened = self.opened.setdefault(round_no, self.opening(round_no, started))  # a retry goes on with its attempts
        self.first_look.setdefault(round_no, started)
        self.converge(round_no - 1)
        seen = self.seen.setdefault(round_no, set())
        while not stop.is_set() and self.net.monotonic() - started < self.cfg.round_timeout:
            peers = self.peers()
            seen |= set(peers)
            cands = self.candidates(peers, base, state_round)
            turns = self.candidates(peers, base, state_round, ahead=1)  # whom we wait for: not peers far ahead
            if cands and election.moved_on(peers, cands, self.me, round_no, self.tickets(round_no)):  # we come late
                opened = self.opened[round_no] = min(opened, self.net.monotonic() - self.cfg.round_timeout)
            if self.seer.due(round_no, self.net.monotonic()):  # first sightings, for seen_late (omission.py)
                anns = self.builder.announcements(round_no, base)
                self.seer.saw(round_no, {p: s.envelope for p, s in anns.items()}, self.net.now())
            accepted = self.read_roster(round_no, base, cands, turns)
            if accepted is not None:
                return self._took(round_no, accepted)
            self.take_call(round_no, base, cands, turns, stop)  # v3: our part in a call that lists us
            opened = self.opened[round_no]  # its leader went silent: the next slot's turn is now
            self.gate.show(round_no, self.beacon(round_no), turns, self.marked, self.tickets, opened, self.cfg)
            now = self.net.monotonic()
            slot = self._my_turn(round_no, base, turns, peers, now - started, now - opened) if turns else None
            if slot is not None:
                late = now - started >= 0.8 * self.cfg.round_timeout  # a shrunken swarm must not stall
                accepted = self._lead(round_no, base, slot, turns, at_least=1 if late else self.cfg.min_peers)
                if accepted is not None:
                    return self._took(round_no, accepted)
            stop.wait(POLL)
        return None

    def beacon(self, round_no: int, parent: AcceptedRoster | None = None) -> str | None:
        """The beacon round `round_no` is ranked under: beacon(1) from the run id, else from the
        roster of the round before (`parent`, default our ledger's): its beacon and its leader's
        reveal. None when we do not hold that roster (we joined or resynced)."""
        if round_no == 1:
            return election.first_beacon(self.run_id)
        parent = parent or self.ledger.rosters.get(round_no - 1)
        return None if parent is None else election.next_beacon(parent.roster.beacon, parent.roster.reveal)

    def _my_turn(
        self, round_no: int, base: str, turns: set[str], peers: dict, waited: float, elapsed: float
    ) -> Slot | None:
        """Our slot when we may lead now: we rank below ATTEMPT_RANKS in the running attempt and
        its turn came (a better-ranked peer that is alive but does not lead is passed over)."""
        beacon = self.beacon(round_no)
        if beacon is None or self.me not in turns:
            return None  # we do not know the chain: leave leading to others (as _lead does)
        attempt = election.attempt_at(elapsed, self.cfg)
        slot = election.slot_of(beacon, attempt, turns, self.me, self.marked(round_no), self.tickets(round_no))
        if not election.may_lead(slot, elapsed, self.cfg):
            return None
        if slot != (0, 0):  # later ranks, and rank 0 of a later attempt, find the announcements in
            return slot
        if self.me not in peers and waited < self.cfg.collect_timeout:
            return None  # a table without our own heartbeat is a partial DHT read
        announced = set(self.builder.announcements(round_no, base))
        enough = len(announced) >= self.cfg.min_peers or waited >= 0.8 * self.cfg.round_timeout
        return slot if enough and self._collected(round_no, peers, announced, waited) else None

    def _collected(self, round_no: int, peers: dict[str, Heartbeat], announced: set[str], waited: float) -> bool:
        last = self.members.get(round_no - 1, set())
        mine = {self.me} if self.trains else set()  # the witness announces nothing: never wait for it
        # an announcer two leaders could not fetch from, nor we, is not waited for (trust/marks.py)
        expected = (lead.expected(peers, round_no, last) - self.slow(round_no)) | mine
        # the core: last round's members (an established peer silent since is no longer waited
        # for), else after a sync the established; in a young run, everyone
        core = expected & ((last or self.ledger.established(self.cfg.established_rounds)) | mine)
        core = core if core - {self.me} else expected
        return lead.collected(expected, core, announced, waited, self.core_in.setdefault(round_no, {}), self.cfg)

    # ------------------------------------------------------------------------------- leading
    def marked(self, round_no: int) -> set[str]:
        """Candidates ranked after all others in round `round_no`: skip- or omission-marked by the chain."""
        k = self.cfg.established_rounds
        return marks.skip_marked(self.ledger, round_no) | marks.omission_marked(self.ledger, round_no, k)

    def tickets(self, round_no: int) -> dict[str, int]:
        """Candidates' tickets in round `round_no`'s rank keys: their whole rounds of credit (election.py)."""
        return self.ledger.tickets(round_no, self.cfg.established_rounds)

    def claims(self) -> list[omission.Claim]:
        """The omission claims our chain counts (node/round/trust/omission.py)."""
        return omission.claims(self.ledger.rosters, self.cfg.established_rounds)

    def slow(self, round_no: int) -> set[str]:
        """Announcers not waited for and fetched last in round `round_no`: the chain's slow servers
        that we did not fetch fine ourselves (marks.slow_to_me). Readers check neither: local."""
        return marks.slow_to_me(self.ledger, round_no, self.updates.fetched)

    def _lead(self, round_no: int, base: str, slot: Slot, ranked: set[str], at_least: int = 1) -> AcceptedRoster | None:
        prev, beacon = self.ledger.prev_hash(round_no), self.beacon(round_no)
        if not prev or beacon is None:
            return None  # we synced state and do not know the chain: leave leading to others
        floor = omission.floor(self.ledger.rosters, round_no, self.cfg.collect_timeout)
        if not self.seer.may_close(round_no, floor, self.net.now(), self.net.monotonic(), self.cfg.collect_timeout):
            return None  # the chain's cutoff floor is ahead: readers would refuse our roster
        gone = self.silent.get(round_no, set())  # v3 leaders gone silent after their call: left out (v3.py)
        eligible = (self.seen.get(round_no, set()) | {self.me}) - self.banned(self.ledger) - gone
        marked, tickets = self.marked(round_no), self.tickets(round_no)
        slow, skip = self.slow(round_no), marks.passed_over(beacon, slot, ranked, self.me, marked, tickets)
        picked = self.builder.pick(round_no, base, eligible, at_least, beacon=beacon, slow=slow)
        if self.v3_round(len(picked.announcements), self.me):
            # one v3 round an attempt, and none while a call we took part in awaits its roster
            if (round_no, slot.attempt) in self.led_v3 or any(r == round_no for r, _ in self.ran):
                return None
            if len(picked.announcements) < max(1, picked.at_least) or self.hooks.aggregate is None:
                return None
            accepted = self.lead_v3(round_no, base, prev, beacon, slot, picked, skip, floor)
        else:
            accepted = self.builder.build(
                round_no,
                base,
                prev,
                eligible,
                at_least,
                beacon=beacon,
                attempt=slot.attempt,
                skip=skip,
                slow=slow,
                picked=picked,
                floor=floor,
                candidates=ranked,
            )
        if accepted is None:
            return None
        existing = self.read_roster(round_no, base, self.candidates(self.peers(), base, base_round(accepted.roster)))
        if existing is not None:  # another rank led while we fetched: follow it, do not fork the round
            return existing
        self.net.store(keys.roster_key(self.run_id, round_no), self.me, accepted.envelope, ttl=self.ttl)
        log.info("round %d: led (attempt %d, rank %d), roster of %d", round_no, *slot, len(accepted.announcements))
        return accepted

    # -------------------------------------------------------------------------------- gather
    def gather(self, accepted: AcceptedRoster) -> list[bytes] | Aggregate:
        """The payloads of the roster's updates, in roster order (a v3 roster: the aggregate this
        member gathered in its round); raises RoundFailed."""
        round_no, leader = accepted.roster.round, accepted.roster.leader
        if self.is_v3(accepted):
            got = self.gathered(accepted)
            if got is None:
                self.failed.add((round_no, leader))
                raise RoundFailed(f"round {round_no}: a v3 round we took no part in (we resync)")
            self.members = {round_no: {a.peer for a in accepted.announcements}}
            return got
        the_ring = relay.ring(self.run_id, round_no, leader, [a.peer for a in accepted.announcements])
        live = set(self.peers())  # a relay without a live heartbeat is skipped, not waited on

        def from_whom(a: Announcement) -> list[str]:
            order = relay.sources(the_ring, a.peer, leader, self.me, self.cfg.relay_fanout)
            return [p for p in order if p in live or p in (a.peer, leader)]

        seals = sealed.presented(accepted.roster, accepted.announcements)  # protocol 18: trust/gate.py
        blobs = self.updates.fetch(
            list(accepted.announcements), round_no, sources=from_whom, released=lambda a: seals.get(a.peer, "")
        )
        for a, blob in zip(accepted.announcements, blobs):
            if isinstance(blob, Exception):
                self.failed.add((round_no, leader))
                raise RoundFailed(f"round {round_no}: could not get the update of {a.peer[:16]}: {blob}")
        self.updates.note(round_no, list(accepted.announcements), blobs)  # first-hand (marks.slow_to_me)
        self.members = {round_no: {a.peer for a in accepted.announcements}}
        return [UpdateEnvelope.decode(b).payload for b in blobs]


def base_round(roster: Roster) -> int:
    return roster.round - 1
