"""`swarmtrain monitor`: a client-mode peer that shows the whole swarm on one page.

It publishes nothing and trains nothing; it reads heartbeats and the signed metrics records
every node publishes, so it also shows peers behind NAT that no Prometheus could scrape, and
it probes the bootstrap peers it was given. The page is the node page (`node/watch/dashboard`),
fed with the swarm's numbers instead of one node's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from node import __version__
from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.p2p.addresses import Address, initial_peers
from node.p2p.dht import Swarm, probe_peer, read_peers, trainers
from node.p2p.telemetry import read_metrics
from node.p2p.validators import guard_run
from node.peer import manifest as manifests
from node.watch.dashboard.server import StatusServer
from node.watch.progress import Reporter
from node.watch.status import peer_rows, with_saved
from protocol.kinds.metrics import MetricsRecord
from protocol.records import Heartbeat

log = logging.getLogger(__name__)

REFRESH_S = 2.0
MAX_POINTS = 2000  # rounds kept on the loss curve


def merge_rounds(records: list[MetricsRecord]) -> list[dict]:
    """The swarm's recent rounds from every peer's view: ok if any peer completed it."""
    by_round: dict[int, dict] = {}
    for m in records:
        for rnd, result, group, seconds, end in m.recent:
            row = by_round.setdefault(
                rnd, {"round": rnd, "result": result, "peers": group, "seconds": seconds, "time": end}
            )
            if result == "ok":
                row["result"] = "ok"
            row["peers"], row["seconds"] = max(row["peers"], group), max(row["seconds"], seconds)
            row["time"] = max(row["time"], end)
    return sorted(by_round.values(), key=lambda r: -r["round"])[:20]


def merge_history(records: list[MetricsRecord], throughput: float | None = None) -> list[dict]:
    """Per round, the mean train loss and held-out bits/byte over the peers that reported it."""
    sums: dict[int, list] = {}
    for m in records:
        for rnd, loss, bpb in m.history:
            s = sums.setdefault(rnd, [0.0, 0, 0.0, 0])
            s[0] += loss
            s[1] += 1
            if bpb is not None:
                s[2] += bpb
                s[3] += 1
    points = [
        {"round": r, "loss": s[0] / s[1], "val_bpb": s[2] / s[3] if s[3] else None, "time": None, "tokens_per_s": None}
        for r, s in sorted(sums.items())
    ]
    if points:
        points[-1]["tokens_per_s"] = throughput
    return points


class SwarmMonitor:
    def __init__(
        self, swarm: Swarm, run_id: str, manifest: dict, bootstrap: list[Address], name: str = "swarm monitor"
    ):
        self.swarm, self.run_id, self.bootstrap = swarm, run_id, bootstrap
        self.node = {
            "peer": swarm.peer_id,
            "name": name,
            "run_id": run_id,
            "strategy": manifest.get("strategy", {}).get("name", "?"),
            "device": "monitor",
            "version": __version__,
            "started": time.time(),
            "mode": "swarm",
        }
        self._lock = threading.Lock()
        self._rows: dict[str, dict] = {}
        self._records: dict[str, MetricsRecord] = {}
        self._probes: list[dict] = []
        self.organizer = manifest.get("organizer", "")
        self._witness: dict | None = None  # the organizer's witness: the head of the chain it verified
        self._curve: dict[int, dict] = {}  # round -> merged point; grows past the records' own window
        self.registry = CollectorRegistry()
        self.g_alive = Gauge("swarmtrain_monitor_peers_alive", "Peers with a live heartbeat", registry=self.registry)
        self.g_round = Gauge(
            "swarmtrain_monitor_round", "Highest round any live peer completed", registry=self.registry
        )
        self.g_boot = Gauge(
            "swarmtrain_monitor_bootstrap_up",
            "1 when the bootstrap peer accepts connections",
            ["address"],
            registry=self.registry,
        )

    def refresh(self) -> None:
        every_beat: dict[str, Heartbeat] = read_peers(self.swarm, self.run_id)
        heartbeats = trainers(every_beat)  # the organizer's witness is shown apart
        witness = every_beat.get(self.organizer) if self.organizer not in heartbeats else None
        records = read_metrics(self.swarm, self.run_id)
        probes = [probe_peer(a, timeout=3.0) for a in self.bootstrap]
        top = max((hb.state_round for hb in heartbeats.values()), default=0)
        with self._lock:
            self._rows = peer_rows(heartbeats, top, records, previous=self._rows)
            self._records.update(records)  # keep a gone peer's last figures for the totals
            self._probes = probes
            self._witness = None if witness is None else {"round": witness.state_round, "digest": witness.digest}
            self._curve.update({p["round"]: p for p in merge_history(list(self._records.values()), None)})
            for old in sorted(self._curve)[:-MAX_POINTS]:
                del self._curve[old]
        self.g_alive.set(len(heartbeats))
        self.g_round.set(top)
        for p in probes:
            self.g_boot.labels(p["address"]).set(int(p["up"]))

    def snapshot(self) -> dict:
        with self._lock:
            peers = sorted(self._rows.values(), key=lambda p: (not p["alive"], p["name"]))
            live = [self._records[p["peer"]] for p in peers if p["alive"] and p["peer"] in self._records]
            every = list(self._records.values())
            probes = list(self._probes)
            witness = self._witness
        alive = sum(p["alive"] for p in peers)
        throughput = sum(m.tokens_per_s or 0 for m in live) if live else None
        bw = with_saved(
            {
                "sent": sum(m.sent for m in every),
                "received": sum(m.received for m in every),
                "dense_equivalent": sum(m.dense for m in every),
            }
        )
        return {
            "node": self.node,
            "round": max((p["round"] for p in peers if p["alive"]), default=0),
            "tokens": sum(m.tokens for m in every),
            "peers": peers,
            "peers_alive": alive,
            "alone": alive <= 1,
            "rounds": merge_rounds(every),
            "loss_history": self._points(throughput),
            "bandwidth": bw,
            "bootstrap": probes,
            "witness": witness,
        }

    def _points(self, throughput: float | None) -> list[dict]:
        with self._lock:
            points = [dict(self._curve[r]) for r in sorted(self._curve)]
        if points:
            points[-1]["tokens_per_s"] = throughput
        return points

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class SwarmPage:
    """The swarm's page served beside another peer (the organizer's bootstrap peer), refreshed from a
    thread of its own until closed."""

    def __init__(self, cfg: NodeConfig, swarm: Swarm, run_id: str, manifest: dict, name: str):
        self.monitor = SwarmMonitor(swarm, run_id, manifest, [], name)
        self.server = StatusServer(cfg.status_host, cfg.status_port, self.monitor.snapshot, self.monitor.exposition)
        self.url = self.server.url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="swarm-page", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while True:
            try:
                self.monitor.refresh()
            except Exception as e:  # a page that shows the last good refresh beats a dead one
                log.warning("swarm page refresh failed: %s", e)
            if self._stop.wait(REFRESH_S):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.close()


def page_of(cfg: NodeConfig, name: str) -> Callable[[Swarm, str, dict], SwarmPage] | None:
    """What starts the swarm's page beside peer `name` (run_bootstrap's `page`); None: the page is off."""
    if cfg.status_port < 0:
        return None
    return lambda swarm, run_id, manifest: SwarmPage(cfg, swarm, run_id, manifest, name)


def run_monitor(cfg: NodeConfig, stop: threading.Event, reporter: Reporter) -> None:
    bootstrap = initial_peers(cfg.initial_peers, cfg.initial_peers_file, cfg.startup_timeout)
    if not bootstrap:
        raise SwarmtrainError("the monitor needs the swarm's address", "pass --initial-peers MADDR")
    if cfg.status_port < 0:
        raise SwarmtrainError("the monitor is a page; --status-port -1 turns it off", "use --status-port 0 or a port")
    if not cfg.identity:  # its own key: a monitor may run beside a volunteer in the same data dir
        cfg = replace(cfg, identity=str(Path(cfg.data_dir) / "monitor.key"))
    swarm = Swarm.start(cfg, bootstrap, client_mode=True)
    try:
        run_id, manifest, _ = manifests.fetch(swarm, manifests.wanted_run(cfg), cfg.startup_timeout)
        guard_run(swarm, run_id)  # drop forged records on the way in
        monitor = SwarmMonitor(swarm, run_id, manifest, bootstrap)
        monitor.refresh()
        server = StatusServer(cfg.status_host, cfg.status_port, monitor.snapshot, monitor.exposition)
        try:
            reporter.event("monitor_ready", run=run_id, peer=swarm.peer_id, status_url=server.url)
            reporter.say(f"watching run {run_id}: open {server.url}")
            said = None
            while not stop.wait(REFRESH_S):
                monitor.refresh()
                s = monitor.snapshot()
                now = dict(
                    round=s["round"],
                    peers_alive=s["peers_alive"],
                    bootstrap_up=sum(p["up"] for p in s["bootstrap"]),
                    bootstrap=len(s["bootstrap"]),
                )
                if now != said:  # a line when something changed, not every refresh
                    reporter.event("swarm", **now)
                    said = now
        finally:
            server.close()
    finally:
        swarm.shutdown()
