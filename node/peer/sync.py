"""State sync: which state the swarm holds, by the votes of its live peers, and taking it from them.

A peer starts from its checkpoint or from the swarm's state if that is ahead, and later
resyncs when it missed a round or when the voters hold another state of its round.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import msgpack

from node.config import SwarmConfig
from node.outer.state import SwarmState
from node.p2p.dht import Swarm, read_peers
from node.p2p.exchange import Exchange
from node.peer import checkpoint
from node.peer.applier import Applier
from node.round import votes
from node.round.ledger import Ledger
from node.round.protocol import RoundProtocol
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import History
from protocol.messages import Request


class StateSync:
    """Reads the swarm's votes and replaces the applier's state with one a majority vouches for."""

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
    ):
        self.applier = applier  # holds our state: read here, replaced by adopt
        self.swarm, self.run_id, self.me, self.cfg = swarm, run_id, me, cfg
        self.ledger, self.rounds, self.exchange = ledger, rounds, exchange
        self.template, self.ckpt = template, ckpt
        self.metrics, self.history, self.out = metrics, history, out

    @property
    def state(self) -> SwarmState:
        return self.applier.state

    def initial_state(self, stop: threading.Event) -> tuple[SwarmState, str]:
        """Our checkpoint, or the swarm's state if it is ahead, or round 0."""
        local = checkpoint.load(self.ckpt, run_id=self.run_id, template=self.template)
        ahead = max((hb.state_round for hb in self.others(stop).values()), default=0)
        if ahead > (local.round if local else 0):
            state = self.fetch_state(stop)
            if state is not None:
                self.ledger.restart(state.round, state.digest)
                return state, "from_peers"
        return (local, "checkpoint") if local else (self.template, "initial")

    def others(self, stop: threading.Event, reads: int = 3) -> dict:
        """The other peers' heartbeats, read again (1 s apart) while none shows: a node that just
        joined the DHT may not reach every replica on its first lookup."""
        for _ in range(reads):
            found = {p: hb for p, hb in read_peers(self.swarm, self.run_id).items() if p != self.me}
            if found or stop.wait(1.0):
                break
        return found

    def voters(self) -> dict:
        """Live signed peers that appear in the rosters we know: only they vouch for states.
        Without other peers in our ledger (a new joiner, or a peer that went on alone), the rosters
        still in the DHT name them: a ledger of our own rounds alone must not hide the swarm."""
        peers = read_peers(self.swarm, self.run_id, ttl=self.cfg.heartbeat_ttl)
        members = self.ledger.members() - {self.me}
        if not members:
            rounds = {hb.state_round for p, hb in peers.items() if p != self.me}
            members = self.rounds.members_in_dht(sorted(rounds)[-3:])
        return votes.voters(peers, members, self.me)

    def outvoted(self) -> bool:
        """True when enough voters hold another state of our round, and more than hold ours."""
        voters = self.voters()
        return (
            votes.outvoted(voters, self.state.round, self.state.digest)
            or votes.fork_target(voters, self.state.round, self.state.digest) is not None
        )

    def resync(self, stop: threading.Event, force: bool = False) -> None:
        state = self.fetch_state(stop, same_round=force)
        if state is not None and (state.round > self.state.round or (force and state.digest != self.state.digest)):
            self.history.syncs["resync"] += 1
            self.adopt(state)

    def adopt(self, state: SwarmState) -> None:
        """Train on from a state taken from peers; our ledger's old rosters no longer lead to it."""
        self.applier.state = state
        self.ledger.restart(state.round, state.digest)
        self.exchange.set_state(state.to_bytes(self.run_id))

    def fetch_state(self, stop: threading.Event, attempts: int = 6, same_round: bool = False) -> SwarmState | None:
        """Download a state that a majority of voters vouch for, never older than ours."""
        for _ in range(attempts):
            if stop.is_set():
                return None
            voters = self.voters()
            wanted = [
                (r, d)
                for r, d, _ in votes.vouched_states(voters)
                if votes.acceptable(voters, r, d, self.state.round, same_round=same_round) and d != self.state.digest
            ]
            fork = votes.fork_target(voters, self.state.round, self.state.digest)
            wanted += [fork] if fork and same_round else []  # a split swarm converging (see votes.py)
            for rnd, digest in wanted[:1]:
                for donor in sorted(p for p, hb in voters.items() if hb.digest == digest):
                    state = self.download_state(donor, rnd)
                    if state is not None and state.digest == digest and state.round == rnd:
                        self.history.syncs["ok"] += 1
                        self.metrics.state_syncs.labels("ok").inc()
                        self.out.event(
                            "state_synced",
                            round=state.round,
                            donor=donor[:16],
                            vouchers=sum(hb.digest == digest for hb in voters.values()),
                        )
                        return state
            self.history.syncs["unverified"] += 1
            self.metrics.state_syncs.labels("unverified").inc()
            stop.wait(1.0)
        return None

    @functools.cached_property
    def state_len_without_round(self) -> int:
        """A state container's length less its round number's msgpack bytes (nothing else varies)."""
        return len(self.template.to_bytes(self.run_id)) - len(msgpack.packb(self.template.round))

    def download_state(self, donor: str, round_no: int) -> SwarmState | None:
        """The donor's state, read only if its length is exactly that of a state of round `round_no`."""
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
