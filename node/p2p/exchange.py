"""Moving bytes between peers over hivemind's libp2p streams (all-gather of updates, state).

A background thread runs an asyncio loop holding a replica of the DHT's libp2p daemon
connection. It serves two things to any peer that asks (protocol/messages.py):
  * updates this node made or gathered, kept for the last KEEP_ROUNDS rounds;
  * the latest training state snapshot (bytes prepared after each round).
Other threads call `fetch(...)`, which blocks until the answer or the timeout.
Every byte is counted where it leaves or enters this process, per kind ("update", "state").

Every peer may be hostile, so all I/O is bounded:
  * a response's length is checked against what the caller expects (`expect`: the announced
    update size, the state template's size) before a byte of its body is read;
  * each read (header, body) has its own timeout, and a fetch that times out is cancelled,
    so neither its coroutine nor its buffers outlive it;
  * per peer: at most `max_streams_per_peer` requests served at once, at most
    `state_requests_per_minute` state downloads, at most `max_fetches_per_peer` fetches of ours
    in flight (node/p2p/limits.py);
  * all peers together, since identities are free (limits.Budgets): requests served at once (some
    kept for the peers named by `set_known`), states sent at once, and bytes of answers being read
    before anyone could check them.
Refusals are answered with a reason, counted in `refused` and logged.
The serving side (`serve_stream`) and the reading side (node/p2p/streams.py: `read_response`) work
on plain asyncio streams, so tests drive them in-process without a libp2p daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import msgpack

from node.config import SwarmConfig
from node.p2p.limits import DEFAULT_BUDGETS, Budgets, ByteBudget, FetchSlots, Refusal, ServeGate, UploadLimit
from node.p2p.streams import read_request, read_response
from protocol.errors import ProtocolError
from protocol.messages import HEADER_LEN, Request, encode_response, frame

log = logging.getLogger("swarmtrain.exchange")
HANDLER = "swarmtrain.v1"  # libp2p protocol name of our stream handler
KEEP_ROUNDS = 4
SERVE_TIMEOUT = 60.0  # seconds for each read of a request (header, then body)
SEND_TIMEOUT = 300.0  # seconds to hand one response to a peer: a 7 MB state at 1 Mbit/s takes ~1 min

Job = tuple[str, Request] | tuple[str, Request, int | None]  # (peer, request[, expected payload bytes])


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    """The exchange's own event loop: uvloop's (libuv; faster stream I/O, see `bench exchange`)
    where it is installed, else asyncio's."""
    if kind == "uvloop":
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            log.info("uvloop is not installed; the exchange runs on asyncio's loop")
    return asyncio.new_event_loop()


