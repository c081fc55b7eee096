"""Signed round records: seal a record with its author's key; open one and check who wrote it.

Every record of round protocol v2 travels as a signing.py envelope whose `kind` names the
record ("heartbeat", "announcement", "roster", "manifest"). Opening checks, in this order:
the envelope's shape and size, the signature against the key behind the expected author's
peer id, the body's fields (records.py), and that the body names that same author. What each
record says, and under which DHT key it lives, is in docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

import msgpack

from protocol import keys, signing
from protocol.errors import ProtocolError
from protocol.kinds.call import Call
from protocol.kinds.sealed import (
    EVIDENCE_BODY,
    HEAD_BODY,
    MAX_SEALS,
    RECEIPT_BODY,
    SEAL_BODY,
    Receipt,
    Seal,
    SealHead,
    evidence_fields,
    merkle_listed,
    merkle_path,
)
from protocol.records import CLAIM_ROUNDS, MAX_ROSTER, Announcement, Heartbeat, Roster, run_id_of

# A heartbeat body is ~400 B (two addresses); at 8 KiB ~470 padded ones filled hivemind's 4 MiB reply to
# a peer-table read, at 1 KiB it takes ~2,500 (tests/test_budgets.py measures both).
MAX_BODY = {
    "heartbeat": 1024,
    "announcement": 3 * 1024 + EVIDENCE_BODY,  # protocol 23: room for evidence about one seal (`hidden`)
    "roster": MAX_ROSTER * (2048 + 2 * RECEIPT_BODY) + MAX_SEALS * (SEAL_BODY + 1024) + 4096,  # receipts, seals
    "call": MAX_ROSTER * 2048 + 4096,
    "manifest": 64 * 1024,
    "seal": SEAL_BODY,
    "sealhead": HEAD_BODY,
    "receipt": RECEIPT_BODY,
}
KIND_OF = {
    Heartbeat: "heartbeat",
    Announcement: "announcement",
    Roster: "roster",
    Call: "call",
    Seal: "seal",
    SealHead: "sealhead",
    Receipt: "receipt",
}


def _unpack(body: bytes, where: str) -> object:
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, max_bin_len=len(body), max_array_len=MAX_ROSTER + 16, max_map_len=64
        )
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"{where}: body is not msgpack ({type(e).__name__})") from None


def seal(private_key, record) -> dict:
    """The signed envelope of a Heartbeat, Announcement, Roster or Call written by this key's peer."""
    kind = KIND_OF[type(record)]
    body = _packed(record)
    if isinstance(record, Seal):  # signed over its head (protocol 23): evidence carries the head alone
        return {**signing.sign(private_key, _packed(SealHead.of(record)), "sealhead"), "body": body, "kind": kind}
    return signing.sign(private_key, body, kind)


def _packed(record) -> bytes:
    return msgpack.packb(record.to_wire(), use_bin_type=True)


def _head_envelope(envelope: dict, seal: Seal) -> dict:
    """The head envelope a seal's signature verifies as: its head's body, the seal's key and signature."""
    return {
        "body": _packed(SealHead.of(seal)),
        "key": envelope.get("key"),
        "sig": envelope.get("sig"),
        "kind": "sealhead",
    }


def author_of(record) -> str:
    if isinstance(record, (Roster, Call, Seal, SealHead)):
        return record.leader
    return record.owner if isinstance(record, Receipt) else record.peer


OPENED_ENTRIES, REFUSED_ENTRIES = 8192, 2048  # envelopes remembered as opened, as refused (apart: junk evicts no good)
_opened: OrderedDict[tuple, object] = OrderedDict()  # (cls, body, key, sig, signer, max_bytes) -> record
_refused: OrderedDict[tuple, str] = OrderedDict()  # the same -> why it was refused
_memo_lock = threading.Lock()


def open_record(envelope: object, cls, *, signer: str | None = None, max_bytes: int = 2**40):
    """The record inside `envelope`, verified as written by `signer` (default: whoever the body
    names as its author, e.g. an announcement embedded in a roster). Raises ProtocolError.
    An envelope opened before (the same bytes, asked the same way) is answered from memory: a
    flood of records re-read on every poll costs a lookup each, not a decode and a check."""
    fields = (envelope.get("body"), envelope.get("key"), envelope.get("sig")) if isinstance(envelope, dict) else ()
    memo = (cls, *fields, signer, max_bytes) if fields and all(isinstance(f, bytes) for f in fields) else None
    if memo is not None:
        with _memo_lock:
            for table in (_opened, _refused):
                if memo in table:
                    table.move_to_end(memo)
                    found = table[memo]
                    if table is _refused:
                        raise ProtocolError(found)
                    return found
    try:
        record = _open(envelope, cls, signer, max_bytes)
    except ProtocolError as e:
        _remember(_refused, REFUSED_ENTRIES, memo, str(e))
        raise
    _remember(_opened, OPENED_ENTRIES, memo, record)
    return record


