"""Checking an owner: its signed inputs, its output recomputed bit-exactly, and fraud proofs.

A task is (level, a, b) (protocol/kinds/scatter.py Receipt). Its inputs each come with the envelope
that vouches for them: level 1, the sender's signed commitment (the chunk's SHA-256 is in it);
level 2, the level-1 owner's signed receipt (the part's SHA-256 is in its outputs). So an owner
can show what it reduced, and an auditor that recomputes a different output holds a fraud
proof: the owner's receipt plus those inputs. Anyone checks it at the cost of one task (about
one update's chunk): nothing in it depends on the auditor's word.

Who owns a task now: the grid's owner, or its k-th backup after k owners were replaced in the
round (`Round.replaced`: a withholding owner, or a liar whose proof everyone has seen).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from node.outer.aggregate import Aggregator
from node.scatter import chunks
from node.scatter.grid import SPOT_BLOCKS, Checker, Grid
from node.scatter.reduce import reduce_task
from protocol.errors import ProtocolError
from protocol.kinds.scatter import ChunkNote, Commitment, Receipt, bitmap, flags_of, task_name


@dataclass(frozen=True)
class Input:
    """One input of a task as its owner received it."""

    envelope: dict
    """Level 1: the sender's signed commitment; level 2: the level-1 owner's signed receipt."""
    data: bytes
    """The piece (on the round's wire, node/scatter/chunks.py)."""
    note: dict | None = None
    """Level 1: the sender's signed ChunkNote of the piece (a chunk that is not the one it
    committed to is then provably its own: is_garble); not part of what an auditor checks."""


@dataclass
class Round:
    """What every peer of a round knows alike: the grid, the run's rule, who committed, who was
    replaced or caught, and which receipts stand."""

    run: str
    round: int
    attempt: int
    grid: Grid
    total: int
    """Values in a flat update."""
    agg: Aggregator
    checker: Checker
    replaced: dict[str, int] = field(default_factory=dict)
    """task -> how many of its owners were passed over (the current owner is the next one)."""
    caught: set[str] = field(default_factory=set)
    """Peers proven to have lied (owners by a fraud proof, senders by is_garble): they own
    nothing more and count toward no quorum (this round), and are banned after."""
    committed: set[str] | None = None
    """Members whose signed commitment the leader listed (None: every member): a level-1
    receipt must include a majority of its group's committed members."""
    silent: set[str] = field(default_factory=set)
    """Senders an owner named missing that handed the leader nothing that checks when asked: they
    count toward no quorum (this round; not banned: silence is not provable)."""
    fixed: dict[str, str] = field(default_factory=dict)
    """task -> SHA-256 of the one receipt body that stands for it (set by the leader per level)."""
    signers: dict[str, str] = field(default_factory=dict)
    """task -> who signed that receipt (a liar caught later still signed the tasks it did right)."""
    wire: chunks.Wire = chunks.INT8
    """How pieces are cut, encoded and reduced (chunks.wire_for the run's codec)."""

    def unfix(self, name: str) -> None:
        """The task changes hands (its owner withheld or was caught on it): no receipt stands."""
        self.fixed.pop(name, None)
        self.signers.pop(name, None)

    def chunk(self, j: int) -> chunks.Span:
        return self.wire.spans(chunks.Span(0, self.total), self.grid.chunks)[j]

    def part(self, j: int, k: int) -> chunks.Span:
        return self.wire.spans(self.chunk(j), self.grid.n_groups)[k]

    def in_range(self, level: int, a: int, b: int) -> bool:
        first, second = (self.grid.n_groups, self.grid.chunks) if level == 1 else (self.grid.chunks, self.grid.n_groups)
        return level in (1, 2) and 0 <= a < first and 0 <= b < second

    def owner(self, level: int, a: int, b: int) -> str:
        """The task's current owner: the signer of its fixed receipt; before that, the grid's
        owner past the replaced ones, never one caught lying. Level 2: chunk a's column as it
        stands now (a replaced level-1 owner's part passes to its backup)."""
        signer = self.signers.get(task_name((level, a, b)))
        if signer is not None:
            return signer
        skip, tried = self.replaced.get(task_name((level, a, b)), 0), 0
        while True:
            if level == 1:
                peer = self.grid.owner_of(a, b, skip + tried)
            else:
                column = [self.owner(1, g, a) for g in range(self.grid.n_groups)]
                peer = column[(b + skip + tried) % len(column)]
            if peer not in self.caught or tried > len(self.grid.members()):
                return peer
            tried += 1

    def senders(self, level: int, a: int, b: int) -> list[str]:
        """Whose inputs the task takes, in order: group a's members, or chunk a's level-1 owners."""
        if level == 1:
            return list(self.grid.groups[a])
        return [self.owner(1, g, a) for g in range(self.grid.n_groups)]

    def quorum(self, level: int, a: int, b: int) -> int:
        """Inputs a receipt must include: a majority of the task's committed senders not caught nor
        silent (a sender convicted of sending garbage, or asked by the leader for its chunk and
        silent, no longer counts, so it cannot starve the quorum).
        An owner that leaves out more (so that its colluders' inputs decide) is replaced; one that
        leaves out fewer is bounded by the robust rule (omission claims are not built)."""
        senders = self.senders(level, a, b)
        if level == 1:
            senders = [p for p in senders if self.counts(p)]
        return len(senders) // 2 + 1

    def counts(self, sender: str) -> bool:
        """Whether a level-1 sender counts toward its group's quorum."""
        committed = self.committed is None or sender in self.committed
        return committed and sender not in self.caught and sender not in self.silent

    def output_spans(self, level: int, a: int, b: int) -> list[chunks.Span]:
        """Each output piece of the task: level 1, one per part of its chunk."""
        if level == 2:
            return [self.part(a, b)]
        return [self.part(b, k) for k in range(self.grid.n_groups)]

    def output_sizes(self, level: int, a: int, b: int) -> list[int]:
        """Values in each output piece of the task."""
        return [s.size for s in self.output_spans(level, a, b)]

    def decode_input(self, level: int, data: bytes, span: chunks.Span) -> torch.Tensor:
        """An input of a level's task: level 1 a sender's chunk, level 2 a level-1 owner's part."""
        return self.wire.decode_in(data, span) if level == 1 else self.wire.decode_out(data, span, 1)

    def span(self, level: int, a: int, b: int) -> chunks.Span:
        return self.chunk(b) if level == 1 else self.part(a, b)

    def blocks(self, level: int, a: int, b: int) -> list[chunks.Span]:
        """The task's span cut into grid.SPOT_BLOCKS blocks a spot audit checks (the non-empty ones)."""
        return [s for s in self.wire.spans(self.span(level, a, b), SPOT_BLOCKS) if s.size]


def inputs_root(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def open_receipt(rnd: Round, envelope: object, level: int, a: int, b: int) -> Receipt:
    """The standing receipt of the task, checked: its current owner's signature, the task, the
    quorum, and (once the leader fixed the level) that it is the fixed one."""
    if not rnd.in_range(level, a, b):
        raise ProtocolError(f"receipt: no task {level}/{a}/{b} in this round's grid")
    owner = rnd.owner(level, a, b)
    receipt = rnd.checker.open(envelope, Receipt, owner)
    if (receipt.run, receipt.round, receipt.attempt) != (rnd.run, rnd.round, rnd.attempt):
        raise ProtocolError("receipt: for another round or attempt")
    if (receipt.level, receipt.a, receipt.b) != (level, a, b):
        raise ProtocolError(f"receipt: for task {receipt.task}, not {level}/{a}/{b}")
    fixed = rnd.fixed.get(receipt.task)
    if fixed is not None and chunks.sha(envelope["body"]) != fixed:
        raise ProtocolError("receipt: not the one the leader fixed for the task")
    senders = len(rnd.senders(level, a, b))
    if sum(flags_of(receipt.included, senders)) < rnd.quorum(level, a, b):
        raise ProtocolError(f"receipt: includes fewer than {rnd.quorum(level, a, b)} of the task's {senders} inputs")
    return receipt


def input_digest(rnd: Round, receipt: Receipt, g: int, sender: str, item: Input) -> str:
    """The digest the sender (the task's g-th) vouched for this input (raises ProtocolError if
    it vouched for none). Level 2: the level-1 receipt of group g (one peer may stand in for
    two groups' owners, so its place, not its name, says which)."""
    if not isinstance(item, Input) or not isinstance(item.data, bytes) or not isinstance(item.envelope, dict):
        raise ProtocolError("an input must be an envelope and bytes")
    if receipt.level == 1:
        return committed_digest(rnd, sender, receipt.b, item.envelope)
    r1 = open_receipt(rnd, item.envelope, 1, g, receipt.a)
    if len(r1.outputs) != rnd.grid.n_groups:
        raise ProtocolError(f"level-1 receipt of {sender[:16]} has {len(r1.outputs)} parts")
    return r1.outputs[receipt.b]


def committed_digest(rnd: Round, sender: str, j: int, envelope: object) -> str:
    """The digest of chunk j in the sender's commitment to this round (checked field by field)."""
    c = rnd.checker.open(envelope, Commitment, sender)
    if (c.run, c.round, c.attempt) != (rnd.run, rnd.round, rnd.attempt) or len(c.chunks) != rnd.grid.chunks:
        raise ProtocolError(f"commitment of {sender[:16]}: another round, or {len(c.chunks)} chunks")
    return c.chunks[j]


def check_chunk(rnd: Round, sender: str, j: int, item: Input) -> torch.Tensor:
    """Chunk j as an owner accepts it: committed by its sender, and decodable. What an owner
    keeps is then exactly what its auditor will accept (raises ProtocolError)."""
    if chunks.sha(item.data) != committed_digest(rnd, sender, j, item.envelope):
        raise ProtocolError(f"chunk {j} of {sender[:16]} is not the one it committed to")
    return rnd.wire.decode_in(item.data, rnd.chunk(j))


def is_garble(rnd: Round, sender: str, j: int, commitment: object, note: object) -> bool:
    """Whether `sender` signed, for chunk j of this round, a note (ChunkNote) whose digest is not
    the one its commitment lists: its own two signed words disagree, so it sent a chunk that is
    not the one it committed to. Anyone checks it from the two envelopes alone (no piece)."""
    if not 0 <= j < rnd.grid.chunks:
        return False
    try:
        committed = committed_digest(rnd, sender, j, commitment)
        n = rnd.checker.open(note, ChunkNote, sender)
    except ProtocolError:
        return False
    return (n.run, n.round, n.attempt, n.chunk) == (rnd.run, rnd.round, rnd.attempt, j) and n.digest != committed


def sealed_chunks(rnd: Round, keys, update: torch.Tensor, *, base: str, tokens: int, garble=False) -> list[Input]:
    """A sender's chunks of its flat `update` as it sends them: each with its signed commitment to
    all of them and its signed note of that chunk. `garble`: a simulated sender's chunks are
    garbage, with notes of the garbage (its commitment stays the true one)."""
    data = [rnd.wire.encode_in(update[s.start : s.end], s) for s in map(rnd.chunk, range(rnd.grid.chunks))]
    fields = dict(run=rnd.run, round=rnd.round, attempt=rnd.attempt, peer=keys.peer)
    envelope = keys.seal(Commitment(**fields, base=base, tokens=tokens, chunks=tuple(map(chunks.sha, data))))
    data = [b"garbage" for _ in data] if garble else data
    return [
        Input(envelope, d, keys.seal(ChunkNote(**fields, chunk=j, digest=chunks.sha(d)))) for j, d in enumerate(data)
    ]


def check_input(rnd: Round, task: tuple, place: int, sender: str, item: Input) -> None:
    """An input of `task` from the sender at `place` as its owner keeps it: what its auditor will
    accept (level 1: check_chunk; level 2: the part its level-1 receipt lists). Raises ProtocolError."""
    level, a, b = task
    if level == 1:
        check_chunk(rnd, sender, b, item)
        return
    r1 = open_receipt(rnd, item.envelope, 1, place, a)
    if len(r1.outputs) != rnd.grid.n_groups or chunks.sha(item.data) != r1.outputs[b]:
        raise ProtocolError("a part that is not the one its receipt lists")
    rnd.decode_input(2, item.data, rnd.span(*task))


def checked_inputs(rnd: Round, receipt: Receipt, inputs: list[Input | None]) -> list[torch.Tensor]:
    """The decoded inputs, each proven to be what its sender signed, matching the receipt's
    inclusion map and inputs_root. Raises ProtocolError (then the inputs, not the owner's output,
    are at fault)."""
    senders = rnd.senders(receipt.level, receipt.a, receipt.b)
    flags = flags_of(receipt.included, len(senders))
    if len(inputs) != len(senders) or any(f != (i is not None) for f, i in zip(flags, inputs)):
        raise ProtocolError("inputs do not match the receipt's inclusion map")
    span, digests, pieces = rnd.span(receipt.level, receipt.a, receipt.b), [], []
    for g, (sender, item) in enumerate(zip(senders, inputs)):
        if item is None:
            continue
        digest = input_digest(rnd, receipt, g, sender, item)
        if chunks.sha(item.data) != digest:
            raise ProtocolError(f"input of {sender[:16]} is not the piece it signed")
        digests.append(digest)
        pieces.append(rnd.decode_input(receipt.level, item.data, span))
    if not pieces or inputs_root(digests) != receipt.inputs_root:
        raise ProtocolError("no inputs, or their digests do not hash to the receipt's inputs_root")
    return pieces


def outputs_of(rnd: Round, level: int, a: int, b: int, pieces: list[torch.Tensor], lied=()) -> list[bytes]:
    """The task's output pieces as the wire carries them: level 1, one per part of the chunk.
    `lied`: spans a simulated liar's result has negated and tenfold (answer_task)."""
    span = rnd.span(level, a, b)
    result = reduce_task(pieces, rnd.agg, rnd.wire, span)
    for s in lied:
        result[s.start - span.start : s.end - span.start] *= -10.0
    return [
        rnd.wire.encode_out(result[p.start - span.start : p.end - span.start], p, level)
        for p in rnd.output_spans(level, a, b)
    ]


def answer_task(rnd: Round, keys, task: tuple, inputs: list, *, lie: bool = False, lie_blocks: int = 0):
    """An owner's answer to `task` from the inputs it kept (None: left out, in the senders'
    order): its signed receipt and its output pieces. `keys` is the owner's (node/scatter/grid.py
    Keys). `lie`: a simulated liar's answer (its true result negated and tenfold, signed alike);
    with `lie_blocks`, only on the task's first that many blocks (Round.blocks)."""
    level, a, b = task
    span = rnd.span(*task)
    pieces = [rnd.decode_input(level, i.data, span) for i in inputs if i is not None]
    if not pieces:
        raise ProtocolError(f"task {task_name(task)}: its owner kept no inputs")
    lied = rnd.blocks(*task)[:lie_blocks] if lie and lie_blocks else ()
    outputs = outputs_of(rnd, level, a, b, pieces, lied)
    if lie and not lie_blocks:
        spans = rnd.output_spans(*task)
        outputs = [
            rnd.wire.encode_out(rnd.wire.decode_out(o, p, level) * -10.0, p, level) for o, p in zip(outputs, spans)
        ]
    receipt = Receipt(
        run=rnd.run,
        round=rnd.round,
        attempt=rnd.attempt,
        owner=keys.peer,
        level=level,
        a=a,
        b=b,
        included=bitmap([i is not None for i in inputs]),
        inputs_root=inputs_root([chunks.sha(i.data) for i in inputs if i is not None]),
        outputs=tuple(chunks.sha(o) for o in outputs),
    )
    return keys.seal(receipt), outputs


@dataclass(frozen=True)
class FraudProof:
    """'This signed receipt's outputs are not what these signed inputs give.'"""

    receipt: dict
    level: int
    a: int
    b: int
    inputs: tuple[Input | None, ...]


def audit(rnd: Round, envelope: dict, level: int, a: int, b: int, inputs: list[Input | None]) -> FraudProof | None:
    """Recompute the task; a fraud proof when the owner's outputs differ, else None. Raises
    ProtocolError when the receipt or the inputs the owner served do not check (then the owner
    withheld a proper answer: it is replaced, not banned, as nobody else can see what it sent)."""
    receipt = open_receipt(rnd, envelope, level, a, b)  # first: the task's range, then the envelope
    pieces = checked_inputs(rnd, receipt, inputs)
    outputs = tuple(chunks.sha(d) for d in outputs_of(rnd, level, a, b, pieces))
    return None if outputs == receipt.outputs else FraudProof(envelope, level, a, b, tuple(inputs))


def is_fraud(rnd: Round, proof: FraudProof) -> bool:
    """Whether `proof` shows its owner lied: checked from the signatures and recomputed, alone."""
    try:
        return audit(rnd, proof.receipt, proof.level, proof.a, proof.b, list(proof.inputs)) is not None
    except ProtocolError:
        return False


def is_equivocation(rnd: Round, signer: str, first: object, second: object, level: int, a: int, b: int) -> bool:
    """Whether two envelopes are different receipts `signer` signed for the same task of this
    round: a fraud proof on their own (one receipt per task and owner), from the signatures."""
    if not rnd.in_range(level, a, b):
        return False
    try:
        one, two = (rnd.checker.open(e, Receipt, signer) for e in (first, second))
    except ProtocolError:
        return False
    task = (rnd.run, rnd.round, rnd.attempt, level, a, b)
    return all((r.run, r.round, r.attempt, r.level, r.a, r.b) == task for r in (one, two)) and one != two


def audit_seed(grid_seed: str, receipts: str, leader_draw: bytes) -> str:
    """The seed auditors are dealt from: the round's seed, the fixed receipts' digest and the
    leader's unique signature of it (protocol/kinds/scatter.py draw_message). Nobody knew it before
    every receipt was fixed; the leader had one value to publish or withhold."""
    return hashlib.sha256(b"audit" + bytes.fromhex(grid_seed) + bytes.fromhex(receipts) + leader_draw).hexdigest()
