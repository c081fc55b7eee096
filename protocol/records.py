"""Schemas of the DHT records. Each record is a msgpack-able dict on the wire.

Records from the DHT were written by other peers, so `from_wire` checks every field's type
and range and raises ProtocolError; callers drop such records with a warning and go on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from dataclasses import field as attribute

from protocol.errors import ProtocolError
from protocol.fields import (
    MAX_TEXT,
    chained_header,
    count_field,
    envelope_list,
    field,
    finite_field,
    optional_field,
    peer_id_field,
    peer_list,
    round_field,
    run_field,
    seconds_field,
    sha256_field,
)
from protocol.kinds.sealed import evidence_fields
from protocol.signing import MAX_SIG

MAX_ROSTER = 4096  # more contributors than this in one round is not a real swarm
MAX_ATTEMPT = 2**16  # leader attempts of one round: at a minute each, more than a round ever waits
MAX_SKIP = 16  # candidates a roster may mark as passed over (3 ranks an attempt: 5 attempts and more)
MAX_UNSERVED = 64  # announcers a roster may list as not serving its leader
MAX_SEEN_LATE = 8  # announcements one announcement may report as left out of the last roster (design step 5)
SEEN_PREFIX = 8  # bytes of an announcement's body hash that name it in `seen_late`
CLAIM_ROUNDS = 4  # an announcement may claim its author's announcement of one of the 4 rounds before
MAX_FAILED = 4  # announcements a roster may list as failing admission (protocol/admission/rule.py NEWCOMERS)
CREDIT_UNITS = 64  # a roster credits an entry 0..64 sixty-fourths of a full round's (node/round/trust/credit.py)


GENESIS = "0" * 64  # `prev` of the first roster of a run


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """'I am alive, I work on round `round`, and my state after `state_round` has `digest`.'
    Stored signed (protocol/signed.py) under the run's peers key, subkey = `peer`."""

    peer: str
    name: str
    round: int
    state_round: int
    digest: str
    device: str
    maddrs: tuple[str, ...]
    time: float
    active: bool = True  # False while leaving: leaders then stop waiting for this peer's updates
    run: str = ""
    """The run this heartbeat belongs to: the signed body names its own DHT key."""
    step_s: float = 0.0  # seconds per inner step in this peer's last round (0: none): windows are sized by them
    exchange_s: float = 0.0  # seconds from announcing its last update to having that round (0: none)
    cp: tuple = ()
    """The organizer's witness only: (round, SHA-256 of the body) of its newest checkpoint
    (protocol/kinds/checkpoint.py; the `checkpoint` RPC serves the body). Empty: none."""
    work: tuple = ()
    """The admission proof this peer announces with, as Announcement.work (protocol 11): a joiner
    whose organizer is offline asks paid holders first (node/round/trust/catchup.py). Empty: none."""

    def to_wire(self) -> dict:
        out = {**asdict(self), "maddrs": list(self.maddrs), "cp": list(self.cp), "work": list(self.work)}
        return {k: v for k, v in out.items() if k not in ("cp", "work") or v}  # absent when empty: the v2 bytes

    @classmethod
    def from_wire(cls, d: object) -> Heartbeat:
        w = "heartbeat"
        maddrs = field(d, "maddrs", list, where=w)
        if len(maddrs) > 16 or not all(isinstance(m, str) and len(m) < MAX_TEXT for m in maddrs):
            raise ProtocolError(f"{w}: maddrs must be at most 16 strings")
        return cls(
            peer=peer_id_field(field(d, "peer", str, where=w), w),
            name=field(d, "name", str, where=w),
            round=round_field(field(d, "round", int, where=w), w),
            state_round=round_field(field(d, "state_round", int, where=w), w),
            digest=sha256_field(field(d, "digest", str, where=w), w),
            device=field(d, "device", str, where=w),
            maddrs=tuple(maddrs),
            time=finite_field(field(d, "time", float, where=w), "time", w),
            active=field(d, "active", bool, where=w),
            run=run_field(field(d, "run", str, where=w), w),
            step_s=seconds_field(d.get("step_s", 0.0), "step_s", w),  # absent: a peer that measured nothing yet
            exchange_s=seconds_field(d.get("exchange_s", 0.0), "exchange_s", w),
            cp=checkpoint_pointer(d.get("cp"), w),
            work=work_field(d, w),
        )


