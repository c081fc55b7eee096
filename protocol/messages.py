"""RPC envelopes carried over libp2p streams, and their framing.

A stream carries one request and one response, each framed as an 8-byte big-endian length
followed by that many bytes of msgpack. The length is checked against a limit before a
single byte of the body is read, so a peer cannot make us allocate what it likes.

Requests (what a peer says):
  {"op": "update", "run": R, "round": r, "peer": P[, "seal": S][, "released": D]}
      "Send me the update peer P announced for round r of run R (yours or one you gathered)."
      Protocol 18 (sealed rounds): before the node holds a roster of round r, it serves the
      update only to a request that presents S, a leader's signed seal (protocol/kinds/sealed.py)
      listing P's announcement (node/round/trust/gate.py); otherwise it answers "sealed: ...".
      A member fetching after the roster names instead D, the SHA-256 of the body of the seal the
      roster lists P's update under: the owner serves its own update under a seal it released it under.
  {"op": "receipt", "run": R, "round": r, "peer": P, "seal": S}
      "Give me your signed receipt for your update of round r, released under seal S." P is the
      owner asked; it answers with its receipt envelope (msgpack) when S is the first seal it
      released its update under this round. Asked by a leader after its fetches. Protocol 19: the
      payload is a ReceiptAnswer (below): {"receipt": E} when S is that first seal; when the
      owner released its update under S but first under another seal F, {"receipt": E, "seal": F}:
      its one receipt of the round (naming F) and F, evidence that the round went out before S
      (the leader then keeps the owner's entry, and its roster credits nobody: docs/protocol.md
      "Sealed rounds"); else it refuses. At most MAX_RECEIPT_ANSWER bytes.
  {"op": "state", "run": R}
      "Send me your current training state of run R."
  {"op": "ledger", "run": R, "round": r}
      "Send me your chain's signed rosters of run R from round r on (as many as fit in about
      4 MiB)." The payload is a msgpack list of roster envelopes; the reader verifies them from
      its own anchor (node/round/trust/chain.py), so a lying peer can only withhold.
  {"op": "checkpoint", "run": R, "round": c}
      "Send me the organizer's signed checkpoint of round c" (protocol/kinds/checkpoint.py; asked of the
      organizer, whose heartbeat names it in `cp`). The payload is the msgpack envelope.
  {"op": "scatter", "run": R, "round": r}, then one more frame: a v3 Message
      "Take, or answer, this message of round r's v3 round" (protocol/kinds/scatter.py: a chunk,
      a part, a receipt or a verdict pushed; a board, a task's inputs or a final part asked for).
      Only this request has a second frame: its length is checked against the serving node's
      bound for the round in flight (a pushed fraud proof carries about one update) before it
      is read, and a node with no v3 round in flight refuses it unread (node/p2p/streams.py).
Responses:
  {"ok": true, "payload": <bytes>}                  "Here it is."
  {"ok": false, "error": "<why>"}                   "I cannot; here is why."
A reader that knows the payload's size (an announced update, the state template) accepts only a
frame of exactly `ok_response_length(size)` bytes, or a refusal of at most MAX_ERROR_RESPONSE.
Update payloads are UpdateEnvelope bytes (below); state payloads are tensors.py containers.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from protocol.errors import ProtocolError
from protocol.fields import PEER_ID_RE, SHA256_RE

HEADER_LEN = 8
# A request carries at most one seal: MAX_ROSTER digests (protocol/kinds/sealed.py SEAL_BODY), a key, a signature
MAX_REQUEST_BYTES = 4096 + 4096 * 67 + 2048
OPS = ("update", "state", "ledger", "checkpoint", "scatter", "receipt")
MAX_ERROR_CHARS = 500
MAX_RECEIPT_ANSWER = MAX_REQUEST_BYTES + 4096  # a seal (as a request carries one) and a receipt (< 1 KiB)
# a refusal: fixmap(1) + "ok"(3) + false(1) + "error"(6) + str16 header(3) + 500 chars x 4 UTF-8 bytes
MAX_ERROR_RESPONSE = 1 + 3 + 1 + 6 + 3 + 4 * MAX_ERROR_CHARS
RESPONSE_OVERHEAD = 32  # more than ok_response_length(n) - n for any n: the limit without an expected size


def frame(body: bytes) -> bytes:
    """Length-prefix `body` for the stream."""
    return len(body).to_bytes(HEADER_LEN, "big") + body


def body_length(header: bytes, limit: int) -> int:
    """Parse a frame header; refuse lengths above `limit` before anything is allocated."""
    if len(header) != HEADER_LEN:
        raise ProtocolError(f"frame header must be {HEADER_LEN} bytes, got {len(header)}")
    n = int.from_bytes(header, "big")
    if n > limit:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit of {limit}")
    return n


def ok_response_length(n: int) -> int:
    """Exact byte length of encode_response(<n bytes>): the frame body an honest peer sends.

    fixmap(1) + fixstr "ok"(3) + true(1) + fixstr "payload"(8) + bin header (2, 3 or 5 bytes) + n.
    """
    if not 0 <= n < 2**32:
        raise ValueError(f"a payload of {n} bytes cannot be carried in one response (msgpack bin32)")
    return 13 + (2 if n < 2**8 else 3 if n < 2**16 else 5) + n


def check_response_length(n: int, *, expect: int | None, max_bytes: int) -> None:
    """Refuse a response frame of `n` bytes before reading it.

    With `expect` (the payload size the caller was promised), only the exact ok-response or a
    short refusal fits: a peer that announced 1,000 B cannot make us read 256 MiB. Without it,
    any response whose payload is at most `max_bytes` fits.
    """
    if expect is None:
        if n > max_bytes + RESPONSE_OVERHEAD:
            raise ProtocolError(f"response of {n} bytes exceeds the limit of {max_bytes + RESPONSE_OVERHEAD}")
        return
    if n != ok_response_length(expect) and n > MAX_ERROR_RESPONSE:
        raise ProtocolError(
            f"response of {n} bytes, expected {ok_response_length(expect)} for a "
            f"{expect}-byte payload (or a refusal of at most {MAX_ERROR_RESPONSE})"
        )


def _unpack_map(data: bytes, where: str) -> dict:
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(data),
            max_str_len=4096,
            max_array_len=4096,
            max_map_len=64,
        )
    except Exception as e:  # msgpack raises several types; all mean the same to us
        raise ProtocolError(f"{where}: not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{where}: expected a map")
    return obj


@dataclass(frozen=True, kw_only=True)
class Request:
    op: str
    run: str
    round: int = 0
    peer: str = ""
    seal: dict | None = None
    """A leader's signed seal envelope (update and receipt requests; absent on the wire when None)."""
    released: str = ""
    """A member's update request after the roster: the SHA-256 (hex) of the seal body the update was
    released under (the roster carries it), not the seal itself, which grows with the roster."""

    def encode(self) -> bytes:
        d = {"op": self.op, "run": self.run, "round": self.round, "peer": self.peer}
        if self.seal is not None:
            d["seal"] = self.seal
        if self.released:
            d["released"] = self.released
        return msgpack.packb(d, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Request:
        d = _unpack_map(data, "request")
        op, run, rnd, peer = d.get("op"), d.get("run"), d.get("round", 0), d.get("peer", "")
        if op not in OPS:
            raise ProtocolError(f"request: unknown op {op!r}; known: {', '.join(OPS)}")
        if not isinstance(run, str) or not 0 < len(run) <= 128:
            raise ProtocolError("request: 'run' must be a run id")
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
            raise ProtocolError("request: 'round' must be a non-negative integer")
        if op in ("update", "receipt") and not (isinstance(peer, str) and PEER_ID_RE.match(peer)):
            raise ProtocolError("request: 'peer' must be a base58 peer id")
        seal = d.get("seal")
        if seal is not None and not _is_envelope(seal):
            raise ProtocolError("request: 'seal' must be a signed envelope")
        if op == "receipt" and seal is None:
            raise ProtocolError("request: a receipt request names its seal")
        released = d.get("released", "")
        if released and not (isinstance(released, str) and SHA256_RE.fullmatch(released)):
            raise ProtocolError("request: 'released' must be a SHA-256 hex digest")
        peer = peer if isinstance(peer, str) else ""
        return cls(op=op, run=run, round=rnd, peer=peer, seal=seal, released=released)


def _is_envelope(x: object) -> bool:
    """A signed envelope's shape (protocol/signed.py opens and verifies it)."""
    return isinstance(x, dict) and all(type(x.get(k)) is bytes for k in ("body", "key", "sig"))


@dataclass(frozen=True, kw_only=True)
class ReceiptAnswer:
    """The payload of a `receipt` answer (protocol 19): the owner's receipt envelope and, when that
    receipt names another seal than the one asked about, that seal's envelope."""

    receipt: dict
    seal: dict | None = None

    def encode(self) -> bytes:
        d = {"receipt": self.receipt} if self.seal is None else {"receipt": self.receipt, "seal": self.seal}
        return msgpack.packb(d, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> ReceiptAnswer:
        if not isinstance(data, bytes) or len(data) > MAX_RECEIPT_ANSWER:
            raise ProtocolError(f"receipt answer: not bytes, or more than {MAX_RECEIPT_ANSWER}")
        d = _unpack_map(data, "receipt answer")
        receipt, seal = d.get("receipt"), d.get("seal")
        if not _is_envelope(receipt) or not (seal is None or _is_envelope(seal)):
            raise ProtocolError("receipt answer: 'receipt' (and 'seal', if any) must be signed envelopes")
        return cls(receipt=receipt, seal=seal)


def encode_response(payload: bytes | None = None, error: str = "") -> bytes:
    if payload is None:
        return msgpack.packb({"ok": False, "error": error[:MAX_ERROR_CHARS]})
    return msgpack.packb({"ok": True, "payload": payload}, use_bin_type=True)


def decode_response(data: bytes) -> bytes:
    """Return the payload, or raise ProtocolError carrying the peer's stated reason."""
    d = _unpack_map(data, "response")
    if d.get("ok") is True and isinstance(d.get("payload"), bytes):
        return d["payload"]
    if d.get("ok") is False:
        raise ProtocolError(f"peer refused: {str(d.get('error', ''))[:MAX_ERROR_CHARS]}")
    raise ProtocolError("response: expected {ok, payload} or {ok: false, error}")


@dataclass(frozen=True, kw_only=True)
class UpdateEnvelope:
    """One peer's encoded update for one round: 'this is what I contribute to round r'."""

    run: str
    round: int
    peer: str
    codec: str
    payload: bytes

    def encode(self) -> bytes:
        return msgpack.packb(
            {"run": self.run, "round": self.round, "peer": self.peer, "codec": self.codec, "payload": self.payload},
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> UpdateEnvelope:
        d = _unpack_map(data, "update")
        run, rnd, peer, codec, payload = (d.get(k) for k in ("run", "round", "peer", "codec", "payload"))
        if not (
            isinstance(run, str)
            and isinstance(rnd, int)
            and isinstance(peer, str)
            and isinstance(codec, str)
            and isinstance(payload, bytes)
        ):
            raise ProtocolError("update: fields run/round/peer/codec/payload missing or mistyped")
        if isinstance(rnd, bool) or rnd < 0:  # True == 1 would otherwise pass as round 1
            raise ProtocolError(f"update: round {rnd!r} is not a non-negative integer")
        return cls(run=run, round=rnd, peer=peer, codec=codec, payload=payload)
