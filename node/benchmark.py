"""`swarmtrain bench quality`: every strategy against data-parallel AdamW, at equal tokens.

N workers are simulated in one process through the same strategy and codec code the node
runs (node/strategies, protocol/codecs): the same payload bytes, the same apply. Worker w
draws the same batches under every strategy (generator seeded by (seed, w)), so each row
sees exactly the same token stream. Bytes are what our all-gather moves: each payload
leaves its owner once per other peer (N-1 copies), and each peer downloads N-1 payloads.
The reference is a dense fp32 ring all-reduce of the same model every step:
2 (N-1)/N x 4 bytes x params, up and down, per worker.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from node import data
from node.config import DataConfig, ModelConfig, RobustConfig, StrategyConfig, TrainConfig
from node.errors import SwarmtrainError
from node.model import build_model
from node.state import SwarmState
from node.strategies import make_strategy
from node.trainer import InnerTrainer, evaluate_bpb, warmup_cosine


@dataclass(frozen=True, kw_only=True)
class Tier:
    steps: int
    """Inner steps per worker (the same for every strategy)."""
    seeds: tuple[int, ...]
    """Each strategy runs once per seed; rows report the mean."""
    model: ModelConfig
    """Model of this tier."""
    workers: int = 4
    """Simulated peers."""
    batch_size: int = 8
    """Sequences per worker per step."""
    eval_points: int = 10
    """Validation measurements along the run (for the curves)."""
    val_seqs: int = 256
    """Held-out windows in the final measurement."""
    warmup_steps: int = 20
    """Linear warm-up before the cosine decay (the same for every strategy)."""


SMALL = ModelConfig(d_model=64, n_layer=2, n_head=4, ctx=64)
TIERS = {
    "smoke": Tier(steps=100, seeds=(0,), model=SMALL, eval_points=2, val_seqs=64, warmup_steps=10),
    "pilot": Tier(steps=600, seeds=(0,), model=ModelConfig(d_model=128, n_layer=4, n_head=4, ctx=128),
                  warmup_steps=40),
    "full": Tier(steps=3000, seeds=(0, 1), model=SMALL, eval_points=15, warmup_steps=100),
}

# Each preset: (strategy settings, training settings). Learning rates were chosen on a
# 600-step run of the full tier's model with the same budget for every method (two rounds of
# 4-6 variants; docs/benchmarks.md lists them); AdamW and DiLoCo keep the literature's values.
BASE_TRAIN = TrainConfig(batch_size=8, inner_lr=3e-3, weight_decay=0.1, grad_clip=1.0)
PRESETS: dict[str, tuple[StrategyConfig, TrainConfig]] = {
    "ddp-adamw": (StrategyConfig(name="ddp-adamw"), BASE_TRAIN),
    "diloco": (StrategyConfig(name="diloco", inner_steps=25, outer_lr=0.7, outer_momentum=0.9), BASE_TRAIN),
    "diloco-int8": (StrategyConfig(name="diloco", inner_steps=25, wire_dtype="int8"), BASE_TRAIN),
    "sparseloco": (StrategyConfig(name="sparseloco", inner_steps=15, topk=64, values="2bit", outer_lr=2.0,
                                  error_decay=0.95), BASE_TRAIN),
    "sparseloco-h25": (StrategyConfig(name="sparseloco", inner_steps=25, topk=64, values="2bit", outer_lr=2.0,
                                      error_decay=0.95), BASE_TRAIN),  # equal H with diloco: the paper's ordering
    "sparseloco-h30": (StrategyConfig(name="sparseloco", inner_steps=30, topk=64, values="2bit", outer_lr=2.0,
                                      error_decay=0.95), BASE_TRAIN),
    "sparseloco-overlap": (StrategyConfig(name="sparseloco", inner_steps=15, topk=64, values="2bit", outer_lr=2.0,
                                          error_decay=0.95, overlap=True), BASE_TRAIN),  # what the delay costs
    "diloco-overlap": (StrategyConfig(name="diloco", inner_steps=25, outer_lr=0.7, outer_momentum=0.9, overlap=True),
                       BASE_TRAIN),
    "decoupled-momentum": (StrategyConfig(name="decoupled-momentum", topk=32, values="bf16",
                                          momentum_decay=0.999), BASE_TRAIN),
    "decoupled-momentum-1bit": (StrategyConfig(name="decoupled-momentum", topk=32, values="1bit",
                                               momentum_decay=0.999), BASE_TRAIN),
}


@dataclass
class Worker:
    trainer: InnerTrainer
    buffers: object
    gen: torch.Generator
    tokens: torch.Tensor
    start: list[torch.Tensor] | None = None
    """Overlap: where this worker's current round started (its update is measured from there)."""


