"""`swarmtrain bench byzantine`: attacks against the aggregators, in one process.

N peers are simulated as in `bench quality` (bench/quality.py): honest peers train for real
(inner AdamW steps on their own data shard) and send their update through the real codec;
the attackers do not train but craft their payloads, from the honest ones where the attack
needs them. Every payload goes through `strategy.check` (a refused one is dropped and counted,
as the round protocol drops it) and then `strategy.apply`: encode -> bytes -> decode ->
aggregate, the node's own code. Roster order: honest peers, then attackers (a replay can
only be announced after its original). With scoring, every update is scored on a batch all
peers share (node/outer/scoring.py) and banned peers are left out of later rounds.

Each (strategy, aggregator) also runs clean (0 attackers, every peer honest): gap_vs_clean is
the relative val-bpb difference against it.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from node.train import data
from bench.quality import BASE_TRAIN, SMALL, Tier, Worker, _local_round
from node.config import DataConfig, ModelConfig, RobustConfig, StrategyConfig
from node.errors import SwarmtrainError
from node.train.model import build_model
from node.outer.scoring import banned, payload_digest, score_updates, shared_batch_loss
from node.outer.state import SwarmState
from node.outer.strategies import make_strategy
from node.train.trainer import InnerTrainer, evaluate_bpb, warmup_cosine
from protocol.codecs import FP16_MAX, DenseCodec, Int8Codec, Selection, TopKCodec, _pack_indices
from protocol.errors import ProtocolError

SIGN_FLIP_SCALE = 4.0
"""sign-flip sends -4 x an honest update (a flip at the honest scale barely differs from a freeloader)."""
NOISE_SCALE = 100.0
"""scaled-noise sends Gaussian noise of 100 x an honest update's RMS, per tensor."""
IPM_EPS = 0.1
"""ipm sends -eps x the honest mean (Xie et al. 2019 use 0.1 against robust aggregators)."""
HUGE = 3.0e38
"""max-value: what the wire formats can carry beyond fp16 (int8 scale, 2-bit table, 1-bit scale, bf16, fp32)."""

DIVERGED = 1e4
"""A state with a weight beyond this has diverged (trained weights of this model stay below 10)."""

PRESETS: dict[str, StrategyConfig] = {
    # H = 5 keeps the default suite within ~15 minutes on one core; the rest as in bench quality
    "diloco": StrategyConfig(name="diloco", inner_steps=5, outer_lr=0.7, outer_momentum=0.9),
    "sparseloco": StrategyConfig(name="sparseloco", inner_steps=5, topk=64, values="2bit", outer_lr=2.0,
                                 error_decay=0.95),
    "decoupled-momentum": StrategyConfig(name="decoupled-momentum", topk=32, values="bf16", momentum_decay=0.999),
    "ddp-adamw": StrategyConfig(name="ddp-adamw"),
}


@dataclass(frozen=True, kw_only=True)
class Setup:
    model: ModelConfig = SMALL
    """Model of every run (bench quality's small tier)."""
    batch_size: int = 8
    """Sequences per honest inner step."""
    warmup_steps: int = 20
    """Linear warm-up before the cosine decay, in inner steps."""
    val_seqs: int = 128
    """Held-out windows in the final val bpb."""
    score_seqs: int = 16
    """Windows of the batch all peers share for scoring, one per data shard in turn."""
    seed: int = 0
    """Weights, batches and attackers' randomness."""


