"""State sync: taking the state at a head of the verified chain from a peer that holds it.

A peer starts from its checkpoint, or from the swarm's state if that is ahead, and later
resyncs when it missed a round or when established peers hold another state of its round.
Which head, and whether to move, is node/round/trust/catchup.py's decision: heartbeats only point.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import NamedTuple

import msgpack

from node.config import SwarmConfig
from node.outer.state import SwarmState
from node.p2p.dht import Swarm, read_peers
from node.p2p.exchange import Exchange
from node.peer import checkpoint
from node.peer.applier import Applier
from node.round.ledger import AcceptedRoster, Ledger
from node.round.protocol import RoundProtocol
from node.round.trust import anchor, chain
from node.round.trust.catchup import MOST_DONORS, Catchup, Head, Target
from node.round.trust.reader import WindowFill
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import History
from protocol.messages import Request

log = logging.getLogger("swarmtrain.sync")
CARRY_ON = 4  # rounds past a verified head a donor's state may be, its rosters verified on from the head


class Synced(NamedTuple):
    """A state taken from a donor, and the verified rosters that lead to it from our ledger."""

    state: SwarmState
    target: Target


class StateSync:
    """Moves the applier's state to a head of the verified chain (node/round/trust/catchup.py)."""

    def __init__(
        self,
        applier: Applier,
        *,
        swarm: Swarm,
        run_id: str,
        me: str,
        cfg: SwarmConfig,
        ledger: Ledger,
        rounds: RoundProtocol,
        exchange: Exchange,
        template: SwarmState,
        ckpt: Path,
        metrics: NodeMetrics,
        history: History,
        out: Reporter,
        organizer: str = "",
    ):
        self.applier = applier  # holds our state: read here, replaced by adopt
        self.swarm, self.run_id, self.me, self.cfg = swarm, run_id, me, cfg
        self.ledger, self.rounds, self.exchange = ledger, rounds, exchange
        self.template, self.ckpt = template, ckpt
        self.metrics, self.history, self.out = metrics, history, out
        start = chain.genesis(run_id, template.digest)
        self.catchup = Catchup(rounds.net, ledger, rounds.rules, start, organizer=organizer)  # its witness pins joiners
        self.fill = WindowFill(rounds.net, ledger, run_id)  # our window's missing rosters, in the background

    @property
    def state(self) -> SwarmState:
        return self.applier.state

    @property
    def head(self) -> Head:
        return Head(self.state.round, self.state.digest)

    def initial_state(self, stop: threading.Event) -> tuple[SwarmState, str]:
        """Our checkpoint, or the swarm's state if it is ahead, or round 0."""
        local = checkpoint.load(self.ckpt, run_id=self.run_id, template=self.template)
        self.applier.state = local or self.template
        ahead = max((hb.state_round for hb in self.others(stop).values()), default=0)
        deadline = time.monotonic() + self.cfg.round_timeout  # a young run's witness may still lack a head
        while ahead > self.state.round and not stop.is_set() and time.monotonic() < deadline:
            synced = self.fetch_state(stop)
            if synced is not None:
                self.adopt(synced)
                return synced.state, "from_peers"
        return (local, "checkpoint") if local else (self.template, "initial")

    def others(self, stop: threading.Event, reads: int = 3) -> dict:
        """The other peers' heartbeats, read again (1 s apart) while none shows: a node that just
        joined the DHT may not reach every replica on its first lookup."""
        for _ in range(reads):
            found = {p: hb for p, hb in read_peers(self.swarm, self.run_id).items() if p != self.me}
            if found or stop.wait(1.0):
                break
        return found

    def live(self) -> dict:
        return read_peers(self.swarm, self.run_id, ttl=self.cfg.heartbeat_ttl)

    def outvoted(self) -> bool:
        """Worth a look for a better head (catchup.worth_a_look: an established peer off our chain)."""
        return self.catchup.worth_a_look(self.live(), self.head)

    def fill_window(self) -> None:
        """Once a round: while our window lacks rosters, fetch them in the background from a live
        peer at or past our ledger's head (reader.WindowFill), and take the ones that link to it."""
        if self.ledger.missing() or self.fill.fetching is not None:
            head = max(self.ledger.rosters, default=0)
            self.fill.step([p for p, hb in sorted(self.live().items()) if hb.state_round >= head])

    def resync(self, stop: threading.Event, force: bool = False) -> None:
        """Move to a better verified head if there is one (`force`: one look, prompted by outvoted)."""
        synced = self.fetch_state(stop, attempts=1 if force else 6)
        if synced is not None:
            self.history.syncs["resync"] += 1
            self.adopt(synced)

    def adopt(self, synced: Synced) -> None:
        """Train on from a state taken from peers; the ledger takes the rosters that prove it."""
        self.applier.state = synced.state
        self.ledger.extend(synced.target.ancestor, list(synced.target.rosters))
        self.rounds.rewound(synced.state.round)
        self.exchange.set_state(synced.state.to_bytes(self.run_id))
        self.catchup.moved()
        self.fill.moved()

    def fetch_state(self, stop: threading.Event, attempts: int = 6) -> Synced | None:
        """A better head's state (catchup.plan), from a donor that holds exactly its digest."""
        for attempt in range(attempts):
            if stop.is_set():
                return None
            try:
                target = self.catchup.plan(self.live(), self.head)
            except Exception as e:  # noqa: BLE001 -- a DHT hiccup or a bug must not end the node; try again
                log.warning("looking for the swarm's head failed: %s: %s", type(e).__name__, e)
                target = None
            got = self.from_donors(target, stop, carry_on=True) if target is not None else None
            if got is not None:
                (state, target), donor = got
                self.history.syncs["ok"] += 1
                self.metrics.state_syncs.labels("ok").inc()
                self.out.event(
                    "state_synced", round=state.round, donor=donor[:16], rosters=len(target.rosters), fork=target.fork
                )
                return Synced(state, target)
            self.history.syncs["unverified"] += 1
            self.metrics.state_syncs.labels("unverified").inc()
            if attempt + 1 < attempts:
                stop.wait(1.0)
        return None

    def fetch_head(self, stop: threading.Event, held: AcceptedRoster) -> Synced | None:
        """The state at `held`, the head of our ledger, which we verified without the state (the
        organizer's witness follows a grown run's chain so: node/peer/witness.py), from a live peer
        that holds exactly it; its `full` digest pins the outer buffers (refusal)."""
        head = Head(held.roster.round, held.roster.result)
        live = sorted(self.live().items())
        donors = tuple(p for p, hb in live if p != self.me and (hb.state_round, hb.digest) == head)
        got = self.from_donors(Target(head, head.round, (held,), donors[:MOST_DONORS], False), stop)
        if got is None:
            return None
        (state, _), donor = got
        self.out.event("state_synced", round=state.round, donor=donor[:16], rosters=0, fork=False)
        return Synced(state, Target(head, head.round, (), donors, False))  # the ledger holds the rosters

    def from_donors(self, target: Target, stop: threading.Event, carry_on: bool = False) -> tuple[Synced, str] | None:
        """The state at `target`'s head from the first of its donors that serves exactly it
        (refusal); with `carry_on`, or a donor's later state that a verified extension of the
        target's chain ends at (carried_on)."""
        for donor in target.donors:
            if stop.is_set():
                return None
            state = self.download_state(donor, target.head.round)
            later = self.carried_on(target, donor, state) if carry_on and state is not None else None
            why = None if state is None else refusal(state, later or target)
            if why is not None:
                log.warning("state from %s: refused: %s; trying the next donor", donor[:16], why)
                self.out.event("state_refused", donor=donor[:16], round=target.head.round, reason=why)
            if state is not None and why is None:
                return Synced(state, later or target), donor
        return None

    def carried_on(self, target: Target, donor: str, state: SwarmState) -> Target | None:
        """`target` carried on to a donor's state a few rounds past its head: the donor's rosters
        after the head, verified by the chain rules from there, as a member takes each round's
        roster. Where rounds are shorter than a look (heartbeats, chain, download) the donors
        always move on before the state arrives, and a joiner would never get in."""
        head = Head(state.round, state.digest)
        if not 0 < head.round - target.head.round <= CARRY_ON:
            return None
        try:
            more = self.catchup.reader.after(target.ancestor, target.rosters, donor, head.round)
        except Exception as e:  # noqa: BLE001 -- whatever the donor sent, its later state is just not taken
            log.warning("ledger from %s past round %d: %s", donor[:16], target.head.round, e)
            return None
        if not more or (more[-1].roster.round, more[-1].roster.result) != head:
            return None
        if anchor.contradiction(more, self.catchup.held()):
            return None
        return Target(head, target.ancestor, (*target.rosters, *more), (donor,), target.fork)

    @functools.cached_property
    def state_len_without_round(self) -> int:
        """A state container's length less its round number's msgpack bytes (nothing else varies)."""
        return len(self.template.to_bytes(self.run_id)) - len(msgpack.packb(self.template.round))

    def download_state(self, donor: str, round_no: int) -> SwarmState | None:
        """The donor's state, read only if its length is exactly that of a state of round `round_no`
        (a later round's state has the same length unless its number packs longer: then refused)."""
        self.out.event("state_fetch", donor=donor[:16], round=round_no)
        try:
            blob = self.exchange.fetch(
                donor,
                Request(op="state", run=self.run_id),
                timeout=60,
                expect=self.state_len_without_round + len(msgpack.packb(round_no)),
            )
            return SwarmState.from_bytes(blob, run_id=self.run_id, template=self.template)
        except Exception as e:  # refused, unreachable, timed out or malformed: try the next donor
            self.metrics.state_syncs.labels("failed").inc()
            self.out.event("state_fetch_failed", donor=donor[:16], reason=f"{type(e).__name__}: {e}")
            return None


def refusal(state: SwarmState, target: Target) -> str | None:
    """Why a donor's state is not the target head's (None: it is). The parameters must hash to the
    head's `result`; the parameters and outer buffers to its roster's `full`, when it has one: a
    donor serving the head's parameters with other momentum or Adam moments would otherwise make
    the joiner's next outer steps differ from everyone's, with nothing on the chain to say so."""
    if (state.round, state.digest) != target.head:
        return f"its state is round {state.round} {state.digest[:12]}, not the head's"
    last = target.rosters[-1].roster if target.rosters else None
    full = last.full if last is not None and (last.round, last.result) == target.head else ""
    if full and state.full_digest != full:  # "": a roster before the field, or hooks without buffers
        return f"its outer buffers differ from the head roster's (full {state.full_digest[:12]}, not {full[:12]})"
    return None