def checkpoint_pointer(value: object, where: str) -> tuple:
    """A heartbeat's `cp`: absent, or [round, SHA-256 hex]."""
    if value is None or value == []:
        return ()
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and isinstance(value[1], str)):
        raise ProtocolError(f"{where}: cp must be [round, sha256]")
    return round_field(value[0], where), sha256_field(value[1], where)


@dataclass(frozen=True, kw_only=True)
class Announcement:
    """'My update for round `round` of run `run` is `nbytes` long with SHA-256 `sha256`, made of
    `tokens` training tokens, and applies to state `base`; ask me (or anyone holding it) for
    it.' Signed by `peer`. `base` keeps an update trained on another state (the other half of a
    split swarm, whose rounds carry the same numbers) out of a roster."""

    run: str
    round: int
    peer: str
    nbytes: int
    sha256: str
    tokens: int
    base: str
    time: float
    work: tuple = ()
    """[epoch, 8-byte nonce, 8-byte stamp]: the author's admission proof (protocol/admission/work.py);
    () in a run without work, and then absent from the wire, so such announcements keep their bytes."""
    seen_late: tuple[bytes, ...] = ()
    """Announcements seen in time that the last roster left out, by body-hash prefix (node/round/trust/omission.py)."""
    claim: dict | None = attribute(default=None, hash=False)
    """The author's own signed announcement that an earlier roster left out (checked by protocol/signed.py)."""
    hidden: dict | None = attribute(default=None, hash=False)
    """Protocol 21-23: evidence about a seal the author released under (node/round/trust/sealed.py):
    the seal's signed head, the author's entry and its Merkle path (protocol/signed.py open_evidence)."""

    def to_wire(self) -> dict:
        d = asdict(self)
        for name in ("work", "seen_late"):
            d[name] = list(d[name])
            if not d[name]:
                del d[name]  # absent: the bytes of an announcement before the field
        return {k: v for k, v in d.items() if k not in ("claim", "hidden") or v is not None}

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int) -> Announcement:
        w = "announcement"
        nbytes = field(d, "nbytes", int, where=w)
        if not 0 < nbytes <= max_bytes:
            raise ProtocolError(f"{w}: update size {nbytes} outside (0, {max_bytes}]")
        return cls(
            run=run_field(field(d, "run", str, where=w), w),
            round=round_field(field(d, "round", int, where=w), w),
            peer=peer_id_field(field(d, "peer", str, where=w), w),
            nbytes=nbytes,
            sha256=sha256_field(field(d, "sha256", str, where=w), w),
            tokens=count_field(d, "tokens", w),
            base=sha256_field(field(d, "base", str, where=w), w),
            time=finite_field(field(d, "time", float, where=w), "time", w),
            work=work_field(d, w),
            **_omission_fields(d, w),
        )


def _omission_fields(d: dict, where: str) -> dict:
    """`seen_late` (distinct prefixes), `claim` (shaped as a signed announcement envelope, whose
    signature, author and round protocol/signed.py checks) and `hidden` (evidence about a seal, its
    shape checked here and its signature and path there): all optional."""
    late, claim, hidden = (
        optional_field(d, "seen_late", list, [], where=where),
        optional_field(d, "claim", dict, None, where=where),
        optional_field(d, "hidden", dict, None, where=where),
    )
    if len(late) > MAX_SEEN_LATE or not all(type(x) is bytes and len(x) == SEEN_PREFIX for x in late):
        raise ProtocolError(f"{where}: seen_late must be at most {MAX_SEEN_LATE} {SEEN_PREFIX}-byte prefixes")
    if len(set(late)) != len(late):
        raise ProtocolError(f"{where}: seen_late repeats a prefix")
    if claim is not None and (
        claim.get("kind") != "announcement" or not all(type(claim.get(k)) is bytes for k in ("body", "key", "sig"))
    ):
        raise ProtocolError(f"{where}: claim must be a signed announcement envelope")
    if hidden is not None:
        evidence_fields(hidden)
    return {"seen_late": tuple(late), "claim": claim, "hidden": hidden}


def work_field(d: dict, where: str) -> tuple:
    """An announcement's optional `work`: () when absent, else (epoch, nonce, stamp), 8 bytes each."""
    work = optional_field(d, "work", list, [], where=where)
    if not work:
        return ()
    if len(work) != 3 or type(work[0]) is not int or not 0 <= work[0] < 2**32:
        raise ProtocolError(f"{where}: work must be [epoch, nonce, stamp]")
    for name, value in (("nonce", work[1]), ("stamp", work[2])):
        if not isinstance(value, bytes) or len(value) != 8:
            raise ProtocolError(f"{where}: a work {name} is 8 bytes")
    return (work[0], work[1], work[2])


