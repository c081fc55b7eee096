"""What the status page and /api/status show: a small, thread-safe record of recent events.

The main loop writes (`round_done`, `peers_seen`); the HTTP thread reads (`snapshot`); the
same numbers go into this node's signed metrics record (`record`), which monitors read.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from protocol.kinds.metrics import MAX_METRICS_HISTORY, MetricsRecord
from protocol.records import Heartbeat

HISTORY = 500  # points kept for the loss curve
RECENT_ROUNDS = 20


def peer_rows(
    table: dict[str, Heartbeat],
    my_round: int,
    metrics: dict[str, MetricsRecord],
    me: str = "",
    previous: dict[str, dict] | None = None,
) -> dict[str, dict]:
    """The per-peer table: live peers from heartbeats, figures from verified metrics records.

    Peers in `previous` but no longer in `table` stay, marked gone, so the page can say when.
    """
    now = time.time()
    # gone peers keep their last round and when they were seen; live figures no longer apply
    rows = {
        pid: dict(row, alive=False, lag=my_round - row["round"], share=None, tokens_per_s=None)
        for pid, row in (previous or {}).items()
    }
    live_tokens = sum(m.tokens for pid, m in metrics.items() if pid in table)
    for pid, hb in table.items():
        m = metrics.get(pid)
        done = my_round if pid == me else hb.state_round  # ours is fresher than our heartbeat
        rows[pid] = {
            "peer": pid,
            "short": pid[:8] + "…" + pid[-6:],
            "name": hb.name,
            "device": hb.device,
            "round": done,
            "lag": my_round - done,
            "active": hb.active,
            "last_seen": now,
            "alive": True,
            "tokens_per_s": m.tokens_per_s if m else None,
            "share": m.tokens / live_tokens if m and live_tokens else None,
            "reachability": m.reachability if m else "unknown",
            "signed": m is not None,
        }
    return rows


class StatusBoard:
    def __init__(self, *, peer: str, name: str, run_id: str, strategy: str, device: str, version: str):
        self.node = {
            "peer": peer,
            "name": name,
            "run_id": run_id,
            "strategy": strategy,
            "device": device,
            "version": version,
            "started": time.time(),
            "mode": "node",
        }
        self._lock = threading.Lock()
        self._rounds: deque[dict] = deque(maxlen=RECENT_ROUNDS)
        self._loss: deque[dict] = deque(maxlen=HISTORY)
        self._peers: dict[str, dict] = {}
        self._bandwidth = {"sent": 0, "received": 0, "dense_equivalent": 0}
        self._round = 0
        self._tokens = 0
        self._results = {"ok": 0, "failed": 0}

    def set_model(self, *, trainable: int, total: int) -> None:
        """Parameters the swarm trains and exchanges (LoRA: the adapters only) against the model's total."""
        with self._lock:
            self.node.update(params_trainable=trainable, params_total=total)

    def set_reachability(self, reach: dict) -> None:
        """Whether peers elsewhere can dial this node, in words (node/p2p/reach.py: Reachability.as_dict):
        kind, reachable, summary, meaning, fix."""
        with self._lock:
            self.node["reachability"] = dict(reach)

    def set_privacy(self, *, epsilon: float, delta: float) -> None:
        """The (epsilon, delta) differential privacy this node has spent so far (shown when privacy is on)."""
        with self._lock:
            self.node["privacy"] = {"epsilon": epsilon if epsilon < float("inf") else "inf", "delta": delta}

    def round_done(self, report) -> None:
        """A round's outcome (node/watch/report.py: RoundReport), once."""
        with self._lock:
            now = report.unix_time
            if report.completed:  # the state only moves on a completed round
                self._round = report.round
            self._tokens += report.tokens if report.completed else 0
            self._results["ok" if report.completed else "failed"] += 1
            self._rounds.appendleft(
                {
                    "round": report.round,
                    "result": report.result,
                    "peers": report.peers,
                    "seconds": round(report.seconds, 2),
                    "time": now,
                }
            )
            if report.loss is not None:
                self._loss.append(
                    {
                        "time": now,
                        "round": report.round,
                        "loss": report.loss,
                        "val_bpb": report.val_bpb,
                        "metric": report.metric,
                        "tokens_per_s": report.tokens / report.seconds if report.seconds > 0 else None,
                    }
                )
            self._bandwidth = {
                "sent": report.sent,
                "received": report.received,
                "dense_equivalent": self._bandwidth["dense_equivalent"] + report.dense,
            }

    def peers_seen(
        self, table: dict[str, Heartbeat], my_round: int, metrics: dict[str, MetricsRecord] | None = None
    ) -> None:
        with self._lock:
            self._peers = peer_rows(table, my_round, metrics or {}, self.node["peer"], self._peers)

    def record(self, *, local_step: int, reachability: str, now: float) -> MetricsRecord:
        """This node's signed-record-to-be: the same figures the page shows."""
        with self._lock:
            last = self._loss[-1] if self._loss else {}
            n = self.node
            return MetricsRecord(
                peer=n["peer"],
                name=n["name"][:64],
                device=n["device"][:64],
                version=n["version"][:32],
                round=self._round,
                local_step=local_step,
                time=now,
                loss=last.get("loss"),
                val_bpb=last.get("val_bpb"),
                tokens_per_s=last.get("tokens_per_s"),
                tokens=self._tokens,
                sent=self._bandwidth["sent"],
                received=self._bandwidth["received"],
                dense=int(self._bandwidth["dense_equivalent"]),
                rounds_ok=self._results["ok"],
                rounds_failed=self._results["failed"],
                reachability=reachability,
                history=tuple((p["round"], p["loss"], p["val_bpb"]) for p in list(self._loss)[-MAX_METRICS_HISTORY:]),
                recent=tuple(
                    (r["round"], r["result"], r["peers"], r["seconds"], r["time"])
                    for r in list(self._rounds)[:MAX_METRICS_HISTORY]
                ),
            )

    def snapshot(self) -> dict:
        with self._lock:
            peers = sorted(self._peers.values(), key=lambda p: (not p["alive"], p["name"]))
            alive = sum(p["alive"] for p in peers)
            bw = dict(self._bandwidth)
            return {
                "node": self.node,
                "round": self._round,
                "tokens": self._tokens,
                "peers": peers,
                "peers_alive": alive,
                "alone": alive <= 1,
                "rounds": list(self._rounds),
                "loss_history": list(self._loss),
                "bandwidth": with_saved(bw),
            }


def with_saved(bw: dict) -> dict:
    dense = bw["dense_equivalent"]
    return {**bw, "saved_fraction": 1 - bw["sent"] / dense if dense else None}
