"""Signed metrics records in the DHT: each node publishes how its training goes; monitors read them.

Records travel through peers we do not trust, so each is signed with the node's libp2p
identity (protocol/signing.py) and a reader keeps only records whose signature matches the
peer id they are filed under. The record is small (a few kB) and published once per round
from a background thread, so a slow DHT never stalls training.
"""

from __future__ import annotations

import logging
import threading

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from node.p2p.dht import Swarm, latest_expiration
from protocol import keys, signing
from protocol.errors import ProtocolError
from protocol.kinds.metrics import MAX_METRICS_BODY, MetricsRecord

log = logging.getLogger("swarmtrain.telemetry")
METRICS_TTL = 600.0  # seconds; longer than any round, so a slow peer's record does not blink out


def encode(key: rsa.RSAPrivateKey, record: MetricsRecord) -> dict:
    return signing.sign(key, msgpack.packb(record.to_wire(), use_bin_type=True))


def decode(envelope: object, signer: str) -> MetricsRecord:
    """A verified record, or ProtocolError. The record must also name its signer as its peer."""
    body = signing.verify(envelope, signer=signer, max_body=MAX_METRICS_BODY)
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for garbage
        raise ProtocolError(f"metrics record: not msgpack ({type(e).__name__})") from None
    record = MetricsRecord.from_wire(raw)
    if record.peer != signer:
        raise ProtocolError(f"metrics record: filed under {signer[:16]} but names {record.peer[:16]}")
    return record


def read_metrics(swarm: Swarm, run_id: str) -> dict[str, MetricsRecord]:
    """Peer id -> its latest verified metrics record; forged or malformed ones are dropped (logged)."""
    out = {}
    for subkey, envelope in swarm.get_subkeys(keys.metrics_key(run_id)).items():
        try:
            out[subkey] = decode(envelope, subkey)
        except ProtocolError as e:
            log.info("ignoring a metrics record under %s: %s", subkey[:16], e)
    return out


def valid_stored_record(subkey_bytes: bytes, value_bytes: bytes, expiration: float) -> bool:
    """Is this (serialised) DHT entry a signed record of its subkey's peer, with an honest expiration?

    The run's DHT validator (node/p2p/validators.py) asks this of every value under the metrics
    key: without it anyone could overwrite a peer's record with garbage, or replay an old one
    with a far expiration, to hide that peer from monitors. Our publisher stores at the latest
    expiration allowed, so no replayed older record outlives a newer one."""
    from hivemind.utils.serializer import MSGPackSerializer

    try:
        subkey = MSGPackSerializer.loads(subkey_bytes)
        record = decode(MSGPackSerializer.loads(value_bytes), subkey)
    except Exception:  # anything a peer can send: malformed msgpack, bad types, bad signature
        return False
    return expiration <= latest_expiration(record.time, METRICS_TTL)


class MetricsPublisher:
    """Signs and stores the latest record from a daemon thread; `publish()` never blocks."""

    def __init__(self, swarm: Swarm, run_id: str, key: rsa.RSAPrivateKey):
        self.swarm, self.run_id, self.key = swarm, run_id, key
        self._latest: MetricsRecord | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-record", daemon=True)
        self._thread.start()

    def publish(self, record: MetricsRecord) -> None:
        with self._lock:
            self._latest = record
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                record, self._latest = self._latest, None
            if record is not None:  # expiry counted from the record's own time, as validators demand
                expiration = latest_expiration(record.time, METRICS_TTL)
                self.swarm.store_until(keys.metrics_key(self.run_id), record.peer, encode(self.key, record), expiration)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=35)
