"""`swarmtrain bench quality`: every strategy against data-parallel AdamW, at equal tokens.

N workers are simulated in one process through the same strategy and codec code the node
runs (node/outer/strategies, protocol/codecs): the same payload bytes, the same apply. Worker w
draws the same batches under every strategy (generator seeded by (seed, w)), so each row
sees exactly the same token stream. Bytes are what our all-gather moves per peer: N-1
payloads down, and N-1 up on average. `own_upload_*` counts one copy of a peer's own payload
per round: what upload once leaves on the owner's link (the node's owner sends two, to the
leader and to its relay tree, node/round/relay.py; other peers relay the rest).
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
from typing import Callable

import torch

from node.train import data
from node.config import DataConfig, ModelConfig, RobustConfig, StrategyConfig, TrainConfig
from node.errors import SwarmtrainError
from node.train.model import build_model
from node.outer.overlap import Overlap
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.train.trainer import InnerTrainer, evaluate_bpb, warmup_cosine


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
    # issue 11 part 4: does the frontier hold with twice the workers (all-gather bytes grow with N)?
    "full-8": Tier(steps=3000, seeds=(0, 1), model=SMALL, workers=8, eval_points=15, warmup_steps=100),
    # `bench tune`: the full tier's model and batches, a fifth of its steps (one seed)
    "tune": Tier(steps=600, seeds=(0,), model=SMALL, eval_points=4, warmup_steps=30),
}

OVERLAP_DELAY = {"sparseloco-overlap": 2, "diloco-overlap": 2}
"""Overlap presets: inner steps of a round taken before the last round's result arrives (the
node moves onto it then). 2 is what the bench swarm model sees on loopback (exchange 0.02-0.3 s
beside 1.2-2 s of compute for 20 steps); presets not named here wait a whole round (the worst
case, a link whose exchange takes as long as a round's compute)."""

TOPK_WARMUP = {"sparseloco-c32-k8-h32-muon-warmup": 3}
"""Bench only: Deep Gradient Compression's compression warm-up for sparseloco presets: round r
< W sends 2^(W-r) times the preset's k per chunk, later rounds the preset's k. Measured here
before it goes on the wire: every codec has one exact payload size, which validators check
before reading a payload, so a warm-up there needs a codec per round."""

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
    "sparseloco-overlap-late": (StrategyConfig(name="sparseloco", inner_steps=15, topk=64, values="2bit",
                                               outer_lr=2.0, error_decay=0.95, overlap=True), BASE_TRAIN),
    # issue 11: DDP-AdamW with the settings `bench tune` found (bench/results/tune-ddp-adamw.json)
    "ddp-adamw-tuned": (StrategyConfig(name="ddp-adamw"), replace(BASE_TRAIN, inner_lr=0.00608, weight_decay=0.109)),
    # issue 11, the frontier: low-bit DiLoCo with error feedback, Nesterov SparseLoCo (SNOO), Muon inside.
    # Operating points (H, bits, k) set the traffic band; the rest is what `bench tune` found on the
    # tune tier with the same budget per method (bench/results/tune-<preset>.json).
    "diloco-int2-h15": (StrategyConfig(name="diloco", inner_steps=15, wire_dtype="int2", outer_lr=0.391,
                                       outer_momentum=0.585, error_decay=0.923),
                        replace(BASE_TRAIN, inner_lr=0.00343)),  # >= 100x
    "diloco-int2-h15-muon": (StrategyConfig(name="diloco", inner_steps=15, wire_dtype="int2", outer_lr=0.428,
                                            outer_momentum=0.601, error_decay=0.807),
                             replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    # the 4-bit wire at the same band (H=30, 116x), with the same settings
    "diloco-int4-h30-muon": (StrategyConfig(name="diloco", inner_steps=30, wire_dtype="int4", outer_lr=0.428,
                                            outer_momentum=0.601, error_decay=0.807),
                             replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    # ablations of diloco-int2-h15-muon: the same settings with fp16 (no 2-bit), without error feedback
    # (error_decay 0: the rounding is dropped each round), with AdamW inside, with a SNOO outer step
    "diloco-h15-muon": (StrategyConfig(name="diloco", inner_steps=15, wire_dtype="float16", outer_lr=0.428,
                                       outer_momentum=0.601),
                        replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    "diloco-int2-h15-muon-noef": (StrategyConfig(name="diloco", inner_steps=15, wire_dtype="int2", outer_lr=0.428,
                                                 outer_momentum=0.601, error_decay=0.0),
                                  replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    "diloco-int2-h15-muon-adamw": (StrategyConfig(name="diloco", inner_steps=15, wire_dtype="int2", outer_lr=0.428,
                                                  outer_momentum=0.601, error_decay=0.807),
                                   replace(BASE_TRAIN, inner_lr=0.00863)),
    "diloco-int2-h15-muon-snoo": (StrategyConfig(name="diloco", inner_steps=15, wire_dtype="int2", outer_lr=1.4,
                                                 outer_momentum=0.9, error_decay=0.807),
                                  replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    "diloco-int1-h72-muon": (StrategyConfig(name="diloco", inner_steps=72, wire_dtype="int1", wire_block=1024,
                                            outer_lr=1.02, outer_momentum=0.697, error_decay=0.993),
                             replace(BASE_TRAIN, inner_lr=0.00779, inner_optimizer="muon", muon_lr=0.00368)),  # >= 1,000x
    # the same operating point with the settings tuned for diloco-int2-h15-muon (the int1-h72 study's median
    # pruner stopped 6 of 8 trials after 3 rounds, those with a high Muon lr among them)
    "diloco-int1-h72-muon-t15": (StrategyConfig(name="diloco", inner_steps=72, wire_dtype="int1", wire_block=1024,
                                                outer_lr=0.428, outer_momentum=0.601, error_decay=0.807),
                                 replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    # the 1,000x preset with a larger outer step, for 8 workers (their mean is less noisy): issue 11 part 4
    "diloco-int1-h72-muon-t15-olr0.7": (StrategyConfig(name="diloco", inner_steps=72, wire_dtype="int1",
                                                       wire_block=1024, outer_lr=0.7, outer_momentum=0.601,
                                                       error_decay=0.807),
                                        replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    "diloco-int1-h72-muon-t15-olr1.0": (StrategyConfig(name="diloco", inner_steps=72, wire_dtype="int1",
                                                       wire_block=1024, outer_lr=1.0, outer_momentum=0.601,
                                                       error_decay=0.807),
                                        replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    # the dense family further out (the same settings): >= 3,000x with 14 rounds, >= 10,000x with 4
    "diloco-int1-h216-muon-t15": (StrategyConfig(name="diloco", inner_steps=216, wire_dtype="int1", wire_block=1024,
                                                 outer_lr=0.428, outer_momentum=0.601, error_decay=0.807),
                                  replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    "diloco-int1-h750-muon-t15": (StrategyConfig(name="diloco", inner_steps=750, wire_dtype="int1", wire_block=1024,
                                                 outer_lr=0.428, outer_momentum=0.601, error_decay=0.807),
                                  replace(BASE_TRAIN, inner_lr=0.00863, inner_optimizer="muon", muon_lr=0.0249)),
    "sparseloco-k32-h32-nesterov-muon": (StrategyConfig(name="sparseloco", inner_steps=32, topk=32, values="2bit",
                                                        outer_lr=0.599, error_decay=0.804, sparse_outer_momentum=0.806),
                                         replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon",
                                                 muon_lr=0.0193)),  # >= 3,000x
    "sparseloco-k16-h60-nesterov-muon": (StrategyConfig(name="sparseloco", inner_steps=60, topk=16, values="2bit",
                                                        outer_lr=0.599, error_decay=0.804, sparse_outer_momentum=0.806),
                                         replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon",
                                                 muon_lr=0.0193)),  # >= 10,000x (the 3,000x settings)
    "sparseloco-k8-h38-nesterov-muon": (StrategyConfig(name="sparseloco", inner_steps=38, topk=8, values="2bit",
                                                       outer_lr=0.599, error_decay=0.804, sparse_outer_momentum=0.806),
                                        replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon",
                                                muon_lr=0.0193)),  # >= 10,000x: fewer values, more rounds
    # ablation: the 3,000x preset with the paper's plain SGD outer step (outer lr 2.0 as tuned in issue 4)
    "sparseloco-k32-h32-muon": (StrategyConfig(name="sparseloco", inner_steps=32, topk=32, values="2bit",
                                               outer_lr=2.0, error_decay=0.804),
                                replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon", muon_lr=0.0193)),
    # ablations of SparseLoCo sized to a small model (issue 11): 1-D tensors (norm gains, biases) sent
    # whole; chunks of 32 x 32 (a quarter of a 64 x 64 matrix) at the same density
    "sparseloco-k32-h32-muon-kv64": (StrategyConfig(name="sparseloco", inner_steps=32, topk=32, topk_vector=64,
                                                    values="2bit", outer_lr=2.0, error_decay=0.804),
                                     replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon", muon_lr=0.0193)),
    "sparseloco-c32-k8-h32-muon": (StrategyConfig(name="sparseloco", inner_steps=32, chunk=32, topk=8, values="2bit",
                                                  outer_lr=2.0, error_decay=0.804),
                                   replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon", muon_lr=0.0193)),
    "sparseloco-c32-k8-h32-muon-warmup": (StrategyConfig(name="sparseloco", inner_steps=32, chunk=32, topk=8,
                                                         values="2bit", outer_lr=2.0, error_decay=0.804),
                                          replace(BASE_TRAIN, inner_lr=0.0068, inner_optimizer="muon",
                                                  muon_lr=0.0193)),  # TOPK_WARMUP: k 64, 32, 16, then 8
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


def simulate(preset: str, tier: Tier, seed: int, corpus: data.Corpus, *,
             configs: tuple[StrategyConfig, TrainConfig] | None = None,
             on_eval: Callable[[int, float], None] | None = None) -> dict:
    """One strategy, one seed: train, count bytes, measure held-out bits per byte.

    `configs` replaces the preset's settings (`bench tune`'s trials; `preset` then only names the
    row); `on_eval(step, val_bpb)` is called at each evaluation point (the tuner's pruner)."""
    strat_cfg, train_cfg = configs or PRESETS[preset]
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
    warmup = [make_strategy(replace(strat_cfg, topk=strat_cfg.topk * 2 ** (TOPK_WARMUP[preset] - r)), shapes,
                            train_cfg, schedule, robust=RobustConfig(aggregator="mean"))
              for r in range(TOPK_WARMUP.get(preset, 0))]  # (the same error buffers: the same shapes)
    eval_at = {round(tier.steps * (i + 1) / tier.eval_points) for i in range(tier.eval_points)}
    curve, step, rounds, sent, t0 = [], 0, 0, 0, time.monotonic()
    while step < tier.steps:
        strat = warmup[rounds] if rounds < len(warmup) else strategy
        h = min(strat.inner_steps, tier.steps - step)
        if strat_cfg.overlap:
            payloads = [_overlapped_round(w, state, strat, h, OVERLAP_DELAY.get(preset, h), tier, rounds == 0)
                        for w in workers]
        else:
            payloads = [_local_round(w, state, strat, h, tier) for w in workers]
        strat.apply(state, payloads)
        step, rounds, sent = step + h, rounds + 1, sent + strat.codec.encoded_size()
        if any(step - h < s <= step for s in eval_at):
            workers[0].trainer.load_params(state.params)
            bpb = evaluate_bpb(workers[0].trainer.model, vx, vy, torch.device("cpu"))
            curve.append({"step": step, "tokens": step * n * tier.batch_size * tier.model.ctx,
                          "upload_bytes": (n - 1) * sent, "val_bpb": bpb})
            if on_eval is not None:
                on_eval(step, bpb)
    params = sum(math.prod(s) for s in shapes)
    return {"strategy": preset, "seed": seed, "params": params, "steps": tier.steps, "workers": n,
            "tokens": tier.steps * n * tier.batch_size * tier.model.ctx,
            "payload_bytes": payload, "rounds": rounds,
            "upload_bytes_per_step": (n - 1) * sent / tier.steps,
            # upload once (the node's relay tree): what the owner itself sends, one copy per round
            "own_upload_bytes_per_step": sent / tier.steps,
            "download_bytes_per_step": (n - 1) * sent / tier.steps,
            "dense_ring_bytes_per_step": 2 * (n - 1) / n * 4 * params,
            "val_bpb": curve[-1]["val_bpb"], "curve": curve, "seconds": round(time.monotonic() - t0, 1),
            "settings": {"strategy": strat_cfg.__dict__, "train": train_cfg.__dict__}}


def _local_round(w: Worker, state: SwarmState, strategy, h: int, tier: Tier) -> bytes:
    w.trainer.load_params(state.params)
    for _ in range(h):
        x, y = data.windows(w.tokens, tier.batch_size, tier.model.ctx, w.gen)
        w.trainer.step(x, y, apply=strategy.local_optimizer)
    return strategy.make_update(state, w.buffers, w.trainer.model)


def _overlapped_round(w: Worker, state: SwarmState, strategy, h: int, delay: int, tier: Tier, first: bool) -> bytes:
    """Overlap (StrategyConfig.overlap) as the node runs it (node/outer/overlap.py): the worker goes on
    from its own weights for `delay` inner steps while the last round travels, then moves the
    progress made since onto the swarm's state (`state`, the last round applied) and trains the
    rest of the round; its update is measured from that state."""
    if first:
        w.trainer.load_params(state.params)
    overlap = Overlap()
    ended = overlap.start(state, w.trainer.params, in_flight=True)  # where the last round ended

    def move_onto_state() -> None:
        w.trainer.load_params(overlap.rebase(ended, state, w.trainer.params).params)

    for i in range(h):
        if i == min(delay, h):
            move_onto_state()
        x, y = data.windows(w.tokens, tier.batch_size, tier.model.ctx, w.gen)
        w.trainer.step(x, y, apply=strategy.local_optimizer)
    if delay >= h:  # the result came only when the round's compute was done
        move_onto_state()
    return strategy.make_update(state, w.buffers, w.trainer.model)


def _job(args: tuple[str, str, int]) -> dict:
    preset, tier_name, seed = args
    torch.set_num_threads(1)  # one core per job: jobs run side by side
    return simulate(preset, TIERS[tier_name], seed, data.load_corpus("stdlib"))


def summarize(runs: list[dict], reference: str = "ddp-adamw") -> list[dict]:
    """One row per strategy: means over seeds, ratios against the ring and the reference's bpb
    (DDP-AdamW's preset; `reference` names another, e.g. a tuned DDP)."""
    rows = []
    for preset in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == preset]
        row = {k: rs[0][k] for k in ("strategy", "params", "tokens", "upload_bytes_per_step",
                                     "download_bytes_per_step", "dense_ring_bytes_per_step", "payload_bytes")}
        row["upload_reduction"] = row["dense_ring_bytes_per_step"] / row["upload_bytes_per_step"]
        if "own_upload_bytes_per_step" in rs[0]:  # (runs recorded before upload once lack it)
            row["own_upload_reduction"] = row["dense_ring_bytes_per_step"] / rs[0]["own_upload_bytes_per_step"]
        row["download_reduction"] = row["dense_ring_bytes_per_step"] / row["download_bytes_per_step"]
        row["val_bpb"] = sum(r["val_bpb"] for r in rs) / len(rs)
        row["val_bpb_per_seed"] = [r["val_bpb"] for r in rs]
        row["seconds"] = sum(r["seconds"] for r in rs)
        rows.append(row)
    ddp = next((r["val_bpb"] for r in rows if r["strategy"] == reference), None)
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
        plot_frontier(rows, frontier_path(plot_path), title=f"bench quality, tier {tier}")
    return rows


def frontier_path(plot_path: str) -> str:
    """Where --plot P.png puts the frontier: P-frontier.png beside it."""
    p = Path(plot_path)
    return str(p.with_name(f"{p.stem}-frontier{p.suffix or '.png'}"))


def seed_gaps(row: dict, ddp: dict) -> list[float]:
    # per seed, in seed order: both rows come from the same tier's seeds
    """The row's gap to DDP per seed (each seed against DDP's run of the same seed)."""
    return [(b - d) / d for b, d in zip(row["val_bpb_per_seed"], ddp["val_bpb_per_seed"])]


BANDS = (100, 1000, 3000, 10000)
"""The upload-reduction bands of issue 11's table (at least this many times less than the fp32 ring)."""


def band_table(rows: list[dict], reference: str = "ddp-adamw") -> str:
    """The best gap at >= each band's reduction (the row with the lowest mean gap there)."""
    lines = [f"| band | best preset | gap vs {reference} (mean; per seed) | upload reduction |", "|---|---|---|---|"]
    ddp = next(r for r in rows if r["strategy"] == reference)
    for band in BANDS:
        there = [r for r in rows if r["upload_reduction"] >= band and not r["strategy"].startswith("ddp-adamw")]
        if not there:
            lines.append(f"| >= {band:,}x | none | - | - |")
            continue
        best = min(there, key=lambda r: r["gap_vs_ddp"])
        per = " / ".join(f"{g:+.1%}" for g in seed_gaps(best, ddp))
        lines.append(f"| >= {band:,}x | {best['strategy']} | {best['gap_vs_ddp']:+.1%} ({per}) | "
                     f"{best['upload_reduction']:,.0f}x |")
    return "\n".join(lines)


def plot_frontier(rows: list[dict], path: str, title: str, reference: str = "ddp-adamw") -> None:
    """Gap to DDP against upload reduction (log x): one point per preset (the mean of its seeds'
    gaps), bars from its best to its worst seed (each seed against DDP's run of the same seed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SwarmtrainError("--plot needs matplotlib", "pip install matplotlib (make bench installs it)") from None
    ddp = next((r for r in rows if r["strategy"] == reference), None)
    if ddp is None:
        return
    fig, ax = plt.subplots(figsize=(10, 6))
    placed: list[tuple[float, float]] = []
    for r in sorted(rows, key=lambda r: (r["upload_reduction"], -r["gap_vs_ddp"])):
        if r["strategy"].startswith("ddp-adamw"):
            if r["strategy"] != reference:  # another DDP (e.g. the untuned preset): a level, not a point
                ax.axhline(100 * r["gap_vs_ddp"], color="grey", lw=0.8, ls="--")
                ax.text(0.01, 100 * r["gap_vs_ddp"], f" {r['strategy']}", transform=ax.get_yaxis_transform(),
                        fontsize=7, color="grey", va="bottom")
            continue
        gaps = [100 * g for g in seed_gaps(r, ddp)]
        mean = sum(gaps) / len(gaps)  # the mean of the seeds' gaps (within 0.1 point of the row's gap)
        x = r["upload_reduction"]
        ax.errorbar([x], [mean], yerr=[[mean - min(gaps)], [max(gaps) - mean]], fmt="o", capsize=3)
        near = sum(abs(math.log10(x / px)) < 0.1 and abs(mean - py) < 4 for px, py in placed)
        placed.append((x, mean))
        ax.annotate(r["strategy"], (x, mean), textcoords="offset points", xytext=(5, 4 - 11 * near), fontsize=7)
    for band in BANDS:
        ax.axvline(band, color="grey", lw=0.6, ls=":")
    ax.plot([100, 1000], [2, 2], color="green", lw=1.5, label="target: <= 2% at >= 100x")
    ax.plot([1000, 10000], [5, 5], color="orange", lw=1.5, label="target: <= 5% at >= 1,000x")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xscale="log", xlabel="upload reduction vs a dense fp32 ring all-reduce (log)",
           ylabel=f"val bpb gap vs {reference} (%)", title=f"{title}: quality against traffic")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def merge_rows(paths: list[str], reference: str = "ddp-adamw") -> list[dict]:
    """Rows of several `bench quality --json` files of the same tier, gaps recomputed against the
    reference (deterministic: the same preset and seed give the same run in every file)."""
    runs, seen = [], set()
    for p in paths:
        for r in json.loads(Path(p).read_text())["runs"]:
            if (r["strategy"], r["seed"]) not in seen:
                seen.add((r["strategy"], r["seed"]))
                runs.append(r)
    return summarize(runs, reference)


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


if __name__ == "__main__":  # redraw the frontier from results files (several merge):
    # python -m bench.quality frontier OUT.png [--reference PRESET] RESULTS.json [MORE.json...]
    import sys
    args = sys.argv[1:]
    ref = "ddp-adamw"
    if "--reference" in args:
        i = args.index("--reference")
        ref = args[i + 1]
        del args[i:i + 2]
    if len(args) < 3 or args[0] != "frontier":
        sys.exit("usage: python -m bench.quality frontier OUT.png [--reference PRESET] RESULTS.json [MORE.json...]")
    merged = merge_rows(args[2:], ref)
    tier = json.loads(Path(args[2]).read_text())["tier"]
    plot_frontier(merged, args[1], title=f"bench quality, tier {tier}", reference=ref)
    print(markdown_table(merged))
    print()
    print(band_table(merged, ref))
