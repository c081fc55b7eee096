"""The small interface the round protocol talks to the network through, and the peer table.

`RoundNet` is all the round logic needs: DHT dictionary reads and writes, concurrent fetches of
exact sizes, the update store this node serves from, and clocks. node/p2p/roundnet.py implements
it over hivemind; tests/fakes.py implements it in memory, so every attack is a unit test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from protocol import keys, signed
from protocol.errors import ProtocolError
from protocol.messages import Request
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.round")
MAX_SKEW = 30.0  # seconds a record's own time may lie in the future (hivemind needs clocks within ~3 s)


class RoundNet(Protocol):
    me: str

    def store(self, key: str, subkey: str, value: Any, ttl: float) -> bool: ...

    def get_subkeys(self, key: str) -> dict[str, Any]: ...

    def fetch_many(
        self, jobs: list[tuple[str, Request, int]], timeout: float, on_each: Callable[[int, bytes], None] | None = None
    ) -> list[bytes | Exception]:
        """Results in job order; `on_each(index, payload)` as each one succeeds (node/p2p/exchange.py)."""

    def keep_update(self, round_no: int, peer: str, blob: bytes) -> None: ...

    def held_update(self, round_no: int, peer: str) -> bytes | None: ...

    def now(self) -> float:
        """DHT (wall-clock) time: what record times and expirations are measured in."""

    def monotonic(self) -> float: ...


def read_peers(
    get_subkeys: Callable[[str], dict], run_id: str, now: float, ttl: float, on_bad: Callable[[str], None] | None = None
) -> dict[str, Heartbeat]:
    """Peer id -> its latest heartbeat, signed by that peer, of this run, neither stale nor from
    the future. Anything else (forged, replayed, another peer's subkey) is dropped."""
    table = {}
    for subkey, envelope in get_subkeys(keys.peers_key(run_id)).items():
        try:
            hb = signed.open_record(envelope, Heartbeat, signer=subkey)
            if hb.run != run_id:
                raise ProtocolError(f"heartbeat of run {hb.run[:40]!r}")
            if not now - ttl - MAX_SKEW <= hb.time <= now + MAX_SKEW:
                raise ProtocolError(f"heartbeat time {hb.time:.0f} is {hb.time - now:+.0f} s from now")
        except ProtocolError as e:
            (on_bad or log.debug)(f"ignoring a heartbeat under {str(subkey)[:16]}: {e}")
            continue
        table[hb.peer] = hb
    return table


class Sighting(NamedTuple):
    """A peer's latest heartbeat, and when (monotonic seconds) a DHT read last showed it."""

    at: float
    heartbeat: Heartbeat


class PeerTable:
    """Live peers: each DHT read merged with what earlier reads saw within 2 x heartbeat_ttl.
    One DHT read may miss subkeys (a lookup that did not reach every replica), and a roster
    should not be refused because its leader's heartbeat was missing from one read."""

    def __init__(self, net: RoundNet, run_id: str, heartbeat_ttl: float):
        self.net, self.run_id, self.ttl = net, run_id, heartbeat_ttl
        self.recent: dict[str, Sighting] = {}  # peer -> its latest heartbeat and when we saw it

    def read(self) -> dict[str, Heartbeat]:
        now = self.net.monotonic()
        for p, hb in read_peers(self.net.get_subkeys, self.run_id, self.net.now(), self.ttl).items():
            self.recent[p] = Sighting(now, hb)
        for p in [p for p, sighting in self.recent.items() if now - sighting.at > 2 * self.ttl]:
            del self.recent[p]
        return self.last()

    def last(self) -> dict[str, Heartbeat]:
        """What the reads so far saw, without a new read (a leader that has just read, and must
        not spend another DHT round trip before it signs)."""
        return {p: sighting.heartbeat for p, sighting in self.recent.items()}
