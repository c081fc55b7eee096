"""Signed metrics records: who may write them, what a reader accepts, how a monitor merges them."""

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from node.commands.monitor import merge_history, merge_rounds
from node.errors import SwarmtrainError
from node.p2p.identity import load_identity_key
from node.p2p.telemetry import decode, encode
from node.watch.report import RoundReport
from node.watch.status import StatusBoard, peer_rows
from protocol import signing
from protocol.errors import ProtocolError
from protocol.kinds.metrics import MetricsRecord
from protocol.records import Heartbeat


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    """A real hivemind identity file, its key and the peer id hivemind derives from it."""
    from hivemind.p2p import P2P
    from hivemind.p2p.p2p_daemon_bindings.datastructures import PeerID

    path = tmp_path_factory.mktemp("id") / "identity.key"
    P2P.generate_identity(str(path))
    return load_identity_key(str(path)), PeerID.from_identity(path.read_bytes()).to_base58()


def record(peer, **kw):
    base = dict(
        peer=peer,
        name="a",
        device="cpu",
        version="0.1.0",
        round=3,
        local_step=150,
        time=1.0e9,
        loss=2.5,
        val_bpb=4.1,
        tokens_per_s=900.0,
        tokens=3000,
        sent=10,
        received=20,
        dense=1000,
        rounds_ok=3,
        rounds_failed=1,
        reachability="private",
        history=((1, 3.0, None), (2, 2.7, 4.3)),
        recent=((3, "ok", 2, 1.5, 9.0), (2, "failed", 2, 0.0, 8.0)),
    )
    return MetricsRecord(**{**base, **kw})


def test_peer_id_of_matches_hivemind(identity):
    key, peer = identity
    assert signing.peer_id_of(signing.sign(key, b"x")["key"]) == peer


def test_signed_record_round_trips(identity):
    key, peer = identity
    r = record(peer)
    assert decode(encode(key, r), peer) == r


def test_tampered_body_is_refused(identity):
    key, peer = identity
    env = encode(key, record(peer))
    body = msgpack.unpackb(env["body"])
    body["tokens"] = 10**9
    with pytest.raises(ProtocolError, match="bad signature"):
        decode({**env, "body": msgpack.packb(body)}, peer)


def test_record_signed_by_another_key_is_refused(identity):
    _, peer = identity
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(ProtocolError, match="not the key of peer"):
        decode(encode(forger, record(peer)), peer)


def test_record_naming_another_peer_is_refused(identity):
    key, peer = identity
    with pytest.raises(ProtocolError, match="names"):
        decode(encode(key, record("QmZDQWu7EC9CodKfhov2S9e8GFLFtU4bNgMDwXzF2cS68n")), peer)


@pytest.mark.parametrize(
    "envelope",
    [None, [], {"body": b"x"}, {"body": "x", "key": b"", "sig": b""}, {"body": b"x" * 20000, "key": b"k", "sig": b"s"}],
)
def test_malformed_envelopes_are_refused(identity, envelope):
    with pytest.raises(ProtocolError):
        decode(envelope, identity[1])


def test_garbage_key_is_refused_not_crashing(identity):
    _, peer = identity
    with pytest.raises(ProtocolError):
        decode({"body": b"x", "key": b"\x30\x03garbage", "sig": b"s"}, peer)


@pytest.mark.parametrize(
    "change",
    [
        {"loss": float("nan")},
        {"reachability": "moon"},
        {"tokens": -1},
        {"history": [[1, 2.0]]},
        {"recent": [[1, "great", 2, 1.0, 1.0]]},
        {"recent": [[1, "ok", 2, 1.0]]},
        {"history": [[1, 2.0, None]] * 65},
        {"peer": "not a peer id"},
    ],
)
def test_metrics_record_fields_are_checked(change):
    wire = {**record("QmZDQWu7EC9CodKfhov2S9e8GFLFtU4bNgMDwXzF2cS68n").to_wire(), **change}
    with pytest.raises(ProtocolError):
        MetricsRecord.from_wire(wire)


def test_unreadable_identity_file_names_the_fix(tmp_path):
    bad = tmp_path / "identity.key"
    bad.write_bytes(b"not a key")
    with pytest.raises(SwarmtrainError, match="cannot read the identity key") as e:
        load_identity_key(str(bad))
    assert "delete it" in e.value.help


