"""Limits of the stream exchange (node/p2p/exchange.py): what peers may make this node do, and what
this node may ask of them, so that nobody can pin our memory, coroutines or upload.

Per peer id:
  * StreamCap: at most `limit` requests served to one peer at once (excess refused, never queued);
  * RateLimit: a token bucket per peer, for the megabyte state downloads;
  * FetchSlots: at most `limit` of our own fetches in flight to one peer.
Identities are free (a key is 40 ms), so each per-id cap has a total that no number of ids exceeds
(Budgets):
  * SharedCap: at most `limit` holders at once, whoever they are (inbound streams, state uploads),
    part of them kept for the peers the round protocol knows;
  * ByteBudget: at most `limit` bytes being read from peers at once, before anyone could check them.
ServeGate applies the serving side's caps to one stream. UploadLimit paces everything we send to a
volunteer's upload cap.
Each runs in the exchange's event loop only, so none takes a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

MAX_TRACKED_PEERS = 4096  # rate-limit entries kept before idle ones are forgotten


@dataclass(frozen=True, kw_only=True)
class Budgets:
    """What all peers together may make this node do, whatever the number of their identities.
    Measured before these existed: ten fresh ids took 60 of 60 state downloads at once, and the
    node's RSS went from 236 to 765 MiB. The node's settings (max_inbound_streams,
    max_state_uploads, max_fetch_mb_in_flight) fill it in."""

    inbound_streams: int = 64
    """Requests served at once: eight peers at the per-peer cap (8). Each holds a coroutine, a request
    of at most 4 KiB and, while answering, the update or state it sends."""
    state_uploads: int = 2
    """States sent at once: each holds about two copies of the state until it is sent. A joiner refused
    as busy asks another peer."""
    held_bytes: int = 512 * 2**20
    """Bytes of answers being read from peers at once, all our fetches together: an announcement says how
    long its update is (up to max_update_mb), and nothing is checked until the bytes are in. Two updates
    of the default largest size (256 MiB); a larger single answer is read alone."""

    @property
    def known_streams(self) -> int:
        """Of `inbound_streams`, the places only peers the round protocol knows may take (Exchange.set_known):
        a quarter, so any number of fresh ids shares the rest and the round's members are still served."""
        return self.inbound_streams // 4


DEFAULT_BUDGETS = Budgets()


class Refusal(NamedTuple):
    reason: str
    """Key of Exchange.refused: 'streams', 'all_streams', 'state_uploads' or 'state_rate'."""
    text: str
    """What the peer is told."""


class StreamCap:
    """At most `limit` concurrent streams per peer. Excess is refused, never queued: a queue
    would be memory and coroutines that the peer controls."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active: Counter[str] = Counter()

    def try_enter(self, peer: str) -> bool:
        if self.active[peer] >= self.limit:
            return False
        self.active[peer] += 1
        return True

    def leave(self, peer: str) -> None:
        self.active[peer] -= 1
        if self.active[peer] <= 0:
            del self.active[peer]  # the table stays as small as the set of peers being served


class SharedCap:
    """At most `limit` holders at once, all peers together; the last `reserved` places only for known
    peers. Excess is refused, never queued, as StreamCap's."""

    def __init__(self, limit: int, reserved: int = 0):
        self.limit, self.reserved = limit, min(reserved, limit)
        self.active = 0

    def try_enter(self, known: bool = False) -> bool:
        if self.active >= (self.limit if known else self.limit - self.reserved):
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


