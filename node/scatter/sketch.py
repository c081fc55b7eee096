"""Linear sketch audits (issue 17), in the simulated round only: not the node's, not on its wire.

With the rule a norm-clipped mean (`LINEAR`: Robust with no trim), a task's output is linear in its
inputs once their weights are fixed, w_i = min(1, clip x median norm / |x_i|) / m, from norms the
senders sign. After the owner's receipt is fixed, the audit seed draws ±1 probes r (unknown to the
owner when it signed), and every included sender signs a note of its input: its digest, its norm,
and the sketches r.x_i. A checker then tests r.y == sum w_i (r.x_i) for the owner's decoded output y,
from m notes of PROBES floats each instead of m chunks.

The test holds within a tolerance: y is the exact result re-encoded on the int8 wire, whose rounding
error e (|e_j| <= half its block's step) is fixed before r is drawn, so |r.e| exceeds `tolerance`
with probability <= FRAME (Hoeffding), plus a fp32 slack. A lie smaller than that in every probed
direction passes: about 3.3 x the wire's rounding noise (measured: docs/benchmarks.md).

A note is only as good as its sender: one that signs sketches of something other than its chunk
(a colluder covering its owner's lie; the owner itself, a sender of its own task) makes any lie
consistent. Only a holder of the chunk can see it: the owner (an honest one proves it at once:
`is_bad_note`, from the sender's signed chunk and note) or a checker that fetches the chunk.
So checkers fetch the task's output, the owner's own input, and `fetch` other inputs drawn from
the seed; a mismatch, or a note that fails its chunk, is followed by a full recompute audit,
whose fraud proof convicts (audit.FraudProof), and `is_bad_note` convicts the sender.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import msgpack
import torch

from node.outer.aggregate import Robust, clip_factors, l2_norm
from node.scatter import chunks
from node.scatter.audit import Input, Round, check_input
from node.scatter.grid import assign_auditors
from node.scatter.round import ScatterRound
from node.scatter.traffic import size_of
from protocol.errors import ProtocolError
from protocol.kinds.scatter import task_name

LINEAR = Robust(trim_fraction=0.0)
"""The rule sketch audits need: each input's norm clipped to 2 x the median, then the plain mean
(linear in the inputs once the clip factors are fixed). No coordinate-wise trim."""
CHECKERS = 8
"""Checkers dealt to each task (any member but its owner)."""
PROBES = 8
"""Sketches per input and task: a lie of norm L passes each with probability about tolerance / L."""
FRAME = 1e-9
"""Bound on the chance an honest owner's rounding fails one probe (Hoeffding)."""
SLACK = 1e-5
"""fp32 slack: relative to sqrt(n) x the sum of w_i |x_i| (the owner adds in fp32, the checker in fp64)."""


@dataclass(frozen=True)
class Note:
    """A sender's signed sketch note of its input to one task."""

    body: bytes
    """msgpack [run, round, attempt, task name, sender, input digest, norm, sketches]."""
    sig: bytes
    """The sender's unique signature of body (Keys.unique)."""

    def size(self) -> int:
        return len(self.body) + len(self.sig)


def probes(seed: str, name: str, count: int, n: int) -> torch.Tensor:
    """`count` ±1 probes over the task's n values, from the audit seed (fp64)."""
    gen = torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}/sketch/{name}".encode()).hexdigest()[:15], 16))
    return torch.randint(0, 2, (count, n), generator=gen).to(torch.float64) * 2 - 1


def sketch_of(probe: torch.Tensor, piece: torch.Tensor) -> list[float]:
    return (probe @ piece.to(torch.float64)).tolist()


def write_note(rnd: Round, keys, name: str, item: Input, piece: torch.Tensor, probe: torch.Tensor, skew=None) -> Note:
    """A sender's note of `piece` (its input as the owner decodes it). `skew`: a simulated sender
    adds these to its sketches (a note that is not its chunk's)."""
    values = sketch_of(probe, piece)
    values = values if skew is None else [v + float(d) for v, d in zip(values, skew)]
    body = [rnd.run, rnd.round, rnd.attempt, name, keys.peer, chunks.sha(item.data), l2_norm([piece]), values]
    packed = msgpack.packb(body, use_bin_type=True)
    return Note(packed, keys.unique(b"scatter-sketch" + packed))


