"""What crosses the wire in a v3 round (node/scatter): a sender's commitment, an owner's receipt,
and the messages that carry pieces and proofs. Each is a msgpack map; `from_wire` checks every
field (they come from other peers) and raises ProtocolError.

Messages (`Message`, one RPC each; node/scatter/member.py sends and serves them), as the sentence
the caller says. Every one is dialled by the peer that has something to give or to ask, so a
member behind NAT only dials out: senders dial owners, never the other way.
  chunk     'Here is chunk b of my update, my signed commitment to all my chunks, and my signed
            note of this chunk's SHA-256.'                                               (to owner 1/a/b)
  part      'Here is part b of group `index`'s result for chunk a, with my signed receipt.' (to owner 2/a/b)
  receipt   'Here is my signed receipt for the task I own.'                              (to the leader)
  board     'What stands for level `level`, newer than version `index`?' (long poll; answer: board.py Board)
  inputs    'Send me your task's signed inputs and receipt, for my audit.'               (to its owner)
  verdict   'I audited this task: it checks (index 0), or here is the fraud proof.'      (to the leader)
  final     'Send me your final part, with your receipt.'                                (to owner 2/a/b)
  garble    'The sender at place `index` of group a sent me a chunk b whose signed note is not its
            commitment's: here are both (envelope, note).'                               (to the leader)
  proof     'Send me the verdict with SHA-256 `data` that convicted this task's owner.' (to the leader;
            answer: that verdict's or garble's Message bytes, which the board's `proofs` pins)
  missing   'I own task a/b and lack the inputs of the senders at the places `data` marks (a bitmap,
            protocol 13): ask them.'                        (to the leader; once per task and owner)
  here      'The board asks me (place `index` of group a) for chunk b: here it is, with my commitment
            and note.'                             (to the leader, which forwards it to the owner)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

import msgpack

from protocol.errors import ProtocolError
from protocol.fields import SHA256_RE, field, peer_id_field, round_field, run_field

MAX_CHUNKS = 1024  # chunks of one update; the grid uses at most GROUP_MAX (128)
MAX_GROUP = 4096  # members of a group or groups in a column: at most the roster cap
LEVELS = (1, 2)


def _hashes(raw: object, most: int, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not 0 < len(raw) <= most:
        raise ProtocolError(f"{where}: expected 1..{most} SHA-256 digests")
    if not all(isinstance(h, str) and SHA256_RE.match(h) for h in raw):
        raise ProtocolError(f"{where}: not a list of lowercase SHA-256 hex digests")
    return tuple(raw)


@dataclass(frozen=True, kw_only=True)
class Commitment:
    """'For attempt `attempt` of round `round` of run `run`, my update on state `base`, made of
    `tokens` tokens, is cut into chunks with these SHA-256s.' Signed by `peer`; it travels with
    every chunk, so an owner holds signed proof of each input it reduced."""

    run: str
    round: int
    attempt: int
    peer: str
    base: str
    tokens: int
    chunks: tuple[str, ...]

    def to_wire(self) -> dict:
        return {**asdict(self), "chunks": list(self.chunks)}

    @classmethod
    def from_wire(cls, d: object) -> Commitment:
        w = "commitment"
        tokens, attempt = field(d, "tokens", int, where=w), field(d, "attempt", int, where=w)
        if not 0 <= tokens <= 2**40 or not 0 <= attempt <= 2**16:
            raise ProtocolError(f"{w}: tokens {tokens} or attempt {attempt} out of range")
        base = field(d, "base", str, where=w)
        if not SHA256_RE.match(base):
            raise ProtocolError(f"{w}: base is not a SHA-256 digest")
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            attempt=attempt,
            peer=peer_id_field(field(d, "peer", str, where=w), w),
            base=base,
            tokens=tokens,
            chunks=_hashes(field(d, "chunks", list, where=w), MAX_CHUNKS, w),
        )


@dataclass(frozen=True, kw_only=True)
class ChunkNote:
    """'Chunk `chunk` of my update for attempt `attempt` of round `round` of run `run` has SHA-256
    `digest`.' Signed by `peer`; it travels with the chunk. A note whose digest is not the one the
    same peer's commitment lists for the chunk is its own signed word against itself: the owner
    holds a proof that the sender sent garbage (node/scatter/audit.py is_garble), not a claim."""

    run: str
    round: int
    attempt: int
    peer: str
    chunk: int
    digest: str

    def to_wire(self) -> dict:
        return asdict(self)

    @classmethod
    def from_wire(cls, d: object) -> ChunkNote:
        w = "chunk note"
        chunk, attempt, digest = (
            field(d, "chunk", int, where=w),
            field(d, "attempt", int, where=w),
            field(d, "digest", str, where=w),
        )
        if not 0 <= chunk < MAX_CHUNKS or not 0 <= attempt <= 2**16 or not SHA256_RE.match(digest):
            raise ProtocolError(f"{w}: chunk {chunk}, attempt {attempt} or digest out of range")
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            attempt=attempt,
            peer=peer_id_field(field(d, "peer", str, where=w), w),
            chunk=chunk,
            digest=digest,
        )


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """'As owner of task (`level`, `a`, `b`) of attempt `attempt` of round `round`, I reduced with
    the run's rule exactly the inputs marked in `included`, whose digests in order hash to
    `inputs_root`; my output's parts have these SHA-256s.' Signed by `owner`.

    Level 1: a = group, b = chunk; inputs are the group members' chunk b (grid order), the output
    one part per group. Level 2: a = chunk, b = part; inputs are part b of every group's level-1
    result of chunk a (group order), the output one part. One receipt per task and owner: the
    leader fixes the set (`set_digest`), and two different receipts an owner signed for one task
    are a proof of fraud on their own."""

    run: str
    round: int
    attempt: int
    owner: str
    level: int
    a: int
    b: int
    included: bytes
    inputs_root: str
    outputs: tuple[str, ...]

    @property
    def task(self) -> str:
        return task_name((self.level, self.a, self.b))

    def to_wire(self) -> dict:
        return {**asdict(self), "outputs": list(self.outputs)}

    @classmethod
    def from_wire(cls, d: object) -> Receipt:
        w = "receipt"
        level, a, b = (field(d, k, int, where=w) for k in ("level", "a", "b"))
        attempt = field(d, "attempt", int, where=w)
        if level not in LEVELS or not 0 <= a < MAX_GROUP or not 0 <= b < MAX_GROUP or not 0 <= attempt <= 2**16:
            raise ProtocolError(f"{w}: task {level}/{a}/{b} or attempt {attempt} out of range")
        included = field(d, "included", bytes, where=w)
        if not 0 < len(included) <= MAX_GROUP // 8:
            raise ProtocolError(f"{w}: inclusion map of {len(included)} bytes")
        root = field(d, "inputs_root", str, where=w)
        if not SHA256_RE.match(root):
            raise ProtocolError(f"{w}: inputs_root is not a SHA-256 digest")
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            attempt=attempt,
            owner=peer_id_field(field(d, "owner", str, where=w), w),
            level=level,
            a=a,
            b=b,
            included=included,
            inputs_root=root,
            outputs=_hashes(field(d, "outputs", list, where=w), MAX_GROUP, w),
        )


def task_name(task: tuple[int, int, int]) -> str:
    """'level/a/b': how records, draws and the leader's fixed list name a task (level, a, b)."""
    return "/".join(map(str, task))


