"""Every sparse strategy runs in a real swarm: equal digests, and the bytes on the wire agree
with the codec's own accounting (the envelope and framing add a little, never 10%)."""

import json
import subprocess
import sys

import pytest

from node.config import CHEAP_WORK_TOML


@pytest.mark.parametrize("strategy", ["sparseloco", "decoupled-momentum"])
def test_demo_strategy_bit_identical_and_bytes_match_codec(tmp_path, strategy):
    summary = tmp_path / "s.json"
    cmd = [
        sys.executable,
        "-m",
        "node.cli",
        "demo",
        "--strategy",
        strategy,
        "--peers",
        "3",
        "--rounds",
        "3",
        "--inner-steps",
        "10",
        "--summary-json",
        str(summary),
        "--workdir",
        str(tmp_path / "w"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    s = json.loads(summary.read_text())
    assert s["strategy"] == strategy and s["peers"] == 3 and s["rounds_completed"] == 3
    assert len(set(s["model_digests"].values())) == 1, s["model_digests"]
    for peer in s["model_digests"]:
        for kind in ("sent", "received"):
            wire, codec = s[f"bytes_{kind}"][peer], s[f"codec_bytes_{kind}"][peer]
            if codec == 0:  # a straggler whose updates no roster took: only its requests went out
                assert kind == "sent" and wire < 4096, (kind, wire)
            else:
                assert abs(wire - codec) / codec < 0.10, (kind, wire, codec)
    assert sum(s["codec_bytes_sent"].values()) > 0


def test_overlapped_rounds_stay_bit_identical(tmp_path):
    """[strategy] overlap: each peer trains round r+1 while round r's updates travel, from its own
    start (the state it holds plus its progress in flight); the swarm's state stays one."""
    run = tmp_path / "run.toml"
    run.write_text(
        'name = "overlap"\n[model]\nd_model = 64\nn_layer = 2\nn_head = 4\nctx = 64\n'
        "[train]\nbatch_size = 8\nwarmup_steps = 5\n"
        '[strategy]\nname = "sparseloco"\ninner_steps = 10\noverlap = true\n'
        "[swarm]\ncollect_timeout = 20.0\nround_timeout = 90.0\nheartbeat_interval = 1.0\n"
        "heartbeat_ttl = 6.0\nmin_peers = 3\n" + CHEAP_WORK_TOML
    )
    summary = tmp_path / "s.json"
    cmd = [
        sys.executable,
        "-m",
        "node.cli",
        "demo",
        "--run",
        str(run),
        "--peers",
        "3",
        "--rounds",
        "4",
        "--summary-json",
        str(summary),
        "--workdir",
        str(tmp_path / "w"),
        "--monitor-port",
        "-1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    s = json.loads(summary.read_text())
    assert s["rounds_completed"] == 4 and len(s["model_digests"]) == 3
    assert len(set(s["model_digests"].values())) == 1, s["model_digests"]
