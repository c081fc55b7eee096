"""The API's examples (examples/plain_torch.py, examples/hf_trainer.py), each as a 2-peer swarm on
127.0.0.1 to equal digests, and the model out: swarm.export and `swarmtrain export` write the
same state, and transformers loads the export to the same logits (tolerance 0)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from node.train.model import digest
from swarm_tests.conftest import ROOT, Proc

FINISHED = r"finished round=(\d+) digest=(\w+)"


def two_peers(tmp_path: Path, script: str, monkeypatch, *more: str) -> tuple[Proc, Proc]:
    """The organizer (peer a, exporting its final state) and a volunteer (b) of `script`'s run."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(ROOT / "examples" / script)]
    a = Proc(["--data-dir", str(tmp_path / "a"), "--export", str(tmp_path / "out"), *more], tmp_path, command=command)
    try:
        found = a.wait_for(r"organizer run_id=(\S+) maddr=(\S+)", 90)
        b = Proc(["--data-dir", str(tmp_path / "b"), "--run-id", found[1], "--initial-peers", found[2], *more],
                 tmp_path, command=command)  # fmt: skip
    except BaseException:
        a.kill_all()
        raise
    return a, b


def exported(path: Path) -> tuple[dict, str]:
    """The tensors of a swarm-state.safetensors and the digest of them in model order."""
    with safe_open(str(path), "pt") as f:
        names = json.loads(f.metadata()["names"])
    tensors = load_file(str(path))
    return tensors, digest([tensors[n] for n in names])


def finish(a: Proc, b: Proc) -> tuple[str, str]:
    try:
        ends = [p.wait_for(FINISHED, 120) for p in (a, b)]
        assert a.wait(30) == 0 and b.wait(30) == 0, a.output[-3000:] + b.output[-3000:]
    finally:
        a.kill_all()
        b.kill_all()
    assert ends[0][1] == ends[1][1], (ends[0][0], ends[1][0])
    return ends[0][2], ends[1][2]


def test_plain_torch_example_two_peers_equal_digests_and_exports(tmp_path, monkeypatch):
    a, b = two_peers(tmp_path, "plain_torch.py", monkeypatch, "--rounds", "3")
    da, db = finish(a, b)
    assert da == db
    assert len(re.findall(r"event=round round=\d+ peers=2 ", a.output)) >= 2  # both peers trained the rounds
    assert re.search(r"event=round round=\d+ .* accuracy=[\d.]+", a.output)  # the user's metric, by its name
    state, exported_digest = exported(tmp_path / "out" / "swarm-state.safetensors")
    assert exported_digest == da  # the export is the swarm's state
    cli = subprocess.run(
        [sys.executable, "-m", "node.cli", "export", "--data-dir", str(tmp_path / "b"), "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    from_cli = load_file(str(tmp_path / "cli" / "swarm-state.safetensors"))
    assert list(from_cli) == list(state) and all(torch.equal(from_cli[k], state[k]) for k in state)


def test_hf_trainer_example_two_peers_and_the_export_loads_with_transformers(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    a, b = two_peers(tmp_path, "hf_trainer.py", monkeypatch, "--rounds", "2")
    da, db = finish(a, b)
    assert da == db
    out = tmp_path / "out"
    state, exported_digest = exported(out / "swarm-state.safetensors")
    assert exported_digest == da
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    fresh = transformers.GPT2LMHeadModel(loaded.config).eval()  # the example's model, holding the swarm's state
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing)  # lm_head is tied to the embedding
    ids = torch.arange(16).remainder(64).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, fresh(ids).logits)  # tolerance 0