# ------------------------------------------------------------------------------------ attacks
@dataclass
class Round:
    """What an attacker can see when it crafts its payload in one round."""

    codec: object
    """The strategy's codec (protocol/codecs.py): attackers write its wire format."""
    honest: list[bytes]
    """This round's honest payloads (attackers answer last, so they saw them)."""
    previous: list[bytes]
    """Last round's honest payloads (stale replays)."""
    gen: torch.Generator
    """The attackers' randomness (seeded: runs repeat)."""
    n: int
    """Peers in the round, attackers included."""
    f: int
    """Attackers in the round."""
    _decoded: list | None = None
    """Cache of the honest payloads, decoded."""

    @property
    def decoded(self) -> list[list[torch.Tensor]]:
        if self._decoded is None:
            self._decoded = [self.codec.decode(p) for p in self.honest]
        return self._decoded

    def mean_std(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        stacks = [torch.stack(ts) for ts in zip(*self.decoded)]
        return [s.mean(0) for s in stacks], [s.std(0, correction=0) for s in stacks]


def _sign_flip(r: Round, a: int) -> bytes:
    return r.codec.encode([-SIGN_FLIP_SCALE * t for t in r.decoded[a % len(r.honest)]])


def _scaled_noise(r: Round, a: int) -> bytes:
    ref = r.decoded[a % len(r.honest)]
    return r.codec.encode([torch.randn(t.shape, generator=r.gen) * (NOISE_SCALE * float(t.square().mean().sqrt()))
                           for t in ref])


def alie_z(n: int, f: int) -> float:
    """'A little is enough' (Baruch et al. 2019): z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - f."""
    s = math.floor(n / 2 + 1) - f
    return max(0.0, statistics.NormalDist().inv_cdf(min(0.999, max(0.5, (n - s) / n))))


def _alie(r: Round, a: int) -> bytes:
    mean, std = r.mean_std()
    z = alie_z(r.n, r.f)
    return r.codec.encode([m - z * s for m, s in zip(mean, std)])


def _ipm(r: Round, a: int) -> bytes:
    mean, _ = r.mean_std()
    return r.codec.encode([-IPM_EPS * m for m in mean])


def _nan_inf(r: Round, a: int) -> bytes:
    return forged_payload(r.codec, math.nan if a % 2 == 0 else math.inf)


def _max_value(r: Round, a: int) -> bytes:
    """Even attackers: the largest value the wire format carries (fp16 65504, which is valid bytes;
    else 3e38 as an int8 scale, 2-bit table, 1-bit scale, bf16 or fp32, which the codec refuses).
    Odd attackers: the largest value the codec still accepts (65504) in every codec: the clip's job."""
    fp16 = isinstance(r.codec, DenseCodec) and r.codec.dtype == "float16"
    return forged_payload(r.codec, HUGE if a % 2 == 0 and not fp16 else FP16_MAX)


def _sparse_index(r: Round, a: int) -> bytes:
    """All attackers pick the same coordinates every round, at +-65504 (fixed signs)."""
    g = torch.Generator().manual_seed(4242)  # shared by the attackers, not by round
    codec = r.codec
    if isinstance(codec, TopKCodec):
        sels = []
        for ch in codec.chunkings():
            k = min(codec.k, ch.chunk_numel)
            idx = torch.rand(ch.num_chunks, ch.chunk_numel, generator=g).argsort(dim=1)[:, :k].sort(dim=1).values
            sign = torch.randint(0, 2, (ch.num_chunks, k), generator=g).float() * 2 - 1
            sels.append(Selection(idx=idx, val=sign * FP16_MAX))
        return codec.pack(sels)
    out = []
    for t in r.decoded[0]:
        mask = torch.rand(t.shape, generator=g) < 1 / 64
        sign = torch.randint(0, 2, t.shape, generator=g).float() * 2 - 1
        out.append(mask.float() * sign * FP16_MAX)
    return codec.encode(out)


def _freeloader(r: Round, a: int) -> bytes:
    """Even attackers send zeros; odd ones replay an honest update of the previous round."""
    if a % 2 == 1 and r.previous:
        return r.previous[a % len(r.previous)]
    return r.codec.encode([torch.zeros_like(t) for t in r.decoded[0]])


def _copycat(r: Round, a: int) -> bytes:
    return r.honest[a % len(r.honest)]


ATTACKS: dict[str, Callable[[Round, int], bytes]] = {
    "sign-flip": _sign_flip, "scaled-noise": _scaled_noise, "alie": _alie, "ipm": _ipm, "nan-inf": _nan_inf,
    "max-value": _max_value, "sparse-index": _sparse_index,
    "freeloader": _freeloader, "copycat": _copycat,
}


def forged_payload(codec, value: float) -> bytes:
    """Bytes of exactly the codec's size whose every value decodes to `value` (NaN, inf, 3e38 included):
    what a hostile peer writes by hand, past any encoder's clamping."""
    if isinstance(codec, DenseCodec):
        n = sum(math.prod(s) for s in codec.shapes)
        with np.errstate(over="ignore"):
            out = np.full(n, value, dtype=np.float16 if codec.dtype == "float16" else np.float32).tobytes()
    elif isinstance(codec, Int8Codec):
        out = b"".join(np.full(codec._blocks(math.prod(s)), value / 127, np.float32).tobytes()
                       + np.full(math.prod(s), 127, np.int8).tobytes() for s in codec.shapes)
    else:
        parts = []
        for ch in codec.chunkings():
            k = min(codec.k, ch.chunk_numel)
            _, ni, nv = codec._sizes(ch)
            idx = torch.arange(k).repeat(ch.num_chunks)
            if codec.values == "bf16":
                bf16 = torch.full((idx.numel(),), value).to(torch.bfloat16)
                header, codes = b"", bf16.view(torch.int16).numpy().tobytes()
            elif codec.values == "2bit":
                header, codes = np.full(4, value, np.float32).tobytes(), bytes(nv)
            else:
                header, codes = np.float32(value).tobytes(), b"\xff" * nv
            parts += [header, _pack_indices(idx, codec.index_bits), codes]
        out = b"".join(parts)
    assert len(out) == codec.encoded_size()
    return out


# ------------------------------------------------------------------------------------ one run
@dataclass(frozen=True)
class Case:
    strategy: str
    """A key of PRESETS."""
    aggregator: str
    """'robust' or 'mean'."""
    attack: str
    """A key of ATTACKS, or 'none' (with 0 attackers)."""
    attackers: int
    """How many of the workers lie (the last ones in roster order)."""
    workers: int
    """Simulated peers, attackers included."""
    rounds: int
    """Outer rounds (for step-wise strategies, one step each)."""
    scoring: bool
    """Score updates and ban bad scorers (node/outer/scoring.py)."""
    variant: dict | None = None
    """Aggregator ablation: fields of node.outer.aggregate.Robust to override (sparse_rule, sign_rule, ...)."""


class Swarm:
    """One simulated run: honest workers, attackers, the strategy with its aggregator, the ledger of scores."""

    def __init__(self, case: Case, setup: Setup, shards: list[torch.Tensor]):
        self.case, self.setup, self.shards = case, setup, shards
        strat_cfg = PRESETS[case.strategy]
        train = replace(BASE_TRAIN, batch_size=setup.batch_size, warmup_steps=setup.warmup_steps, seed=setup.seed)
        self.h = strat_cfg.inner_steps if strat_cfg.name in ("diloco", "sparseloco") else 1  # steps per round
        schedule = warmup_cosine(train, case.rounds * self.h)
        self.model = build_model(setup.model, setup.seed)
        shapes = [tuple(p.shape) for p in self.model.parameters() if p.requires_grad]
        self.robust = RobustConfig(aggregator=case.aggregator, scoring=case.scoring)
        self.strategy = make_strategy(strat_cfg, shapes, train, schedule, robust=self.robust)
        if case.variant:
            self.strategy.agg = replace(self.strategy.agg, **case.variant)
        self.state = SwarmState.initial(self.model, self.strategy.outer_buffers)
        self.tier = Tier(steps=case.rounds * self.h, seeds=(setup.seed,), model=setup.model,
                         batch_size=setup.batch_size)
        self.n_honest = case.workers - case.attackers
        self.peers = [f"peer-{i:02d}" for i in range(case.workers)]  # attackers last
        self.workers = [Worker(InnerTrainer(build_model(setup.model, setup.seed), train, torch.device("cpu"), schedule),
                               self.strategy.new_worker(), torch.Generator().manual_seed(1000 * setup.seed + w),
                               shards[w % len(shards)]) for w in range(self.n_honest)]
        self.scorer = build_model(setup.model, setup.seed)
        self.gen = torch.Generator().manual_seed(777 + setup.seed)
        self.banned: set[str] = set()
        self.history: list[dict[str, float]] = []  # the ledger's scores, one {peer: score} per round
        self.seen: set[str] = set()  # digests of every payload so far (stale replays)
        self.previous: list[bytes] = []
        self.dropped = 0

    def round_payloads(self) -> tuple[list[int], list[bytes]]:
        """(live peers, their payloads in roster order): honest peers train, then attackers craft."""
        live = [i for i in range(self.case.workers) if self.peers[i] not in self.banned]
        honest = [_local_round(self.workers[i], self.state, self.strategy, self.h, self.tier)
                  for i in live if i < self.n_honest]
        liars = [i for i in live if i >= self.n_honest]
        ctx = Round(self.strategy.codec, honest, self.previous, self.gen, len(live), len(liars))
        self.previous = honest
        return live, honest + [ATTACKS[self.case.attack](ctx, i - self.n_honest) for i in liars]

    def accepted(self, payloads: list[bytes]) -> list[bytes]:
        """What the round protocol keeps: payloads the strategy's check (the codec) accepts."""
        ok = []
        for p in payloads:
            try:
                self.strategy.check(p)
                ok.append(p)
            except ProtocolError:
                self.dropped += 1
        return ok

    def score(self, rnd: int, live: list[int], payloads: list[bytes]) -> None:
        """Score this round's updates into the ledger and update the bans (they apply from the next round)."""
        loss_of = shared_batch_loss(self.scorer, *_shared_batch(self.shards, self.setup, rnd))
        scores = score_updates(self.strategy, self.state, payloads, loss_of, earlier=self.seen)
        self.history.append({self.peers[i]: s for i, s in zip(live, scores)})
        self.seen |= {payload_digest(p) for p in payloads}
        self.banned = banned(self.history, self.robust)

    def attackers_banned(self) -> bool:
        return self.case.attackers > 0 and set(self.peers[self.n_honest:]) <= self.banned


def simulate(case: Case, setup: Setup, shards: list[torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """One run: `case.rounds` outer rounds with its attackers; the final val bpb and what happened."""
    t0 = time.monotonic()
    swarm = Swarm(case, setup, shards)
    rounds_to_ban = diverged_at = None
    for rnd in range(case.rounds):
        live, payloads = swarm.round_payloads()
        ok = swarm.accepted(payloads)
        if case.scoring:
            swarm.score(rnd, live, payloads)
            rounds_to_ban = rounds_to_ban or (rnd + 1 if swarm.attackers_banned() else None)
        swarm.strategy.apply(swarm.state, ok)
        if _diverged(swarm.state):
            diverged_at = rnd + 1
            break
    bpb = None if diverged_at else _val_bpb(swarm.model, swarm.state, val)
    attackers = swarm.peers[swarm.n_honest:]
    return {"attack": case.attack, "aggregator": case.aggregator + _variant_suffix(case.variant),
            "strategy": case.strategy, "attackers": case.attackers, "workers": case.workers,
            "rounds": case.rounds, "scoring": case.scoring, "seed": setup.seed, "val_bpb": bpb,
            "diverged_at_round": diverged_at,
            "dropped_payloads": swarm.dropped, "rounds_to_ban": rounds_to_ban,
            "banned_attackers": sum(p in swarm.banned for p in attackers),
            "banned_honest": len(swarm.banned) - sum(p in swarm.banned for p in attackers),
            "seconds": round(time.monotonic() - t0, 1)}


def _diverged(state: SwarmState) -> bool:
    """Non-finite, or weights beyond any trained model's (|w| > 1e4): the model is gone, the run ends.
    (The round protocol refuses a non-finite state; a huge finite one is what the plain mean lets in.)"""
    return not all(bool(torch.isfinite(p).all()) and float(p.abs().max()) <= DIVERGED
                   for p in state.params)


def _variant_suffix(variant: dict | None) -> str:
    return f"[{','.join(f'{k}={v}' for k, v in variant.items())}]" if variant else ""


def _shared_batch(shards: list[torch.Tensor], setup: Setup, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The round's shared scoring batch: one window from each shard in turn, seeded by the round."""
    g = torch.Generator().manual_seed(10_000 + rnd)
    xs, ys = zip(*(data.windows(shards[(rnd + j) % len(shards)], 1, setup.model.ctx, g)
                   for j in range(setup.score_seqs)))
    return torch.cat(xs), torch.cat(ys)


def _val_bpb(model: torch.nn.Module, state: SwarmState, val) -> float:
    with torch.no_grad():
        for p, src in zip([p for p in model.parameters() if p.requires_grad], state.params):
            p.copy_(src)
    return evaluate_bpb(model, *val, torch.device("cpu"))


# ------------------------------------------------------------------------------------ the suite
def run_byzantine(workers: int, attackers: list[int], attacks: list[str], aggregators: list[str],
                  strategies: list[str], rounds: int, scoring: bool, json_path: str, say=print,
                  setup: Setup | None = None, variants: list[dict] | None = None) -> list[dict]:
    """Every (strategy, aggregator): a clean run, then one run per attack and attacker count.

    `variants` adds robust-aggregator ablations (node.outer.aggregate.Robust fields) to the robust runs.
    """
    setup = setup or Setup()
    attacks = list(ATTACKS) if attacks == ["all"] or "all" in attacks else attacks
    _check_names(attacks, aggregators, strategies, workers, attackers, rounds)
    corpus, dcfg = data.load_corpus("stdlib"), DataConfig()
    shards = [data.train_tokens(corpus, dcfg, s) for s in range(dcfg.shards)]
    val = data.windows(data.val_tokens(corpus, dcfg), setup.val_seqs, setup.model.ctx,
                       torch.Generator().manual_seed(12345))
    torch.set_num_threads(1)  # one core, as documented; side-by-side runs do not fight
    aggs = [(a, None) for a in aggregators] + [("robust", v) for v in variants or []]
    rows = []
    for strategy in strategies:
        for agg, variant in aggs:
            cases = [Case(strategy, agg, "none", 0, workers, rounds, scoring, variant)]
            cases += [Case(strategy, agg, attack, k, workers, rounds, scoring, variant)
                      for k in attackers if k > 0 for attack in attacks]
            clean = None
            for case in cases:
                row = simulate(case, setup, shards, val)
                clean = row["val_bpb"] if case.attack == "none" else clean
                row["gap_vs_clean"] = (row["val_bpb"] - clean) / clean if row["val_bpb"] and clean else None
                rows.append(row)
                say(_line(row))
                _write(json_path, rows, setup, workers, rounds, scoring)
    return rows


def _check_names(attacks, aggregators, strategies, workers, attackers, rounds) -> None:
    for kind, names, known in (("attack", attacks, ATTACKS), ("aggregator", aggregators, ("robust", "mean")),
                               ("strategy", strategies, PRESETS)):
        bad = [n for n in names if n not in known]
        if bad:
            raise SwarmtrainError(f"unknown {kind}(s) {bad}", f"use any of: {', '.join(known)}")
    if rounds < 1 or any(not 0 <= k < workers for k in attackers):
        raise SwarmtrainError(f"{attackers} attackers of {workers} workers, {rounds} rounds is not a run",
                              "use --rounds >= 1 and 0 <= --attackers < --workers (at least one honest peer)")


def _line(r: dict) -> str:
    gap = "" if r["gap_vs_clean"] is None else f" gap {r['gap_vs_clean']:+.1%}"
    bpb = "diverged" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}"
    return (f"  {r['strategy']:<18} {r['aggregator']:<8} {r['attack']:<13} {r['attackers']:>2}/{r['workers']} "
            f"bpb {bpb}{gap} dropped {r['dropped_payloads']} ban@{r['rounds_to_ban']} ({r['seconds']:.0f} s)")


def _write(path: str, rows: list[dict], setup: Setup, workers: int, rounds: int, scoring: bool) -> None:
    settings = {"setup": {**asdict(setup), "model": asdict(setup.model)}, "workers": workers, "rounds": rounds,
                "scoring": scoring, "presets": {k: asdict(v) for k, v in PRESETS.items()},
                "train": asdict(BASE_TRAIN), "robust": asdict(RobustConfig()),
                "attack_constants": {"sign_flip_scale": SIGN_FLIP_SCALE, "noise_scale": NOISE_SCALE,
                                     "ipm_eps": IPM_EPS, "huge": HUGE}}
    Path(path).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))


def markdown_table(rows: list[dict]) -> str:
    """The rows as the table in docs/security.md."""
    lines = ["| strategy | attack | aggregator | attackers | scoring | val bpb | gap vs clean | dropped | "
             "rounds to ban | banned honest |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bpb = "diverged" if r["val_bpb"] is None else f"{r['val_bpb']:.4f}"
        gap = "n/a" if r["gap_vs_clean"] is None else f"{r['gap_vs_clean']:+.1%}"
        ban = "-" if r["rounds_to_ban"] is None else str(r["rounds_to_ban"])
        lines.append(f"| {r['strategy']} | {r['attack']} | {r['aggregator']} | {r['attackers']}/{r['workers']} | "
                     f"{'on' if r['scoring'] else 'off'} | {bpb} | {gap} | {r['dropped_payloads']} | {ban} | "
                     f"{r['banned_honest']} |")
    return "\n".join(lines)
