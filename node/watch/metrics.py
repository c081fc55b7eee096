"""Prometheus metrics of one node: one registry per node, base units, `swarmtrain_` prefix.

"Bandwidth saved" is a query, not a number we compute for you:
    1 - rate(swarmtrain_wire_bytes_total{kind="update",direction="sent"}[5m])
      / rate(swarmtrain_dense_equivalent_bytes_total{direction="sent"}[5m])
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

PHASES = ("compute", "encode", "communicate", "apply")
ROUND_RESULTS = ("ok", "failed", "timeout", "skipped")
SYNC_RESULTS = ("ok", "unverified", "failed")


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.info = Info("swarmtrain_node", "Who this node is", registry=r)
        self.local_step = Gauge("swarmtrain_local_step", "Inner steps this node has taken", registry=r)
        self.global_step = Gauge(
            "swarmtrain_global_step", "Rounds completed by the swarm state this node holds", registry=r
        )
        self.train_loss = Gauge(
            "swarmtrain_train_loss", "Mean training loss of the last round, nats per byte", registry=r
        )
        self.val_bpb = Gauge("swarmtrain_val_bits_per_byte", "Held-out bits per byte after the last round", registry=r)
        self.eval_metric = Gauge(
            "swarmtrain_eval_metric", "The Python API user's eval callback after the last round", ["name"], registry=r
        )
        self.tokens = Counter("swarmtrain_tokens", "Tokens (bytes) trained on by this node", registry=r)
        self.samples = Counter("swarmtrain_samples", "Sequences trained on by this node", registry=r)
        self.step_seconds = Histogram(
            "swarmtrain_step_duration_seconds",
            "Time per round phase",
            ["phase"],
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )
        self.rounds = Counter("swarmtrain_rounds", "Rounds by result", ["result"], registry=r)
        self.round_peers = Gauge("swarmtrain_round_peers", "Updates in the last round's roster", registry=r)
        self.peers_alive = Gauge(
            "swarmtrain_peers_alive", "Peers with a live heartbeat, this node included", registry=r
        )
        self.wire_bytes = Counter(
            "swarmtrain_wire_bytes", "Bytes on the wire for the exchange", ["direction", "kind"], registry=r
        )
        self.dense_bytes = Counter(
            "swarmtrain_dense_equivalent_bytes",
            "Bytes a dense fp32 ring all-reduce would have moved for the same steps",
            ["direction"],
            registry=r,
        )
        self.state_syncs = Counter("swarmtrain_state_syncs", "State downloads by result", ["result"], registry=r)
        self.params_total = Gauge(
            "swarmtrain_model_parameters", "Parameters of the model, frozen ones included", registry=r
        )
        self.params_trainable = Gauge(
            "swarmtrain_trainable_parameters",
            "Parameters this node trains and exchanges (LoRA: the adapters only)",
            registry=r,
        )
        self.privacy_epsilon = Gauge(
            "swarmtrain_privacy_epsilon",
            "Differential privacy epsilon spent so far by this node's updates (at the run's "
            "delta; opacus RDP accountant); 0 when privacy is off, +Inf without noise",
            registry=r,
        )
        for p in PHASES:
            self.step_seconds.labels(p)
        for res in ROUND_RESULTS:
            self.rounds.labels(res)
        for res in SYNC_RESULTS:
            self.state_syncs.labels(res)
        for d in ("sent", "received"):
            self.dense_bytes.labels(d)
            for k in ("update", "state"):
                self.wire_bytes.labels(d, k)

    def round_done(self, report) -> None:
        """A round's outcome (node/watch/report.py: RoundReport), once."""
        self.rounds.labels(report.result).inc()
        if not report.completed:
            return
        self.local_step.set(report.local_step)
        self.global_step.set(report.round)
        if report.loss is not None:  # a training loop of one's own may report no loss (swarmtrain API)
            self.train_loss.set(report.loss)
        self.tokens.inc(report.tokens)
        self.samples.inc(report.samples)
        self.round_peers.set(report.peers)
        self.dense_bytes.labels("sent").inc(report.dense)
        self.dense_bytes.labels("received").inc(report.dense)
        if report.val_bpb is not None and report.metric == "val_bpb":
            self.val_bpb.set(report.val_bpb)
        elif report.val_bpb is not None:  # a Python API user's own metric, any unit
            self.eval_metric.labels(report.metric).set(report.val_bpb)

    def on_bytes(self, direction: str, kind: str, n: int) -> None:
        """Called by the exchange for every frame it writes or reads."""
        self.wire_bytes.labels(direction, kind).inc(n)

    @staticmethod
    def dense_equivalent(params: int, peers: int, steps: int) -> float:
        """What a ring all-reduce would move: 2 (N-1)/N x 4 bytes x params each way per step."""
        return 2 * (peers - 1) / peers * 4 * params * steps if peers > 1 else 0

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