def simulate(preset: str, tier: Tier, seed: int, corpus: data.Corpus) -> dict:
    """One strategy, one seed: train, count bytes, measure held-out bits per byte."""
    strat_cfg, train_cfg = PRESETS[preset]
    train_cfg = replace(train_cfg, batch_size=tier.batch_size, warmup_steps=tier.warmup_steps, seed=seed)
    dcfg = DataConfig()
    schedule = warmup_cosine(train_cfg, tier.steps)
    model = build_model(tier.model, seed)
    shapes = [tuple(p.shape) for p in model.parameters()]
    # the plain mean: this benchmark compares compression methods (rows reproducible across versions);
    # the robust aggregator's cost and defence are measured by `bench byzantine`
    strategy = make_strategy(strat_cfg, shapes, train_cfg, schedule, robust=RobustConfig(aggregator="mean"))
    state = SwarmState.initial(model, strategy.outer_buffers)
    workers = [Worker(InnerTrainer(build_model(tier.model, seed), train_cfg, torch.device("cpu"), schedule),
                      strategy.new_worker(), torch.Generator().manual_seed(1000 * seed + w),
                      data.train_tokens(corpus, dcfg, w % dcfg.shards)) for w in range(tier.workers)]
    vx, vy = data.windows(data.val_tokens(corpus, dcfg), tier.val_seqs, tier.model.ctx,
                          torch.Generator().manual_seed(12345))
    n, payload = tier.workers, strategy.codec.encoded_size()
    eval_at = {round(tier.steps * (i + 1) / tier.eval_points) for i in range(tier.eval_points)}
    curve, step, rounds, t0 = [], 0, 0, time.monotonic()
    lagged = [p.clone() for p in state.params]  # overlap: the newest state a worker holds when a round starts
    while step < tier.steps:
        h = min(strategy.inner_steps, tier.steps - step)
        if strat_cfg.overlap:
            payloads = [_overlapped_round(w, lagged, state, strategy, h, tier) for w in workers]
            lagged = [p.clone() for p in state.params]  # round r+1 starts before round r's result is known
        else:
            payloads = [_local_round(w, state, strategy, h, tier) for w in workers]
        strategy.apply(state, payloads)
        step, rounds = step + h, rounds + 1
        if any(step - h < s <= step for s in eval_at):
            workers[0].trainer.load_params(state.params)
            bpb = evaluate_bpb(workers[0].trainer.model, vx, vy, torch.device("cpu"))
            curve.append({"step": step, "tokens": step * n * tier.batch_size * tier.model.ctx,
                          "upload_bytes": rounds * (n - 1) * payload, "val_bpb": bpb})
    params = sum(math.prod(s) for s in shapes)
    return {"strategy": preset, "seed": seed, "params": params, "steps": tier.steps, "workers": n,
            "tokens": tier.steps * n * tier.batch_size * tier.model.ctx,
            "payload_bytes": payload, "rounds": rounds,
            "upload_bytes_per_step": rounds * (n - 1) * payload / tier.steps,
            "download_bytes_per_step": rounds * (n - 1) * payload / tier.steps,
            "dense_ring_bytes_per_step": 2 * (n - 1) / n * 4 * params,
            "val_bpb": curve[-1]["val_bpb"], "curve": curve, "seconds": round(time.monotonic() - t0, 1),
            "settings": {"strategy": strat_cfg.__dict__, "train": train_cfg.__dict__}}


def _local_round(w: Worker, state: SwarmState, strategy, h: int, tier: Tier) -> bytes:
    w.trainer.load_params(state.params)
    for _ in range(h):
        x, y = data.windows(w.tokens, tier.batch_size, tier.model.ctx, w.gen)
        w.trainer.step(x, y, apply=strategy.local_optimizer)
    return strategy.make_update(state, w.buffers, w.trainer.model)


def _overlapped_round(w: Worker, lagged: list[torch.Tensor], state: SwarmState, strategy, h: int,
                      tier: Tier) -> bytes:
    """Overlap (StrategyConfig.overlap), as the node runs it: the round starts from the newest state
    the worker holds (one round behind the swarm's) plus its own progress of the round still in
    flight, and its update is this round's progress alone."""
    w.start = _rebased(lagged, w.trainer.params, w.start)
    w.trainer.load_params(w.start)
    for _ in range(h):
        x, y = data.windows(w.tokens, tier.batch_size, tier.model.ctx, w.gen)
        w.trainer.step(x, y, apply=strategy.local_optimizer)
    base = SwarmState(round=state.round, names=state.names, params=w.start, outer=state.outer)
    return strategy.make_update(base, w.buffers, w.trainer.model)


def _rebased(newest: list[torch.Tensor], local: list[torch.Tensor], start: list[torch.Tensor] | None):
    """newest + (local - start): our progress since `start`, moved onto the newest state we hold."""
    if start is None:
        return [p.clone() for p in newest]
    return [n + (l.detach().float().cpu() - s) for n, l, s in zip(newest, local, start)]