def test_board_record_carries_what_the_page_shows():
    b = StatusBoard(
        peer="QmZDQWu7EC9CodKfhov2S9e8GFLFtU4bNgMDwXzF2cS68n",
        name="a",
        run_id="r-1",
        strategy="diloco",
        device="cpu",
        version="0",
    )
    b.round_done(
        RoundReport(
            round=1,
            result="ok",
            peers=2,
            train_s=2.0,
            loss=2.5,
            val_bpb=4.0,
            tokens=100,
            sent=10,
            received=20,
            dense=1000.0,
        )
    )
    b.round_done(RoundReport(round=2, result="failed", peers=2, sent=10, received=20))
    r = b.record(local_step=50, reachability="private", now=5.0)
    assert (r.round, r.loss, r.tokens_per_s, r.rounds_ok, r.rounds_failed, r.dense) == (1, 2.5, 50.0, 1, 1, 1000)
    assert r.history == ((1, 2.5, 4.0),) and r.recent[0][:4] == (2, "failed", 2, 0.0)
    assert MetricsRecord.from_wire(r.to_wire()) == r


def test_peer_rows_share_of_work_and_gone_peers():
    a, b = "QmZDQWu7EC9CodKfhov2S9e8GFLFtU4bNgMDwXzF2cS68n", "QmSQi2NhkkfJTzRRCCLB4EMh62JwMru97SbfDiMGWtLUS9"
    hbs = {
        p: Heartbeat(peer=p, name=p[:4], round=4, state_round=3, digest="a" * 64, device="cpu", maddrs=(), time=0.0)
        for p in (a, b)
    }
    rows = peer_rows(hbs, 3, {a: record(a, tokens=3000), b: record(b, tokens=1000)})
    assert rows[a]["share"] == 0.75 and rows[b]["share"] == 0.25 and rows[a]["signed"]
    rows = peer_rows({a: hbs[a]}, 4, {a: record(a)}, previous=rows)
    assert rows[b]["alive"] is False and rows[a]["alive"] and rows[a]["lag"] == 1
    assert rows[b]["share"] is None and rows[b]["lag"] == 1 and rows[a]["share"] == 1.0


def test_monitor_merges_rounds_and_curves():
    a, b = "QmZDQWu7EC9CodKfhov2S9e8GFLFtU4bNgMDwXzF2cS68n", "QmSQi2NhkkfJTzRRCCLB4EMh62JwMru97SbfDiMGWtLUS9"
    ra = record(a, recent=((3, "failed", 2, 0.0, 7.0),), history=((1, 3.0, None), (2, 2.0, 4.0)))
    rb = record(b, recent=((3, "ok", 3, 2.0, 9.0),), history=((2, 4.0, 5.0),))
    assert merge_rounds([ra, rb]) == [{"round": 3, "result": "ok", "peers": 3, "seconds": 2.0, "time": 9.0}]
    points = merge_history([ra, rb], throughput=1800.0)
    assert [(p["round"], p["loss"], p["val_bpb"]) for p in points] == [(1, 3.0, None), (2, 3.0, 4.5)]
    assert points[-1]["tokens_per_s"] == 1800.0


def test_dht_validator_keeps_signed_records_and_refuses_forgeries(identity):
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils.serializer import MSGPackSerializer as S

    from node.p2p.dht import latest_expiration
    from node.p2p.telemetry import METRICS_TTL
    from node.p2p.validators import RunValidator
    from protocol import keys

    key, peer = identity
    v = RunValidator("run-1")
    where = DHTID.generate(source=keys.metrics_key("run-1")).to_bytes()
    r = record(peer, time=1000.0)

    def check(value, expiration=1000.0 + METRICS_TTL, subkey=peer, at=where):
        return v.validate(DHTRecord(at, S.dumps(subkey), S.dumps(value), expiration))

    assert check(encode(key, r))
    assert check(encode(key, r), expiration=latest_expiration(1000.0, METRICS_TTL))  # what our publisher stores
    assert not check(encode(key, r), expiration=1000.0 + 10 * METRICS_TTL)  # an old record replayed to outlive
    assert not check(b"garbage") and not check({"body": b"x", "key": b"y", "sig": b"z"})
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert not check(encode(forger, r))
    assert not check(encode(key, r), at=DHTID.generate(source="another key").to_bytes())  # only under its key
    import pickle

    assert pickle.loads(pickle.dumps(v)).metrics_key == where  # it travels into the DHT process
