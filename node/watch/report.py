"""One round's outcome, built once and handed to every sink (issue 9, item 7).

The volunteer builds a RoundReport when a round ends, completed or failed, and `publish`es
it: Prometheus (`NodeMetrics.round_done`), the status page and through it the signed metrics
record (`StatusBoard.round_done`), the summary's history (`History.add`) and the terminal line
(`RoundReport.line`). Each sink takes the fields it needs; none recomputes or renames them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class RoundReport:
    round: int
    """The round: the state's round after a completed one, the attempted one after a failure."""
    result: str
    """'ok' (applied, with our update), 'skipped' (applied without it), 'failed' (a roster we
    could not gather), 'timeout' (no roster in time)."""
    peers: int = 0
    """Contributions in the round's roster (0 without one)."""
    steps: int = 0
    """Inner steps this peer ran for the round."""
    tokens: int = 0
    """Tokens those steps trained on."""
    samples: int = 0
    """Sequences those steps trained on."""
    loss: float | None = None
    """Mean training loss of those steps (nats per token)."""
    val_bpb: float | None = None
    """Held-out bits per byte after the round (None without --eval, or on failure); in a run
    driven from Python, the value of the user's eval callback, named by `metric`."""
    metric: str = "val_bpb"
    """What val_bpb holds: 'val_bpb', or the name a Python API user gave its eval metric."""
    train_s: float = 0.0
    """Seconds of local training and encoding."""
    exchange_s: float = 0.0
    """Seconds from announcing to having the round's payloads (and applying them)."""
    sent: int = 0
    """Update bytes this node has sent so far (cumulative; a v3 round's chunks, parts and records too)."""
    received: int = 0
    """Update bytes this node has received so far (cumulative; with a v3 round's messages, as `sent`)."""
    relayed: int = 0
    """Of `sent`: bytes of other peers' updates this node passed on (upload once; cumulative)."""
    dense: float = 0.0
    """Bytes a dense fp32 ring all-reduce would have moved each way for this round."""
    digest: str = ""
    """State digest after the round."""
    local_step: int = 0
    """Inner steps this node has taken in all."""
    unix_time: float = field(default_factory=time.time)
    """When the round ended."""

    @property
    def completed(self) -> bool:
        return self.result in ("ok", "skipped")

    @property
    def seconds(self) -> float:
        return self.train_s + self.exchange_s

    def line(self) -> dict:
        """The terminal event's fields (`event=round ...`)."""
        out = dict(
            round=self.round,
            peers=self.peers,
            contributed=int(self.result == "ok"),
            loss=self.loss,
            train_s=round(self.train_s, 2),
            exchange_s=round(self.exchange_s, 2),
            sent=self.sent,
            received=self.received,
            digest=self.digest[:16],
            step=self.local_step,
            steps=self.steps,
            tokens_per_s=round(self.tokens / max(1e-9, self.seconds)),
        )
        return out if self.val_bpb is None else {**out, self.metric: self.val_bpb}


TIMELINE = [
    "unix_time",
    "round",
    "tokens_trained",
    "tokens_contributed",
    "compute_seconds",
    "bytes_sent",
    "bytes_received",
    "bytes_relayed",
]
"""One row per completed round in the result JSON (benchmarks cut a window out of it)."""


@dataclass
class History:
    """What the node's summary (its result JSON) says about its rounds."""

    contributed: int = 0
    failed: int = 0
    loss: list[float] = field(default_factory=list)
    val_bpb: list[float] = field(default_factory=list)
    syncs: Counter = field(default_factory=Counter)
    tokens_trained: int = 0
    tokens_contributed: int = 0
    compute_s: float = 0.0
    timeline: list[list] = field(default_factory=list)
    bpb_timeline: list[list] = field(default_factory=list)  # [unix_time, round, val_bpb] per evaluated round

    def trained(self, tokens: int, seconds: float) -> None:
        """Local work, counted when it is done (also when its round fails later)."""
        self.tokens_trained += tokens
        self.compute_s += seconds

    def add(self, report: RoundReport) -> None:
        if not report.completed:
            self.failed += 1
            return
        self.contributed += report.result == "ok"
        self.tokens_contributed += report.tokens if report.result == "ok" else 0
        self.loss.append(report.loss)
        if report.val_bpb is not None:
            self.val_bpb.append(report.val_bpb)
            self.bpb_timeline.append([round(report.unix_time, 3), report.round, report.val_bpb])
        self.timeline.append(
            [
                round(report.unix_time, 3),
                report.round,
                self.tokens_trained,
                self.tokens_contributed,
                round(self.compute_s, 3),
                report.sent,
                report.received,
                report.relayed,
            ]
        )
