"""The issue's acceptance path: `swarmtrain demo` with a late joiner, end to end."""

import json
import subprocess
import sys


def test_demo_three_peers_and_a_late_joiner_end_bit_identical(tmp_path):
    summary_path = tmp_path / "summary.json"
    cmd = [
        sys.executable,
        "-m",
        "node.cli",
        "demo",
        "--peers",
        "3",
        "--rounds",
        "5",
        "--late-joiner",
        "--inner-steps",
        "24",
        "--summary-json",
        str(summary_path),
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-5000:]
    s = json.loads(summary_path.read_text())
    assert s["peers"] == 4 and s["rounds_completed"] == 5 and s["strategy"] == "diloco"
    assert len(s["model_digests"]) == 4 and len(set(s["model_digests"].values())) == 1, s["model_digests"]
    assert s["late_joiner"] in s["model_digests"]
    assert len(s["val_bpb"]) == 5 and s["val_bpb"][-1] < s["val_bpb"][0]
    assert all(v > 0 for v in s["bytes_sent"].values()) and all(v > 0 for v in s["bytes_received"].values())

    late = json.loads((tmp_path / "work" / s["names"][s["late_joiner"]] / "result.json").read_text())
    assert late["joined_round"] >= 2, "the late joiner must take the swarm's state, not start over"
    assert late["rounds_contributed"] >= 1, "the late joiner must contribute after joining"
    assert late["state_bytes_received"] > 0
