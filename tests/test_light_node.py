"""A volunteer loads only what it uses: hivemind's DHT without the rest of hivemind, no torch
shared-memory manager, and none of the optional heavy packages (node/p2p/process.py, bench footprint)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
import node.cli, node.peer.volunteer, node.peer.wiring, node.peer.bootstrap
from node.p2p import dht
from hivemind.dht import DHT
import torch.multiprocessing
heavy = ("hivemind.optim", "hivemind.averaging", "hivemind.moe", "scipy", "transformers", "peft", "ray",
         "optuna", "datasets", "matplotlib", "opacus")
print("loaded", [m for m in heavy if m in sys.modules])
print("sharing", torch.multiprocessing.get_sharing_strategy())
import hivemind
print("later", hivemind.Optimizer.__name__, hivemind.DHT is DHT)
"""


def test_a_volunteer_imports_the_dht_alone_and_the_rest_of_hivemind_on_demand():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "loaded []" in out, out
    assert "sharing file_descriptor" in out, out  # hivemind's default starts a torch_shm_manager per node
    assert "later Optimizer True" in out, out  # code that wants all of hivemind still gets it
