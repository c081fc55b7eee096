"""What the status page and /api/status show: a small, thread-safe record of recent events.

The main loop writes (`round_done`, `peers_seen`); the HTTP thread reads (`snapshot`).
"""
from __future__ import annotations

import threading
import time
from collections import deque

from protocol.records import Heartbeat

HISTORY = 500  # points kept for the loss curve
RECENT_ROUNDS = 20


class StatusBoard:
    def __init__(self, *, peer: str, name: str, run_id: str, strategy: str, device: str, version: str):
        self.node = {"peer": peer, "name": name, "run_id": run_id, "strategy": strategy, "device": device,
                     "version": version, "started": time.time()}
        self._lock = threading.Lock()
        self._rounds: deque[dict] = deque(maxlen=RECENT_ROUNDS)
        self._loss: deque[dict] = deque(maxlen=HISTORY)
        self._peers: dict[str, dict] = {}
        self._bandwidth = {"sent": 0, "received": 0, "dense_equivalent": 0}
        self._round = 0
        self._tokens = 0

    def round_done(self, *, round_no: int, result: str, peers: int, seconds: float, loss: float | None,
                   val_bpb: float | None, tokens: int, sent: int, received: int, dense: float) -> None:
        with self._lock:
            now = time.time()
            self._round = round_no
            self._tokens += tokens
            self._rounds.appendleft({"round": round_no, "result": result, "peers": peers,
                                     "seconds": round(seconds, 2), "time": now})
            if loss is not None:
                self._loss.append({"time": now, "round": round_no, "loss": loss, "val_bpb": val_bpb,
                                   "tokens_per_s": tokens / seconds if seconds > 0 else None})
            self._bandwidth = {"sent": sent, "received": received,
                               "dense_equivalent": self._bandwidth["dense_equivalent"] + dense}

    def peers_seen(self, table: dict[str, Heartbeat], my_round: int) -> None:
        with self._lock:
            now = time.time()
            for pid, hb in table.items():
                done = my_round if pid == self.node["peer"] else hb.state_round  # ours is fresher than our heartbeat
                self._peers[pid] = {"peer": pid, "short": pid[:8] + "…" + pid[-6:], "name": hb.name,
                                    "device": hb.device, "round": done, "lag": my_round - done,
                                    "active": hb.active, "last_seen": now, "alive": True}
            for pid, p in self._peers.items():
                p["alive"] = pid in table

    def snapshot(self) -> dict:
        with self._lock:
            peers = sorted(self._peers.values(), key=lambda p: (not p["alive"], p["name"]))
            alive = sum(p["alive"] for p in peers)
            bw = dict(self._bandwidth)
            dense = bw["dense_equivalent"]
            bw["saved_fraction"] = 1 - bw["sent"] / dense if dense else None
            return {"node": self.node, "round": self._round, "tokens": self._tokens,
                    "peers": peers, "peers_alive": alive, "alone": alive <= 1,
                    "rounds": list(self._rounds), "loss_history": list(self._loss), "bandwidth": bw}