def forget_opened() -> None:
    """Forget every remembered envelope (tests that count signature checks start from here)."""
    with _memo_lock:
        _opened.clear()
        _refused.clear()


def _remember(table: OrderedDict, bound: int, memo: tuple | None, outcome: object) -> None:
    if memo is None:
        return
    with _memo_lock:
        table[memo] = outcome
        while len(table) > bound:
            table.popitem(last=False)


def _open(envelope: object, cls, signer: str | None, max_bytes: int):
    kind = KIND_OF[cls]
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), bytes):
        raise ProtocolError(f"{kind}: expected a signed envelope")
    if len(envelope["body"]) > MAX_BODY[kind]:
        raise ProtocolError(f"{kind}: body of {len(envelope['body'])} bytes is too long")
    raw = _unpack(envelope["body"], kind)
    record = cls.from_wire(raw, max_bytes=max_bytes) if cls is not Heartbeat else cls.from_wire(raw)
    author = author_of(record)
    if signer is not None and author != signer:
        raise ProtocolError(f"{kind}: filed under {signer[:16]} but written by {author[:16]}")
    if cls in (Seal, SealHead) and _packed(record) != envelope["body"]:  # its head's signature fits one body
        raise ProtocolError(f"{kind}: the body is not in its one encoding")
    if cls is Seal:
        if envelope.get("kind") != kind:
            raise ProtocolError(f"seal: a {str(envelope.get('kind', ''))[:20]!r} record where a seal was expected")
        signing.verify(_head_envelope(envelope, record), signer=author, max_body=HEAD_BODY, kind="sealhead")
    else:
        signing.verify(envelope, signer=author, max_body=MAX_BODY[kind], kind=kind)
    if cls is Announcement and record.claim is not None:
        _check_claim(record, max_bytes)
    if cls is Announcement and record.hidden is not None:
        _check_hidden(record)
    return record


def _check_claim(ann: Announcement, max_bytes: int) -> None:
    """An omission claim (node/round/trust/omission.py) is its author's own signed announcement of
    one of the CLAIM_ROUNDS rounds before, of the same run, itself carrying no claim."""
    claimed = open_record(ann.claim, Announcement, signer=ann.peer, max_bytes=max_bytes)
    if claimed.claim is not None:
        raise ProtocolError("announcement: its claim carries a claim")
    if claimed.run != ann.run or not ann.round - CLAIM_ROUNDS <= claimed.round < ann.round:
        raise ProtocolError(f"announcement: claims round {claimed.round}, not one of the {CLAIM_ROUNDS} before its own")


def _check_hidden(ann: Announcement) -> None:
    """Evidence about a seal (protocol 21-23, node/round/trust/sealed.py) is a seal head that
    verifies, of the same run and of one of the CLAIM_ROUNDS rounds before the announcement's own,
    with a path that proves the entry it names listed."""
    head = open_evidence(ann.hidden).head
    if head.run != ann.run or not ann.round - CLAIM_ROUNDS <= head.round < ann.round:
        raise ProtocolError(
            f"announcement: evidence of round {head.round}, not one of the {CLAIM_ROUNDS} before its own"
        )


class Evidence(NamedTuple):
    """Evidence about a seal, opened (an announcement's `hidden`, protocol 23)."""

    head: SealHead
    """The seal's head, its leader's signature checked."""
    entry: str
    """An announcement's body hash that the path proves the seal lists (its carrier's own)."""
    digest: str
    """The head body's SHA-256: one seal, however many carry it."""


def evidence(seal_envelope: dict, entry: str) -> dict:
    """The wire evidence (an announcement's `hidden`) about the seal `seal_envelope`, which lists
    the announcement whose body hashes to `entry`: its head and `entry`'s path (ProtocolError if
    the seal does not verify or does not list it)."""
    seal = open_record(seal_envelope, Seal)
    if entry not in seal.announcements:
        raise ProtocolError("evidence: the seal does not list that entry")
    head = _head_envelope(seal_envelope, seal)
    return {"head": head, "entry": entry, "path": list(merkle_path(seal.announcements, entry))}


def open_evidence(wire: object) -> Evidence:
    """`wire` (an announcement's `hidden`) opened: its head verified, its path checked. Raises ProtocolError."""
    head_envelope, entry, path = evidence_fields(wire)
    head = open_record(head_envelope, SealHead)
    if not merkle_listed(entry, path, head.root):
        raise ProtocolError("evidence: the path does not prove the entry listed under the seal's root")
    return Evidence(head, entry, body_hash(head_envelope))


def body_hash(envelope: dict) -> str:
    """SHA-256 hex of a signed record's body: what the next roster's `prev` names."""
    return hashlib.sha256(envelope["body"]).hexdigest()


