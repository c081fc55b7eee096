"""What a v3 round is made of besides its logic: how a member deviates, how long it waits and
when it gives up (node/scatter/member.py), the transport it calls, the bytes it moves (data and
records apart, and the simulated round's messages that carry no decision: Bus), and what a
simulated round ends with."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import msgpack
import torch

from node.scatter.audit import FraudProof, Round, audit, checked_inputs, open_receipt, outputs_of
from node.scatter.chunks import sha
from protocol.kinds.scatter import Message


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How a simulated peer deviates (the default: honest)."""

    lie: bool = False
    """As an owner, publish a wrong result (its true result negated and tenfold) with a receipt."""
    lie_blocks: int = 0
    """A liar's lie only on its task's first this many blocks (Round.blocks; 0: the whole result):
    its best lie against spot audits (grid.SPOT_COVER), which it cannot aim (drawn after it signs)."""
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
    skew_sketch: bool = False
    """As a sender in a sketch-audited round (node/scatter/sketch.py), sign sketches that are not its chunk's."""
    censor: bool = False
    """As an owner, leave out every input but its own and its fellow colluders'."""
    silent: bool = False
    """As a sender, commit (the leader may list it) and then send nothing: no chunk, and nothing
    when the leader asks for one (op `here`)."""
    names: tuple[str, ...] = ()
    """As an owner, also name these senders missing (op `missing`) though their chunks came."""
    serve_bad: bool = False
    """As an owner, serve its auditors inputs that do not check (or none)."""
    claim_bad: bool = False
    """As an auditor, claim that every owner it audits served it inputs that do not check."""


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
    silent: list[str] = field(default_factory=list)
    """Senders an owner named missing that gave the leader nothing when asked: in no quorum."""


def size_of(envelope: dict) -> int:
    return len(msgpack.packb(envelope, use_bin_type=True))


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """How long a v3 round waits at each step (seconds)."""

    phase: float = 30.0
    """An owner's wait for its task's inputs; the leader waits twice this for receipts and audits.
    A member that has had no board from the leader for this long gives the round up (LeaderSilent)."""
    call: float = 30.0
    """One RPC (a board poll may take `phase` more: the leader answers when the board changes)."""
    round: float = 600.0
    """The whole round, for this member: past it, it gives up (the round fails for it)."""

    @property
    def stall(self) -> float:
        """A board that shows nothing new for this long is a stalling leader's (LeaderSilent): an
        honest one publishes news within 2 x `phase` (its longest wait), plus a half for its work."""
        return 2.5 * self.phase


PAUSE = 0.25
"""Seconds between two board polls the leader did not answer (a dead leader's refuse at once)."""


class LeaderSilent(TimeoutError):
    """The round's leader sent no board for `Timeouts.phase`, or none with news for
    `Timeouts.stall`: gone or stalling, and its round with it. A live leader answers every poll
    within `phase` (a long poll) and moves its board on within 2 x `phase`, so only a dead or
    hostile leader, or a link as good as dead, stops a member here; the round protocol then hands
    the round on (node/round/v3.py)."""

    leader_silent = True  # how node/round/v3.py, which may not import this module, tells it apart


class Framed(LeaderSilent):
    """The board convicts an owner with no proof served, or one showing no lie: a framing leader,
    given up on as a silent one (a phase lost, not an honest owner's ban)."""


class ScatterNet(Protocol):
    me: str

    def call(self, peer: str, message: Message, timeout: float) -> bytes:
        """Dial `peer` with `message`; its answer's payload. Raises ProtocolError, TimeoutError, OSError."""


class Bus:
    """The messages of a simulated round (node/scatter/round.py ScatterRound) that carry no
    decision: who sends what to whom, counted in `traffic`."""

    rnd: Round
    leader: str
    traffic: Traffic
    inputs: dict[tuple, list]
    used: dict[tuple, list]
    receipts: dict[tuple, dict]
    outputs: dict[tuple, list[bytes]]

    def act(self, peer: str) -> Behaviour:
        raise NotImplementedError

    def deliver(self, src: str, dst: str, data: int, records: int) -> None:
        self.traffic.send(src, dst, data, records)

    def resend(self, task: tuple) -> None:
        owner = self.rnd.owner(*task)
        for sender, item in zip(self.rnd.senders(*task), self.inputs[task]):
            if item is not None:
                self.deliver(sender, owner, len(item.data), size_of(item.envelope))

    def fetch(self, task: tuple, owner: str, auditor: str | None, share: tuple[int, ...] | None = None) -> None:
        """An auditor fetches the inputs of the task's receipt from its owner (`share`: only those
        blocks of each, with a path of 32-byte digests a block to the sender's root of them)."""
        blocks, span = self.rnd.blocks(*task), self.rnd.span(*task)
        part = 1.0 if share is None or not span.size else sum(blocks[i].size for i in share) / span.size
        paths = 0 if share is None else len(share) * 32 * max(1, (len(blocks) - 1).bit_length())
        for item in (i for i in self.used[task] if i is not None and auditor):
            self.deliver(owner, auditor, round(len(item.data) * part), size_of(item.envelope) + paths)

    def check(self, task: tuple, share: tuple[int, ...] | None) -> FraudProof | None:
        """An auditor's verdict on the task from the inputs its owner served: a fraud proof or None.
        `share`: a spot audit, which compares the owner's output with its own on those blocks only
        (its proof is then the whole task's: a block's own proof needs per-block digests and norms
        in the senders' commitments, which the node does not have)."""
        rnd, level = self.rnd, task[0]
        if share is None:
            return audit(rnd, self.receipts[task], *task, self.used[task])
        receipt = open_receipt(rnd, self.receipts[task], *task)
        ours = outputs_of(rnd, *task, checked_inputs(rnd, receipt, self.used[task]))
        if tuple(map(sha, ours)) == receipt.outputs:
            return None
        mine, theirs = (
            torch.cat([rnd.wire.decode_out(o, p, level) for o, p in zip(outs, rnd.output_spans(*task))])
            for outs in (ours, self.outputs[task])
        )
        at, blocks = rnd.span(*task).start, rnd.blocks(*task)
        seen = [slice(blocks[i].start - at, blocks[i].end - at) for i in share]
        lied = any(not torch.equal(mine[s], theirs[s]) for s in seen)
        return FraudProof(self.receipts[task], *task, tuple(self.used[task])) if lied else None

    def publish_receipts(self, level: int) -> None:
        """Each receipt goes to the task's senders (they check they were included); level-2
        receipts also to the leader, whose roster lists the final parts' digests."""
        for task in self.tasks(level):
            owner, size = self.rnd.owner(*task), size_of(self.receipts[task])
            for p in {*self.rnd.senders(*task), *([self.leader] if level == 2 else [])}:
                self.deliver(owner, p, 0, size)

    def spread(self, chunk: int, owner: str, data: bytes) -> None:
        """A final part reaches chunk's column, then each group through its column member."""
        rnd = self.rnd
        for g, group in enumerate(rnd.grid.groups):
            forwarder = rnd.owner(1, g, chunk)
            self.deliver(owner, forwarder, len(data), 0)
            for p in group:
                if p == forwarder:
                    continue
                self.deliver(forwarder, p, len(data), 0)
                if self.act(forwarder).forge:  # the digest does not match: fetch it from its owner
                    self.deliver(owner, p, len(data), 0)
