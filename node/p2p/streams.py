"""The exchange's side of a libp2p stream (node/p2p/exchange.py): bounded reads of one framed
message (protocol/messages.py), and the handlers that answer the requests other peers send.

Every peer may be hostile: a frame's length is checked before a byte of its body is read, and
each read (header, body) has its own timeout. Both work on plain asyncio streams, so tests
drive them in-process without a libp2p daemon.

`Serving` is mixed into `Exchange`, which holds the state both sides share (the updates and state
it serves, the limits, the byte counters, the event loop). Every handler runs in the exchange's
event loop and never raises: whatever a peer sends is answered with the payload or a reason, or
dropped with a log line. The client side (fetch, fetch_many) stays in exchange.py.

v3 rounds (docs/protocol.md "v3"): a `scatter` request is followed by one more frame, the v3
Message (protocol/kinds/scatter.py) that pushes a chunk, a part, a receipt or a verdict, or asks
for a board, a task's inputs or a final part. Its length is checked against the round's bound
(`set_scatter`: from the run's update size) before a byte of it is read; it is decoded before
anything else looks at it and dropped if it does not decode; the handler (the round's
Member.answer, which hands the leader's ops to its Leader) runs in a thread of its own pool,
since a board poll waits for the leader's next version. Without a v3 round in flight here, a
scatter request is refused with that reason, its body unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import msgpack

from node.p2p.limits import Refusal, UploadLimit
from protocol.errors import ProtocolError
from protocol.kinds.scatter import Message
from protocol.messages import (
    HEADER_LEN,
    MAX_REQUEST_BYTES,
    Request,
    body_length,
    check_response_length,
    decode_response,
    encode_response,
    frame,
)

log = logging.getLogger("swarmtrain.exchange")
SERVE_TIMEOUT = 60.0  # seconds for each read of a request (header, then body)
SEND_TIMEOUT = 300.0  # seconds to hand one response to a peer: a 7 MB state at 1 Mbit/s takes ~1 min
SCATTER_THREADS = 64  # v3 requests answered at once (board polls wait up to a phase each)

ScatterHandler = Callable[[str, Message], bytes]
"""(calling peer, its v3 message) -> the answer's payload; raises ProtocolError to refuse."""


async def read_request(reader: asyncio.StreamReader, timeout: float) -> tuple[Request, int]:
    """One framed request -> (request, wire bytes). Each read is bounded by `timeout` seconds."""
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER_LEN)
    n = body_length(header, MAX_REQUEST_BYTES)
    async with asyncio.timeout(timeout):
        body = await reader.readexactly(n)
    return Request.decode(body), HEADER_LEN + n


async def read_body(reader: asyncio.StreamReader, limit: int, timeout: float) -> bytes:
    """The frame a scatter request carries after it (protocol/messages.py): its length is checked
    against `limit` before a byte of it is read; each read is bounded by `timeout` seconds."""
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER_LEN)
    n = body_length(header, limit)
    async with asyncio.timeout(timeout):
        return await reader.readexactly(n)


async def read_response(
    reader: asyncio.StreamReader,
    expect: int | None,
    max_bytes: int,
    timeout: float,
    on_bytes: Callable[[int], None] = lambda n: None,
    hold: Callable[[int], contextlib.AbstractAsyncContextManager] | None = None,
) -> bytes:
    """One framed response -> its payload, or ProtocolError / TimeoutError / IncompleteReadError.

    The frame length is checked (messages.check_response_length) before the body is read: with
    `expect`, only the exact ok-response for `expect` payload bytes or a short refusal is read;
    without it, at most `max_bytes` of payload. Header and body reads each get `timeout` seconds.
    `on_bytes(n)` is told of every byte taken from the stream (the header even when refused).
    `hold(n)` (limits.ByteBudget.hold) is entered with the body's length before it is read and left
    once it is decoded (the payload is then the caller's): the bytes a peer made us hold before anyone could check them.
    """
    async with asyncio.timeout(timeout):
        header = await reader.readexactly(HEADER_LEN)
    on_bytes(HEADER_LEN)
    n = int.from_bytes(header, "big")
    check_response_length(n, expect=expect, max_bytes=max_bytes)
    async with hold(n) if hold is not None else contextlib.nullcontext():
        async with asyncio.timeout(timeout):
            body = await reader.readexactly(n)
        on_bytes(n)
        payload = decode_response(body)
    if expect is not None and len(payload) != expect:
        raise ProtocolError(f"response carries {len(payload)} bytes, {expect} were announced")
    return payload