def open_note(rnd: Round, note: Note, name: str, sender: str, envelope: dict) -> tuple[str, float, list[float]]:
    """(digest, norm, sketches) of a note `sender` signed for task `name` of this round; raises ProtocolError."""
    if not rnd.checker.unique_ok(note.sig, b"scatter-sketch" + note.body, sender, envelope):
        raise ProtocolError(f"sketch note: not signed by {sender[:16]}")
    run, rnd_no, attempt, task, peer, digest, norm, values = msgpack.unpackb(note.body, raw=False)
    if (run, rnd_no, attempt, task, peer) != (rnd.run, rnd.round, rnd.attempt, name, sender):
        raise ProtocolError("sketch note: for another round, task or sender")
    return digest, float(norm), [float(v) for v in values]


def is_bad_note(rnd: Round, task: tuple, place: int, item: Input, note: Note, seed: str, count: int) -> bool:
    """Whether the task's sender at `place` signed a note of its input `item` (which it signed too:
    audit.check_input) whose norm or sketches are not the chunk's. Anyone checks it from the
    chunk, the two signatures and the seed: the sender is convicted (the owner's defence)."""
    sender, name, span = rnd.senders(*task)[place], task_name(task), rnd.span(*task)
    try:
        check_input(rnd, task, place, sender, item)
        digest, norm, values = open_note(rnd, note, name, sender, item.envelope)
    except ProtocolError:
        return False
    piece = rnd.decode_input(task[0], item.data, span)
    if digest != chunks.sha(item.data):
        return False  # a note of another piece: not this chunk's to judge
    return norm != l2_norm([piece]) or values != sketch_of(probes(seed, name, count, span.size), piece)


def weights(norms: list[float], agg: Robust = LINEAR) -> list[float]:
    """Each included input's weight in the output, from the norms in its sender's note."""
    return [f / len(norms) for f in clip_factors(norms, agg.clip_multiple)]


def decoded_output(rnd: Round, task: tuple, outputs: list[bytes]) -> torch.Tensor:
    level = task[0]
    return torch.cat([rnd.wire.decode_out(o, p, level) for o, p in zip(outputs, rnd.output_spans(*task))])


def tolerance(output: torch.Tensor, norms: list[float], w: list[float]) -> float:
    """How far r.y may be from sum w_i (r.x_i) for an honest owner: the int8 wire's rounding
    (half a block's step a value; a block's step is its largest |value| / 127) by Hoeffding at
    FRAME, plus the fp32 slack."""
    halves = 0.0
    for block in output.split(chunks.BLOCK):
        step = float(block.abs().max()) / 127.0 if block.numel() else 0.0
        halves += block.numel() * (step / 2) ** 2
    rounding = math.sqrt(2 * math.log(2 / FRAME) * halves)
    return rounding + SLACK * math.sqrt(output.numel()) * sum(wi * n for wi, n in zip(w, norms))


def holds(output: torch.Tensor, probe: torch.Tensor, notes: list[tuple[float, list[float]]]) -> bool:
    """The checker's test: for every probe, |r.y - sum w_i (r.x_i)| <= tolerance, from the
    included inputs' (norm, sketches)."""
    norms = [n for n, _ in notes]
    w = weights(norms)
    mixed = torch.tensor([[v for v in values] for _, values in notes], dtype=torch.float64)
    expected = (torch.tensor(w, dtype=torch.float64)[:, None] * mixed).sum(0)
    return bool(((probe @ output.to(torch.float64)) - expected).abs().max() <= tolerance(output, norms, w))


