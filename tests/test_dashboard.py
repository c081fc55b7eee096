import json
import socket
import urllib.error
import urllib.request

import pytest

from node.errors import SwarmtrainError
from node.watch.dashboard.server import StatusServer
from node.watch.metrics import NodeMetrics
from node.watch.report import RoundReport
from node.watch.status import StatusBoard
from protocol.records import Heartbeat

REQUIRED = [
    "swarmtrain_node_info",
    "swarmtrain_local_step",
    "swarmtrain_global_step",
    "swarmtrain_train_loss",
    "swarmtrain_val_bits_per_byte",
    "swarmtrain_tokens_total",
    "swarmtrain_samples_total",
    "swarmtrain_step_duration_seconds_bucket",
    "swarmtrain_rounds_total",
    "swarmtrain_round_peers",
    "swarmtrain_peers_alive",
    "swarmtrain_wire_bytes_total",
    "swarmtrain_dense_equivalent_bytes_total",
    "swarmtrain_state_syncs_total",
]


def board():
    return StatusBoard(peer="QmA", name="a", run_id="r-1", strategy="diloco", device="cpu", version="0")


def hb(peer, state_round):
    return Heartbeat(
        peer=peer,
        name=peer.lower(),
        round=state_round + 1,
        state_round=state_round,
        digest="a" * 64,
        device="cpu",
        maddrs=(),
        time=0.0,
    )


def test_metrics_exposition_has_every_documented_metric():
    m = NodeMetrics()
    m.info.info({"peer_id": "QmA", "name": "a", "version": "0", "device": "cpu", "run_id": "r", "strategy": "diloco"})
    m.on_bytes("sent", "update", 100)
    m.round_done(
        RoundReport(
            round=1,
            result="ok",
            peers=4,
            steps=2,
            tokens=128,
            samples=2,
            loss=2.0,
            dense=m.dense_equivalent(params=1000, peers=4, steps=2),
        )
    )
    text = m.exposition().decode()
    for name in REQUIRED:
        assert name in text, name
    assert 'swarmtrain_wire_bytes_total{direction="sent",kind="update"} 100.0' in text
    assert 'swarmtrain_dense_equivalent_bytes_total{direction="sent"} 12000.0' in text  # 2*3/4*4*1000*2


def test_status_board_alone_and_saved_fraction():
    b = board()
    b.peers_seen({"QmA": hb("QmA", 3)}, 3)
    b.round_done(
        RoundReport(
            round=3, result="ok", peers=1, train_s=2.0, loss=2.5, tokens=100, sent=10, received=10, dense=1000.0
        )
    )
    s = b.snapshot()
    assert s["alone"] and s["peers_alive"] == 1 and s["bandwidth"]["saved_fraction"] == 0.99
    b.peers_seen({"QmA": hb("QmA", 3), "QmB": hb("QmB", 2)}, 3)
    s = b.snapshot()
    assert not s["alone"] and [p["lag"] for p in s["peers"]] == [0, 1]
    b.peers_seen({"QmA": hb("QmA", 4)}, 4)
    assert [p["alive"] for p in b.snapshot()["peers"]] == [True, False]
    assert s["loss_history"][0]["tokens_per_s"] == 50


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers["Content-Type"], r.read()


def test_server_routes():
    b, m = board(), NodeMetrics()
    server = StatusServer("127.0.0.1", 0, b.snapshot, m.exposition)
    try:
        ctype, body = get(server.url + "api/status")
        assert ctype == "application/json" and json.loads(body)["node"]["run_id"] == "r-1"
        ctype, body = get(server.url + "metrics")
        assert ctype.startswith("text/plain") and b"swarmtrain_global_step" in body
        ctype, body = get(server.url)
        assert ctype.startswith("text/html") and b"<svg" in body
        assert b"cdn" not in body.lower() and b"src=" not in body  # nothing loaded from elsewhere
        with pytest.raises(urllib.error.HTTPError):
            get(server.url + "nope")
    finally:
        server.close()


def test_status_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SwarmtrainError, match="cannot serve the status page") as e:
            StatusServer("127.0.0.1", s.getsockname()[1], dict, bytes)
    assert "--status-port" in e.value.help
