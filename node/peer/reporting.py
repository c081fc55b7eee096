"""Where a node's progress goes: each round's outcome and this peer's status, to its metrics,
its status page, the signed metrics record monitors read, the history (the summary) and the terminal."""

from __future__ import annotations

import time
from contextlib import ExitStack

import torch

from node import __version__
from node.config import NodeConfig, RunConfig
from node.p2p.dht import Swarm, dht_time, read_peers, trainers
from node.p2p.reach import Reachability
from node.p2p.telemetry import MetricsPublisher, read_metrics
from node.peer.applier import Applier
from node.round.ledger import AcceptedRoster
from node.train.model import BuiltModel
from node.train.trainer import InnerTrainer
from node.watch.dashboard.server import NoStatusServer, StatusServer
from node.watch.metrics import NodeMetrics
from node.watch.progress import Reporter
from node.watch.report import TIMELINE, History, RoundReport
from node.watch.status import StatusBoard
from protocol.records import Heartbeat


def node_name(peer_id: str) -> str:
    """A short, stable, pronounceable name derived from the peer id."""
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fi", "go", "hu", "ja", "pe", "zu"]
    h = int.from_bytes(peer_id.encode()[-8:], "big")
    return "-".join("".join(syll[(h >> (4 * (i * 2 + j))) & 15] for j in range(2)) for i in range(2))


class Reports:
    """The sinks of one node, and what it publishes to them."""

    def __init__(
        self,
        cfg: NodeConfig,
        stack: ExitStack,
        *,
        swarm: Swarm,
        run_id: str,
        key,
        me: str,
        name: str,
        device: torch.device,
        run: RunConfig,
        built: BuiltModel,
        metrics: NodeMetrics,
        history: History,
        applier: Applier,
        trainer: InnerTrainer,
        out: Reporter,
    ):
        self.swarm, self.run_id, self.me, self.run = swarm, run_id, me, run
        self.metrics, self.history, self.out = metrics, history, out
        self.applier, self.trainer = applier, trainer  # our round and local step, as of each publish
        self.metric = "val_bpb"  # what evaluate() measures: a Python API user names its own (driver.py)
        self.reach = "unknown"  # how others reach us (the record's kind): known once our addresses are (reachable)
        self.metrics.info.info(
            {
                "peer_id": me,
                "name": name,
                "version": __version__,
                "device": str(device),
                "run_id": run_id,
                "strategy": run.strategy.name,
            }
        )
        self.status = StatusBoard(
            peer=me, name=name, run_id=run_id, strategy=run.strategy.name, device=str(device), version=__version__
        )
        self.params = built.trainable_params  # what is exchanged (the dense-equivalent reference)
        self.status.set_model(trainable=built.trainable_params, total=built.total_params)
        self.metrics.params_trainable.set(built.trainable_params)
        self.metrics.params_total.set(built.total_params)
        self.page = (
            StatusServer(cfg.status_host, cfg.status_port, self.status.snapshot, self.metrics.exposition)
            if cfg.status_port >= 0
            else NoStatusServer()
        )
        stack.callback(self.page.close)
        self.publisher = MetricsPublisher(swarm, run_id, key)
        stack.callback(self.publisher.close)

    def reachable(self, reach: Reachability) -> None:
        """Whether peers can dial us (node/p2p/reach.py), once our addresses are known: to the
        page in words, and to our signed metrics record as its kind."""
        self.reach = reach.wire
        self.status.set_reachability(reach.as_dict())

    def spent(self, eps: float) -> None:
        """The privacy budget spent so far (epsilon), to the metrics and the page."""
        self.metrics.privacy_epsilon.set(eps)
        self.status.set_privacy(epsilon=eps, delta=self.run.privacy.delta)

    def round_failed(self, r: int, roster, exchange, digest: str) -> None:
        """Round r ended without a state change for us: no roster (timeout) or payloads we could not get."""
        self.publish_round(
            RoundReport(
                round=r,
                result="failed" if roster else "timeout",
                peers=len(roster.announcements) if roster else 0,
                sent=exchange.sent["update"] + exchange.sent["scatter"],
                received=exchange.received["update"] + exchange.received["scatter"],
                relayed=exchange.relayed_bytes,
                digest=digest,
                local_step=self.trainer.steps,
            )
        )

    def round_done(self, accepted: AcceptedRoster, exchange, *, steps: int, loss: float, val_bpb, train_s, exchange_s):
        """A round applied: what it took, what it moved and where the state is now."""
        state, peers = self.applier.state, len(accepted.announcements)
        self.publish_round(
            RoundReport(
                round=state.round,
                result="ok" if any(a.peer == self.me for a in accepted.announcements) else "skipped",
                peers=peers,
                steps=steps,
                tokens=self.applier.tokens_of(steps),
                samples=steps * self.run.train.batch_size,
                loss=loss,
                val_bpb=val_bpb,
                metric=self.metric,
                train_s=train_s,
                exchange_s=exchange_s,
                sent=exchange.sent["update"] + exchange.sent["scatter"],
                received=exchange.received["update"] + exchange.received["scatter"],
                relayed=exchange.relayed_bytes,
                dense=self.metrics.dense_equivalent(self.params, peers, steps),
                digest=state.digest,
                local_step=self.trainer.steps,
            )
        )

    def publish_round(self, report: RoundReport) -> None:
        """One round's outcome to every sink: metrics, page and signed record, summary, terminal."""
        self.metrics.round_done(report)
        self.status.round_done(report)
        self.history.add(report)
        peers = trainers(read_peers(self.swarm, self.run_id))
        self.metrics.peers_alive.set(len(peers | {self.me: None}))
        self.publish_status(peers)
        if report.completed:
            self.out.event("round", **report.line())

    def publish_status(self, peers: dict[str, Heartbeat] | None = None) -> None:
        """Refresh the page's peer table and publish our signed metrics record for monitors."""
        peers = trainers(read_peers(self.swarm, self.run_id)) if peers is None else peers
        self.status.peers_seen(peers, self.applier.state.round, read_metrics(self.swarm, self.run_id))
        self.publisher.publish(
            self.status.record(local_step=self.trainer.steps, now=dht_time(), reachability=self.reach)
        )


