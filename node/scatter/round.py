"""One v3 round over a message bus that counts bytes: the reduce-scatter, audits, the gather.

Phases (each one round trip on the network; `Outcome.phases` counts them, replacements included):
  1 chunks   every member sends chunk j of its update, with its signed commitment, to owner j
             of its group; the owner checks both (a bad chunk is left out of its receipt)
  2 level 1  owners reduce and publish signed receipts; auditors drawn from the receipts' draws
             fetch each task's signed inputs from its owner and recompute it
  3 parts    level-1 owners send part k of their result, with their receipt, to part owner k
  4 level 2  as 2, over the groups' parts
  5 gather   part owners send final parts to chunk j's column, which sends them on to its
             group; receivers check each against its level-2 receipt's digest (a forwarder that
             alters one is bypassed: the part is fetched from its owner)
An owner that does not answer in its phase is replaced by its backup (senders send again: one
more phase); a liar an auditor catches is replaced and banned, its task recomputed by the backup
from the proof's inputs. Data (chunks, parts, audit inputs, proofs) and records (commitments,
receipts, the round's final digests in the roster) are counted apart.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import torch

from node.scatter import chunks
from node.scatter.audit import FraudProof, Input, Round, audit, audit_seed, inputs_root, open_receipt, outputs_of
from node.scatter.grid import assign_auditors
from protocol.errors import ProtocolError
from protocol.scatter import Commitment, Receipt, bitmap, draw_message

MOST_REPLACEMENTS = 8  # owners one task may go through in a round before the round fails


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
    """As a sender, send chunks that are not the ones it committed to."""
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
    """Owners an auditor caught lying (banned), in the order caught."""
    withheld: list[str]
    """Owners that did not answer (replaced, not banned)."""
    missed: list[str]
    """Tasks whose lying owner no auditor reported: their (wrong) output went on."""
    traffic: Traffic
    receipts: dict[tuple, dict]
    """Every task's standing signed receipt, by (level, a, b)."""


def size_of(envelope: dict) -> int:
    return len(msgpack.packb(envelope, use_bin_type=True))