@dataclass(frozen=True, kw_only=True)
class Roster:
    """'Round `round` is made of exactly these signed announcements, reduced in this order; it
    starts from state `base`, ends at state `result`, and follows the roster whose body hashes
    to `prev`.' Written and signed by the round's leader; rosters chain into the run's ledger.

    `entries` are the announcements' signed envelopes as their authors signed them (checked by
    protocol/signed.py: open_roster); `scores` are the leader's loss-change scores, one per entry
    in entry order (empty unless the run scores updates).

    `reveal` (the leader's sign_unique of the round), `beacon` (hex: what the round was ranked
    under) and `attempt` place it in the election (node/round/election.py). They are additive:
    from_wire reads named keys only, and reads their defaults, which no election accepts.

    `failed` (the signed announcements of newcomers whose stamped admission proof failed the
    leader's check, protocol/admission/rule.py) is additive too, and left off the wire when empty.

    `skip` (candidates ranked ahead of the leader whose rosters never came: design step 8's
    skip marks) and `unserved` (announcers whose update the leader could not fetch) are
    additive too, and left off the wire when empty: a roster without them is byte for byte
    what an older peer signs."""

    run: str
    round: int
    leader: str
    prev: str
    base: str
    result: str
    time: float
    entries: tuple[dict, ...]
    scores: tuple[tuple[str, float], ...] = ()
    reveal: bytes = b""
    beacon: str = ""
    attempt: int = 0
    skip: tuple[str, ...] = ()
    unserved: tuple[str, ...] = ()
    checkpoint: dict | None = None
    """The organizer's newest checkpoint envelope (protocol/kinds/checkpoint.py), carried for a few
    rounds after its round; checked by node/round/trust/anchor.py, not here (it needs the organizer)."""
    full: str = ""
    """SHA-256 of the parameters and outer buffers after the round (SwarmState.full_digest): what a
    state taken from a donor must reproduce, and what every peer that applies the roster checks.
    Additive, left off the wire when empty (a roster before it, or hooks that know no buffers)."""
    caught: tuple[tuple[str, str], ...] = ()
    """A v3 round's owners caught lying, each with the SHA-256 of its fraud proof (the verdict the
    leader convicted on): the chain bans them (node/round/ledger.py caught). v3's outcome fields
    (caught, passed, finals) are additive and left off the wire when empty."""
    passed: tuple[str, ...] = ()
    """A v3 round's owners passed over (withheld: their task went to a backup), in order."""
    finals: bytes = b""
    """A v3 round's final parts' SHA-256 digests (32 bytes each, in task order): every member
    checks the ones it gathered against them."""
    cutoff: float = 0.0
    """The leader's time after its last read of announcements: at least the chain's floor, at most
    `time` (node/round/trust/omission.py). Left off the wire when 0 (the floor check refuses it)."""
    failed: tuple[dict, ...] = ()
    """At most MAX_FAILED signed announcements of this round whose stamped admission proof failed the
    leader's check: a chain fact every leader skips for the epoch, and every reader checks (one
    scrypt evaluation each: protocol/admission/rule.py). Shaped here, opened there."""
    credit: tuple[int, ...] = ()
    """Each entry's credit, in entry order, in 1/CREDIT_UNITS of a full round's: what establishment
    counts (node/round/trust/credit.py). The leader writes it; every peer that applies the roster
    recomputes it from the updates. Left off the wire when empty (no entry is credited then)."""
    seals: tuple[dict, ...] = ()
    """Protocol 18: the leader's signed seals (protocol/kinds/sealed.py), in order: seals[0] fixed the
    announcements that may earn credit before any payload was fetched. Empty in v3 rounds."""
    receipts: tuple[dict, ...] = ()
    """Protocol 18: the owners' signed receipts of the updates released under seals[0]. Both are
    checked by node/round/trust/sealed.py and left off the wire when empty."""

    def to_wire(self) -> dict:
        d = {**asdict(self), "entries": list(self.entries), "scores": [list(s) for s in self.scores]}
        for name in ("skip", "unserved"):
            d[name] = list(d[name])
            if not d[name]:
                del d[name]
        if self.checkpoint is None:
            del d["checkpoint"]  # absent: the bytes of a roster before checkpoints
        d["caught"], d["passed"], d["failed"] = [list(c) for c in self.caught], list(self.passed), list(self.failed)
        d["credit"], d["seals"], d["receipts"] = list(self.credit), list(self.seals), list(self.receipts)
        for name in ("full", "cutoff", "caught", "passed", "finals", "failed", "credit", "seals", "receipts"):
            if not d[name]:
                del d[name]  # absent: the bytes of a roster before the field
        return d

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int = 0) -> Roster:
        w = "roster"
        raw = field(d, "entries", list, where=w)
        if not 0 < len(raw) <= MAX_ROSTER or not all(isinstance(e, dict) for e in raw):
            raise ProtocolError(f"{w}: entries must be 1..{MAX_ROSTER} signed announcements")
        scores = field(d, "scores", list, where=w)
        if len(scores) > MAX_ROSTER or not all(
            isinstance(x, list)
            and len(x) == 2
            and isinstance(x[0], str)
            and isinstance(x[1], (int, float))
            and not isinstance(x[1], bool)
            for x in scores
        ):
            raise ProtocolError(f"{w}: scores must be [peer, number] pairs")
        reveal, beacon = optional_field(d, "reveal", bytes, b"", where=w), optional_field(d, "beacon", str, "", where=w)
        attempt = optional_field(d, "attempt", int, 0, where=w)
        if len(reveal) > MAX_SIG or not 0 <= attempt <= MAX_ATTEMPT:
            raise ProtocolError(f"{w}: a reveal of {len(reveal)} bytes or attempt {attempt} is out of range")
        skip, unserved = peer_list(d, "skip", MAX_SKIP, w), peer_list(d, "unserved", MAX_UNSERVED, w)
        full = optional_field(d, "full", str, "", where=w)
        caught, finals = (
            optional_field(d, "caught", list, [], where=w),
            optional_field(d, "finals", bytes, b"", where=w),
        )
        if len(caught) > MAX_ROSTER or not all(isinstance(c, list) and len(c) == 2 for c in caught):
            raise ProtocolError(f"{w}: caught must be [peer, proof sha256] pairs")
        if len(finals) % 32 or len(finals) > 32 * MAX_ROSTER * 8:
            raise ProtocolError(f"{w}: finals must be 32-byte digests")
        credit = optional_field(d, "credit", list, [], where=w)
        if credit and (
            len(credit) != len(raw)
            or not all(type(c) is int and 0 <= c <= CREDIT_UNITS for c in credit)  # bool is no int here
        ):
            raise ProtocolError(f"{w}: credit must be one integer 0..{CREDIT_UNITS} per entry")
        return cls(
            **chained_header(d, w),
            result=sha256_field(field(d, "result", str, where=w), w),
            entries=tuple(raw),
            scores=tuple((peer_id_field(p, w), finite_field(float(v), "scores", w)) for p, v in scores),
            reveal=reveal,
            beacon=beacon and sha256_field(beacon, w),
            attempt=attempt,
            skip=skip,
            unserved=unserved,
            checkpoint=optional_field(d, "checkpoint", dict, None, where=w),
            full=full and sha256_field(full, w),
            caught=tuple((peer_id_field(str(p), w), sha256_field(str(h), w)) for p, h in caught),
            passed=peer_list(d, "passed", MAX_ROSTER, w),
            finals=finals,
            cutoff=finite_field(optional_field(d, "cutoff", float, 0.0, where=w), "cutoff", w),
            failed=envelope_list(d, "failed", "announcement", MAX_FAILED, w),
            credit=tuple(credit),
            seals=envelope_list(d, "seals", "seal", 2, w),  # protocol/kinds/sealed.py MAX_SEALS
            receipts=envelope_list(d, "receipts", "receipt", MAX_ROSTER, w),
        )


def canonical_json(obj: object) -> bytes:
    """The bytes that get hashed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_hash(manifest: dict) -> str:
    """SHA-256 hex of a manifest's canonical JSON; the tail of the run id."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def run_id_of(manifest: dict) -> str:
    """'<name>-<first 12 hex of the manifest hash>', e.g. 'demo-3f2a9c01b7de'."""
    return f"{manifest['name']}-{manifest_hash(manifest)[:12]}"
