"""DHT validators for every key of a run: honest DHT nodes refuse to store, and drop on reading,
anything but a correctly signed swarmtrain record filed where its own body says it belongs.

hivemind keeps, per (key, subkey), the value with the latest expiration. Without these checks
anyone could overwrite another peer's heartbeat or announcement for good (a far expiration),
hide a whole peer table behind a plain value, or forge a roster. The rules, for each value:
  * it is a signed v2 envelope (protocol/signed.py) or, under this run's metrics key, a signed
    metrics record (node/p2p/telemetry.py); nothing else is stored;
  * the key and subkey its signed body claims are the ones it is stored under, and the
    signature is by that subkey's peer (by the organizer named in a manifest);
  * its `time` is at most MAX_SKEW in the future, and it expires at most its kind's TTL + SLACK
    after that time (a manifest: after now, since it is immutable and re-published by others);
  * a heartbeat's signed body is at most protocol/signed.py's MAX_BODY (1 KiB), checked before
    decoding or any signature: padded ones would fill the reply to a peer-table read;
  * it is a dictionary entry: a plain value under a key is refused.
Our own stores use the latest expiration allowed (node/p2p/dht.py: latest_expiration), so a
replayed older copy never outlives a newer one.
It is a module-level class of plain fields: swarm_tests' helpers pickle it into a forked hivemind.DHT.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.p2p.dht import SLACK, latest_expiration
from node.p2p.telemetry import valid_stored_record
from node.round.net import MAX_SKEW
from protocol import signed
from protocol.errors import ProtocolError
from protocol.kinds.call import Call
from protocol.records import Announcement, Heartbeat, Roster

MANIFEST_TTL = 3600.0  # seconds a stored manifest lives; its keepers re-publish it well before (node/peer/manifest.py)
CLASSES = {"heartbeat": Heartbeat, "announcement": Announcement, "roster": Roster, "call": Call}


@dataclass
class RunValidator:
    """hivemind RecordValidatorBase by duck typing (so protocol code never imports hivemind)."""

    run_id: str
    heartbeat_ttl: float = 120.0
    """Longest heartbeat life accepted (the run's heartbeat_ttl)."""
    round_ttl: float = 3600.0
    """Longest life of an announcement, roster or call."""
    priority: int = 0

    def __post_init__(self):
        from hivemind.dht.routing import DHTID

        from protocol import keys

        self.metrics_key = DHTID.generate(source=keys.metrics_key(self.run_id)).to_bytes()

    def validate(self, record) -> bool:
        from hivemind.utils.timed_storage import get_dht_time

        return self.check(record.key, record.subkey, record.value, record.expiration_time, get_dht_time())

    def check(self, key: bytes, subkey_bytes: bytes, value_bytes: bytes, expiration: float, now: float) -> bool:
        from hivemind.dht.protocol import DHTProtocol
        from hivemind.dht.routing import DHTID
        from hivemind.utils.serializer import MSGPackSerializer

        if subkey_bytes in DHTProtocol.RESERVED_SUBKEYS:
            return False  # every swarmtrain key is a dictionary: no plain value may hide one
        if key == self.metrics_key:
            return valid_stored_record(subkey_bytes, value_bytes, expiration)
        try:
            subkey = MSGPackSerializer.loads(subkey_bytes)
            envelope = MSGPackSerializer.loads(value_bytes)
            claimed = signed.claimed_key(envelope)
        except Exception:  # malformed msgpack or odd types from a peer: a validator never raises
            return False
        if claimed is None or claimed[1] != subkey or DHTID.generate(source=claimed[0]).to_bytes() != key:
            return False
        try:
            return self._signed_and_fresh(envelope, subkey, expiration, now)
        except ProtocolError:
            return False

    def _signed_and_fresh(self, envelope: dict, subkey: str, expiration: float, now: float) -> bool:
        kind = envelope["kind"]
        if kind == "manifest":
            signed.open_manifest(envelope, subkey)
            return expiration <= now + MANIFEST_TTL + SLACK
        if kind == "roster":
            record, _ = signed.open_roster(envelope, signer=subkey)
        elif kind == "call":
            record, _ = signed.open_call(envelope, signer=subkey)
        else:
            record = signed.open_record(envelope, CLASSES[kind], signer=subkey)
        ttl = self.heartbeat_ttl if kind == "heartbeat" else self.round_ttl
        return record.time <= now + MAX_SKEW and expiration <= latest_expiration(record.time, ttl)

    def sign_value(self, record) -> bytes:
        return record.value  # signed by the application already

    def strip_value(self, record) -> bytes:
        return record.value

    def merge_with(self, other) -> bool:
        return False


def guard_run(swarm, run_id: str, *, heartbeat_ttl: float = 120.0, round_ttl: float = 3600.0) -> None:
    """Install the run's validator in this node's DHT node (once per node, when it knows the run):
    it then refuses to store, and drops on reading, forged records of every kind, metrics records
    included. Monitors install it with the default TTLs; volunteers and bootstrap peers with their run's."""
    swarm.dht.add_validators([RunValidator(run_id, heartbeat_ttl=heartbeat_ttl, round_ttl=round_ttl)])
