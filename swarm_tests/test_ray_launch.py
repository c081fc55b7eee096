"""`swarmtrain ray-launch` on a local Ray instance: two volunteers as Ray actors fine-tune a
Hugging Face model with LoRA and end bit-identical (issue 10). Skips, saying why, where Ray or
the [hf] extra is missing, or where a local Ray cannot start."""

import json
import signal

import pytest

from node.config import CHEAP_WORK_TOML
from swarm_tests.conftest import start_bootstrap

pytest.importorskip("ray", reason="Ray is not installed (pip install 'swarmtrain[ray]')")
pytest.importorskip("peft", reason="the [hf] extra is not installed (pip install 'swarmtrain[hf]')")

LORA_RUN = (
    """\
name = "ray-lora"
[model]
kind = "hf"
arch = "gpt2"
d_model = 32
n_layer = 2
n_head = 2
ctx = 32
[train]
batch_size = 4
warmup_steps = 2
[strategy]
inner_steps = 4
[peft]
method = "lora"
r = 2
[swarm]
min_peers = 2
collect_timeout = 30.0
round_timeout = 90.0
heartbeat_interval = 1.0
heartbeat_ttl = 5.0
"""
    + CHEAP_WORK_TOML
)


def test_ray_launch_two_lora_volunteers_end_identical(procs, tmp_path):
    run = tmp_path / "run.toml"
    run.write_text(LORA_RUN)
    _, maddr, run_id = start_bootstrap(procs, tmp_path, run)
    launcher = procs(
        "ray-launch",
        "--run-id",
        run_id,
        "--volunteers",
        "2",
        "--initial-peers",
        maddr,
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path / "ray"),
        "--max-rounds",
        "2",
        "--status-port",
        "-1",
        "--startup-timeout",
        "90",
    )
    try:
        code = launcher.wait(300)
    except Exception:
        launcher.popen.send_signal(signal.SIGINT)
        raise
    if "Ray could not start" in launcher.output:
        pytest.skip("a local Ray instance cannot start here: " + launcher.output[-500:])
    assert code == 0, launcher.output[-4000:]
    assert "event=ray_launched volunteers=2" in launcher.output
    results = [json.loads((tmp_path / "ray" / f"ray-{i}" / "result.json").read_text()) for i in range(2)]
    assert len({r["peer"] for r in results}) == 2  # each actor is a peer with its own identity
    assert all(r["rounds_completed"] == 2 for r in results)
    assert results[0]["digest"] == results[1]["digest"]
    assert all(r["params_trainable"] < 0.1 * r["params_total"] for r in results)  # adapters only
    assert "Traceback" not in launcher.output
