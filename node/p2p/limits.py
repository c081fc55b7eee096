"""Per-peer limits of the stream exchange (node/p2p/exchange.py): what one peer may make this node
do, and what this node may ask of one peer, so that no peer can pin our memory, coroutines or upload.

  * StreamCap: at most `limit` requests served to one peer at once (excess refused, never queued);
  * RateLimit: a token bucket per peer, for the megabyte state downloads;
  * FetchSlots: at most `limit` of our own fetches in flight to one peer;
  * UploadLimit: everything we send paced to a volunteer's upload cap.
Each runs in the exchange's event loop only, so none takes a lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable

MAX_TRACKED_PEERS = 4096  # rate-limit entries kept before idle ones are forgotten


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
