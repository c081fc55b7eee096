"""The organizer's witness: the chain of rosters the swarm trains on, followed by the run's root key.

The bootstrap peer is the organizer: its key signed the manifest, so the run id commits to it.
It runs a witness that follows the chain as it grows. Each look it verifies the rosters that lead
to a head the swarm's established peers hold, by the rules every peer applies
(node/round/trust/catchup.py), keeps them in its ledger file, serves them to joiners (the `ledger`
RPC), and publishes its head in its own signed heartbeat, inactive (it never trains or leads).

A joiner knows no established peer yet, so it takes only a head whose chain passes through the
organizer's head (Catchup's pin): a chain a Sybil crowd grew from the genesis, however many
identities hold it, is refused while the organizer is online. The witness applies no update and
holds no state, so it checks links, signatures, beacons and eligibility, not results: the peers
that apply the rounds check those, and a head needs a quorum of them before the witness takes it.

For the organizer offline, the witness signs a checkpoint every `checkpoint_rounds` rounds of the
chain it verified (node/round/trust/anchor.py), names it in its heartbeat (`cp`) and serves it (the
`checkpoint` RPC); leaders carry it in their rosters, and every peer keeps it as its anchor.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from node.config import SwarmConfig
from node.p2p.dht import WITNESS_DEVICE, HeartbeatPublisher, Swarm, dht_time, read_peers
from node.p2p.exchange import Exchange
from node.p2p.roundnet import RealNet
from node.round.ledger import Ledger
from node.round.trust import chain
from node.round.trust.anchor import FILENAME, Anchor
from node.round.trust.catchup import Catchup, Head
from node.round.trust.chain import ChainRules
from protocol.kinds.checkpoint import checkpoint_hash
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.witness")
LOOK_EVERY = 1.0  # seconds between two looks for a new head


class Witness:
    """Follows the run's chain from the genesis and publishes its head as the organizer."""

    def __init__(self, swarm: Swarm, *, run_id: str, key, cfg: SwarmConfig, data_dir: Path, base: str):
        self.swarm, self.run_id, self.cfg, self.me, self.key = swarm, run_id, cfg, swarm.peer_id, key
        self.ledger = Ledger.load(data_dir / run_id / "ledger.jsonl")
        self.anchor = self.ledger.anchor = Anchor.load(data_dir / run_id / FILENAME, run_id=run_id, organizer=self.me)
        max_bytes = int(cfg.max_update_mb * 2**20)
        self.exchange = Exchange(swarm.dht, run_id, max_bytes=max_bytes, me=self.me)
        self.exchange.set_ledger(self.ledger.envelopes_from)
        self.exchange.set_checkpoint(lambda c: self.anchor.envelope if c == self.anchor.round else None)
        rules = ChainRules(  # the rules every peer checks a chain by, admission proofs included
            run_id=run_id,
            established_rounds=cfg.established_rounds,
            max_bytes=max_bytes,
            organizer=self.me,
            admission=chain.admission_of(run_id, cfg, self.me),
            collect_timeout=cfg.collect_timeout,
        )
        self.catchup = Catchup(RealNet(swarm, self.exchange), self.ledger, rules, chain.genesis(run_id, base))
        head = self.head(base)
        self.heartbeat = HeartbeatPublisher(
            swarm,
            run_id,
            Heartbeat(
                run=run_id,
                peer=self.me,
                name="organizer",
                round=head.round + 1,
                state_round=head.round,
                digest=head.digest,
                device=WITNESS_DEVICE,
                maddrs=(),
                time=dht_time(),
                active=False,
                cp=self.pointer(),
            ),
            interval=cfg.heartbeat_interval,
            ttl=cfg.heartbeat_ttl,
            key=key,
        )

    def head(self, base: str) -> Head:
        """The end of our chain (the round-0 state before any roster)."""
        if not self.ledger.rosters:
            return Head(0, base)
        last = self.ledger.rosters[max(self.ledger.rosters)].roster
        return Head(last.round, last.result)

    def look(self) -> Head | None:
        """One look: take a better verified head if the swarm's peers hold one; returns it."""
        mine = self.head(self.catchup.start.base)
        target = self.catchup.plan(read_peers(self.swarm, self.run_id, ttl=self.cfg.heartbeat_ttl), mine)
        if target is None:
            return None
        self.ledger.extend(target.ancestor, list(target.rosters))
        self.catchup.moved()
        self.heartbeat.update(round=target.head.round + 1, state_round=target.head.round, digest=target.head.digest)
        log.info("witness: round %d, %s (%d rosters verified)", *target.head, len(target.rosters))
        if self.sign_checkpoint():
            self.heartbeat.update(cp=self.pointer())
        return target.head

    def pointer(self) -> tuple:
        """Our heartbeat's `cp`: (round, body hash) of our newest checkpoint; () before the first."""
        return (self.anchor.round, checkpoint_hash(self.anchor.envelope)) if self.anchor.envelope else ()

    def sign_checkpoint(self) -> bool:
        return self.anchor.sign_due(self.key, self.ledger, every=self.cfg.checkpoint_rounds, now=dht_time())

    def follow(self, stop: threading.Event) -> None:
        while not stop.wait(LOOK_EVERY):
            try:
                self.look()
            except Exception as e:  # noqa: BLE001 -- a DHT hiccup must not end the organizer's peer
                log.warning("witness: %s: %s", type(e).__name__, e)

    def close(self) -> None:
        self.heartbeat.close()
        self.exchange.close()