class SketchRound(ScatterRound):
    """ScatterRound with sketch audits in place of recompute audits (no escalation, no spot
    cover): `checkers` a task, each fetching the task's level-1 output, the owner's own input and
    `fetch` other inputs drawn from the seed. Simulated only (bench scale --tier sketch)."""

    def __init__(self, rnd: Round, updates: dict, keys, leader: str, *, behaviour=None, checkers=CHECKERS, fetch=0):
        if not isinstance(rnd.agg, Robust) or rnd.agg.trim_fraction or rnd.wire is not chunks.INT8:
            raise ValueError("sketch audits need the linear rule (sketch.LINEAR) on the int8 wire")
        super().__init__(rnd, updates, keys, leader, behaviour=behaviour, auditors=checkers, escalate=0)
        self.cover, self.fetched, self.count = 0, fetch, PROBES
        self.framed: list[str] = []  # tasks whose sketch test failed on an owner a recompute cleared

    def audit_all(self, tasks: list[tuple], seed: str, tag: str, count: int, cover: int = 0) -> None:
        names = {task_name(t) + tag: self.rnd.owner(*t) for t in tasks}
        drawn = assign_auditors(seed, names, self.rnd.grid.members(), count)
        for task in tasks:
            self.sketch_task(task, seed, [c for c in drawn[task_name(task) + tag] if c != self.rnd.owner(*task)])

    def notes(self, task: tuple, probe: torch.Tensor, included: list, pieces: dict) -> dict[int, Note]:
        """Every included sender's note; a lying colluding owner has one colluding sender (a fellow
        first, else itself) sign sketches that make its lie consistent."""
        rnd, owner, name = self.rnd, self.rnd.owner(*task), task_name(task)
        notes = {
            g: write_note(
                rnd, self.keys[s], name, item, pieces[g], probe, [1.0] * len(probe) if self.act(s).skew_sketch else None
            )
            for g, s, item in included
        }
        if not (self.act(owner).lie and self.act(owner).collude):
            return notes
        # a fellow's note first: checkers always fetch the owner's own input
        fellows = [g for g, s, _ in included if s != owner and self.act(s).collude]
        fellows += [g for g, s, _ in included if s == owner]
        if fellows:
            g, at = fellows[0], [i for i, _, _ in included].index(fellows[0])
            w = weights([l2_norm([pieces[i]]) for i, _, _ in included])
            truth = sum(wi * probe @ pieces[i].to(torch.float64) for wi, (i, _, _) in zip(w, included))
            gap = (probe @ decoded_output(rnd, task, self.outputs[task]).to(torch.float64) - truth) / w[at]
            sender, item = included[at][1], included[at][2]
            notes[g] = write_note(rnd, self.keys[sender], name, item, pieces[g], probe, gap)
        return notes

    def convict_sender(self, task: tuple, g: int, item: Input, by: str, to: list[str]) -> None:
        """A note that fails its chunk: the proof (chunk, commitment, note) convicts its sender."""
        sender = self.rnd.senders(*task)[g]
        for peer in to:
            self.deliver(by, peer, len(item.data), size_of(item.envelope))
        if sender not in self.rnd.caught:
            self.caught.append(sender)
            self.rnd.caught.add(sender)

    def sketch_task(self, task: tuple, seed: str, checkers: list[str]) -> None:
        rnd, owner, name, span = self.rnd, self.rnd.owner(*task), task_name(task), self.rnd.span(*task)
        probe = probes(seed, name, self.count, span.size)
        included = [(g, s, i) for g, (s, i) in enumerate(zip(rnd.senders(*task), self.used[task])) if i is not None]
        pieces = {g: rnd.decode_input(task[0], i.data, span) for g, _, i in included}
        notes, output = self.notes(task, probe, included, pieces), decoded_output(rnd, task, self.outputs[task])
        if not self.act(owner).collude:  # an honest owner checks every note against the chunk it holds
            for g, _, item in included:
                if is_bad_note(rnd, task, g, item, notes[g], seed, self.count):
                    self.convict_sender(task, g, item, owner, [self.leader, *checkers])
                    # checkers take that sender's sketches from the proof's chunk (the sim re-signs them)
                    notes[g] = write_note(rnd, self.keys[rnd.senders(*task)[g]], name, item, pieces[g], probe)
        own, k = [g for g, s, _ in included if s == owner], self.count
        for c in checkers:
            rng = torch.Generator().manual_seed(int(hashlib.sha256(f"{seed}/{name}/{c}".encode()).hexdigest()[:15], 16))
            others = [g for g, s, _ in included if s != owner]
            picked = own + [others[i] for i in torch.randperm(len(others), generator=rng)[: self.fetched].tolist()]
            for g, s, item in included:
                self.deliver(s, c, 0, notes[g].size())
                if g in picked:
                    self.deliver(owner, c, len(item.data), size_of(item.envelope))
            if task[0] == 1:  # a level-2 output reaches every member in the gather anyway
                self.deliver(owner, c, sum(map(len, self.outputs[task])), size_of(self.receipts[task]))
            if self.act(c).collude and self.act(owner).collude:
                continue
            opened = [open_note(rnd, notes[g], name, s, i.envelope)[1:] for g, s, i in included]
            bad = [(g, i) for g, _, i in included if g in picked and is_bad_note(rnd, task, g, i, notes[g], seed, k)]
            if not bad and holds(output, probe, opened):
                continue
            for g, item in bad:
                self.convict_sender(task, g, item, c, [self.leader])
            self.fetch(task, owner, c)  # then a full recompute: its fraud proof convicts the owner
            try:
                proof = self.check(task, None)
            except ProtocolError:
                proof = None
            if proof is None:
                self.framed.append(name)
                continue
            self.convict(task, owner, c, proof)
            return
        if self.act(owner).lie:
            self.missed.append(name)
