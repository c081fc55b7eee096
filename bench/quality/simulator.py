"""The simulation behind `swarmtrain bench quality` and `bench tune`: N workers in one process.

N workers are simulated in one process through the same strategy and codec code the node
runs (node/outer/strategies, protocol/codecs): the same payload bytes, the same apply. Worker w
draws the same batches under every strategy (generator seeded by (seed, w)), so each row
sees exactly the same token stream. Bytes are what our all-gather moves per peer: N-1
payloads down, and N-1 up on average (the presets that combine through v3's reduce-scatter,
presets.EXCHANGES, are counted alike: they measure its quality, not its traffic).
`own_upload_*` counts one copy of a peer's own payload per round: what upload once leaves on
the owner's link (the node's owner sends two, to the leader and to its relay tree,
node/round/relay.py; other peers relay the rest).
The reference is a dense fp32 ring all-reduce of the same model every step:
2 (N-1)/N x 4 bytes x params, up and down, per worker.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from bench.quality import ddp_muon
from bench.quality.presets import (
    ALL_GATHER_MEAN,
    EXCHANGES,
    H_WARMUP,
    OVERLAP_DELAY,
    PRESETS,
    TOPK_WARMUP,
    Preset,
    Tier,
)
from node.config import DataConfig, RobustConfig, StrategyConfig
from node.errors import SwarmtrainError
from node.outer.aggregate import make_aggregator
from node.outer.overlap import Overlap
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.scatter import chunks
from node.scatter.reduce import TwoLevel
from node.train import data
from node.train.model import build_model
from node.train.trainer import InnerTrainer, evaluate_bpb, muon_matrices, warmup_cosine


@dataclass
class Worker:
    """One simulated peer: its inner trainer, its strategy buffers and its own batches."""

    trainer: InnerTrainer
    """The peer's model and inner optimizer."""
    buffers: object
    """The strategy's per-peer state (error feedback, momentum): `strategy.new_worker()`."""
    gen: torch.Generator
    """Draws the peer's batches (seeded by (seed, worker)), the same under every strategy."""
    tokens: torch.Tensor
    """The peer's data shard."""


class Stopped(Exception):
    """A stop request (the first Ctrl+C or SIGTERM) cut a simulation short."""


def check_stop(stop: threading.Event | None) -> None:
    """Raise Stopped when `stop` is set: called between rounds, so a stop waits for one round at most."""
    if stop is not None and stop.is_set():
        raise Stopped()


