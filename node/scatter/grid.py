"""Who does what in a v3 round: groups, chunk owners, their backups, and auditors; how they sign (Keys, Checker).

Every peer derives the same grid from the round's members, which of them are reachable, and the
round's beacon (node/round/election.py: no participant can grind it), so no leader chooses it.

  groups   about G = sqrt(N) (clamped to [GROUP_MIN, GROUP_MAX]) members each, dealt in the
           beacon's order: reachable peers first, round-robin, so every group gets owners;
           then the rest. A new beacon every round: colluders cannot camp in one group.
  level 1  an update is cut into C chunks, C = the size of the smallest group (about G); in group
           g, chunk j goes to owners[g][j mod R], one of the group's R reachable members (a member
           behind NAT never owns: nobody could dial it; with few reachable, each owns several).
  level 2  column j = the level-1 owners of chunk j, one per group; part k of chunk j (one of
           n_groups parts) is reduced by column j's k-th owner across the groups' results (the
           current one: node/scatter/audit.py Round.owner).
  backups  when an owner withholds, the task moves to the next reachable member of its group in
           the beacon order, then to other groups' (`owner_of(..., skip=k)`).
  auditors dealt to tasks in the order of a seed known only after every receipt is signed
           (node/scatter/audit.py: audit_seed), any member but the owner, about `count` audits
           per member and level.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Protocol

import msgpack

from node.config import SwarmConfig
from protocol import signing
from protocol.errors import ProtocolError
from protocol.kinds.scatter import ChunkNote, Commitment, Receipt

SCATTER_MIN_PEERS = SwarmConfig.scatter_min_peers
AUDITORS = 1
"""Auditors dealt to each task before any conviction. One keeps a peer's bytes within 4x one
update (3.0-3.1x; two cost 4.0-4.4x, three 5.0-5.6x: docs/benchmarks.md, `bench scale`); a lie
then survives when its auditor colludes (about the colluding fraction f of the members), and
with 20% colluders no count within 4x holds corrupted rounds under 1% in the steady state
(docs/security.md, v3: what it tolerates)."""
ESCALATE = 3
"""More auditors for every task of a level once a liar is convicted in it (its fellows may be
lying too): a lie then survives with about f^4."""
"""Members from which a round uses the reduce-scatter; below, every peer fetches every update
(verify-all, v2): at N = 16 verify-all moves 15 updates per peer, the reduce-scatter about 3.5."""
GROUP_MIN, GROUP_MAX = 4, 128


def uses_scatter(members: int, min_peers: int = SCATTER_MIN_PEERS) -> bool:
    """Whether a round of `members` contributors runs the reduce-scatter: a function of the roster
    alone, so every peer decides alike. min_peers 0 turns the reduce-scatter off."""
    return min_peers > 0 and members >= min_peers


DENSE_WIRES = ("int8", "float16", "float32")
"""Wire formats of diloco updates that v3 carries as int8 chunks: dense, one value a coordinate."""


def scatter_threshold(min_peers: int, strategy: str, wire_dtype: str, wire_share: int = 1) -> int:
    """The run's [swarm] scatter_min_peers as its rounds use it: 0 (always verify-all) unless v3
    carries the strategy's updates at about their own size (node/scatter/chunks.py wire_for):
    diloco on a DENSE_WIRES wire (int8 chunks) or on int1 with one sign a value (SignWire), or
    sparseloco (top-k without DCT: SparseWire). int4/int2 or shared signs would cost 2-16x their
    bytes as int8 chunks, and decoupled momentum's sign vote is not carried: those keep
    verify-all. A function of the run's settings, so every peer decides alike."""
    signs = wire_dtype == "int1" and wire_share == 1
    diloco = strategy == "diloco" and (wire_dtype in DENSE_WIRES or signs)
    return min_peers if diloco or strategy == "sparseloco" else 0


def group_size(members: int) -> int:
    return max(GROUP_MIN, min(GROUP_MAX, round(math.sqrt(members))))


def draw_key(seed: str, tag: str, peer: str) -> bytes:
    """A peer's place in one beacon-ordered list (`tag` names the list)."""
    return hashlib.sha256(bytes.fromhex(seed) + tag.encode() + b"\0" + peer.encode()).digest()


