"""`swarmtrain bench footprint`: what one volunteer of the default run holds and how fast it joins.

A local swarm of the demo's run (node/commands/demo.py: a bootstrap peer and one volunteer, each
a real `swarmtrain` process on 127.0.0.1). From the volunteer's start it times the `joined` line
and the first round's; after `--rounds` rounds it samples every process under the volunteer (the
node and p2pd; before the DHT ran in the node's thread, hivemind's forked DHT process, and before
that torch's shm manager) a few times and keeps each one's peak.

Per process: RSS (resident pages, shared ones included: a forked child counts the pages it
shares with the node again) and PSS (shared pages split between the processes sharing them),
so the sum of PSS is the memory the volunteer really holds, and the sum of RSS an upper bound.
"beyond model" subtracts the training state the run needs whatever the code: the model's
parameters and gradients, AdamW's two moments, the swarm state (parameters and outer momentum)
and the round's base copy, all fp32.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench.swarm import Node
from bench.tables import markdown_table
from node.errors import SwarmtrainError

SAMPLES = 5
"""Samples of the process tree after the measured rounds, one per SAMPLE_GAP seconds; each keeps its peak."""
SAMPLE_GAP = 1.0
STATE_COPIES = 7
"""fp32 copies of the parameters any volunteer of the run holds: weights, gradients, AdamW's two
moments, the swarm state's parameters and outer momentum, the round's base."""


def role(proc, node_pid: int) -> str:
    """What a process under the volunteer is: node, dht (hivemind's forked DHT process), p2pd, torch_shm_manager."""
    if proc.pid == node_pid:
        return "node"
    name = proc.name()
    if name == "p2pd":
        return "p2pd"
    if name.startswith("torch_shm_manag"):
        return "torch_shm_manager"
    if name.startswith("python"):
        return "dht"
    return name


def sample(node_pid: int) -> dict[str, dict]:
    """role -> {pid, rss_mb, pss_mb, cpu_s} of every process under (and including) `node_pid`
    (cpu_s: its user and system seconds since it started)."""
    import psutil

    top = psutil.Process(node_pid)
    found = {}
    for proc in [top, *top.children(recursive=True)]:
        try:
            mem, cpu = proc.memory_full_info(), proc.cpu_times()
            got = {"rss_mb": mem.rss / 2**20, "pss_mb": mem.pss / 2**20, "cpu_s": cpu.user + cpu.system}
            found[role(proc, node_pid)] = {"pid": proc.pid, **got}
        except psutil.Error:
            continue  # it ended between the listing and the read
    return found


def run_footprint(json_path: str, workdir: str, rounds: int, stop: threading.Event, say=print) -> dict | None:
    """Start the swarm, measure the volunteer, write the row to `json_path`; None when stopped."""
    from node.commands.demo import DEMO_RUN_TOML, DemoOptions
    from node.config import load_run_config

    try:
        import psutil  # noqa: F401  (only the benchmark needs it)
    except ImportError:
        raise SwarmtrainError("bench footprint needs psutil", "pip install psutil") from None
    work = Path(workdir)
    for old in ("boot", "v"):  # a volunteer resuming from an old checkpoint would measure something else
        shutil.rmtree(work / old, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    opt = DemoOptions()
    run = work / "run.toml"
    run.write_text(DEMO_RUN_TOML.format(strategy=opt.strategy, inner_steps=opt.inner_steps, peers=1))
    model_cfg = load_run_config(run).model
    with ExitStack() as stack:
        nodes: list[Node] = []
        stack.callback(lambda: [n.stop() for n in reversed(nodes)])
        boot_args = ["bootstrap", "--run", str(run), "--host", "127.0.0.1"]
        nodes.append(Node([*boot_args, "--data-dir", str(work / "boot")], [], work / "boot.log"))
        ready = nodes[0].wait_for(r"event=bootstrap_ready run=(\S+) .*?params=(\d+)", 180)
        maddr = nodes[0].wait_for(r"maddrs=([^,\s]+)", 5).group(1)
        say(f"bench footprint: the demo run ({ready.group(2)} parameters); bootstrap ready, starting the volunteer")
        join = ["join", "--run-id", ready.group(1), "--initial-peers", maddr, "--host", "127.0.0.1"]
        t0 = time.monotonic()
        nodes.append(Node([*join, "--data-dir", str(work / "v")], [], work / "v.log"))
        volunteer = nodes[1]
        volunteer.wait_for(r"event=joined ", 180)
        joined_s = time.monotonic() - t0
        volunteer.wait_for(r"event=round round=1 ", 300)
        first_round_s = time.monotonic() - t0
        volunteer.wait_for(rf"event=round round={rounds} ", 300 * rounds)
        peaks: dict[str, dict] = {}
        for _ in range(SAMPLES):
            for name, m in sample(volunteer.popen.pid).items():
                held = peaks.setdefault(name, m)
                held.update({k: max(held[k], m[k]) for k in ("rss_mb", "pss_mb", "cpu_s")})
            if stop.wait(SAMPLE_GAP):
                return None
    params = int(ready.group(2))
    plain = plain_training(run)
    state_mb = STATE_COPIES * 4 * params / 2**20
    total_rss = sum(m["rss_mb"] for m in peaks.values())
    total_pss = sum(m["pss_mb"] for m in peaks.values())
    result = {
        "run": {
            "model": model_cfg.__dict__,
            "params": params,
            "strategy": opt.strategy,
            "inner_steps": opt.inner_steps,
        },
        "python": sys.version.split()[0],
        "seconds_to_joined": round(joined_s, 2),
        "seconds_to_first_round": round(first_round_s, 2),
        "processes": {k: {m: round(v[m], 1) for m in ("rss_mb", "pss_mb", "cpu_s")} for k, v in peaks.items()},
        "total_rss_mb": round(total_rss, 1),
        "total_pss_mb": round(total_pss, 1),
        "model_state_mb": round(state_mb, 1),
        "beyond_model_rss_mb": round(total_rss - state_mb, 1),
        "beyond_model_pss_mb": round(total_pss - state_mb, 1),
        "plain_torch": plain,
        "beyond_plain_rss_mb": round(total_rss - plain["rss_mb"], 1),
    }
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(result, indent=2))
    return result


PLAIN = """
import sys, psutil, torch
from node.config import load_run_config
from node.train.model import build_model
from node.train.trainer import InnerTrainer
run = load_run_config(sys.argv[1])
trainer = InnerTrainer(build_model(run.model, 0), run.train, torch.device("cpu"))
x = torch.randint(0, 256, (run.train.batch_size, run.model.ctx))
peak = (0, 0)
for i in range(int(sys.argv[2])):
    trainer.step(x, x)
    if i % 10 == 9:
        mem = psutil.Process().memory_full_info()
        peak = (max(peak[0], mem.rss), max(peak[1], mem.pss))
print(peak[0] / 2**20, peak[1] / 2**20)
"""
PLAIN_STEPS = 50
"""Inner steps of the plain-torch row (one round of the demo run)."""


def plain_training(run_file: Path) -> dict:
    """The same model trained by plain torch in one process (same batch and threads, no swarm):
    what any training script of this model holds, activations and torch's own import included."""
    out = subprocess.run(
        [sys.executable, "-c", PLAIN, str(run_file), str(PLAIN_STEPS)], capture_output=True, text=True, check=True
    ).stdout.split()
    return {"rss_mb": round(float(out[0]), 1), "pss_mb": round(float(out[1]), 1)}


def footprint_table(r: dict) -> str:
    """The volunteer's processes, RSS and PSS, then the totals and the start times."""
    rows = [[k, f"{v['rss_mb']:.0f}", f"{v['pss_mb']:.0f}"] for k, v in r["processes"].items()]
    rows.append(["all", f"{r['total_rss_mb']:.0f}", f"{r['total_pss_mb']:.0f}"])
    rows.append(["all beyond the model state", f"{r['beyond_model_rss_mb']:.0f}", f"{r['beyond_model_pss_mb']:.0f}"])
    if "plain_torch" in r:  # rows written before it have none
        plain = r["plain_torch"]
        rows.append(
            ["plain torch training, same model (one process)", f"{plain['rss_mb']:.0f}", f"{plain['pss_mb']:.0f}"]
        )
    return (
        markdown_table(["process", "RSS MB", "PSS MB"], rows)
        + f"\n\nstart to joined {r['seconds_to_joined']:.1f} s, to the first round {r['seconds_to_first_round']:.1f} s"
    )
