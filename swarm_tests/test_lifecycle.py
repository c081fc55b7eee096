"""Leaving cleanly, and refusing bad input with a clear error instead of a traceback."""

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from node.config import load_run_config
from node.outer.state import SwarmState
from node.train.model import build_model
from swarm_tests.conftest import alive, free_port, join_args, start_bootstrap

PEER = "QmNgri3sqZDwwFzgKdnak1ZWaSAe9yYu2XZL5zD1ca43ne"


def _gone_within(pids: list[int], deadline: float) -> list[int]:
    """The pids of `pids` still running at `deadline` (time.monotonic)."""
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)  # note: not our children, so there is no exit event to await
    return [p for p in pids if alive(p)]


@pytest.mark.parametrize(
    "sig,group",
    [(signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGINT-to-node", "SIGTERM-to-groups"],  # Ctrl+C / `kill PID`; `timeout`, systemd, supervisors
)
def test_signal_ends_every_process_within_10s_and_keeps_checkpoint(procs, tmp_path, small_run, sig, group):
    boot = start_bootstrap(procs, tmp_path, small_run)
    node = procs(*join_args(boot, str(tmp_path / "v"), "--result-json", str(tmp_path / "v.json")))
    node.wait_for(r"event=round round=2 ", 120)
    url = node.wait_for(r"status_url=(\S+)", 5).group(1)
    status = json.loads(urllib.request.urlopen(url + "api/status", timeout=10).read())
    assert status["round"] >= 2 and [p["name"] for p in status["peers"]] and status["alone"]
    metrics = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    assert "swarmtrain_global_step" in metrics and 'swarmtrain_rounds_total{result="ok"}' in metrics
    below = node.descendants() + (boot.proc.descendants() if group else [])
    names = {p: Path(f"/proc/{p}/comm").read_text().strip() for p in below}
    assert "p2pd" in names.values(), names
    assert "torch_shm_manag" not in names.values(), names  # node/p2p/__init__.py: no shared-memory manager
    t0 = time.monotonic()
    if group:  # every process of both nodes gets it at once (the DHT child used to ignore it and hang)
        for p in (node, boot.proc):
            os.killpg(p.popen.pid, sig)
    else:
        node.popen.send_signal(sig)
    assert node.wait(10) == 130, node.output[-3000:]
    if group:
        assert boot.proc.wait(max(0.1, t0 + 10 - time.monotonic())) == 130, boot.proc.output[-3000:]
    assert not _gone_within(below, t0 + 10), names  # the DHT processes and their p2pd
    assert "Traceback" not in node.output

    result = json.loads((tmp_path / "v.json").read_text())
    ckpt = tmp_path / "v" / "runs" / result["run_id"] / "checkpoint.swt"
    model = build_model(load_run_config(small_run).model, 0)
    template = SwarmState.initial(model, ["momentum"])
    state = SwarmState.from_bytes(ckpt.read_bytes(), run_id=result["run_id"], template=template)
    assert state.round >= 2 and state.digest == result["digest"]
    assert not list(ckpt.parent.glob("*.tmp"))


def test_restart_resumes_from_checkpoint(procs, tmp_path, small_run):
    _, maddr, run_id = start_bootstrap(procs, tmp_path, small_run)
    args = (
        "join",
        "--run-id",
        run_id,
        "--initial-peers",
        maddr,
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path / "v"),
        "--threads",
        "1",
    )
    first = procs(*args, "--max-rounds", "2")
    assert first.wait(120) == 0, first.output[-3000:]
    peer = first.wait_for(r"event=joined peer=(\S+)", 5).group(1)
    second = procs(*args, "--max-rounds", "3")
    again = second.wait_for(r"event=joined peer=(\S+) .*round=2 state=checkpoint", 60).group(1)
    assert again == peer  # the identity file in --data-dir keeps the peer id
    assert second.wait(120) == 0, second.output[-3000:]


def _run_cli(procs, *args, timeout=60):
    p = procs(*args)
    code = p.wait(timeout)
    p.wait_for("<eof>", 10)
    return code, p.output


def test_unreachable_initial_peer_is_named(procs):
    port = free_port()  # nothing listens here now
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{PEER}"
    code, out = _run_cli(procs, "join", "--initial-peers", addr, "--startup-timeout", "2")
    assert code == 2
    assert addr in out and "refused" in out.lower() and "help:" in out and "Traceback" not in out


def test_port_in_use(procs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = _run_cli(
            procs, "join", "--new-swarm", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "v")
        )
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in out and "--port 0" in out


def test_malformed_multiaddr_and_empty_peer_list(procs):
    code, out = _run_cli(procs, "join", "--initial-peers", "/ip4/300.1.1.1/tcp/1")
    assert code == 2 and "not a valid multiaddr" in out and "Traceback" not in out
    code, out = _run_cli(procs, "join")
    assert code == 2 and "swarmtrain bootstrap" in out and "Traceback" not in out


def test_unknown_run_is_refused(procs, tmp_path, small_run):
    maddr = start_bootstrap(procs, tmp_path, small_run).maddr
    code, out = _run_cli(
        procs,
        "join",
        "--initial-peers",
        maddr,
        "--host",
        "127.0.0.1",
        "--run-id",
        "other-123",
        "--data-dir",
        str(tmp_path / "v"),
        "--startup-timeout",
        "3",
    )
    assert code == 2 and "found no run 'other-123'" in out and "Traceback" not in out