TASK_RE = re.compile(r"^([12])/([0-9]{1,4})/([0-9]{1,4})\Z")  # one spelling: no final newline, no non-ASCII digits


def task_of(name: object) -> tuple[int, int, int]:
    """The task a task_name names (raises ProtocolError)."""
    m = TASK_RE.match(name) if isinstance(name, str) else None
    if m is None or max(int(m[2]), int(m[3])) >= MAX_GROUP:
        raise ProtocolError(f"not a task name: {str(name)[:20]!r}")
    return int(m[1]), int(m[2]), int(m[3])


def bitmap(flags: list[bool]) -> bytes:
    """`flags` packed 8 to a byte, first flag in the lowest bit."""
    out = bytearray(-(-len(flags) // 8) or 1)
    for i, f in enumerate(flags):
        if f:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def flags_of(data: bytes, n: int) -> list[bool]:
    if len(data) != (-(-n // 8) or 1):
        raise ProtocolError(f"inclusion map of {len(data)} bytes for {n} inputs")
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(n)]


def set_digest(receipts: dict[str, str]) -> str:
    """The digest of a level's fixed receipts (task name -> SHA-256 of the receipt's body)."""
    return hashlib.sha256("".join(f"{t}={h};" for t, h in sorted(receipts.items())).encode()).hexdigest()


def draw_message(run: str, round_no: int, attempt: int, level: int, receipts: str) -> bytes:
    """What the leader signs (sign_unique: one signature per key and message) once a level's
    receipts are fixed (`receipts` = set_digest): the audit seed hashes it, so nobody knew the
    auditors before every receipt was irrevocable, and the leader cannot try variants of it."""
    return f"swarmtrain-scatter-audit|{run}|{round_no}|{attempt}|{level}|{receipts}".encode()


OPS = ("chunk", "part", "receipt", "board", "inputs", "verdict", "final", "proof", "garble", "missing", "here")
MAX_PIECE = 1 << 30  # bytes of one piece: a 1B-parameter update's chunk is about 125 MB / sqrt(N)
MAX_TAG = 16


def _inputs(raw: object, where: str) -> tuple:
    if not isinstance(raw, list) or len(raw) > MAX_GROUP:
        raise ProtocolError(f"{where}: inputs must be a list of at most {MAX_GROUP}")
    out = []
    for item in raw:
        if item is not None and not (
            isinstance(item, list) and len(item) == 2 and isinstance(item[0], dict) and isinstance(item[1], bytes)
        ):
            raise ProtocolError(f"{where}: an input is [envelope, bytes] or nil")
        out.append(None if item is None else (item[0], item[1]))
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class Message:
    """One v3 request or its answer (see the module docstring for what each `op` says). `level`,
    `a`, `b` name the task; `index` is the sender's place (part), the version seen (board) or 1
    for a fraud proof (verdict); `tag` the audit draw ('' or '/again'); `envelope` a commitment or
    a receipt; `data` a piece (proof: the verdict's SHA-256; missing: a bitmap of places);
    `inputs` a task's signed inputs, (envelope, bytes) or None each; `note` a sender's signed
    ChunkNote (chunk, garble, here)."""

    op: str
    run: str
    round: int
    attempt: int
    level: int = 1
    a: int = 0
    b: int = 0
    index: int = 0
    tag: str = ""
    envelope: dict | None = None
    data: bytes = b""
    inputs: tuple = ()
    note: dict | None = None

    @property
    def task(self) -> tuple[int, int, int]:
        return (self.level, self.a, self.b)

    def data_bytes(self) -> int:
        """Bytes of pieces it carries (the rest is records: what bench scale counts apart)."""
        return len(self.data) + sum(len(i[1]) for i in self.inputs if i is not None)

    def encode(self) -> bytes:
        wire = {**asdict(self), "inputs": [None if i is None else list(i) for i in self.inputs]}
        return msgpack.packb(wire, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Message:
        w = "scatter message"
        try:
            d = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=MAX_GROUP, max_map_len=64)
        except Exception as e:  # msgpack raises several types for garbage
            raise ProtocolError(f"{w}: not msgpack ({type(e).__name__})") from None
        op = field(d, "op", str, where=w)
        level, a, b, index = (field(d, k, int, where=w) for k in ("level", "a", "b", "index"))
        attempt, tag = field(d, "attempt", int, where=w), field(d, "tag", str, where=w)
        if op not in OPS or level not in LEVELS or not 0 <= min(a, b, index) <= max(a, b) < MAX_GROUP:
            raise ProtocolError(f"{w}: op {op[:20]!r} or task {level}/{a}/{b} out of range")
        if not 0 <= attempt <= 2**16 or len(tag) > MAX_TAG or not 0 <= index <= 2**40:
            raise ProtocolError(f"{w}: attempt {attempt}, index {index} or tag out of range")
        envelope, note = d.get("envelope"), d.get("note")
        if not all(e is None or isinstance(e, dict) for e in (envelope, note)):
            raise ProtocolError(f"{w}: envelope and note must be maps or nil")
        body = field(d, "data", bytes, where=w)
        if len(body) > MAX_PIECE:
            raise ProtocolError(f"{w}: a piece of {len(body)} bytes")
        return cls(
            op=op,
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            attempt=attempt,
            level=level,
            a=a,
            b=b,
            index=index,
            tag=tag,
            envelope=envelope,
            data=body,
            inputs=_inputs(field(d, "inputs", list, where=w), w),
            note=note,
        )