@dataclass(frozen=True)
class Grid:
    """One round's placement (see the module docstring)."""

    seed: str
    """SHA-256 hex of (beacon, attempt): what every draw of this round hashes."""
    groups: tuple[tuple[str, ...], ...]
    """Members of each group, in the beacon's order."""
    owners: tuple[tuple[str, ...], ...]
    """owners[g]: group g's reachable members in the beacon's owner order (owners_of)."""
    chunks: int
    """C: chunks an update is cut into (level-1 tasks per group)."""

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def group_of(self, peer: str) -> int:
        return next(g for g, members in enumerate(self.groups) if peer in members)

    def owner_of(self, group: int, chunk: int, skip: int = 0) -> str:
        """Level-1 owner of `chunk` in `group`; skip=k: the k-th backup (after k were replaced):
        the group's other reachable members first, then other groups' (so a group whose owners
        all withhold cannot fail the round)."""
        reach = self.owners[group]
        if skip < len(reach):
            return reach[(chunk + skip) % len(reach)]
        others = [p for g in range(self.n_groups) if g != group for p in self.owners[g]]
        return others[(chunk + skip - len(reach)) % len(others)] if others else reach[chunk % len(reach)]

    def column(self, chunk: int) -> tuple[str, ...]:
        """Level-1 owners of `chunk`, one per group (group order)."""
        return tuple(self.owner_of(g, chunk) for g in range(self.n_groups))

    def owned_by(self, peer: str) -> list[tuple[int, int]]:
        """Level-1 tasks (group, chunk) this peer owns."""
        return [(g, j) for g in range(self.n_groups) for j in range(self.chunks) if self.owner_of(g, j) == peer]

    def members(self) -> list[str]:
        return [p for group in self.groups for p in group]


STRIKE_ROUNDS = 20
"""Rounds an owner that withheld (or kept its parts) owns nothing: it still sends its update, as
a member behind NAT does, but cannot cost a round a phase again soon (its strike is in the round's
record, which every peer holds alike)."""


def may_own(reachable: set[str], strikes: dict[str, int], round_no: int) -> set[str]:
    """The reachable members that may own chunks in round `round_no`: those without a strike
    (peer -> the round it withheld) in the last STRIKE_ROUNDS rounds."""
    return {p for p in reachable if not 0 <= round_no - strikes.get(p, -STRIKE_ROUNDS - 1) <= STRIKE_ROUNDS}


def round_seed(beacon: str, attempt: int) -> str:
    return hashlib.sha256(b"scatter" + bytes.fromhex(beacon) + int(attempt).to_bytes(8, "big")).hexdigest()


