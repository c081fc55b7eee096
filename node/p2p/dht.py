"""DHT membership: start the DHT, read and write records, heartbeats and the peer table.

hivemind's DHT node runs in a thread of this process, on its own event loop, with the libp2p
daemon `p2pd` as a child process (node/p2p/process.py); any thread may call it.

hivemind keeps, per (key, subkey), the value with the latest expiration (the stored one on a
tie). So our own signed records are stored until `latest_expiration`: the latest any validator
(node/p2p/validators.py) accepts for the record's own time. A replay of an older copy, however it
picks its expiration, then never outlives a newer copy, and our next store always wins. Nor can
a replay expiring sooner erase the held value: see patch_timed_storage.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgpack

from node.config import NodeConfig
from node.errors import SwarmtrainError
from node.p2p import process
from node.p2p.addresses import Address, parse_announce
from node.p2p.identity import identity_path
from protocol import keys, signed
from protocol.records import Heartbeat

log = logging.getLogger("swarmtrain.swarm")
# Seconds a signed record may live past its own time + its kind's TTL. Our stores compute their
# expiration from the record's time, so no store delay needs covering; it was 60 s, and a replayed
# copy outlived its successor that long (docs/security.md, replays).
SLACK = 10.0
MAX_HEARTBEAT_BODY = signed.MAX_BODY["heartbeat"]  # what peers accept: our heartbeats are trimmed to fit
TIME_STEP = 1e-3  # seconds our consecutive heartbeats' times differ by at least (see HeartbeatPublisher)
CALL_TIMEOUT = 30.0  # seconds a DHT get or store may take before we give up on it


def latest_expiration(record_time: float, ttl: float) -> float:
    """The latest expiration validators accept for a signed record of `record_time` whose kind lives
    `ttl`: what our own stores use, so that no replayed older copy can expire after our newer one."""
    return record_time + ttl + SLACK


def heartbeat_body_size(record: Heartbeat) -> int:
    """Bytes of the body protocol/signed.py: seal signs for this heartbeat."""
    return len(msgpack.packb(record.to_wire(), use_bin_type=True))


def fit_heartbeat(record: Heartbeat) -> Heartbeat:
    """`record` with as many of its addresses (best first) as fit MAX_HEARTBEAT_BODY: a peer with many
    interfaces would otherwise publish a heartbeat every validator refuses, and vanish."""
    while record.maddrs and heartbeat_body_size(record) > MAX_HEARTBEAT_BODY:
        record = replace(record, maddrs=record.maddrs[:-1])
    return record


def patch_timed_storage() -> None:
    """Make hivemind's TimedStorage.store leave its expiry heap alone when it refuses a value.

    It refuses a value whose expiration is not later than the held one's, but files the refused
    expiration in its heap first, and so drops the held value at that earlier time: re-storing a
    copy of anyone's record (any record one has read passes the validators) expiring a second from
    now erased it from that DHT node. Swarm.start applies it before the DHT node starts. Remove
    once hivemind compares before filing (hivemind/utils/timed_storage.py)."""
    from hivemind.utils.timed_storage import TimedStorage

    store = TimedStorage.store
    if getattr(store, "keeps_refusals_out", False):
        return

    def checked_store(self, key, value, expiration_time) -> bool:
        held = self.data.get(key)
        if held is not None and held.expiration_time >= expiration_time:
            return False  # what hivemind answers, without filing expiration_time
        return store(self, key, value, expiration_time)

    checked_store.keeps_refusals_out = True
    TimedStorage.store = checked_store


def dht_time() -> float:
    """hivemind's clock, which DHT expirations are measured in (wall clock, seconds)."""
    from hivemind.utils.timed_storage import get_dht_time

    return get_dht_time()


def check_port_free(host: str, port: int) -> None:
    """Fail early, with the fix, when the listen port is taken (p2pd's own error is cryptic)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise SwarmtrainError(
                f"cannot listen on {host}:{port}: {e.strerror}",
                f"pick another port (--port {port + 1}) or --port 0 for a free one",
            ) from None


LIBP2P_GREETING = b"\x13/multistream/1.0.0\n"
"""What a libp2p peer's listener writes first on every new connection (multistream-select)."""


def probe_peer(address: Address, timeout: float) -> dict:
    """Does this peer accept TCP connections, and is it a libp2p peer (it greets with multistream-select
    at once; a web server or any other program on that port does not)? {address, up, libp2p,
    latency_ms, error} (error: the OS error if down, what was wrong if up but not libp2p)."""
    t0 = time.monotonic()
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as conn:
            latency = round(1000 * (time.monotonic() - t0), 1)
            conn.settimeout(min(timeout, 3.0))
            greeting = b""
            try:
                while len(greeting) < len(LIBP2P_GREETING) and (
                    more := conn.recv(len(LIBP2P_GREETING) - len(greeting))
                ):
                    greeting += more
            except OSError:  # silent within the timeout (a web server waits for our request) or reset
                pass
        libp2p = greeting == LIBP2P_GREETING
        error = None if libp2p else "accepts TCP connections but does not answer as a libp2p peer"
        return {"address": address.text, "up": True, "libp2p": libp2p, "latency_ms": latency, "error": error}
    except OSError as e:
        error = e.strerror or type(e).__name__
        return {"address": address.text, "up": False, "libp2p": False, "latency_ms": None, "error": error}


