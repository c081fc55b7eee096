"""The API path against the CLI path: the same run, seed and data give bit-identical states.

For each case, a run of the CLI's byte GPT is trained twice from round 0 by a fresh bootstrap
peer and two volunteers with the same identities (so the same peer ids, data shards and batch
draws): once as two `swarmtrain join` processes, once as two Python scripts (`peer` below) that
build the run's model with `swarmtrain.run_model`, write the inner loop themselves in plain torch
(AdamW, clipping, the run's warm-up, the run's batches) and step it through
`swarm.optimizer(...)`. Equal final digests mean the wrapper adds nothing and loses nothing.

Cases that are random on purpose (DP noise is drawn from the OS, never the run's seed) cannot
be bit-identical between two runs; they are run through the API only and must end on one digest
on both of its peers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from node.config import CHEAP_WORK_TOML

RUN = (
    """\
name = "api-identity"
[model]
{model}
d_model = 32
n_layer = 2
n_head = 2
ctx = 32
[train]
batch_size = 4
warmup_steps = 3
[strategy]
inner_steps = 4
{strategy}
{overlap}
[swarm]
min_peers = 2
{window}
collect_timeout = 20.0
round_timeout = 60.0
heartbeat_interval = 1.0
heartbeat_ttl = 5.0
"""
    + CHEAP_WORK_TOML
    + """{more}
"""
)


class Case(NamedTuple):
    """One run compared: lines added to the run file's tables, and whether the CLI's run must match."""

    model: str = ""
    strategy: str = ""
    more: str = ""  # [swarm] lines, then other tables
    bitwise: bool = True  # False: random or timed on purpose, run through the API only


CASES: dict[str, Case] = {
    "diloco": Case(),
    "diloco-scored": Case(more="[robust]\nscoring = true"),
    "sparseloco": Case(strategy='name = "sparseloco"'),
    "decoupled-momentum": Case(strategy='name = "decoupled-momentum"'),
    "ddp-adamw": Case(strategy='name = "ddp-adamw"'),
    "hf-lora": Case(
        model='kind = "hf"\narch = "gpt2"', more='[peft]\nmethod = "lora"\nr = 4\ntarget_modules = ["c_attn"]'
    ),
    "diloco-dp": Case(more="[privacy]\nclip = 1.0\nnoise_multiplier = 0.5", bitwise=False),
    "diloco-overlap": Case(strategy="overlap = true", bitwise=False),
    "diloco-window": Case(more="round_seconds = 1.5", bitwise=False),
}


# ------------------------------------------------------------------------------ one API peer
def peer(args: argparse.Namespace) -> None:
    """A volunteer written as a user would: the run's model, plain torch inner loop, our API."""
    import torch

    import swarmtrain
    from node.config import load_run_config
    from node.train import data
    from node.train.model import loss_fn, trainable
    from node.train.trainer import warmup_constant

    torch.set_num_threads(1)
    run = load_run_config(args.run)
    model = swarmtrain.run_model(run)
    params = trainable(model)
    t = run.train
    opt = torch.optim.AdamW(params, lr=t.inner_lr, betas=(0.9, 0.95), weight_decay=t.weight_decay)
    schedule = warmup_constant(t)
    corpus = data.load_corpus(run.data)
    settings = dict(data_dir=args.data_dir, max_rounds=args.rounds, host="127.0.0.1", status_port=-1, threads=1)
    with swarmtrain.join([args.initial_peer], args.run_id, **settings) as swarm:
        sopt = swarm.optimizer(model, opt, tokens_per_step=t.batch_size * run.model.ctx)
        tokens = data.train_tokens(corpus, run.data, data.shard_of_peer(swarm.peer_id, run.data))
        step, drawn, gen = 0, None, None
        while not sopt.done:
            if drawn != swarm.round + 1:  # a round's batches are drawn by (seed, peer, round)
                drawn = swarm.round + 1
                gen = data.batch_generator(t.seed, swarm.peer_id, drawn)
            x, y = data.windows(tokens, t.batch_size, run.model.ctx, gen)
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            for group in opt.param_groups:
                group["lr"] = t.inner_lr * schedule(step)
            sopt.step(loss=loss.item())
            step += 1
    Path(args.result_json).write_text(json.dumps({"digest": swarm.digest, "rounds_completed": swarm.round}))


