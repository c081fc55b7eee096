"""Moving bytes between peers over hivemind's libp2p streams (all-gather of updates, state).

A background thread runs an asyncio loop holding a replica of the DHT's libp2p daemon
connection. It serves two things to any peer that asks (protocol/messages.py):
  * updates this node made or gathered, kept for the last KEEP_ROUNDS rounds;
  * the latest training state snapshot (bytes prepared after each round).
Other threads call `fetch(...)`, which blocks until the answer or the timeout.
Every byte is counted where it leaves or enters this process, per kind ("update", "state").
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from concurrent.futures import Future
from typing import Callable

from protocol.errors import ProtocolError
from protocol.messages import (HEADER_LEN, MAX_REQUEST_BYTES, Request, body_length, decode_response,
                               encode_response, frame)

log = logging.getLogger("swarmtrain.exchange")
HANDLER = "swarmtrain.v1"  # libp2p protocol name of our stream handler
KEEP_ROUNDS = 4
SERVE_TIMEOUT = 60.0


class Exchange:
    def __init__(self, dht, run_id: str, *, max_bytes: int,
                 on_bytes: Callable[[str, str, int], None] = lambda direction, kind, n: None):
        self.run_id = run_id
        self.on_bytes = on_bytes  # (direction "sent"/"received", kind, bytes): metrics
        self.max_bytes = max_bytes
        self.sent: Counter[str] = Counter()  # kind -> bytes written to peers
        self.received: Counter[str] = Counter()  # kind -> bytes read from peers
        self.served: Counter[str] = Counter()  # kind -> payloads given to peers (own or relayed)
        self.fetched: Counter[str] = Counter()  # kind -> payloads received from peers
        self._updates: dict[tuple[int, str], bytes] = {}
        self._state: bytes | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="exchange", daemon=True)
        self._thread.start()
        self._p2p = self._call(self._start(dht), timeout=60)

    # ---------------------------------------------------------------- used by the main thread
    def keep_update(self, round_no: int, peer: str, blob: bytes) -> None:
        """Hold an update so this node can serve it (its own, or one it gathered)."""
        with self._lock:
            self._updates[(round_no, peer)] = blob
            for key in [k for k in self._updates if k[0] <= round_no - KEEP_ROUNDS]:
                del self._updates[key]

    def held_update(self, round_no: int, peer: str) -> bytes | None:
        with self._lock:
            return self._updates.get((round_no, peer))

    def set_state(self, blob: bytes) -> None:
        with self._lock:
            self._state = blob

    def fetch(self, peer: str, request: Request, *, timeout: float) -> bytes:
        """Ask `peer`; returns the payload or raises ProtocolError / TimeoutError / OSError."""
        return self._call(self._fetch(peer, request), timeout=timeout + 5)

    def fetch_many(self, jobs: list[tuple[str, Request]], *, timeout: float) -> list[bytes | Exception]:
        """Run several fetches concurrently; each result is the payload or the exception."""
        async def run_all():
            return await asyncio.gather(*(self._fetch(p, r) for p, r in jobs), return_exceptions=True)
        return self._call(asyncio.wait_for(run_all(), timeout), timeout=timeout + 5)

    def close(self) -> None:
        if self._loop.is_running():
            try:
                self._call(self._p2p.shutdown(), timeout=10)
            except Exception as e:  # leaving anyway; the DHT process owns the daemon
                log.debug("p2p replica shutdown: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def _count(self, direction: str, kind: str, n: int) -> None:
        (self.sent if direction == "sent" else self.received)[kind] += n
        self.on_bytes(direction, kind, n)

    # ------------------------------------------------------------------ inside the event loop
    def _call(self, coro, *, timeout: float):
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=timeout)

    async def _start(self, dht):
        p2p = await dht.replicate_p2p()
        await p2p.add_binary_stream_handler(HANDLER, self._serve)
        return p2p

    async def _serve(self, _info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind = "update"
        try:
            header = await asyncio.wait_for(reader.readexactly(HEADER_LEN), SERVE_TIMEOUT)
            body = await asyncio.wait_for(
                reader.readexactly(body_length(header, MAX_REQUEST_BYTES)), SERVE_TIMEOUT)
            request = Request.decode(body)
            kind = request.op
            self._count("received", kind, len(header) + len(body))
            payload, error = self._answer(request)
            response = encode_response(payload, error)
            self.served[kind] += payload is not None
            out = frame(response)
            writer.write(out)
            self._count("sent", kind, len(out))  # counted when handed to the stream: the peer may close first
            await writer.drain()
        except (ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError) as e:
            log.info("dropped a request from a peer: %s", e)  # a peer's mistake never stops us
        except Exception:
            log.exception("unexpected error while serving a peer")
        finally:
            writer.close()

    def _answer(self, request: Request) -> tuple[bytes | None, str]:
        if request.run != self.run_id:
            return None, f"this node trains run {self.run_id}, not {request.run}"
        with self._lock:
            if request.op == "state":
                return (self._state, "") if self._state is not None else (None, "no state yet")
            blob = self._updates.get((request.round, request.peer))
        return (blob, "") if blob is not None else (None, f"no update of {request.peer} for round {request.round}")

    async def _fetch(self, peer: str, request: Request) -> bytes:
        from hivemind.p2p import PeerID

        _, reader, writer = await self._p2p.call_binary_stream_handler(PeerID.from_base58(peer), HANDLER)
        try:
            out = frame(request.encode())
            writer.write(out)
            self._count("sent", request.op, len(out))
            await writer.drain()
            header = await reader.readexactly(HEADER_LEN)
            body = await reader.readexactly(body_length(header, self.max_bytes + 4096))
            self._count("received", request.op, len(header) + len(body))
            payload = decode_response(body)
            self.fetched[request.op] += 1
            return payload
        finally:
            writer.close()