def summary(node) -> dict:
    """What a node did, for its result JSON (--result-json) and the demo's check: `node` is a Volunteer."""
    return {
        "peer": node.me,
        "name": node.name,
        "run_id": node.run_id,
        "rounds_completed": node.state.round,
        "joined_round": getattr(node, "joined_round", None),
        "digest": node.state.digest,
        "bytes_sent": node.exchange.sent["update"],
        "bytes_received": node.exchange.received["update"],
        "relay_bytes_sent": node.exchange.relayed_bytes,  # of bytes_sent: others' updates passed on
        "scatter_bytes_sent": node.exchange.sent["scatter"],  # v3 rounds' messages (docs/protocol.md "v3")
        "scatter_bytes_received": node.exchange.received["scatter"],
        "state_bytes_sent": node.exchange.sent["state"],
        "state_bytes_received": node.exchange.received["state"],
        "update_bytes_per_peer": node.strategy.codec.encoded_size(),
        # what the codec says those updates weigh: payloads served (own and relayed) / fetched x size
        "codec_bytes_sent": node.exchange.served["update"] * node.strategy.codec.encoded_size(),
        "codec_bytes_received": node.exchange.fetched["update"] * node.strategy.codec.encoded_size(),
        "rounds_contributed": node.history.contributed,
        "rounds_failed": node.history.failed,
        "val_bpb": node.history.val_bpb,
        "train_loss": node.history.loss,
        "strategy": node.run.strategy.name,
        "params_trainable": node.built.trainable_params,
        "params_total": node.built.total_params,
        "privacy": node.privacy.report(),
        "rounds_left_out": node.rounds.left_out,
        "ledger": str(node.ledger.path),
        "tokens_trained": node.history.tokens_trained,
        "tokens_contributed": node.history.tokens_contributed,
        "compute_seconds": round(node.history.compute_s, 3),
        "wall_seconds": round(time.monotonic() - getattr(node, "joined_at", time.monotonic()), 3),
        "timeline": node.history.timeline,
        "timeline_fields": TIMELINE,
        "val_bpb_timeline": node.history.bpb_timeline,
    }
