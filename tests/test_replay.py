"""Replays cannot pin or erase a victim's records (issue 16). hivemind keeps per (key, subkey) the
value with the latest expiration, the stored one on a tie; anyone may re-store a copy of any record
it has read. Our publishers run against hivemind's own DHTLocalStorage behind the run's validator,
as a DHT node's rpc_store does (patched as Swarm.start patches it), on a clock the test moves (no
network, no DHT process)."""

import queue
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from node.p2p import telemetry, validators
from node.p2p.dht import HeartbeatPublisher
from node.p2p.telemetry import METRICS_TTL, MetricsPublisher, decode
from protocol import keys, signed, signing
from protocol.kinds.metrics import MetricsRecord
from protocol.records import Announcement, Heartbeat

RUN = "demo-0123456789ab"
TTL = 8.0  # heartbeat_ttl (the default)
T0 = 1.0e9


class Clock:
    def __init__(self):
        self.t = T0

    def __call__(self) -> float:
        return self.t


class DHTNode:
    """One DHT node's storage, reached as hivemind's rpc_store reaches it: validator, then storage.
    Also the Swarm our publishers write through (`store`, and `store_until` where it exists)."""

    def __init__(self, clock: Clock, monkeypatch):
        import hivemind.utils.timed_storage as timed
        from hivemind.dht.storage import DHTLocalStorage

        from node.p2p.dht import patch_timed_storage

        patch_timed_storage()
        monkeypatch.setattr(timed, "get_dht_time", clock)  # hivemind's storage and the validator's clock
        monkeypatch.setattr("node.p2p.dht.dht_time", clock)  # our publishers'
        self.clock, self.storage = clock, DHTLocalStorage()
        self.validator = validators.RunValidator(RUN, heartbeat_ttl=TTL, round_ttl=600.0)
        self.peer_id = "unused"
        self.stores: queue.Queue = queue.Queue()  # (value, expiration, stored) of each of our publishers' stores

    def put(self, key: str, subkey: str, value, expiration: float) -> bool:
        from hivemind.dht.routing import DHTID
        from hivemind.dht.validation import DHTRecord
        from hivemind.utils.serializer import MSGPackSerializer as S

        key_id = DHTID.generate(source=key)
        if not self.validator.validate(DHTRecord(key_id.to_bytes(), S.dumps(subkey), S.dumps(value), expiration)):
            return False
        return self.storage.store(key_id, S.dumps(value), expiration, subkey=subkey)

    def held(self, key: str, subkey: str):
        from hivemind.dht.routing import DHTID
        from hivemind.utils.serializer import MSGPackSerializer as S

        found = self.storage.get(DHTID.generate(source=key))
        entry = found.value.get(subkey) if found is not None else None
        return None if entry is None else S.loads(entry.value)

    def store_until(self, key, subkey, value, expiration) -> bool:
        ok = self.put(key, subkey, value, expiration)
        self.stores.put((value, expiration, ok))
        return ok

    def store(self, key, subkey, value, ttl) -> bool:  # the old publishers' way: from now
        return self.store_until(key, subkey, value, self.clock() + ttl)

    def next_store(self):
        return self.stores.get(timeout=10)


@pytest.fixture(scope="module")
def victim():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, signing.peer_id_of(signing.public_der(key))


@pytest.fixture
def node(monkeypatch):
    return DHTNode(Clock(), monkeypatch)


def first_heartbeat(peer: str) -> Heartbeat:
    return Heartbeat(
        run=RUN, peer=peer, name="v", round=1, state_round=0, digest="ab" * 32, device="cpu", maddrs=(), time=T0
    )


@pytest.fixture
def publisher(node, victim):
    key, peer = victim
    pub = HeartbeatPublisher(node, RUN, first_heartbeat(peer), interval=1000.0, ttl=TTL, key=key)
    yield pub
    pub.close()


def latest_allowed(record_time: float, ttl: float) -> float:
    """The latest expiration the validator accepts for a record of `record_time` (probed, not assumed)."""
    return record_time + ttl + validators.SLACK


def test_a_replayed_heartbeat_cannot_outlive_its_successor(node, victim, publisher):
    key, peer = victim
    old, _, ok = node.next_store()
    assert ok
    node.clock.t += 2
    publisher.update(round=2)
    assert node.next_store()[2]
    # the attacker re-stores the victim's older heartbeat with the latest expiration the validator allows
    older_time = signed.open_record(old, Heartbeat).time
    assert not node.put(keys.peers_key(RUN), peer, old, latest_allowed(older_time, TTL))
    assert signed.open_record(node.held(keys.peers_key(RUN), peer), Heartbeat).round == 2
    node.clock.t += 2
    publisher.update(round=3)  # ...and the victim's next heartbeat is taken, not refused for TTL + SLACK
    assert node.next_store()[2]
    assert signed.open_record(node.held(keys.peers_key(RUN), peer), Heartbeat).round == 3