def _job(args: tuple[str, str, int]) -> dict:
    preset, tier_name, seed = args
    torch.set_num_threads(1)  # one core per job: jobs run side by side
    return simulate(preset, TIERS[tier_name], seed, data.load_corpus("stdlib"))


def summarize(runs: list[dict]) -> list[dict]:
    """One row per strategy: means over seeds, ratios against the ring and DDP's bpb."""
    rows = []
    for preset in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == preset]
        row = {k: rs[0][k] for k in ("strategy", "params", "tokens", "upload_bytes_per_step",
                                     "download_bytes_per_step", "dense_ring_bytes_per_step", "payload_bytes")}
        row["upload_reduction"] = row["dense_ring_bytes_per_step"] / row["upload_bytes_per_step"]
        row["download_reduction"] = row["dense_ring_bytes_per_step"] / row["download_bytes_per_step"]
        row["val_bpb"] = sum(r["val_bpb"] for r in rs) / len(rs)
        row["val_bpb_per_seed"] = [r["val_bpb"] for r in rs]
        row["seconds"] = sum(r["seconds"] for r in rs)
        rows.append(row)
    ddp = next((r["val_bpb"] for r in rows if r["strategy"] == "ddp-adamw"), None)
    for row in rows:
        row["gap_vs_ddp"] = (row["val_bpb"] - ddp) / ddp if ddp else None
    return rows


def run_quality(tier: str, json_path: str, plot_path: str | None, strategies: list[str] | None,
                jobs: int, say=print) -> list[dict]:
    if tier not in TIERS:
        raise SwarmtrainError(f"unknown tier {tier!r}", f"use one of: {', '.join(TIERS)}")
    names = strategies or list(PRESETS)
    unknown = [s for s in names if s not in PRESETS]
    if unknown:
        raise SwarmtrainError(f"unknown strategy preset(s) {unknown}", f"known: {', '.join(PRESETS)}")
    if "ddp-adamw" not in names:
        names = ["ddp-adamw", *names]  # every gap is measured against it, in the same run
    todo = [(s, tier, seed) for s in names for seed in TIERS[tier].seeds]
    say(f"bench quality: tier {tier}, {len(todo)} runs on {jobs} process(es)")
    runs = []
    with mp.get_context("spawn").Pool(jobs) if jobs > 1 else _Inline() as pool:
        for r in pool.imap_unordered(_job, todo):
            runs.append(r)
            say(f"  {r['strategy']:<24} seed {r['seed']}  val_bpb {r['val_bpb']:.4f}  "
                f"upload {r['upload_bytes_per_step']:.0f} B/step  ({r['seconds']:.0f} s)")
    runs.sort(key=lambda r: (names.index(r["strategy"]), r["seed"]))
    rows = summarize(runs)
    Path(json_path).write_text(json.dumps({"tier": tier, "tier_settings": _tier_dict(TIERS[tier]),
                                           "rows": rows, "runs": runs}, indent=2))
    if plot_path:
        plot(runs, plot_path, title=f"bench quality, tier {tier}")
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as the table in docs/benchmarks.md."""
    lines = ["| strategy | val bpb | gap vs DDP | upload B/step | download B/step | upload reduction | "
             "download reduction |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['val_bpb']:.4f} | {r['gap_vs_ddp']:+.1%} | "
                     f"{r['upload_bytes_per_step']:,.0f} | {r['download_bytes_per_step']:,.0f} | "
                     f"{r['upload_reduction']:,.1f}x | {r['download_reduction']:,.1f}x |")
    return "\n".join(lines)


def _tier_dict(t: Tier) -> dict:
    d = dict(t.__dict__)
    d["model"] = t.model.__dict__
    return d


class _Inline:
    """A stand-in for a process pool of one: the same interface, in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, items):
        return map(fn, items)


def plot(runs: list[dict], path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SwarmtrainError("--plot needs matplotlib", "pip install matplotlib (make bench installs it)") from None
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for preset in dict.fromkeys(r["strategy"] for r in runs):
        r = next(x for x in runs if x["strategy"] == preset)
        tok = [c["tokens"] for c in r["curve"]]
        bpb = [c["val_bpb"] for c in r["curve"]]
        up = [max(1.0, c["upload_bytes"]) for c in r["curve"]]
        a.plot(tok, bpb, marker=".", label=preset)
        b.plot(up, bpb, marker=".", label=preset)
    a.set(xlabel="tokens (all workers)", ylabel="held-out bits per byte", title=title)
    b.set(xlabel="bytes uploaded per worker (log)", ylabel="held-out bits per byte", xscale="log",
          title="quality against traffic")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
