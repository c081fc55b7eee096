"""RoundNet over the real network: hivemind's DHT (node/p2p/dht.py) and libp2p streams (node/p2p/exchange.py);
and v3's ScatterNet (node/scatter/member.py): one `scatter` request with its message as body."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack

from node.p2p.dht import Swarm, dht_time, latest_expiration
from node.p2p.exchange import Exchange
from protocol.kinds.scatter import Message
from protocol.messages import Request


class RealNet:
    def __init__(self, swarm: Swarm, exchange: Exchange):
        self.swarm, self.exchange = swarm, exchange
        self.me = swarm.peer_id

    def store(self, key: str, subkey: str, value: Any, ttl: float) -> bool:
        """`value` is one of our signed records (an announcement, a roster): it lives until the latest
        expiration validators allow for its own time, so that no replayed copy outlives it."""
        record_time = msgpack.unpackb(value["body"], raw=False)["time"]
        return self.swarm.store_until(key, subkey, value, latest_expiration(record_time, ttl))

    def get_subkeys(self, key: str) -> dict[str, Any]:
        return self.swarm.get_subkeys(key)

    def fetch_many(
        self, jobs: list[tuple[str, Request, int]], timeout: float, on_each: Callable[[int, bytes], None] | None = None
    ) -> list[bytes | Exception]:
        # each job's size is checked before its body is read
        return self.exchange.fetch_many(jobs, timeout=timeout, on_each=on_each)

    def call(self, peer: str, message: Message, timeout: float) -> bytes:
        """v3 (ScatterNet): dial `peer` with `message`; its answer's payload (at most max_bytes)."""
        request = Request(op="scatter", run=self.exchange.run_id, round=message.round)
        return self.exchange.fetch(peer, request, timeout=timeout, body=message.encode())

    def keep_update(self, round_no: int, peer: str, blob: bytes) -> None:
        self.exchange.keep_update(round_no, peer, blob)

    def held_update(self, round_no: int, peer: str) -> bytes | None:
        return self.exchange.held_update(round_no, peer)

    def set_gate(self, gate) -> None:
        self.exchange.set_gate(gate)  # protocol 18's owner gate (node/round/trust/gate.py)

    def now(self) -> float:
        return dht_time()

    def monotonic(self) -> float:
        return time.monotonic()
