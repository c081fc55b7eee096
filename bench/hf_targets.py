"""The targets of issue 10, measured: Hugging Face models in a 3-peer swarm, LoRA end to end,
and differential privacy on against off. Writes bench/results/hf-targets.json; the figures are
quoted in docs/benchmarks.md. Every swarm here is a real `swarmtrain demo --run` (processes on
loopback); the DP comparison simulates 4 peers in one process through the same code
(node.train.privacy before strategy.make_update), at equal tokens.

    python bench/hf_targets.py all            # ~40 min on a busy 2-core machine
    python bench/hf_targets.py gpt2|llama|lora|dp
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.config import (  # noqa: E402
    DataConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    StrategyConfig,
    TrainConfig,
    load_run_config,
)
from node.outer.state import SwarmState  # noqa: E402
from node.outer.strategies import make_strategy  # noqa: E402
from node.train import data  # noqa: E402
from node.train.model import build_run_model, trainable  # noqa: E402
from node.train.privacy import make_privacy  # noqa: E402
from node.train.trainer import InnerTrainer, evaluate_bpb, warmup_constant  # noqa: E402

OUT = ROOT / "bench" / "results" / "hf-targets.json"
BASE_DIR = ROOT / "models" / "stdlib-gpt2"


def cli(*args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    cmd = ["nice", sys.executable, "-m", "node.cli", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(args)}")
    return proc


def demo(run_file: str, rounds: int, tag: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"swarmtrain-{tag}-"))  # identities and checkpoints: not for the repo
    summary = ROOT / "bench" / "results" / f"demo-{tag}.json"
    t0 = time.monotonic()
    cli(
        "demo",
        "--run",
        run_file,
        "--peers",
        "3",
        "--rounds",
        str(rounds),
        "--monitor-port",
        "-1",
        "--workdir",
        str(work),
        "--summary-json",
        str(summary),
    )
    s = json.loads(summary.read_text())
    digests = set(s["model_digests"].values())
    return {
        "run": run_file,
        "peers": s["peers"],
        "rounds": s["rounds_completed"],
        "val_bpb": s["val_bpb"],
        "equal_digests": len(digests) == 1 and s["peers"] == 3,
        "digest": sorted(digests)[0][:16],
        "params_total": s["params_total"],
        "params_trainable": s["params_trainable"],
        "update_bytes_per_peer": s["update_bytes_per_peer"],
        "bytes_sent": s["bytes_sent"],
        "bytes_sent_per_round": s["bytes_sent_per_round"],
        "wall_s": round(time.monotonic() - t0),
    }


def target_models() -> dict:
    return {"gpt2": demo("examples/hf-gpt2.toml", 6, "hf-gpt2"), "llama": demo("examples/hf-llama.toml", 6, "hf-llama")}


def full_update_bytes(run: RunConfig, total_shapes: list[tuple[int, ...]]) -> int:
    """What the run's codec would put on the wire for an update of every parameter."""
    return make_strategy(run.strategy, total_shapes, run.train).codec.encoded_size()


def target_lora(pretrain_steps: int = 600, rounds: int = 6) -> dict:
    if not (BASE_DIR / "model.safetensors").is_file():
        proc = cli(
            "pretrain",
            "--run",
            "examples/hf-gpt2.toml",
            "--steps",
            str(pretrain_steps),
            "--out",
            str(BASE_DIR.relative_to(ROOT)),
            "--eval-every",
            "200",
            "--json",
            "bench/results/pretrain.json",
        )
        print(proc.stdout[-800:])
    run = load_run_config(ROOT / "examples" / "hf-lora.toml")
    run = replace(run, model=replace(run.model, pretrained=str(BASE_DIR)))
    base = build_run_model(replace(run, peft=replace(run.peft, method="none")))
    corpus = data.load_corpus(run.data)
    vx, vy = data.val_set(corpus, run.data, run.model.ctx, base.tokenizer)
    base_bpb = evaluate_bpb(base.model, vx, vy, torch.device("cpu"))  # what the swarm starts from (B = 0)
    stdlib = data.load_corpus("stdlib")
    sx, sy = data.val_set(stdlib, DataConfig(), run.model.ctx)
    swarm = demo("examples/hf-lora.toml", rounds, "hf-lora")
    full = full_update_bytes(run, [tuple(p.shape) for p in base.model.parameters()])
    return {
        **swarm,
        "base_val_bpb_shakespeare": base_bpb,
        "base_val_bpb_stdlib": evaluate_bpb(base.model, sx, sy, torch.device("cpu")),
        "full_update_bytes": full,
        "upload_fraction": swarm["update_bytes_per_peer"] / full,
        "final_below_base": swarm["val_bpb"][-1] < base_bpb,
    }