class ScatterRound:
    """Runs one round for every member at once (the members' own code, the bus simulated)."""

    def __init__(self, rnd: Round, updates: dict, keys: dict, leader: str, *, behaviour=None, auditors: int = 1):
        self.rnd, self.keys, self.leader, self.auditors = rnd, keys, leader, auditors
        self.updates: dict[str, torch.Tensor] = updates
        self.behaviour: dict[str, Behaviour] = behaviour or {}
        self.traffic, self.phases = Traffic(), 0
        self.inputs: dict[tuple, list[Input | None]] = {}  # what each task's owner received
        self.used: dict[tuple, list[Input | None]] = {}  # what it reduced (its receipt's inputs)
        self.receipts: dict[tuple, dict] = {}
        self.outputs: dict[tuple, list[bytes]] = {}
        self.caught: list[str] = []
        self.withheld: list[str] = []
        self.missed: list[str] = []

    def act(self, peer: str) -> Behaviour:
        return self.behaviour.get(peer, Behaviour())

    def run(self) -> Outcome:
        self.send_chunks()
        self.reduce_level(1)
        self.send_parts()
        self.reduce_level(2)
        final = self.gather()
        return Outcome(final, self.phases, self.caught, self.withheld, self.missed, self.traffic, self.receipts)

    # ---------------------------------------------------------------- phase 1: chunks to owners
    def send_chunks(self) -> None:
        rnd, grid = self.rnd, self.rnd.grid
        pieces, commits = {}, {}
        for peer, update in self.updates.items():
            data = [chunks.encode(update[s.start : s.end]) for s in (rnd.chunk(j) for j in range(grid.chunks))]
            commit = Commitment(
                run=rnd.run,
                round=rnd.round,
                attempt=rnd.attempt,
                peer=peer,
                base="0" * 64,
                tokens=1,
                chunks=tuple(chunks.sha(d) for d in data),
            )
            pieces[peer], commits[peer] = data, self.keys[peer].seal(commit)
        for p, b in self.garbled().items():
            pieces[p] = [b] * grid.chunks
        for g, group in enumerate(grid.groups):
            for j in range(grid.chunks):
                for p in group:
                    if p in pieces:
                        self.deliver(p, rnd.owner(1, g, j), len(pieces[p][j]), size_of(commits[p]))
                self.inputs[(1, g, j)] = [self.accepted(p, j, commits.get(p), pieces.get(p)) for p in group]
        self.phases += 1

    def garbled(self) -> dict[str, bytes]:
        return {p: b"garbage" for p in self.updates if self.act(p).garble}

    def accepted(self, sender: str, j: int, commit: dict | None, pieces: list[bytes] | None) -> Input | None:
        """The owner keeps an input only if the sender signed it (else it is left out of the receipt)."""
        if commit is None or pieces is None:
            return None
        try:
            signed = self.rnd.checker.open(commit, Commitment, sender)
        except ProtocolError:
            return None
        return Input(commit, pieces[j]) if chunks.sha(pieces[j]) == signed.chunks[j] else None

    def deliver(self, src: str, dst: str, data: int, records: int) -> None:
        self.traffic.send(src, dst, data, records)

    # ---------------------------------------------------------------- phases 2 and 4: owners, audits
    def tasks(self, level: int) -> list[tuple[int, int, int]]:
        grid = self.rnd.grid
        if level == 1:
            return [(1, g, j) for g in range(grid.n_groups) for j in range(grid.chunks)]
        return [(2, j, k) for j in range(grid.chunks) for k in range(grid.n_groups)]

    def reduce_level(self, level: int) -> None:
        tasks = self.tasks(level)
        if any(self.act(self.rnd.owner(*t)).withhold for t in tasks):
            self.phases += 1  # senders wait out the phase, then send to the backups
        for task in tasks:
            self.answer(task)
        self.publish_receipts(level)
        seed = audit_seed(self.rnd.grid.seed, [self.receipt_of(t).draw for t in tasks])
        names = {"/".join(map(str, t)): self.rnd.owner(*t) for t in tasks}
        drawn = assign_auditors(seed, names, self.rnd.grid.members(), self.auditors)
        for task in tasks:
            self.audit_task(task, drawn["/".join(map(str, task))])
        self.phases += 1

    def answer(self, task: tuple) -> None:
        """The task's current owner answers; backups take over from owners that withhold or
        whose receipt leaves out a majority of the inputs (refused by everyone: open_receipt)."""
        for _ in range(MOST_REPLACEMENTS):
            owner = self.rnd.owner(*task)
            if not self.act(owner).withhold:
                try:
                    self.compute(task)
                    open_receipt(self.rnd, self.receipts[task], *task)
                    return
                except ProtocolError:
                    pass
            self.withheld.append(owner)
            self.replace(task)
            self.resend(task)
        raise ProtocolError(f"task {task}: {MOST_REPLACEMENTS} owners in a row did not answer")

    def replace(self, task: tuple) -> None:
        name = "/".join(map(str, task))
        self.rnd.replaced[name] = self.rnd.replaced.get(name, 0) + 1

    def resend(self, task: tuple) -> None:
        owner = self.rnd.owner(*task)
        for sender, item in zip(self.rnd.senders(*task), self.inputs[task]):
            if item is not None:
                self.deliver(sender, owner, len(item.data), size_of(item.envelope))

    def compute(self, task: tuple) -> None:
        """The current owner reduces its inputs and signs its receipt (a liar signs a lie)."""
        level, a, b = task
        owner, rnd = self.rnd.owner(*task), self.rnd
        inputs = self.inputs[task]
        if self.act(owner).censor:
            kept = {p for p in rnd.senders(*task) if p == owner or self.act(p).collude or self.act(p).censor}
            inputs = [i if p in kept else None for p, i in zip(rnd.senders(*task), inputs)]
        span = rnd.span(*task)
        pieces = [chunks.decode(i.data, span.size) for i in inputs if i is not None]
        if not pieces:
            raise ProtocolError(f"task {task}: its owner kept no inputs")
        outputs = outputs_of(rnd, level, a, b, pieces)
        if self.act(owner).lie:
            outputs = [chunks.encode(chunks.decode(o, n) * -10.0) for o, n in zip(outputs, self.output_sizes(task))]
        digests = [chunks.sha(i.data) for i in inputs if i is not None]
        name = "/".join(map(str, task))
        receipt = Receipt(
            run=rnd.run,
            round=rnd.round,
            attempt=rnd.attempt,
            owner=owner,
            level=level,
            a=a,
            b=b,
            included=bitmap([i is not None for i in inputs]),
            inputs_root=inputs_root(digests),
            outputs=tuple(chunks.sha(o) for o in outputs),
            draw=self.keys[owner].unique(draw_message(rnd.run, rnd.round, rnd.attempt, name)),
        )
        self.receipts[task], self.outputs[task] = self.keys[owner].seal(receipt), outputs
        self.used[task] = inputs

    def output_sizes(self, task: tuple) -> list[int]:
        level, a, b = task
        if level == 2:
            return [self.rnd.part(a, b).size]
        return [self.rnd.part(b, k).size for k in range(self.rnd.grid.n_groups)]

    def receipt_of(self, task: tuple) -> Receipt:
        return self.rnd.checker.open(self.receipts[task], Receipt, self.rnd.owner(*task))

    def publish_receipts(self, level: int) -> None:
        """Each receipt goes to the task's senders (they check they were included); level-2
        receipts also to the leader, whose roster lists the final parts' digests."""
        for task in self.tasks(level):
            owner, size = self.rnd.owner(*task), size_of(self.receipts[task])
            for p in {*self.rnd.senders(*task), *([self.leader] if level == 2 else [])}:
                self.deliver(owner, p, 0, size)

    def audit_task(self, task: tuple, auditors: list[str]) -> None:
        for _ in range(MOST_REPLACEMENTS):
            owner, lied = self.rnd.owner(*task), False
            for auditor in (a for a in auditors if a != owner):
                for item in self.used[task]:
                    if item is not None:
                        self.deliver(owner, auditor, len(item.data), size_of(item.envelope))
                proof = audit(self.rnd, self.receipts[task], *task, self.used[task])
                lied = lied or proof is not None
                if proof is not None and not (self.act(auditor).collude and self.act(owner).collude):
                    self.convict(task, owner, auditor, proof)
                    break
            else:
                if lied:  # every auditor that saw the lie covered it: the wrong output goes on
                    self.missed.append("/".join(map(str, task)))
                return
        raise ProtocolError(f"task {task}: {MOST_REPLACEMENTS} owners in a row lied")

    def convict(self, task: tuple, owner: str, auditor: str, proof: FraudProof) -> None:
        """The proof goes to the backup (who recomputes from its inputs) and the leader (who puts
        it in the roster: every peer can check it); the liar is banned."""
        self.caught.append(owner)
        self.replace(task)
        size = sum(len(i.data) for i in proof.inputs if i is not None)
        records = size_of(proof.receipt) + sum(size_of(i.envelope) for i in proof.inputs if i is not None)
        for p in (self.rnd.owner(*task), self.leader):
            self.deliver(auditor, p, size, records)
        self.compute(task)

    # ---------------------------------------------------------------- phase 3: parts to level 2
    def send_parts(self) -> None:
        rnd, grid = self.rnd, self.rnd.grid
        for j in range(grid.chunks):
            for k in range(grid.n_groups):
                items = []
                for g in range(grid.n_groups):
                    src = rnd.owner(1, g, j)
                    data = self.outputs[(1, g, j)][k]
                    items.append(Input(self.receipts[(1, g, j)], data))
                    self.deliver(src, rnd.owner(2, j, k), len(data), size_of(self.receipts[(1, g, j)]))
                self.inputs[(2, j, k)] = items
        self.phases += 1

    # ---------------------------------------------------------------- phase 5: the gather
    def gather(self) -> torch.Tensor:
        rnd, grid = self.rnd, self.rnd.grid
        final = torch.zeros(rnd.total)
        digests = 32 * len(self.tasks(2))  # the roster's list of final part digests, read by all
        for p in grid.members():
            self.deliver(self.leader, p, 0, digests)
        for j in range(grid.chunks):
            for k in range(grid.n_groups):
                owner, data = rnd.owner(2, j, k), self.outputs[(2, j, k)][0]
                span = rnd.part(j, k)
                final[span.start : span.end] = chunks.decode(data, span.size)
                self.spread(j, owner, data)
        self.phases += 1
        return final

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


def seed_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