class RateLimit:
    """Token bucket per peer: `per_minute` requests a minute, bursts of up to `per_minute`.

    `clock` (seconds, monotonic) is injectable so tests step time instead of sleeping.
    `per_minute=0` refuses every request.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # peer -> (tokens, time of last update)

    def allow(self, peer: str) -> bool:
        now = self.clock()
        tokens, last = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[peer] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > MAX_TRACKED_PEERS:
            self._forget_idle(now)
        return allowed

    def retry_after(self, peer: str) -> float:
        """Seconds until `peer` has a token again (for the refusal message)."""
        tokens, last = self._buckets.get(peer, (self.burst, self.clock()))
        return max(0.0, (1.0 - tokens) / self.rate) if self.rate else float("inf")

    def _forget_idle(self, now: float) -> None:
        """Drop peers whose bucket has refilled: forgetting them changes nothing."""
        for peer, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[peer]


class FetchSlots:
    """At most `limit` of our fetches in flight to one peer; more wait for a slot (their timeout
    runs meanwhile). Keeps us under the other side's own per-peer stream cap."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def slot(self, peer: str):
        sem = self._slots.setdefault(peer, asyncio.Semaphore(self.limit))
        self._users[peer] += 1
        try:
            async with sem:
                yield
        finally:
            self._users[peer] -= 1
            if not self._users[peer]:
                del self._users[peer], self._slots[peer]


class ByteBudget:
    """At most `limit` bytes held at once by all holders together. A holder waits for room (its own
    timeout runs meanwhile), or runs alone when it is larger than the whole budget. `peak`: the most
    bytes held at once so far."""

    def __init__(self, limit: int):
        self.limit, self.held, self.peak = limit, 0, 0
        self._waiters: list[asyncio.Future] = []

    @contextlib.asynccontextmanager
    async def hold(self, n: int):
        while self.held and self.held + n > self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        self.held += n
        self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            self.held -= n
            for waiter in self._waiters:  # each looks again; those that still do not fit wait on
                if not waiter.done():
                    waiter.set_result(None)


class ServeGate:
    """Every cap on what peers make this node serve, per peer id and for all peers together. A place
    taken goes into the stream's `held` ExitStack, so it is given back however the stream ends."""

    def __init__(self, *, streams_per_peer: int, state_per_minute: int, budgets: Budgets, clock: Callable[[], float]):
        self.per_peer = StreamCap(streams_per_peer)
        self.streams = SharedCap(budgets.inbound_streams, reserved=budgets.known_streams)
        self.uploads = SharedCap(budgets.state_uploads)
        self.state_rate = RateLimit(state_per_minute, clock)
        self.known: frozenset[str] = frozenset()  # replaced whole (Exchange.set_known), so read without a lock

    def enter_stream(self, peer: str, held: contextlib.ExitStack) -> Refusal | None:
        if not self.per_peer.try_enter(peer):
            return Refusal("streams", f"too many concurrent requests from you (at most {self.per_peer.limit})")
        held.callback(self.per_peer.leave, peer)
        if not self.streams.try_enter(known=peer in self.known):
            return Refusal("all_streams", f"this node serves {self.streams.active} requests already; retry later")
        held.callback(self.streams.leave)
        return None

    def enter_upload(self, peer: str, held: contextlib.ExitStack) -> Refusal | None:
        if not self.uploads.try_enter():  # each upload holds copies of the state: a few at once, for anyone
            return Refusal("state_uploads", f"this node sends its state to {self.uploads.limit} peers; retry later")
        if not self.state_rate.allow(peer):  # a state is megabytes: nobody makes us upload it in a loop
            self.uploads.leave()
            text = f"state requests limited to {self.state_rate.per_minute} a minute"
            return Refusal("state_rate", f"{text}; retry in {self.state_rate.retry_after(peer):.0f} s")
        held.callback(self.uploads.leave)
        return None


class UploadLimit:
    """Paces everything this node sends to `bytes_per_s` across all streams (a volunteer's cap on
    a shared home upload); None: unlimited. Runs in the exchange's loop only, so no lock."""

    CHUNK = 64 * 1024  # bytes handed to a stream at a time under a limit

    def __init__(self, bytes_per_s: float | None, clock: Callable[[], float] = time.monotonic):
        self.rate, self.clock = bytes_per_s, clock
        self._free_at = 0.0  # when the line is free again

    async def take(self, n: int) -> None:
        now = self.clock()
        start = max(now, self._free_at)
        self._free_at = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)