def place(members: list[str], reachable: set[str], beacon: str, attempt: int = 0) -> Grid:
    """The grid of a round of `members` (any order: they are sorted by the draw) under `beacon`.
    Raises ValueError when nobody is reachable: no one could own a chunk."""
    peers = sorted(set(members))
    reach = [p for p in peers if p in reachable]
    if not reach:
        raise ValueError("no member is reachable: nobody can own a chunk (the round needs verify-all)")
    seed = round_seed(beacon, attempt)
    g = group_size(len(peers))
    n_groups = max(1, min(-(-len(peers) // g), len(reach)))
    groups: list[list[str]] = [[] for _ in range(n_groups)]
    deal = sorted(reach, key=lambda p: draw_key(seed, "group", p))
    deal += sorted((p for p in peers if p not in reachable), key=lambda p: draw_key(seed, "group", p))
    for i, p in enumerate(deal):
        groups[i % n_groups].append(p)
    owners = tuple(
        tuple(sorted((p for p in grp if p in reachable), key=lambda p, k=k: draw_key(seed, f"owner{k}", p)))
        for k, grp in enumerate(groups)
    )
    # as many chunks as the smallest group has members: a piece stays about 1/G of an update, and
    # where NAT leaves a group few reachable members, each of them owns several chunks
    return Grid(seed=seed, groups=tuple(tuple(grp) for grp in groups), owners=owners, chunks=min(map(len, groups)))


def assign_auditors(audit_seed: str, tasks: dict[str, str], members: list[str], count: int) -> dict[str, list[str]]:
    """`count` auditors for each task (name -> its owner), never its owner: tasks and members are
    each put in the audit seed's order and dealt round-robin, so every member audits about
    count x tasks / members of them (no peer drawn into many audits by chance); a member dealt
    its own task swaps with the next task's auditor."""
    order = sorted(members, key=lambda p: draw_key(audit_seed, "auditor", p))
    names = sorted(tasks, key=lambda t: draw_key(audit_seed, "task", t))
    count = min(count, len(order) - 1)
    slots = [order[i % len(order)] for i in range(len(names) * count)]  # task i: slots[i*count:(i+1)*count]
    for at in range(len(slots)):
        if slots[at] != tasks[names[at // count]]:
            continue
        for other in (*range(at + 1, len(slots)), *range(at)):
            owner_there = tasks[names[other // count]]
            if slots[other] != tasks[names[at // count]] and slots[at] != owner_there:
                slots[at], slots[other] = slots[other], slots[at]
                break
    return {t: list(dict.fromkeys(slots[i * count : (i + 1) * count])) for i, t in enumerate(names)}


SPOT_BLOCKS = 3
"""Blocks (whole int8 blocks) a task's span is cut into for spot audits (SPOT_COVER)."""
SPOT_COVER = 0
"""Spot audits, measured, not the node's rule: the first auditors of a task each recompute only
a share of its blocks, each block by this many of them (0: each the whole task, as the node does).
They catch a lie on a whole chunk as often as full audits, at cover/auditors of their bytes, but a
lie on one block only as often as `cover` full auditors, at their bytes: no gain against the
attacker's best lie (docs/security.md, v3: what it tolerates). ScatterRound runs it; the node's
commitments would need per-block digests and norms, which are not built."""


def audit_shares(audit_seed: str, name: str, auditors: int, blocks: int, cover: int) -> list[tuple[int, ...]]:
    """The blocks each of a task's `auditors` checks, so that each is checked by `cover` of them
    (0, or at least `auditors`: all by all): the blocks in the audit seed's order for `name`, the
    i-th to auditors (i x cover + s) mod auditors, s < cover. The seed follows the fixed receipts,
    so an owner cannot know, when it signs, which blocks anyone checks."""
    if not cover or cover >= auditors:
        return [tuple(range(blocks))] * auditors
    order = sorted(range(blocks), key=lambda i: draw_key(audit_seed, name + "/blocks", str(i)))
    shares: list[list[int]] = [[] for _ in range(auditors)]
    for i, block in enumerate(order):
        for s in range(cover):
            shares[(i * cover + s) % auditors].append(block)
    return [tuple(sorted(share)) for share in shares]


def second_auditor(audit_seed: str, name: str, owner: str, members: list[str], exclude: set[str]) -> str | None:
    """The auditor that checks a claim on task `name`, or stands in for an auditor passed over:
    the first member in the audit seed's order for `name` + '/claim', not its owner nor excluded."""
    rest = [p for p in members if p != owner and p not in exclude]
    return min(rest, key=lambda p: draw_key(audit_seed, name + "/claim", p), default=None)


# ---------------------------------------------------------------- who signed what
# Signing for v3's records, behind a small interface: the node signs with its RSA identity
# (protocol/signing.py); `bench scale` swaps in keyed hashes at N = 1,000, where 2,048-bit keys
# would take minutes to make. Envelopes are protocol/signing.py's: {body, key, sig, kind}; a
# receipt's `draw` is the owner's unique signature of its task (one per key and message).
Record = Commitment | Receipt | ChunkNote

KIND = {Commitment: "scatter-commitment", Receipt: "scatter-receipt", ChunkNote: "scatter-chunk"}
MAX_BODY = {Commitment: 1024 * 80, Receipt: 1024 * 16, ChunkNote: 1024}


class Keys(Protocol):
    peer: str

    def seal(self, record: Record) -> dict:
        """The signed envelope of a record this peer wrote."""

    def unique(self, message: bytes) -> bytes:
        """This peer's one signature of `message` (a receipt's draw)."""


class Checker(Protocol):
    def open(self, envelope: object, cls: type, signer: str) -> Record:
        """The record in `envelope`, written and signed by `signer`; raises ProtocolError."""

    def unique_ok(self, sig: bytes, message: bytes, signer: str, envelope: dict) -> bool:
        """Whether `sig` is `signer`'s unique signature of `message` (its key travels in `envelope`)."""


def pack(record: Record) -> bytes:
    return msgpack.packb(record.to_wire(), use_bin_type=True)


def unpack(body: bytes, cls: type) -> Record:
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, max_array_len=8192, max_map_len=32)
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"{KIND[cls]}: body is not msgpack ({type(e).__name__})") from None
    return cls.from_wire(raw)


def author(record: Record) -> str:
    return record.owner if isinstance(record, Receipt) else record.peer


class RsaKeys:
    """A node's identity key (hivemind's RSA-2048)."""

    def __init__(self, private_key):
        self.private_key = private_key
        self.peer = signing.peer_id_of(signing.public_der(private_key))

    def seal(self, record: Record) -> dict:
        return signing.sign(self.private_key, pack(record), KIND[type(record)])

    def unique(self, message: bytes) -> bytes:
        return signing.sign_unique(self.private_key, message)


class RsaChecker:
    """Checks protocol/signing.py envelopes (cached by digest, cheapest checks first). `keys`
    (peer -> DER public key, from envelopes it signed, e.g. the roster's announcements) lets it
    check a unique signature that travels without an envelope, as the leader's `draw` on its board."""

    def __init__(self, keys: dict[str, bytes] | None = None):
        self.keys = dict(keys or {})

    def open(self, envelope: object, cls: type, signer: str) -> Record:
        body = signing.verify(envelope, signer=signer, max_body=MAX_BODY[cls], kind=KIND[cls])
        record = unpack(body, cls)
        if author(record) != signer:
            raise ProtocolError(f"{KIND[cls]}: signed by {signer[:16]} but written by {author(record)[:16]}")
        return record

    def unique_ok(self, sig: bytes, message: bytes, signer: str, envelope: dict) -> bool:
        key = envelope.get("key") if isinstance(envelope, dict) and envelope.get("key") else self.keys.get(signer)
        if not isinstance(key, bytes) or signing.peer_id_of(key) != signer:
            return False  # a key that is not the signer's proves nothing about the signer
        try:
            signing.verify_unique(sig, message, key)
        except ProtocolError:
            return False
        return True