NOT_A_PEER_FIX = (
    "the port belongs to another program, or the address is not a swarm peer's: copy the whole "
    "address `swarmtrain bootstrap` printed (/ip4/.../tcp/PORT/p2p/PEER_ID)"
)


def wait_for_initial_peers(peers: list[Address], timeout: float) -> None:
    """Wait until at least one initial peer answers as a libp2p peer; say which failed and why.
    When every peer answered TCP but none as a libp2p peer, waiting longer would not help: refuse at once."""
    deadline = time.monotonic() + timeout
    errors: dict[str, str] = {}
    while True:
        answers = [probe_peer(peer, timeout=min(5.0, timeout)) for peer in peers]
        for peer, answer in zip(peers, answers, strict=True):
            if answer["libp2p"]:
                for other, why in errors.items():
                    if other != peer.text:
                        log.warning("initial peer %s did not answer: %s", other, why)
                return
            errors[peer.text] = answer["error"]
        lines = "\n".join(f"  {p}: {why}" for p, why in errors.items())
        if all(a["up"] for a in answers):
            raise SwarmtrainError(f"no initial peer is a swarm peer:\n{lines}", NOT_A_PEER_FIX)
        if time.monotonic() >= deadline:
            raise SwarmtrainError(
                f"none of the initial peers answered within {timeout:.0f} s:\n{lines}",
                "check that the bootstrap peer is running and the address is copied exactly;\n"
                "wait longer with --startup-timeout SECONDS, or start a swarm of your own with "
                "`swarmtrain bootstrap --run run.toml`",
            )
        time.sleep(0.5)  # note: polling a TCP port; there is no event to await


class Swarm:
    """This node's handle on the DHT."""

    def __init__(self, dht, *, client_mode: bool, identity_path: str = ""):
        self.dht = dht
        self.client_mode = client_mode
        self.identity_path = identity_path  # the libp2p key behind peer_id; signs our metrics records
        self.peer_id: str = dht.peer_id.to_base58()
        self._daemon = dht.daemon_pid  # p2pd: once it is gone (a signal to our group), calls fail at once

    def reachable(self) -> bool:
        """Whether our libp2p daemon still runs: without it every DHT call would wait out its timeout."""
        return process.running(self._daemon)

    @classmethod
    def start(cls, cfg: NodeConfig, initial_peers: list[Address], *, client_mode: bool = False) -> Swarm:
        os.environ.setdefault("HIVEMIND_LOGLEVEL", "ERROR")

        check_port_free(cfg.host, cfg.port)
        announce = parse_announce(cfg.announce)  # a bad address fails here, before p2pd starts
        patch_timed_storage()  # before the DHT node stores anything
        if initial_peers:
            wait_for_initial_peers(initial_peers, cfg.startup_timeout)
        identity = identity_path(cfg)
        local = cfg.host.startswith("127.")
        dht = process.LocalDHT(
            event_loop=cfg.event_loop,
            initial_peers=[p.text for p in initial_peers],
            host_maddrs=[f"/ip4/{cfg.host}/tcp/{cfg.port}"],
            announce_maddrs=announce or None,  # None: libp2p announces what it listens on
            identity_path=identity,
            startup_timeout=cfg.startup_timeout,
            client_mode=client_mode,
            nat_port_map=not local,
            auto_nat=not local,
        )
        try:
            dht.start(timeout=cfg.startup_timeout + 30)
        except Exception as e:
            raise _explain_start_failure(e, cfg) from None
        return cls(dht, client_mode=client_mode, identity_path=identity)

    def visible_maddrs(self) -> list[str]:
        return [str(m) for m in self.dht.get_visible_maddrs()]

    def store(self, key: str, subkey: str, value: Any, ttl: float) -> bool:
        """Store for `ttl` seconds from now (a manifest: it has no time of its own)."""
        return self.store_until(key, subkey, value, dht_time() + ttl)

    def store_until(self, key: str, subkey: str, value: Any, expiration: float) -> bool:
        """Store until `expiration` (DHT time); signed records use latest_expiration(record time, ttl)."""
        if not self.reachable():
            return False
        fut = self.dht.store(key, value, expiration_time=expiration, subkey=subkey, return_future=True)
        try:
            return bool(fut.result(timeout=CALL_TIMEOUT))
        except Exception as e:
            fut.cancel()  # a timed-out store ends in the DHT's loop too
            log.warning("DHT store of %s failed: %s", key, e)
            return False

    def get_subkeys(self, key: str) -> dict[str, Any]:
        """subkey -> value of a dictionary key; {} when missing or on failure (logged)."""
        if not self.reachable():
            return {}
        fut = self.dht.get(key, latest=True, return_future=True)
        try:
            found = fut.result(timeout=CALL_TIMEOUT)
        except Exception as e:
            fut.cancel()
            log.warning("DHT get of %s failed: %s", key, e)
            return {}
        if found is None or not isinstance(found.value, dict):
            return {}
        return {str(sk): v.value for sk, v in found.value.items() if hasattr(v, "value")}

    def shutdown(self) -> None:
        """Leave the swarm: stops the DHT node and its p2pd (killed after a grace period)."""
        self.dht.shutdown()


