"""What a simulated v3 round is made of besides its logic: how a member deviates, the bytes it
moves (data and records apart), and what the round ends with."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgpack
import torch


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How a simulated peer deviates (the default: honest)."""

    lie: bool = False
    """As an owner, publish a wrong result (its true result negated and tenfold) with a receipt."""
    withhold: bool = False
    """As an owner, never answer (its senders time out and go to the backup)."""
    collude: bool = False
    """As an auditor, never report an owner that also colludes."""
    forge: bool = False
    """As a forwarder in the gather, alter the final parts it passes on."""
    garble: bool = False
    """As a sender, send chunks that are not the ones it committed to (with signed notes of them)."""
    keep_parts: bool = False
    """As a level-1 owner, pass its audit, then never send its parts to level 2."""
    censor: bool = False
    """As an owner, leave out every input but its own and its fellow colluders'."""


@dataclass
class Traffic:
    """Bytes per peer, data and records apart, up and down."""

    data_up: Counter = field(default_factory=Counter)
    data_down: Counter = field(default_factory=Counter)
    records_up: Counter = field(default_factory=Counter)
    records_down: Counter = field(default_factory=Counter)

    def send(self, src: str, dst: str, data: int = 0, records: int = 0) -> None:
        if src == dst:
            return
        self.data_up[src] += data
        self.data_down[dst] += data
        self.records_up[src] += records
        self.records_down[dst] += records


@dataclass
class Outcome:
    final: torch.Tensor
    """The aggregate every honest member ends with (flat)."""
    phases: int
    caught: list[str]
    """Peers caught lying (banned), in the order caught: owners an auditor caught, senders whose
    chunk's signed note contradicts their commitment."""
    withheld: list[str]
    """Owners that did not answer (replaced, not banned)."""
    missed: list[str]
    """Tasks whose lying owner no auditor reported: their (wrong) output went on."""
    traffic: Traffic
    receipts: dict[tuple, dict]
    """Every task's standing signed receipt, by (level, a, b)."""


def size_of(envelope: dict) -> int:
    return len(msgpack.packb(envelope, use_bin_type=True))