# --------------------------------------------------------------------------------- the swarm
def one_swarm(work: Path, run: Path, rounds: int, api: bool, identities: Path) -> list[dict]:
    """A fresh bootstrap and two volunteers (CLI or API) with the identity keys kept in
    `identities` (made by the first swarm's volunteers, reused by the second's)."""
    from bench.swarm import Node

    nodes: list = []
    work.mkdir(parents=True)
    try:
        boot = Node(["bootstrap", "--run", str(run), "--host", "127.0.0.1", "--data-dir",
                     str(work / "boot"), "--status-port", "-1"], [], work / "boot.log")  # fmt: skip
        nodes.append(boot)
        found = boot.wait_for(r"event=bootstrap_ready run=(\S+) .*maddrs=(\S+)", 120)
        run_id, maddr = found[1], found[2].split(",")[0]
        for name in ("a", "b"):
            data_dir = work / name
            data_dir.mkdir(parents=True)
            if (identities / f"{name}.key").exists():  # the peer id of the other path's run
                shutil.copy(identities / f"{name}.key", data_dir / "identity.key")
            out = [
                "--data-dir",
                str(data_dir),
                "--max-rounds",
                str(rounds),
                "--result-json",
                str(work / f"{name}.json"),
            ]
            if api:
                args = ["peer", "--run", str(run), "--run-id", run_id, "--initial-peer", maddr, *out]
                nodes.append(Node(args, [], work / f"{name}.log", module="bench.api_identity"))
            else:
                args = ["join", "--run-id", run_id, "--initial-peers", maddr, "--host", "127.0.0.1", "--threads", "1"]
                nodes.append(Node([*args, "--status-port", "-1", *out], [], work / f"{name}.log"))
        for node in nodes[1:]:
            node.popen.wait(60 + 30 * rounds)
        for name in ("a", "b"):  # made by the node on its first start: kept for the other path
            if not (identities / f"{name}.key").exists():
                shutil.copy(work / name / "identity.key", identities / f"{name}.key")
        return [json.loads((work / f"{name}.json").read_text()) for name in ("a", "b")]
    finally:
        for node in nodes:
            node.stop(10)


def run_api_identity(*, rounds: int, cases: list[str], json_path: str, stop: threading.Event) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            if stop.is_set():
                break
            c = CASES[case]
            run = Path(tmp) / f"{case}.toml"
            window = "" if "round_seconds" in c.more else "round_seconds = 0.0"  # fixed H: bit for bit
            overlap = "" if "overlap" in c.strategy else "overlap = false"  # (unset: on)
            run.write_text(RUN.format(model=c.model, strategy=c.strategy, more=c.more, window=window, overlap=overlap))
            t = time.monotonic()
            keys = Path(tmp) / case / "keys"
            keys.mkdir(parents=True)
            cli = one_swarm(Path(tmp) / case / "cli", run, rounds, False, keys) if c.bitwise else None
            api = one_swarm(Path(tmp) / case / "api", run, rounds, True, keys)
            rows.append(row(case, api, cli, rounds, time.monotonic() - t))
            print(json.dumps(rows[-1]))
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps({"rows": rows}, indent=2))
    return rows


def row(case: str, api: list[dict], cli: list[dict] | None, rounds: int, seconds: float) -> dict:
    return {
        "case": case,
        "rounds": rounds,
        "api_digests": [r["digest"] for r in api],
        "cli_digests": [r["digest"] for r in cli] if cli else None,
        "api_peers_equal": len({r["digest"] for r in api}) == 1,
        "bit_identical": None if cli is None else {r["digest"] for r in api} == {r["digest"] for r in cli},
        "rounds_completed": [r["rounds_completed"] for r in api + (cli or [])],
        "seconds": round(seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.api_identity")
    sub = p.add_subparsers(dest="what", required=True)
    one = sub.add_parser("peer", help="one API volunteer (started by the benchmark)")
    for flag in ("--run", "--run-id", "--initial-peer", "--data-dir", "--result-json"):
        one.add_argument(flag, required=True)
    one.add_argument("--max-rounds", dest="rounds", type=int, required=True)
    args = p.parse_args()
    peer(args)


if __name__ == "__main__":
    main()