def test_our_heartbeats_are_taken_when_the_clock_stands_still_or_steps_back(node, victim, publisher):
    """hivemind keeps the stored value on an equal expiration; our next heartbeat is always later."""
    from hivemind.dht.routing import DHTID
    from hivemind.dht.storage import DHTLocalStorage

    storage, where = DHTLocalStorage(), DHTID.generate(source="k")
    assert storage.store(where, b"first", T0 + 10, subkey="p")
    assert not storage.store(where, b"second", T0 + 10, subkey="p")  # a tie keeps the first
    assert node.next_store()[2]
    publisher.update(round=2)  # the same clock reading
    assert node.next_store()[2]
    node.clock.t -= 5  # NTP stepped the clock back
    publisher.update(round=3)
    assert node.next_store()[2]
    assert signed.open_record(node.held(keys.peers_key(RUN), victim[1]), Heartbeat).round == 3


def test_a_replay_with_a_short_expiry_cannot_erase_a_newer_heartbeat(node, victim, publisher):
    """hivemind's TimedStorage.store filed even a refused value's expiration in its expiry heap, and
    then dropped the held value at that time: a replay expiring in half a second erased the victim."""
    key, peer = victim
    current, _, _ = node.next_store()
    node.clock.t += 1.0
    publisher.update(round=2)
    assert node.next_store()[2]
    assert not node.put(keys.peers_key(RUN), peer, current, node.clock() + 0.5)  # refused...
    node.clock.t += 1.0
    assert signed.open_record(node.held(keys.peers_key(RUN), peer), Heartbeat).round == 2  # ...and harmless


def test_a_replayed_metrics_record_cannot_outlive_its_successor(node, victim):
    key, peer = victim
    publisher = MetricsPublisher(node, RUN, key)
    try:
        record = MetricsRecord(
            peer=peer,
            name="v",
            device="cpu",
            version="0.1.0",
            round=1,
            local_step=1,
            time=T0,
            loss=2.5,
            val_bpb=None,
            tokens_per_s=1.0,
            tokens=1,
            sent=0,
            received=0,
            dense=1,
            rounds_ok=1,
            rounds_failed=0,
            reachability="private",
            history=(),
            recent=(),
        )
        publisher.publish(record)
        old, _, ok = node.next_store()
        assert ok
        node.clock.t += 60  # one round later
        publisher.publish(replace(record, round=2, time=node.clock()))
        assert node.next_store()[2]
    finally:
        publisher.close()
    slack = getattr(telemetry, "EXPIRY_SLACK", validators.SLACK)  # (metrics records had a slack of their own)
    assert not node.put(keys.metrics_key(RUN), peer, old, T0 + METRICS_TTL + slack)
    assert decode(node.held(keys.metrics_key(RUN), peer), peer).round == 2


def test_a_replayed_announcement_is_refused_and_cannot_erase_it(node, victim):
    """Round records go through RealNet.store: stored until their own time + ttl + SLACK."""
    from node.p2p.roundnet import RealNet

    key, peer = victim
    ann = Announcement(
        run=RUN, round=5, peer=peer, nbytes=10, sha256="cd" * 32, tokens=1, base="ab" * 32, time=node.clock()
    )
    envelope, where = signed.seal(key, ann), keys.updates_key(RUN, 5)
    assert RealNet(node, exchange=None).store(where, peer, envelope, 600.0)
    assert not node.put(where, peer, envelope, latest_allowed(ann.time, 600.0))  # no longer than ours
    assert not node.put(where, peer, envelope, node.clock() + 1)  # a second away: erased it from this node
    node.clock.t += 30
    assert node.held(where, peer) == envelope


def test_the_storage_patch_is_applied_once_and_keeps_hiveminds_answers():
    from hivemind.dht.routing import DHTID
    from hivemind.dht.storage import DHTLocalStorage
    from hivemind.utils.timed_storage import TimedStorage

    from node.p2p.dht import patch_timed_storage

    patch_timed_storage()
    patched = TimedStorage.store
    patch_timed_storage()
    assert TimedStorage.store is patched
    storage, where = DHTLocalStorage(), DHTID.generate(source="k")
    assert storage.store(where, b"a", 2.0e9, subkey="p")  # new
    assert not storage.store(where, b"b", 2.0e9, subkey="p")  # a tie keeps the held value
    assert storage.store(where, b"c", 2.0e9 + 1, subkey="p")  # later wins
    assert not storage.store(where, b"d", 1.0, subkey="q")  # already expired
    assert storage.get(where).value.get("p").value == b"c"
