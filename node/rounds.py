"""The life of one round on the wire: announce, elect a leader, publish a roster, gather.

1. Each peer finishes its inner steps, keeps its encoded update in its Exchange and
   announces (size, SHA-256) under the round's `updates` key.
2. The leader of round r is the smallest peer id among live, active peers whose heartbeat
   says they work on round r. It waits until all of them announced (and the peers still
   finishing round r-1 with it), or `collect_timeout`, fetches and checks every announced
   update, and writes the roster: exactly these updates,
   sorted by peer id. It holds every update it lists, so each one has at least two sources.
   If the leader dies, its heartbeat expires and the next smallest id takes over.
3. Every peer reads the roster (the smallest leader id wins if there are two), fetches the
   updates it lacks from their owner or else the leader, checks size and SHA-256, and hands
   them to the strategy in roster order. Same inputs, same order: the same bits everywhere.
4. A peer that cannot gather a roster gives the round up: it takes the state of a peer that
   did (state sync), or, if no one did, redoes the round and ignores that roster, so that
   the next leader writes a new one.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Callable

from node.exchange import Exchange
from node.swarm import Swarm, read_peers
from node.config import SwarmConfig
from protocol import keys
from protocol.errors import ProtocolError
from protocol.messages import Request, UpdateEnvelope
from protocol.records import Announcement, Roster, RosterEntry

log = logging.getLogger("swarmtrain.rounds")
POLL = 0.25  # seconds between two looks at the DHT while waiting


class RoundFailed(Exception):
    """This peer cannot complete the round identically; it must resync its state."""


class RoundProtocol:
    def __init__(self, swarm: Swarm, exchange: Exchange, run_id: str, cfg: SwarmConfig,
                 validate: Callable[[bytes], None], max_bytes: int):
        self.swarm, self.exchange, self.run_id, self.cfg = swarm, exchange, run_id, cfg
        self.me = swarm.peer_id
        self.validate = validate  # raises ProtocolError if an update payload cannot be applied
        self.max_bytes = max_bytes
        self.failed: set[tuple[int, str]] = set()  # (round, leader) rosters this peer could not gather
        self.members: dict[int, set[str]] = {}  # round -> the peers of the roster this peer gathered

    def envelope(self, round_no: int, codec: str, payload: bytes) -> bytes:
        return UpdateEnvelope(run=self.run_id, round=round_no, peer=self.me, codec=codec, payload=payload).encode()

    def announce(self, round_no: int, blob: bytes) -> None:
        self.exchange.keep_update(round_no, self.me, blob)
        ann = Announcement(round=round_no, nbytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())
        self.swarm.store(keys.updates_key(self.run_id, round_no), self.me, ann.to_wire(),
                         ttl=2 * self.cfg.round_timeout)

    def await_roster(self, round_no: int, stop: threading.Event) -> Roster | None:
        """Block until round `round_no` has a roster (leading it if it falls to us); None on stop/timeout."""
        started = time.monotonic()
        while not stop.is_set() and time.monotonic() - started < self.cfg.round_timeout:
            roster = self.read_roster(round_no)
            if roster is not None:
                return roster
            peers = read_peers(self.swarm, self.run_id)
            expected = self._expected(round_no, peers)
            waited = time.monotonic() - started
            # a peer table without our own heartbeat is a partial DHT read: leading on it would close
            # the round with whoever happened to be visible (often just us)
            if min(expected) == self.me and (self.me in peers or waited >= self.cfg.collect_timeout):
                announced = self._announcements(round_no)
                enough = len(announced) >= self.cfg.min_peers or waited >= 0.8 * self.cfg.round_timeout
                if enough and (expected <= set(announced) or waited >= self.cfg.collect_timeout):
                    roster = self._lead(round_no, announced)
                    if roster is not None:
                        return roster
            stop.wait(POLL)
        return None

    def _expected(self, round_no: int, peers: dict) -> set[str]:
        """Whose update the leader waits for: live, active peers on this round, and the members of
        the last round still finishing it (their heartbeat says r-1 while they fetch its updates;
        a leader that skipped them would close every round alone, always one step ahead)."""
        last = self.members.get(round_no - 1, set())
        return {p for p, hb in peers.items() if hb.active and (hb.round == round_no or hb.state_round == round_no - 1
                                                               or (hb.round == round_no - 1 and p in last))} | {self.me}

    def read_roster(self, round_no: int) -> Roster | None:
        rosters = [r for leader, r in self._records(keys.roster_key(self.run_id, round_no), Roster).items()
                   if r.leader == leader and r.round == round_no and (round_no, leader) not in self.failed]
        return min(rosters, key=lambda r: r.leader) if rosters else None

    def _announcements(self, round_no: int) -> dict[str, Announcement]:
        found = self._records(keys.updates_key(self.run_id, round_no), Announcement)
        return {peer: a for peer, a in found.items() if a.round == round_no}

    def _records(self, key: str, kind) -> dict:
        """subkey -> parsed record; malformed ones are dropped with a warning (peers' mistakes)."""
        out = {}
        for subkey, raw in self.swarm.get_subkeys(key).items():
            try:
                out[subkey] = kind.from_wire(raw, max_bytes=self.max_bytes)
            except ProtocolError as e:
                log.warning("ignoring a malformed %s from %s: %s", kind.__name__, subkey[:16], e)
        return out

    def _lead(self, round_no: int, announced: dict[str, Announcement]) -> Roster | None:
        entries = [RosterEntry(peer=p, sha256=a.sha256, nbytes=a.nbytes) for p, a in sorted(announced.items())]
        blobs = self._fetch_entries(round_no, entries, sources=lambda e: [e.peer])
        good = []
        for entry, blob in zip(entries, blobs):
            if isinstance(blob, Exception):
                log.warning("round %d: leaving out %s: %s", round_no, entry.peer[:16], blob)
                continue
            good.append(entry)
        if not good:
            return None
        roster = Roster(round=round_no, leader=self.me, entries=tuple(good))
        self.swarm.store(keys.roster_key(self.run_id, round_no), self.me, roster.to_wire(),
                         ttl=2 * self.cfg.round_timeout)
        log.info("round %d: led, roster of %d", round_no, len(good))
        return roster

    def gather(self, roster: Roster) -> list[bytes]:
        """The payloads of the roster's updates, in roster order; raises RoundFailed."""
        blobs = self._fetch_entries(roster.round, list(roster.entries),
                                    sources=lambda e: [e.peer] if e.peer == roster.leader else [e.peer, roster.leader])
        failed = [(e.peer, b) for e, b in zip(roster.entries, blobs) if isinstance(b, Exception)]
        if failed:
            # e.g. the leader died before serving its own update: if nobody could get it, the
            # next leader writes a new roster for this round, and this one is ignored from now on
            self.failed.add((roster.round, roster.leader))
            raise RoundFailed(f"round {roster.round}: could not get the update of {failed[0][0][:16]}: {failed[0][1]}")
        self.members = {roster.round: {e.peer for e in roster.entries}}  # only the last round is needed
        return [UpdateEnvelope.decode(b).payload for b in blobs]

    def _fetch_entries(self, round_no: int, entries: list[RosterEntry],
                       sources: Callable[[RosterEntry], list[str]]) -> list[bytes | Exception]:
        """Each entry's verified envelope bytes (held, else fetched from its sources in turn)."""
        results: list[bytes | Exception] = []
        for e in entries:
            held = self.exchange.held_update(round_no, e.peer)
            results.append(ProtocolError("not held") if held is None else (self._verify(round_no, e, held) or held))
        for attempt in range(2):
            todo = [i for i, r in enumerate(results) if isinstance(r, Exception)]
            jobs = [(i, src) for i in todo for src in sources(entries[i])[attempt:attempt + 1] if src != self.me]
            if not jobs:
                break
            requests = [(src, Request(op="update", run=self.run_id, round=round_no, peer=entries[i].peer))
                        for i, src in jobs]
            try:
                fetched = self.exchange.fetch_many(requests, timeout=self.cfg.collect_timeout)
            except Exception as e:  # the whole batch timed out or the transport is gone
                fetched = [e] * len(jobs)
            for (i, _), blob in zip(jobs, fetched):
                if isinstance(blob, Exception):
                    results[i] = blob
                    continue
                problem = self._verify(round_no, entries[i], blob)
                results[i] = problem or blob
                if problem is None:
                    self.exchange.keep_update(round_no, entries[i].peer, blob)
        return results

    def _verify(self, round_no: int, entry: RosterEntry, blob: bytes) -> Exception | None:
        if len(blob) != entry.nbytes or hashlib.sha256(blob).hexdigest() != entry.sha256:
            return ProtocolError("size or SHA-256 differs from the announcement")
        try:
            env = UpdateEnvelope.decode(blob)
            if env.run != self.run_id or env.peer != entry.peer or env.round != round_no:
                return ProtocolError("envelope names another run, peer or round")
            self.validate(env.payload)
        except ProtocolError as e:
            return e
        return None
