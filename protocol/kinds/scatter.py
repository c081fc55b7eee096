"""What crosses the wire in a v3 round (node/scatter): a sender's commitment, an owner's receipt,
and the messages that carry pieces and proofs. Each is a msgpack map; `from_wire` checks every
field (they come from other peers) and raises ProtocolError.

Messages, as the sentence a peer says (node/scatter/round.py sends them):
  CHUNK     'Here is chunk j of my update, and my signed commitment to all my chunks.'
  RESULT    'Here is part k of group g's result for chunk j, with my signed receipt.'   (level 2)
  FINAL     'Here is the final part k of chunk j, with its owner's signed receipt.'     (gather)
  INPUTS    'Here are the signed inputs of my task, for your audit.'
  FRAUD     'This receipt's output is not what its signed inputs give: check it yourself.'
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from protocol.errors import ProtocolError
from protocol.records import SHA256_RE, field, peer_id_field, round_field, run_field

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