def _explain_start_failure(e: Exception, cfg: NodeConfig) -> SwarmtrainError:
    text = str(e)
    if "already taken" in text:
        return SwarmtrainError(
            f"another running peer uses this identity ({text})", "each node needs its own --data-dir or --identity file"
        )
    if "failed to connect to bootstrap peers" in text:  # p2pd: they greet, but not as the peer id we named
        return SwarmtrainError(
            "the initial peers accept connections but none answered as the peer its address names",
            "check that each address ends with the /p2p/<peer id> `swarmtrain bootstrap` printed "
            "(it changes when the bootstrap peer's --data-dir or --identity changes)",
        )
    if "none of the initial_peers responded" in text:
        return SwarmtrainError(
            "the initial peers accept connections but none answered as a swarm peer",
            "check that the address ends with the right /p2p/<peer id> of a running node",
        )
    if "address already in use" in text.lower() or "bind" in text.lower():
        return SwarmtrainError(
            f"cannot listen on {cfg.host}:{cfg.port}: {text}", "pick another port, or --port 0 for a free one"
        )
    if isinstance(e, TimeoutError) or "timeout" in text.lower() or "timed out" in text.lower():
        return SwarmtrainError(
            f"the libp2p daemon did not start within {cfg.startup_timeout:.0f} s ({text})",
            "the machine may be busy: raise --startup-timeout",
        )
    return SwarmtrainError(
        f"could not start the DHT node: {type(e).__name__}: {text}",
        "check --host, --port and --announce; on a busy machine raise --startup-timeout",
    )


class HeartbeatPublisher:
    """Publishes this peer's heartbeat every interval from a daemon thread.

    `update(**fields)` changes what is published next; `close()` stops and withdraws it. `work`
    gives the admission proof we announce with now (renewed each epoch), read at every publish.
    """

    def __init__(
        self,
        swarm: Swarm,
        run_id: str,
        first: Heartbeat,
        *,
        interval: float,
        ttl: float,
        key,
        work: Callable[[], tuple] | None = None,
    ):
        self.swarm, self.run_id, self.interval, self.ttl, self.key = swarm, run_id, interval, ttl, key
        self.work = work
        self._record = first
        self._record_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def update(self, **fields) -> None:
        with self._record_lock:
            self._record = replace(self._record, **fields)
        self._wake.set()  # publish now: peers wait on these fields

    def _loop(self) -> None:
        last = float("-inf")
        while not self._stop.is_set():
            with self._record_lock:
                # Each time strictly after the last, even if the clock stood still or stepped back: the
                # expiration then beats the stored one's, which hivemind would otherwise keep.
                record = replace(self._record, time=max(dht_time(), last + TIME_STEP), run=self.run_id)
                record = fit_heartbeat(replace(record, work=tuple(self.work())) if self.work else record)
            last = record.time
            envelope = signed.seal(self.key, record)
            expiration = latest_expiration(record.time, self.ttl)
            self.swarm.store_until(keys.peers_key(self.run_id), record.peer, envelope, expiration)
            self._wake.wait(self.interval)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)


WITNESS_DEVICE = "witness"  # the device the organizer's witness heartbeats with (node/peer/witness.py)


def trainers(peers: dict[str, Heartbeat]) -> dict[str, Heartbeat]:
    """The peer table without the organizer's witness, which follows the chain but trains nothing:
    what a person counts as the swarm's peers."""
    return {p: hb for p, hb in peers.items() if hb.device != WITNESS_DEVICE}


def read_peers(
    swarm: Swarm, run_id: str, *, ttl: float = 120.0, on_bad: Callable[[str], None] | None = None
) -> dict[str, Heartbeat]:
    """The live peer table: peer id -> latest heartbeat signed by that peer (node/round/net.py)."""
    from node.round.net import read_peers as read_signed

    return read_signed(swarm.get_subkeys, run_id, dht_time(), ttl, on_bad)