class Exchange:
    def __init__(
        self,
        dht,
        run_id: str,
        *,
        max_bytes: int,
        on_bytes: Callable[[str, str, int], None] = lambda direction, kind, n: None,
        max_streams_per_peer: int = SwarmConfig.max_streams_per_peer,
        state_requests_per_minute: int = SwarmConfig.state_requests_per_minute,
        max_fetches_per_peer: int = SwarmConfig.max_streams_per_peer,
        io_timeout: float = SERVE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        event_loop: str = "uvloop",
        upload_limit: float | None = None,
        on_state_served: Callable[[str, int], None] = lambda peer, nbytes: None,
        me: str = "",
        relay_wait: float = 0.0,
        budgets: Budgets = DEFAULT_BUDGETS,
    ):
        """`dht` gives the libp2p connection (`await dht.replicate_p2p()`); `max_bytes` bounds a
        payload fetched without `expect`; the per-peer limits default to SwarmConfig's;
        `io_timeout` bounds each read of a request we serve; `clock` drives the state rate limit;
        `event_loop` is 'uvloop' or 'asyncio' (new_loop); `upload_limit` caps what we send, in
        bytes per second (None: no cap); `on_state_served(peer, nbytes)` is told when we start
        sending our state to a peer (a joiner or a resyncing peer); `me` is our peer id (an update
        of another peer that we serve counts as relayed); `relay_wait` is how long a request for
        an update of the current round that we do not hold yet waits for it (0: not at all);
        `budgets` bounds what all peers together may make us do."""
        self.run_id = run_id
        self.on_bytes = on_bytes  # (direction "sent"/"received", kind, bytes): metrics
        self.on_state_served = on_state_served
        self.max_bytes = max_bytes
        self.io_timeout = io_timeout
        self.sent: Counter[str] = Counter()  # kind -> bytes written to peers
        self.received: Counter[str] = Counter()  # kind -> bytes read from peers
        self.served: Counter[str] = Counter()  # kind -> payloads given to peers (own or relayed)
        self.fetched: Counter[str] = Counter()  # kind -> payloads received from peers
        self.refused: Counter[str] = Counter()  # Refusal.reason -> requests refused
        self.relayed_bytes = 0  # of sent["update"]: other peers' updates we passed on (upload once)
        self.me, self.relay_wait = me, relay_wait
        # update key -> (event, its loop, waiters): requests waiting for an update we relay (under _lock)
        self._arrivals: dict[tuple[int, str], tuple[asyncio.Event, asyncio.AbstractEventLoop, int]] = {}
        self._gate = ServeGate(
            streams_per_peer=max_streams_per_peer,
            state_per_minute=state_requests_per_minute,
            budgets=budgets,
            clock=clock,
        )
        self._outbound = FetchSlots(max_fetches_per_peer)
        self._held = ByteBudget(budgets.held_bytes)
        self._upload = UploadLimit(upload_limit) if upload_limit else None
        self._updates: dict[tuple[int, str], bytes] = {}
        self._state: bytes | None = None
        self._ledger: Callable[[int, int], list[dict]] = lambda first, most: []
        self._checkpoint: Callable[[int], dict | None] = lambda round_no: None
        self._lock = threading.Lock()
        self._loop = new_loop(event_loop)
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
            waiting = self._arrivals.get((round_no, peer))
        if waiting is not None:  # wake the requests that wait to relay it
            waiting[1].call_soon_threadsafe(waiting[0].set)

    def held_update(self, round_no: int, peer: str) -> bytes | None:
        with self._lock:
            return self._updates.get((round_no, peer))

    def set_known(self, peers) -> None:
        """The peers the round protocol knows (the current roster's members, the eligible): they may
        take the inbound streams that any number of strangers together may not (Budgets.known_streams)."""
        self._gate.known = frozenset(peers)

    def set_state(self, blob: bytes) -> None:
        with self._lock:
            self._state = blob

    def set_ledger(self, rosters_from: Callable[[int, int], list[dict]]) -> None:
        """Serve `ledger` requests: rosters_from(first round, most bytes) -> roster envelopes."""
        self._ledger = rosters_from

    def set_checkpoint(self, checkpoint_of: Callable[[int], dict | None]) -> None:
        self._checkpoint = checkpoint_of  # the organizer's witness serves `checkpoint` requests

    def fetch(self, peer: str, request: Request, *, timeout: float, expect: int | None = None) -> bytes:
        """Ask `peer`; returns the payload or raises ProtocolError / TimeoutError / OSError.

        `expect`: the exact payload size promised (announced update size, state template size);
        any other answer but a short refusal is dropped unread. The fetch is cancelled at `timeout`.
        """
        return self._call(self._fetch_within(peer, request, expect, timeout), timeout=timeout + 5)

    def fetch_many(
        self, jobs: Sequence[Job], *, timeout: float, on_each: Callable[[int, bytes], None] | None = None
    ) -> list[bytes | Exception]:
        """Run several fetches concurrently; each result is the payload or the exception.

        A job is (peer, request) or (peer, request, expect). Each fetch is cancelled when
        `timeout` passes (its result is then a TimeoutError); the others' results are kept.
        `on_each(index, payload)` is called (in the exchange's thread) as each fetch succeeds,
        before the others end: a relay passes a copy on as soon as it holds it.
        """

        async def one(i: int, j: Job) -> bytes:
            blob = await self._fetch_within(j[0], j[1], j[2] if len(j) > 2 else None, timeout)
            if on_each is not None:
                try:
                    on_each(i, blob)
                except Exception:
                    log.exception("on_each of a fetch failed")  # the fetch itself still counts
            return blob

        async def run_all():
            return await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)), return_exceptions=True)

        return self._call(run_all(), timeout=timeout + 5)

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
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout:  # (the same class as TimeoutError: the call may have raised it itself)
            if fut.done():
                raise
            fut.cancel()  # the task in the loop is cancelled too: no coroutine or buffer outlives the call
            raise TimeoutError(f"exchange call still running after {timeout:.0f} s; cancelled") from None

    async def _start(self, dht):
        p2p = await dht.replicate_p2p()
        await p2p.add_binary_stream_handler(HANDLER, self._serve)
        return p2p

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
        payload, error = self._answer(request, peer, held)
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

    def _answer(self, request: Request, peer: str, held: contextlib.ExitStack) -> tuple[bytes | None, str]:
        if request.run != self.run_id:
            return None, f"this node trains run {self.run_id}, not {request.run}"
        with self._lock:
            state = self._state
            blob = self._updates.get((request.round, request.peer))
        if request.op == "state":
            if state is None:
                return None, "no state yet"
            refusal = self._gate.enter_upload(peer, held)
            return (state, "") if refusal is None else (None, self._refused(peer, refusal))
        if request.op == "ledger":
            rosters = self._ledger(request.round, self.max_bytes // 2)
            return (msgpack.packb(rosters, use_bin_type=True), "") if rosters else (None, "no rosters from that round")
        if request.op == "checkpoint":
            cp = self._checkpoint(request.round)
            return (msgpack.packb(cp, use_bin_type=True), "") if cp else (None, "no checkpoint of that round")
        return (blob, "") if blob is not None else (None, f"no update of {request.peer} for round {request.round}")

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

    async def _fetch_within(self, peer: str, request: Request, expect: int | None, timeout: float) -> bytes:
        try:
            async with asyncio.timeout(timeout):  # the whole fetch, waiting for a slot included; cancelled on expiry
                return await self._fetch(peer, request, expect, timeout)
        except TimeoutError:
            raise TimeoutError(f"no {request.op} from {peer[:16]} within {timeout:g} s") from None

    async def _fetch(self, peer: str, request: Request, expect: int | None, timeout: float) -> bytes:
        from hivemind.p2p import PeerID

        async with self._outbound.slot(peer):
            _, reader, writer = await self._p2p.call_binary_stream_handler(PeerID.from_base58(peer), HANDLER)
            try:
                out = frame(request.encode())
                writer.write(out)
                self._count("sent", request.op, len(out))
                await writer.drain()
                payload = await read_response(
                    reader,
                    expect,
                    self.max_bytes,
                    timeout,
                    on_bytes=lambda n: self._count("received", request.op, n),
                    hold=self._held.hold,
                )
                self.fetched[request.op] += 1
                return payload
            finally:
                writer.close()
