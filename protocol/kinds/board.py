"""The leader's board in a v3 round (node/scatter/leader.py publishes it, every member polls it
with op `board` and applies it alike): its own module beside protocol/kinds/scatter.py's records
and messages."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import msgpack

from protocol.errors import ProtocolError
from protocol.fields import SHA256_RE, field, peer_id_field
from protocol.kinds.scatter import LEVELS, MAX_GROUP, MAX_TAG, task_name, task_of


def _digest_or_empty(value: str, where: str) -> str:
    if value and not SHA256_RE.match(value):
        raise ProtocolError(f"{where}: digest is not a SHA-256 digest")
    return value


@dataclass(frozen=True, kw_only=True)
class Board:
    """The leader's word on one level, version by version: 'These tasks changed hands (`replaced`:
    task -> owners passed over), these owners were caught lying, these receipts stand (`fixed`:
    task -> SHA-256 of the body, `signers`: who signed it), and I signed their digest uniquely
    (`draw`, over `digest`). Now: collect (owners answer), audit (`count` auditors a task under draw `tag`), or
    done.' Every member applies it to its Round alike. `proofs` pins each caught owner's conviction:
    owner -> (task name, SHA-256 of the verdict Message it fell by), which the leader serves
    (op `proof`) and each member checks before it takes the board (node/scatter/leader.py proves).
    `asked` and `silent` (protocol 13): the senders owners named missing, and those that stayed so."""

    level: int
    version: int
    stage: str
    replaced: dict
    caught: tuple[str, ...]
    fixed: dict
    signers: dict
    digest: str = ""
    """The set_digest of the level's receipts as first fixed: what `draw` signs."""
    draw: bytes = b""
    tag: str = ""
    count: int = 0
    proofs: dict = dataclasses.field(default_factory=dict)
    """Caught owner -> (task name, SHA-256 of the verdict that convicted it): one per `caught`."""
    asked: dict = dataclasses.field(default_factory=dict)
    """Task name -> the places of its group whose senders its owner named missing (op `missing`):
    each hands the leader its chunk (op `here`) or is `silent`. The level's claims, all kept."""
    silent: tuple[str, ...] = ()
    """Senders asked that gave the leader nothing that checks within a phase: they count toward no
    quorum in the round (not banned: nobody else can tell silence from a lost link)."""

    STAGES = ("collect", "audit", "done")

    def encode(self) -> bytes:
        proofs = {p: list(v) for p, v in self.proofs.items()}
        asked = {t: list(v) for t, v in self.asked.items()}
        wire = {**asdict(self), "caught": list(self.caught), "proofs": proofs, "asked": asked}
        wire["silent"] = list(self.silent)
        return msgpack.packb(wire, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Board:
        w = "scatter board"
        try:
            d = msgpack.unpackb(data, raw=False, strict_map_key=True, max_array_len=MAX_GROUP, max_map_len=1 << 20)
        except Exception as e:
            raise ProtocolError(f"{w}: not msgpack ({type(e).__name__})") from None
        stage, level = field(d, "stage", str, where=w), field(d, "level", int, where=w)
        if stage not in cls.STAGES or level not in LEVELS:
            raise ProtocolError(f"{w}: stage {stage[:20]!r} or level {level}")
        replaced, fixed, signers = (field(d, k, dict, where=w) for k in ("replaced", "fixed", "signers"))
        if not all(isinstance(k, str) and isinstance(v, int) and 0 < v <= MAX_GROUP for k, v in replaced.items()):
            raise ProtocolError(f"{w}: replaced must map tasks to counts")
        if not all(isinstance(k, str) and isinstance(v, str) and SHA256_RE.match(v) for k, v in fixed.items()):
            raise ProtocolError(f"{w}: fixed must map tasks to SHA-256 digests")
        if set(signers) != set(fixed) or not all(isinstance(v, str) for v in signers.values()):
            raise ProtocolError(f"{w}: signers must name a signer for each fixed task")
        caught = tuple(peer_id_field(p, w) for p in field(d, "caught", list, where=w) if isinstance(p, str))
        proofs = field(d, "proofs", dict, where=w)
        if set(proofs) != set(caught) or not all(isinstance(v, list) and len(v) == 2 for v in proofs.values()):
            raise ProtocolError(f"{w}: proofs must pin [task, sha256] for each caught owner, and no other")
        if not all(isinstance(h, str) and SHA256_RE.match(h) for _, h in proofs.values()):
            raise ProtocolError(f"{w}: a proof's digest is not a SHA-256 digest")
        asked = field(d, "asked", dict, where=w)
        places = (isinstance(v, list) and 0 < len(v) <= MAX_GROUP and v for v in asked.values())
        if not all(p and all(isinstance(i, int) and 0 <= i < MAX_GROUP for i in p) for p in places):
            raise ProtocolError(f"{w}: asked must map tasks to places")
        silent = tuple(peer_id_field(p, w) for p in field(d, "silent", list, where=w) if isinstance(p, str))
        return cls(
            level=level,
            version=field(d, "version", int, where=w),
            stage=stage,
            replaced=replaced,
            caught=caught,
            fixed=fixed,
            signers={k: peer_id_field(v, w) for k, v in signers.items()},
            digest=_digest_or_empty(field(d, "digest", str, where=w), w),
            draw=field(d, "draw", bytes, where=w),
            tag=field(d, "tag", str, where=w)[:MAX_TAG],
            count=field(d, "count", int, where=w),
            proofs={p: (task_name(task_of(t)), h) for p, (t, h) in proofs.items()},
            asked={task_name(task_of(t)): tuple(v) for t, v in asked.items()},
            silent=silent,
        )