class Serving:
    """Answering one request per stream (mixed into node/p2p/exchange.py Exchange)."""

    async def _serve(self, info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """hivemind's stream handler: `info` is a StreamInfo naming the calling peer."""
        await self.serve_stream(str(info.peer_id), reader, writer)

    async def serve_stream(self, peer: str, reader: asyncio.StreamReader, writer) -> None:
        """Answer one request from `peer` on one stream, then close it. Never raises: whatever the
        peer sends is answered (with the payload or a reason) or dropped with a log line."""
        try:
            with contextlib.ExitStack() as held:  # each place this stream takes is given back when it ends
                refusal = self._gate.enter_stream(peer, held)
                if refusal is not None:
                    kind, response = "update", encode_response(None, self._refused(peer, refusal))
                else:
                    kind, response = await self._respond(peer, reader, held)
                await self._send(writer, kind, response)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as e:
            log.info("dropped a request from %s: %s", peer[:16], type(e).__name__)  # a peer's mistake never stops us
        except Exception:
            log.exception("unexpected error while serving %s", peer[:16])
        finally:
            writer.close()

    async def _respond(self, peer: str, reader: asyncio.StreamReader, held: contextlib.ExitStack) -> tuple[str, bytes]:
        """(kind, response body) for the request on `reader`."""
        try:
            request, n = await read_request(reader, self.io_timeout)
        except ProtocolError as e:  # an honest peer on another protocol version learns why
            return "update", encode_response(None, f"malformed request: {e}")
        self._count("received", request.op, n)
        if request.op == "scatter":
            payload, error = await self._answer_scatter(peer, request, reader)
            self.served[request.op] += payload is not None
            return request.op, encode_response(payload, error)
        sealed = self._sealed(request, peer)
        if sealed is not None:  # protocol 18: the round's payloads wait for its seal or roster
            self.refused["sealed"] += 1
            return request.op, encode_response(None, sealed)
        if request.op == "receipt":
            payload, error = self._gate_of_rounds.answer(request.round, request.seal)  # a ReceiptAnswer
            self.served[request.op] += payload is not None
            return request.op, encode_response(payload, error)
        payload, error = self._answer(request, peer, held)
        if isinstance(payload, Path):  # our state's checkpoint file: read off the event loop
            payload = await asyncio.to_thread(read_state, payload)
            error = "" if payload is not None else "no state yet"
        if payload is None and self._may_arrive(request):  # we relay it once our own copy is in
            payload = await self._await_update((request.round, request.peer))
            error = "" if payload is not None else f"{error} (waited {self.relay_wait:g} s)"
        self.served[request.op] += payload is not None
        if request.op == "state" and payload is not None:
            self.on_state_served(peer, len(payload))
        body = encode_response(payload, error)
        if request.op == "update" and payload is not None and self.me and request.peer != self.me:
            self.relayed_bytes += HEADER_LEN + len(body)  # what _send will count as sent
        return request.op, body

    async def _send(self, writer, kind: str, response: bytes) -> None:
        out = frame(response)
        self._count("sent", kind, len(out))  # counted when handed to the stream: the peer may close first
        step = len(out) if self._upload is None else UploadLimit.CHUNK
        for i in range(0, len(out), step):
            if self._upload is not None:
                await self._upload.take(min(step, len(out) - i))
            writer.write(out[i : i + step])
            async with asyncio.timeout(SEND_TIMEOUT):  # a peer that stops reading cannot pin the buffer forever
                await writer.drain()

    def _sealed(self, request: Request, peer: str) -> str | None:
        """Why an update (or receipt) request is refused by the owner gate (node/round/trust/gate.py;
        None: it is not). Without a gate (no round protocol wired) nothing is sealed."""
        gate = self._gate_of_rounds
        if request.op not in ("update", "receipt") or request.run != self.run_id:
            return None
        if gate is None:
            return "sealed: this node serves no rounds" if request.op == "receipt" else None
        if request.op == "receipt":
            return None if request.peer == self.me else "sealed: receipts are signed by their owner only"
        return gate.refusal(request.round, request.peer, peer, request.seal, request.released)

    def _answer(self, request: Request, peer: str, held: contextlib.ExitStack) -> tuple[bytes | None, str]:
        if request.run != self.run_id:
            return None, f"this node trains run {self.run_id}, not {request.run}"
        with self._lock:
            state = self._state
            blob = self._updates.get((request.round, request.peer))
        if request.op == "state":
            if state is None:
                return None, "no state yet"
            refusal = self._gate.enter_upload(peer, held)  # the state, or its file (read by the caller)
            return (state, "") if refusal is None else (None, self._refused(peer, refusal))
        if request.op == "ledger":
            rosters = self._ledger(request.round, self.max_bytes // 2)
            return (msgpack.packb(rosters, use_bin_type=True), "") if rosters else (None, "no rosters from that round")
        if request.op == "checkpoint":
            cp = self._checkpoint(request.round)
            return (msgpack.packb(cp, use_bin_type=True), "") if cp else (None, "no checkpoint of that round")
        return (blob, "") if blob is not None else (None, f"no update of {request.peer} for round {request.round}")

    async def _answer_scatter(self, peer: str, request: Request, reader) -> tuple[bytes | None, str]:
        """A v3 message's answer (payload, or None and why). The body is read only for this run,
        while a v3 round is in flight, and up to the round's bound (checked from its header)."""
        handler, limit = self._scatter
        if request.run != self.run_id:
            return None, f"this node trains run {self.run_id}, not {request.run}"
        if handler is None:
            return None, "no v3 round in flight here"
        try:
            body = await read_body(reader, limit, self.io_timeout)
            self._count("received", "scatter", HEADER_LEN + len(body))
            msg = Message.decode(body)  # nothing of a message that does not decode is kept
        except ProtocolError as e:
            return None, f"malformed scatter message: {e}"
        try:
            payload = await asyncio.get_running_loop().run_in_executor(self._scatter_pool, handler, peer, msg)
        except ProtocolError as e:
            return None, str(e)
        except Exception:  # our bug, never the peer's to crash us on
            log.exception("v3 %s from %s", msg.op, peer[:16])
            return None, f"could not answer {msg.op}"
        return payload, ""

    def _may_arrive(self, request: Request) -> bool:
        """An update request worth waiting for: of the round this node is gathering (next to the
        newest round it holds updates of), so that relays pipeline down the tree without polls.
        Anything else is answered at once; the per-peer stream cap bounds the waiting streams."""
        if self.relay_wait <= 0 or request.op != "update" or request.run != self.run_id:
            return False
        with self._lock:
            newest = max((r for r, _ in self._updates), default=None)
        return newest is not None and newest - 1 <= request.round <= newest + 1

    async def _await_update(self, key: tuple[int, str]) -> bytes | None:
        with self._lock:
            event, loop, waiters = self._arrivals.get(key, (asyncio.Event(), asyncio.get_running_loop(), 0))
            self._arrivals[key] = (event, loop, waiters + 1)
            held = self._updates.get(key)  # (looked up with the registration: keep_update may just have run)
        try:
            if held is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.relay_wait):
                        await event.wait()
            return self.held_update(*key)
        finally:
            with self._lock:
                event, loop, waiters = self._arrivals[key]
                if waiters > 1:
                    self._arrivals[key] = (event, loop, waiters - 1)
                else:
                    del self._arrivals[key]

    def _refused(self, peer: str, refusal: Refusal) -> str:
        """Count and log `refusal`; the text `peer` is told."""
        self.refused[refusal.reason] += 1
        n = self.refused[refusal.reason]
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th...: a flood cannot flood the log as well
            log.info("refused %s (%s; %d so far): %s", peer[:16], refusal.reason, n, refusal.text)
        return refusal.text


def read_state(path: Path) -> bytes | None:
    """The state file's bytes (Exchange.set_state), or None when it cannot be read now."""
    try:
        return path.read_bytes()
    except OSError:
        return None
