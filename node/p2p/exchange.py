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
This module is the client side and the shared state; the request handlers are node/p2p/streams.py
(`Serving`, mixed in). The serving side (`serve_stream`) and the reading side
(node/p2p/streams.py: `read_response`) work on plain asyncio streams, so tests drive them
in-process without a libp2p daemon. v3 rounds' messages (`call`, `set_scatter`) travel as
`scatter` requests with a body: streams.py says how that body is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from node.config import SwarmConfig
from node.p2p.limits import DEFAULT_BUDGETS, Budgets, ByteBudget, FetchSlots, ServeGate, UploadLimit
from node.p2p.streams import SCATTER_THREADS, SERVE_TIMEOUT, ScatterHandler, Serving, read_response
from protocol.messages import Request, frame

log = logging.getLogger("swarmtrain.exchange")
HANDLER = "swarmtrain.v1"  # libp2p protocol name of our stream handler
KEEP_ROUNDS = 4

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


class Exchange(Serving):
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
        self._state: bytes | Path | None = None
        self._ledger: Callable[[int, int], list[dict]] = lambda first, most: []
        self._checkpoint: Callable[[int], dict | None] = lambda round_no: None
        self._lock = threading.Lock()
        self._gate_of_rounds = None  # node/round/trust/gate.py Gate (set_gate): None serves updates unsealed
        self._scatter: tuple[ScatterHandler | None, int] = (None, 0)  # the v3 round in flight: handler, body bound
        self._scatter_pool = ThreadPoolExecutor(SCATTER_THREADS, thread_name_prefix="scatter")
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

    def set_gate(self, gate) -> None:
        """The round protocol's owner gate (protocol 18, node/round/trust/gate.py): which update
        requests of a round without a roster here are served, and the receipts we sign."""
        self._gate_of_rounds = gate

    def set_state(self, state: bytes | Path) -> None:
        """The state we serve to joiners: its bytes, or a file that holds exactly them (a
        checkpoint, replaced whole: read when asked, so no second copy of the state, two of the
        parameters with the outer buffers, stays in memory between rounds)."""
        with self._lock:
            self._state = state

    def set_ledger(self, rosters_from: Callable[[int, int], list[dict]]) -> None:
        """Serve `ledger` requests: rosters_from(first round, most bytes) -> roster envelopes."""
        self._ledger = rosters_from

    def set_checkpoint(self, checkpoint_of: Callable[[int], dict | None]) -> None:
        self._checkpoint = checkpoint_of  # the organizer's witness serves `checkpoint` requests

    def set_scatter(self, handler: ScatterHandler | None, limit: int = 0) -> None:
        """Serve v3 messages with `handler` (the round's Member.answer), whose bodies are at most
        `limit` bytes; None: no v3 round in flight (scatter requests are refused unread)."""
        self._scatter = (handler, limit if handler is not None else 0)

    def fetch(
        self, peer: str, request: Request, *, timeout: float, expect: int | None = None, body: bytes | None = None
    ) -> bytes:
        """Ask `peer`; returns the payload or raises ProtocolError / TimeoutError / OSError.

        `expect`: the exact payload size promised (announced update size, state template size);
        any other answer but a short refusal is dropped unread. `body`: the frame a scatter
        request carries after it. The fetch is cancelled at `timeout`.
        """
        return self._call(self._fetch_within(peer, request, expect, timeout, body), timeout=timeout + 5)

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
            except Exception as e:  # leaving anyway; the DHT node owns the daemon
                log.debug("p2p replica shutdown: %s", e)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._scatter_pool.shutdown(wait=False, cancel_futures=True)

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

    async def _fetch_within(
        self, peer: str, request: Request, expect: int | None, timeout: float, body: bytes | None = None
    ) -> bytes:
        try:
            async with asyncio.timeout(timeout):  # the whole fetch, waiting for a slot included; cancelled on expiry
                return await self._fetch(peer, request, expect, timeout, body)
        except TimeoutError:
            raise TimeoutError(f"no {request.op} from {peer[:16]} within {timeout:g} s") from None

    async def _fetch(
        self, peer: str, request: Request, expect: int | None, timeout: float, body: bytes | None = None
    ) -> bytes:
        from hivemind.p2p import PeerID

        async with self._outbound.slot(peer):
            _, reader, writer = await self._p2p.call_binary_stream_handler(PeerID.from_base58(peer), HANDLER)
            try:
                out = frame(request.encode()) + (b"" if body is None else frame(body))
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
