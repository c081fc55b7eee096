"""The life of one round (protocol v2, docs/protocol.md), as pure logic over a RoundNet.

1. Each peer keeps its encoded update, and announces it signed: (run, round, size, SHA-256, tokens).
2. The candidates (live, on the round's base state, established in the ledger) are ranked by a
   hash of (run, round, base digest, peer). Rank 0 waits for the expected announcements (or
   collect_timeout), fetches and checks every update (node/round/fetch.py), applies them to a
   copy of the state (Hooks.result) and publishes the signed roster (node/round/lead.py): the
   signed announcements, prev, base, result and, with scoring, the scores. Rank i may lead
   after i x leader_backoff more seconds.
3. Every peer accepts only rosters that pass `check_roster`, picks the best-ranked one,
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
from typing import NamedTuple

from node.config import SwarmConfig
from node.round import election, relay
from node.round.fetch import UpdateFetcher
from node.round.hooks import Hooks
from node.round.lead import RosterBuilder
from node.round.ledger import AcceptedRoster, Ledger, siblings
from node.round.net import RoundNet, read_peers
from protocol import keys, signed
from protocol.errors import ProtocolError
from protocol.messages import UpdateEnvelope
from protocol.records import Announcement, Heartbeat, Roster

log = logging.getLogger("swarmtrain.rounds")
POLL = 0.25  # seconds between two looks at the DHT while waiting


def round_record_ttl(cfg: SwarmConfig) -> float:
    """How long announcements and rosters live in the DHT (and the longest life validators allow)."""
    return max(2 * cfg.round_timeout, 600.0)


class RoundFailed(Exception):
    """This peer cannot complete the round identically; it must resync its state."""


class Sighting(NamedTuple):
    """A peer's latest heartbeat, and when (monotonic seconds) a DHT read last showed it."""

    at: float
    heartbeat: Heartbeat


class RosterCheck(NamedTuple):
    """A roster that passed check_roster."""

    accepted: AcceptedRoster
    sibling: AcceptedRoster | None
    """A sibling of our ledger's last roster that this one chains on, for Ledger.swap."""