def open_roster(
    envelope: object, *, signer: str | None = None, max_bytes: int = 2**40
) -> tuple[Roster, list[Announcement]]:
    """A roster and its announcements, every signature checked; entries must be of the roster's
    run and round, by distinct peers, sorted by peer id; scores, if any, name exactly the
    entries' peers in entry order, so a leader cannot score (and get flagged, then banned) a
    peer whose update it left out."""
    roster = open_record(envelope, Roster, signer=signer, max_bytes=max_bytes)
    anns = _entries(roster, max_bytes)
    if roster.scores and [p for p, _ in roster.scores] != [a.peer for a in anns]:
        stranger = next((p for p, _ in roster.scores if p not in {a.peer for a in anns}), None)
        if stranger is not None:
            raise ProtocolError(f"roster: scores name {stranger[:16]}, not an entry")
        raise ProtocolError(f"roster: {len(roster.scores)} scores for {len(anns)} entries, or not in entry order")
    return roster, anns


def open_call(
    envelope: object, *, signer: str | None = None, max_bytes: int = 2**40
) -> tuple[Call, list[Announcement]]:
    """A v3 call and its announcements, checked as open_roster checks a roster's; its reachable
    members must be members."""
    call = open_record(envelope, Call, signer=signer, max_bytes=max_bytes)
    anns = _entries(call, max_bytes)
    if not set(call.reach) <= {a.peer for a in anns}:
        raise ProtocolError("call: reach names a peer that is not a member")
    return call, anns


def _entries(record: Roster | Call, max_bytes: int) -> list[Announcement]:
    """A roster's or call's announcements, opened: of its run and round, by distinct peers, sorted."""
    kind = KIND_OF[type(record)]
    anns = [open_record(e, Announcement, max_bytes=max_bytes) for e in record.entries]
    peers = [a.peer for a in anns]
    if peers != sorted(set(peers)):
        raise ProtocolError(f"{kind}: entries must be sorted by peer id without repeats")
    if any(a.run != record.run or a.round != record.round for a in anns):
        raise ProtocolError(f"{kind}: an entry names another run or round")
    return anns


def seal_manifest(private_key, manifest: dict) -> dict:
    """The organizer signs its manifest; the manifest names the organizer, and hashes to the run id."""
    return signing.sign(private_key, msgpack.packb(manifest, use_bin_type=True), "manifest")


def open_manifest(envelope: object, run_id: str) -> dict:
    """The manifest of `run_id`, if it hashes to that id and is signed by the organizer it names."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), bytes):
        raise ProtocolError("manifest: expected a signed envelope")
    if len(envelope["body"]) > MAX_BODY["manifest"]:
        raise ProtocolError("manifest: too long")
    manifest = _unpack(envelope["body"], "manifest")
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("organizer"), str)
        or not isinstance(manifest.get("name"), str)
    ):
        raise ProtocolError("manifest: must be a map naming its organizer and name")
    try:
        hashes_to_id = run_id_of(manifest) == run_id
    except (TypeError, ValueError):  # not JSON-able: bytes or odd keys
        hashes_to_id = False
    if not hashes_to_id:
        raise ProtocolError(f"manifest: does not hash to run id {run_id[:80]!r}")
    signing.verify(envelope, signer=manifest["organizer"], max_body=MAX_BODY["manifest"], kind="manifest")
    return manifest


def claimed_key(envelope: object) -> tuple[str, str] | None:
    """(DHT key, subkey) a signed v2 envelope says it belongs under, read from its body without
    verifying it (the caller verifies); None when it does not look like one. Validators compare
    it with where the value was actually stored."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), bytes):
        return None
    kind = envelope.get("kind")
    if not isinstance(kind, str) or kind not in MAX_BODY or len(envelope["body"]) > MAX_BODY[kind]:
        return None
    try:
        d = _unpack(envelope["body"], kind)
    except ProtocolError:
        return None
    if not isinstance(d, dict):
        return None
    run, rnd = d.get("run"), d.get("round")
    if kind == "manifest":
        try:
            return keys.runs_key(), run_id_of(d)
        except (TypeError, ValueError, KeyError):
            return None
    if not isinstance(run, str) or (kind != "heartbeat" and (not isinstance(rnd, int) or isinstance(rnd, bool))):
        return None
    if kind in ("seal", "sealhead", "receipt"):
        return None  # they travel inside requests and rosters, never alone in the DHT
    if kind == "heartbeat":
        return keys.peers_key(run), str(d.get("peer"))
    if kind == "announcement":
        return keys.updates_key(run, rnd), str(d.get("peer"))
    if kind == "call":
        return keys.call_key(run, rnd), str(d.get("leader"))
    return keys.roster_key(run, rnd), str(d.get("leader"))
