"""This peer's presence in the swarm: its heartbeat in the peer table, the run's manifest kept
alive from here, and leaving only once the other peers no longer need its updates."""

from __future__ import annotations

import time
from contextlib import ExitStack

import torch

from node.config import SwarmConfig
from node.outer.state import SwarmState
from node.p2p.addresses import shareable
from node.p2p.dht import HeartbeatPublisher, Swarm, dht_time, read_peers
from node.peer import manifest as manifests
from protocol.records import Heartbeat

LEAVE_WAIT = 6.0  # seconds a leaving node serves its last update to peers still behind it


class Presence:
    """Our heartbeat (None until we joined) and the manifest copy we keep."""

    def __init__(
        self,
        swarm: Swarm,
        stack: ExitStack,
        *,
        run_id: str,
        me: str,
        name: str,
        device: torch.device,
        cfg: SwarmConfig,
        key,
        manifest_envelope: dict,
        work=lambda: (),
    ):
        self.swarm, self.stack, self.run_id, self.me, self.name, self.device = swarm, stack, run_id, me, name, device
        self.cfg, self.key, self.manifest_envelope = cfg, key, manifest_envelope
        self.work = work  # our admission proof as we announce it now: our heartbeats carry it (protocol 11)
        self.heartbeat: HeartbeatPublisher | None = None
        self.manifest_keeper: manifests.ManifestKeeper | None = None

    def start(self, state: SwarmState) -> list[str]:
        """Publish our first heartbeat and the manifest; returns the addresses others may reach us at."""
        maddrs = shareable(self.swarm.visible_maddrs())
        first = Heartbeat(
            run=self.run_id,
            peer=self.me,
            name=self.name[:64],
            round=state.round + 1,
            state_round=state.round,
            digest=state.digest,
            device=str(self.device),
            maddrs=tuple(maddrs[:16]),
            time=dht_time(),
        )
        self.heartbeat = HeartbeatPublisher(
            self.swarm,
            self.run_id,
            first,
            interval=self.cfg.heartbeat_interval,
            ttl=self.cfg.heartbeat_ttl,
            key=self.key,
            work=self.work,
        )
        self.stack.callback(self.heartbeat.close)
        self.manifest_keeper = manifests.ManifestKeeper(self.swarm, self.manifest_envelope)
        self.manifest_keeper.tick()  # one more copy now, in case the bootstrap peer goes
        return maddrs

    def leave(self, state: SwarmState, last: int) -> None:
        """Serve our updates until the other peers are past `last`, the last round we announced (or
        applied), then go: a roster may already name our update. This runs after the first
        Ctrl+C too (a second one aborts), for at most LEAVE_WAIT: a supervisor's SIGTERM expects the
        node gone within ~10 s, and a round that named us is redone without us."""
        if self.heartbeat is None:
            return
        self.heartbeat.update(active=False, state_round=state.round, digest=state.digest)
        deadline = time.monotonic() + min(self.cfg.collect_timeout, LEAVE_WAIT)
        while time.monotonic() < deadline:
            behind = [  # live heartbeats only: a peer that died minutes ago is behind for ever
                p
                for p, hb in read_peers(self.swarm, self.run_id, ttl=self.cfg.heartbeat_ttl).items()
                if p != self.me and hb.active and hb.state_round < last
            ]
            if not behind:
                break
            time.sleep(0.5)  # not stop.wait: stop is already set when a user asked us to leave