class RoundProtocol:
    """One peer's side of the rounds of a run: announce, await (or lead) a roster, gather it."""

    def __init__(self, net: RoundNet, run_id: str, cfg: SwarmConfig, key, ledger: Ledger, hooks: Hooks, max_bytes: int):
        self.net, self.run_id, self.cfg, self.key, self.ledger, self.hooks = net, run_id, cfg, key, ledger, hooks
        self.me = net.me
        self.max_bytes = max_bytes
        self.ttl = round_record_ttl(cfg)
        self.failed: set[tuple[int, str]] = set()  # (round, leader) rosters this peer could not gather
        self.members: dict[int, set[str]] = {}  # round -> peers of the roster this peer gathered
        self.seen: dict[int, set[str]] = {}  # round -> peers seen live (signed) during it
        self.refused: set[tuple[int, str]] = set()  # rosters already logged as refused
        self.left_out = 0  # rounds whose roster omitted our announced update
        self.last_announced = 0  # the last round we announced an update for
        self._recent: dict[str, Sighting] = {}  # peer -> its latest heartbeat and when we saw it
        self.updates = UpdateFetcher(net, run_id, cfg, hooks.validate)
        self.builder = RosterBuilder(net, run_id, key, hooks, self.updates, max_bytes)

    # ------------------------------------------------------------------------------- announce
    def envelope(self, round_no: int, codec: str, payload: bytes) -> bytes:
        return UpdateEnvelope(run=self.run_id, round=round_no, peer=self.me, codec=codec, payload=payload).encode()

    def announce(self, round_no: int, blob: bytes, tokens: int, base: str) -> None:
        """Publish our update of `round_no`, which applies to state `base` (our state now)."""
        self.net.keep_update(round_no, self.me, blob)
        self.last_announced = round_no
        ann = Announcement(
            run=self.run_id,
            round=round_no,
            peer=self.me,
            nbytes=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            tokens=tokens,
            base=base,
            time=self.net.now(),
        )
        self.net.store(keys.updates_key(self.run_id, round_no), self.me, signed.seal(self.key, ann), ttl=self.ttl)

    # ------------------------------------------------------------------------- who may lead
    def peers(self) -> dict[str, Heartbeat]:
        """Live peers: this DHT read merged with what earlier reads saw within 2 x heartbeat_ttl.
        One DHT read may miss subkeys (a lookup that did not reach every replica), and a roster
        should not be refused because its leader's heartbeat was missing from one read."""
        now = self.net.monotonic()
        for p, hb in read_peers(self.net.get_subkeys, self.run_id, self.net.now(), self.cfg.heartbeat_ttl).items():
            self._recent[p] = Sighting(now, hb)
        for p in [p for p, sighting in self._recent.items() if now - sighting.at > 2 * self.cfg.heartbeat_ttl]:
            del self._recent[p]
        return {p: sighting.heartbeat for p, sighting in self._recent.items()}

    def candidates(
        self, peers: dict[str, Heartbeat], base: str, state_round: int, ahead: int | None = None
    ) -> set[str] | None:
        """Who may lead this round (`ahead`: election.candidates); None when our ledger cannot tell
        (we joined mid-run and the chain is not known yet): then we accept any live leader and
        never lead ourselves."""
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
        seen = self.seen.setdefault(round_no, set())
        while not stop.is_set() and self.net.monotonic() - started < self.cfg.round_timeout:
            peers = self.peers()
            seen |= set(peers)
            cands = self.candidates(peers, base, state_round)
            accepted = self.read_roster(round_no, base, cands)
            if accepted is not None:
                self._note_left_out(round_no, accepted)
                return accepted
            waited = self.net.monotonic() - started
            turns = self.candidates(peers, base, state_round, ahead=1)  # whom we wait for: not peers far ahead
            if turns is not None and self.me in turns and self._my_turn(round_no, base, turns, peers, waited):
                late = waited >= 0.8 * self.cfg.round_timeout  # a shrunken swarm must not stall
                accepted = self._lead(round_no, base, at_least=1 if late else self.cfg.min_peers)
                if accepted is not None:
                    self._note_left_out(round_no, accepted)
                    return accepted
            stop.wait(POLL)
        return None

    def _my_turn(self, round_no: int, base: str, cands: set[str], peers: dict, waited: float) -> bool:
        rank = election.ranking(self.run_id, round_no, base, cands).index(self.me)
        if rank > 0:  # a better-ranked peer that is alive but does not lead is passed over
            return waited >= self.cfg.collect_timeout + rank * self.cfg.leader_backoff
        if self.me not in peers and waited < self.cfg.collect_timeout:
            return False  # a table without our own heartbeat is a partial DHT read
        announced = self.builder.announcements(round_no, base)
        enough = len(announced) >= self.cfg.min_peers or waited >= 0.8 * self.cfg.round_timeout
        return enough and (self._expected(round_no, peers) <= set(announced) or waited >= self.cfg.collect_timeout)

    def _expected(self, round_no: int, peers: dict[str, Heartbeat]) -> set[str]:
        """Whose update the leader waits for: live, active peers on this round, and the members of
        the last round still finishing it (their heartbeat says r-1 while they fetch its updates)."""
        last = self.members.get(round_no - 1, set())
        return {
            p
            for p, hb in peers.items()
            if hb.active
            and (hb.round == round_no or hb.state_round == round_no - 1 or (hb.round == round_no - 1 and p in last))
        } | {self.me}

    # ------------------------------------------------------------------------- roster checks
    def read_roster(self, round_no: int, base: str, cands: set[str] | None) -> AcceptedRoster | None:
        """The best-ranked acceptable roster of this round, if any."""
        passed: list[RosterCheck] = []
        for leader, env in self.net.get_subkeys(keys.roster_key(self.run_id, round_no)).items():
            if (round_no, leader) in self.failed:
                continue
            try:
                passed.append(self.check_roster(env, str(leader), round_no, base, cands))
            except ProtocolError as e:
                if (round_no, leader) not in self.refused:
                    self.refused.add((round_no, leader))
                    log.warning("round %d: refusing the roster of %s: %s", round_no, str(leader)[:16], e)
        if not passed:
            return None
        best = min(passed, key=lambda c: election.rank_key(self.run_id, round_no, base, c.accepted.roster.leader))
        if best.sibling is not None:
            self.ledger.swap(best.sibling)
            log.info(
                "round %d: our ledger now holds %s's roster of round %d (same updates and state), "
                "which the swarm chains on",
                round_no,
                best.sibling.roster.leader[:16],
                round_no - 1,
            )
        return best.accepted

    def check_roster(self, env: object, leader: str, round_no: int, base: str, cands: set[str] | None) -> RosterCheck:
        """Accept a roster only when it is signed by a leader we could elect, starts from our state,
        continues our ledger (or a sibling of our last roster, returned for a swap), and lists
        signed announcements of live, unbanned peers."""
        roster, anns = signed.open_roster(env, signer=leader, max_bytes=self.max_bytes)
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
        if cands is not None and leader not in cands and leader != self.me:
            raise ProtocolError("its leader is not an established peer on this state")
        if cands is None and leader not in seen:
            raise ProtocolError("its leader has no live signed heartbeat")
        if any(a.base != roster.base for a in anns):
            raise ProtocolError("lists an update made for another state")
        strangers = [a.peer for a in anns if a.peer not in seen and a.peer != self.me]
        if strangers:
            raise ProtocolError(f"lists {strangers[0][:16]}, which has no live signed heartbeat")
        banned = self.hooks.banned(self.ledger) & {a.peer for a in anns}
        if banned:
            raise ProtocolError(f"lists {sorted(banned)[0][:16]}, banned by the ledger's scores")
        return RosterCheck(AcceptedRoster(env, roster, tuple(anns)), sibling)

    def find_sibling(self, round_no: int, wanted: str) -> AcceptedRoster | None:
        """The DHT's roster of `round_no` whose hash is `wanted`, if it is a sibling of ours (two
        leaders led that round at once, with the same updates and result; ledger.siblings) and
        its leader contributed to that round. Without this, peers that took different siblings
        would refuse each other's rosters for ever although their states are equal."""
        mine = self.ledger.rosters.get(round_no)
        if mine is None:
            return None
        for leader, env in self.net.get_subkeys(keys.roster_key(self.run_id, round_no)).items():
            try:
                roster, anns = signed.open_roster(env, signer=str(leader), max_bytes=self.max_bytes)
            except ProtocolError:
                continue
            theirs = AcceptedRoster(env, roster, tuple(anns))
            if (
                theirs.hash == wanted
                and siblings(mine, theirs)
                and roster.leader in {a.peer for a in mine.announcements}
            ):
                return theirs
        return None

    def _note_left_out(self, round_no: int, accepted: AcceptedRoster) -> None:
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

    def members_in_dht(self, rounds: list[int]) -> set[str]:
        """Contributors of the signed rosters of these rounds still in the DHT (a new joiner's voters)."""
        out: set[str] = set()
        for r in rounds:
            for leader, env in self.net.get_subkeys(keys.roster_key(self.run_id, r)).items():
                try:
                    _, anns = signed.open_roster(env, signer=str(leader), max_bytes=self.max_bytes)
                except ProtocolError:
                    continue
                out |= {a.peer for a in anns}
        return out

    # ------------------------------------------------------------------------------- leading
    def _lead(self, round_no: int, base: str, at_least: int = 1) -> AcceptedRoster | None:
        prev = self.ledger.prev_hash(round_no)
        if not prev:
            return None  # we synced state and do not know the chain: leave leading to others
        eligible = (self.seen.get(round_no, set()) | {self.me}) - self.hooks.banned(self.ledger)
        accepted = self.builder.build(round_no, base, prev, eligible, at_least)
        if accepted is None:
            return None
        existing = self.read_roster(round_no, base, self.candidates(self.peers(), base, base_round(accepted.roster)))
        if existing is not None:  # another rank led while we fetched: follow it, do not fork the round
            return existing
        self.net.store(keys.roster_key(self.run_id, round_no), self.me, accepted.envelope, ttl=self.ttl)
        log.info("round %d: led, roster of %d", round_no, len(accepted.announcements))
        return accepted

    # -------------------------------------------------------------------------------- gather
    def gather(self, accepted: AcceptedRoster) -> list[bytes]:
        """The payloads of the roster's updates, in roster order; raises RoundFailed."""
        round_no, leader = accepted.roster.round, accepted.roster.leader
        the_ring = relay.ring(self.run_id, round_no, leader, [a.peer for a in accepted.announcements])
        live = set(self.peers())  # a relay without a live heartbeat is skipped, not waited on

        def from_whom(a: Announcement) -> list[str]:
            order = relay.sources(the_ring, a.peer, leader, self.me, self.cfg.relay_fanout)
            return [p for p in order if p in live or p in (a.peer, leader)]

        blobs = self.updates.fetch(list(accepted.announcements), round_no, sources=from_whom)
        for a, blob in zip(accepted.announcements, blobs):
            if isinstance(blob, Exception):
                self.failed.add((round_no, leader))
                raise RoundFailed(f"round {round_no}: could not get the update of {a.peer[:16]}: {blob}")
        self.members = {round_no: {a.peer for a in accepted.announcements}}
        return [UpdateEnvelope.decode(b).payload for b in blobs]


def base_round(roster: Roster) -> int:
    return roster.round - 1