def simulate_dp(privacy: PrivacyConfig, rounds: int, workers: int = 4, seed: int = 0) -> dict:
    """4 peers in one process: inner steps, privacy.before_update, make_update, apply (as the node)."""
    torch.manual_seed(seed)
    model_cfg = ModelConfig(d_model=64, n_layer=2, n_head=4, ctx=64)
    train = TrainConfig(batch_size=8, inner_lr=3e-3, warmup_steps=10, seed=seed)
    strat_cfg = StrategyConfig(name="diloco", inner_steps=25)
    run = RunConfig(model=model_cfg, train=train, strategy=strat_cfg, privacy=privacy)
    corpus = data.load_corpus("stdlib")
    dcfg = DataConfig()
    first = build_run_model(run)
    strategy = make_strategy(strat_cfg, [tuple(p.shape) for p in trainable(first.model)], train)
    state = SwarmState.initial(first.model, strategy.outer_buffers)
    peers = []
    for w in range(workers):
        model = build_run_model(run).model
        peers.append(
            (
                InnerTrainer(model, train, torch.device("cpu"), warmup_constant(train)),
                make_privacy(privacy, local_optimizer=True),
                torch.Generator().manual_seed(1000 * seed + w),
                data.train_tokens(corpus, dcfg, w % dcfg.shards),
            )
        )
    vx, vy = data.windows(data.val_tokens(corpus, dcfg), 256, model_cfg.ctx, torch.Generator().manual_seed(12345))
    curve = []
    for r in range(1, rounds + 1):
        payloads = []
        for trainer, priv, gen, tokens in peers:
            trainer.load_params(state.params)
            for _ in range(strategy.inner_steps):
                trainer.step(*data.windows(tokens, train.batch_size, model_cfg.ctx, gen))
            priv.before_update(state, trainer.model)
            payloads.append(strategy.make_update(state, None, trainer.model))
        strategy.apply(state, payloads)
        if r % 10 == 0 or r == rounds:
            peers[0][0].load_params(state.params)
            curve.append({"round": r, "val_bpb": evaluate_bpb(peers[0][0].model, vx, vy, torch.device("cpu"))})
    eps = peers[0][1].epsilon
    return {
        "clip": privacy.clip,
        "noise_multiplier": privacy.noise_multiplier,
        "delta": privacy.delta,
        "rounds": rounds,
        "tokens": rounds * strategy.inner_steps * workers * train.batch_size * model_cfg.ctx,
        "val_bpb": curve[-1]["val_bpb"],
        "curve": curve,
        "epsilon": None if eps is None else (eps if eps < float("inf") else "inf"),
        "last_update_norm": getattr(peers[0][1], "last_norm", None),
    }


def target_dp(rounds: int = 30) -> list[dict]:
    torch.set_num_threads(1)
    settings = [
        PrivacyConfig(),
        PrivacyConfig(clip=1.0),
        PrivacyConfig(clip=1.0, noise_multiplier=0.01),
        PrivacyConfig(clip=1.0, noise_multiplier=0.1),
        PrivacyConfig(clip=1.0, noise_multiplier=1.0),
    ]
    rows = []
    for p in settings:
        t0 = time.monotonic()
        rows.append(simulate_dp(p, rounds))
        print(
            f"  clip {p.clip} sigma {p.noise_multiplier}: val_bpb {rows[-1]['val_bpb']:.4f} "
            f"epsilon {rows[-1]['epsilon']} ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    return rows


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    steps = {
        "gpt2": lambda: {"gpt2": demo("examples/hf-gpt2.toml", 6, "hf-gpt2")},
        "llama": lambda: {"llama": demo("examples/hf-llama.toml", 6, "hf-llama")},
        "lora": lambda: {"lora": target_lora()},
        "dp": lambda: {"dp": target_dp()},
    }
    for name in steps if what == "all" else [what]:
        results.update(steps[name]())
        OUT.write_text(json.dumps(results, indent=2))
        print(json.dumps(results[name], indent=2)[:3000], flush=True)


if __name__ == "__main__":
    main()
