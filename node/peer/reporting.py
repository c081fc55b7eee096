"""Where a node's progress goes: each round's outcome and this peer's status, to its metrics,
its status page, the signed metrics record monitors read, the history (the summary) and the terminal."""
from __future__ import annotations

from contextlib import ExitStack

import torch

from node import __version__
from node.config import NodeConfig, RunConfig
from node.p2p.dht import Swarm, dht_time, read_peers
from node.p2p.telemetry import MetricsPublisher, read_metrics
from node.peer.applier import Applier
from node.train.model import BuiltModel
from node.train.trainer import InnerTrainer
from node.watch.dashboard.server import NoStatusServer, StatusServer
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import History, RoundReport
from node.watch.status import StatusBoard
from protocol.records import Heartbeat


def node_name(peer_id: str) -> str:
    """A short, stable, pronounceable name derived from the peer id."""
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go", "hu", "ja", "pe", "zu"]
    h = int.from_bytes(peer_id.encode()[-8:], "big")
    return "-".join("".join(syll[(h >> (4 * (i * 2 + j))) & 15] for j in range(2)) for i in range(2))


class Reports:
    """The sinks of one node, and what it publishes to them."""

    def __init__(self, cfg: NodeConfig, stack: ExitStack, *, swarm: Swarm, run_id: str, key, me: str, name: str,
                 device: torch.device, run: RunConfig, built: BuiltModel, metrics: NodeMetrics, history: History,
                 applier: Applier, trainer: InnerTrainer, out: Reporter):
        self.swarm, self.run_id, self.me, self.run = swarm, run_id, me, run
        self.metrics, self.history, self.out = metrics, history, out
        self.applier, self.trainer = applier, trainer  # our round and local step, as of each publish
        self.reach = ""  # how others reach us: known once our addresses are (the heartbeat's start)
        self.metrics.info.info({"peer_id": me, "name": name, "version": __version__, "device": str(device),
                                "run_id": run_id, "strategy": run.strategy.name})
        self.status = StatusBoard(peer=me, name=name, run_id=run_id, strategy=run.strategy.name,
                                  device=str(device), version=__version__)
        self.status.set_model(trainable=built.trainable_params, total=built.total_params)
        self.metrics.params_trainable.set(built.trainable_params)
        self.metrics.params_total.set(built.total_params)
        self.page = (StatusServer(cfg.status_host, cfg.status_port, self.status.snapshot, self.metrics.exposition)
                     if cfg.status_port >= 0 else NoStatusServer())
        stack.callback(self.page.close)
        self.publisher = MetricsPublisher(swarm, run_id, key)
        stack.callback(self.publisher.close)

    def spent(self, eps: float) -> None:
        """The privacy budget spent so far (epsilon), to the metrics and the page."""
        self.metrics.privacy_epsilon.set(eps)
        self.status.set_privacy(epsilon=eps, delta=self.run.privacy.delta)

    def publish_round(self, report: RoundReport) -> None:
        """One round's outcome to every sink: metrics, page and signed record, summary, terminal."""
        self.metrics.round_done(report)
        self.status.round_done(report)
        self.history.add(report)
        peers = read_peers(self.swarm, self.run_id)
        self.metrics.peers_alive.set(len(peers | {self.me: None}))
        self.publish_status(peers)
        if report.completed:
            self.out.event("round", **report.line())

    def publish_status(self, peers: dict[str, Heartbeat] | None = None) -> None:
        """Refresh the page's peer table and publish our signed metrics record for monitors."""
        peers = read_peers(self.swarm, self.run_id) if peers is None else peers
        self.status.peers_seen(peers, self.applier.state.round, read_metrics(self.swarm, self.run_id))
        self.publisher.publish(self.status.record(local_step=self.trainer.steps, now=dht_time(),
                                                  reachability=self.reach))