def build_strategy(strat_cfg: StrategyConfig, model: torch.nn.Module, train_cfg, schedule, robust: RobustConfig):
    """The preset's strategy for `model`: the run's (make_strategy), or DDP-Muon, a reference of
    this benchmark only (bench/quality/ddp_muon.py says why), which needs to know Muon's matrices."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    if strat_cfg.name != ddp_muon.NAME:
        return make_strategy(strat_cfg, shapes, train_cfg, schedule, robust=robust)
    matrices = muon_matrices(model)
    flags = [id(p) in matrices for p in model.parameters()]
    return ddp_muon.DdpMuon(strat_cfg, shapes, train_cfg, schedule, make_aggregator(robust), flags)


def simulate_preset(
    preset: str,
    tier: Tier,
    seed: int,
    corpus: data.Corpus,
    *,
    configs: Preset | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    stop: threading.Event | None = None,
    device: str = "cpu",
) -> dict:
    """One strategy, one seed: train, count bytes, measure held-out bits per byte.

    `configs` replaces the preset's settings (`bench tune`'s trials; `preset` then only names the
    row); `on_eval(step, val_bpb)` is called at each evaluation point (the tuner's pruner); a set
    `stop` raises Stopped before the next round. `device` trains the workers there (the state,
    outer step and codecs stay on the CPU, as in the node)."""
    strat_cfg, train_cfg = configs or PRESETS[preset]
    train_cfg = replace(train_cfg, batch_size=tier.batch_size, warmup_steps=tier.warmup_steps, seed=seed)
    dcfg = DataConfig()
    schedule = warmup_cosine(train_cfg, tier.steps)
    model = build_model(tier.model, seed)
    shapes = [tuple(p.shape) for p in model.parameters()]
    # the plain mean unless the preset names another exchange (presets.EXCHANGES): this benchmark
    # compares compression methods (rows reproducible across versions)
    exchange = EXCHANGES.get(preset, ALL_GATHER_MEAN)
    strategy = build_strategy(strat_cfg, model, train_cfg, schedule, exchange.robust)
    if exchange.scatter:
        try:  # the wire v3 carries the strategy's updates on (dense: int8; 1-bit: signs; top-k: sparse)
            wire = chunks.wire_for(strategy.codec, out_bits=exchange.out_bits, keep=exchange.keep, mid=exchange.mid)
        except ValueError as e:
            raise SwarmtrainError(f"preset {preset}: {e}", "use diloco, sparseloco or ddp-adamw") from None
        if strat_cfg.name not in ("diloco", "ddp-adamw", "sparseloco"):
            raise SwarmtrainError(
                f"preset {preset}: the reduce-scatter combines dense, 1-bit and top-k updates only",
                "use diloco, sparseloco or ddp-adamw",
            )
        strategy.agg = TwoLevel(strategy.agg, seed, wire)  # each round on a new grid, as the node's rounds
    state = SwarmState.initial(model, strategy.outer_buffers)
    workers = [
        Worker(
            InnerTrainer(build_model(tier.model, seed), train_cfg, torch.device(device), schedule),
            strategy.new_worker(),
            torch.Generator().manual_seed(1000 * seed + w),
            data.train_tokens(corpus, dcfg, w % dcfg.shards),
        )
        for w in range(tier.workers)
    ]
    vx, vy = data.windows(
        data.val_tokens(corpus, dcfg), tier.val_seqs, tier.model.ctx, torch.Generator().manual_seed(12345)
    )
    n, payload = tier.workers, strategy.codec.encoded_size()
    warmup = [
        make_strategy(
            replace(strat_cfg, topk=strat_cfg.topk * 2 ** (TOPK_WARMUP[preset] - r)),
            shapes,
            train_cfg,
            schedule,
            robust=RobustConfig(aggregator="mean"),
        )
        for r in range(TOPK_WARMUP.get(preset, 0))
    ]  # (the same error buffers: the same shapes)
    eval_at = {round(tier.steps * (i + 1) / tier.eval_points) for i in range(tier.eval_points)}
    curve, step, rounds, sent, t0 = [], 0, 0, 0, time.monotonic()
    while step < tier.steps:
        check_stop(stop)
        strat = warmup[rounds] if rounds < len(warmup) else strategy
        h = min(round_inner_steps(strat.inner_steps, H_WARMUP.get(preset), rounds), tier.steps - step)
        if strat_cfg.overlap:
            payloads = [
                overlapped_round(w, state, strat, h, OVERLAP_DELAY.get(preset, h), tier, rounds == 0) for w in workers
            ]
        else:
            payloads = [local_round(w, state, strat, h, tier) for w in workers]
        strat.apply(state, payloads)
        if strat is strategy and exchange.take_back:
            for w, p in zip(workers, payloads):  # what the aggregate did not apply stays with its senders
                strategy.take_back(w.buffers, p, strategy.agg.last)
        step, rounds, sent = step + h, rounds + 1, sent + strat.codec.encoded_size()
        if any(step - h < s <= step for s in eval_at):
            workers[0].trainer.load_params(state.params)
            bpb = evaluate_bpb(workers[0].trainer.model, vx, vy, torch.device(device))
            curve.append(
                {
                    "step": step,
                    "tokens": step * n * tier.batch_size * tier.model.ctx,
                    "upload_bytes": (n - 1) * sent,
                    "val_bpb": bpb,
                }
            )
            if on_eval is not None:
                on_eval(step, bpb)
    params = sum(math.prod(s) for s in shapes)
    return {
        "strategy": preset,
        "seed": seed,
        "params": params,
        "steps": tier.steps,
        "workers": n,
        "tokens": tier.steps * n * tier.batch_size * tier.model.ctx,
        "payload_bytes": payload,
        "rounds": rounds,
        "upload_bytes_per_step": (n - 1) * sent / tier.steps,
        # upload once (the node's relay tree): what the owner itself sends, one copy per round
        "own_upload_bytes_per_step": sent / tier.steps,
        "download_bytes_per_step": (n - 1) * sent / tier.steps,
        "dense_ring_bytes_per_step": 2 * (n - 1) / n * 4 * params,
        "val_bpb": curve[-1]["val_bpb"],
        "curve": curve,
        "seconds": round(time.monotonic() - t0, 1),
        "settings": {
            "strategy": strat_cfg.__dict__,
            "train": train_cfg.__dict__,
            "exchange": {
                "scatter": exchange.scatter,
                "robust": exchange.robust.__dict__,
                **(
                    {"out_bits": exchange.out_bits, "keep": exchange.keep, "mid": exchange.mid}
                    if exchange.scatter
                    else {}
                ),
            },
        },
    }


def round_inner_steps(h: int, first: int | None, r: int) -> int:
    """H of round r under the warm-up of H (presets.H_WARMUP): `first` doubled each round up to the
    preset's H; without a warm-up (`first` None), H. A function of the round number only."""
    return h if first is None else min(h, first * 2**r)


def local_round(w: Worker, state: SwarmState, strategy, h: int, tier: Tier) -> bytes:
    w.trainer.load_params(state.params)
    for _ in range(h):
        x, y = data.windows(w.tokens, tier.batch_size, tier.model.ctx, w.gen)
        w.trainer.step(x, y, apply=strategy.local_optimizer)
    return strategy.make_update(state, w.buffers, w.trainer.model)


def overlapped_round(w: Worker, state: SwarmState, strategy, h: int, delay: int, tier: Tier, first: bool) -> bytes:
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
