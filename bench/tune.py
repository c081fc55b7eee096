"""`swarmtrain bench tune`: an equal-budget hyperparameter search for one preset (Optuna).

Every method gets the same budget, DDP-AdamW included: `trials` runs of `steps` inner steps on
the same tier (bench/quality/presets.py TIERS, default `tune`: the full tier's model, 600 steps, one
seed), so that no gap is flattering. The search space of each strategy is declared beside it
(`search_space(cfg, train)` in node/outer/strategies/<name>.py; the inner optimizer's in
node/train/trainer.py; DDP's below, node/outer/strategies/ddp.py being a reference kept free of tuning). It
covers learning rates, momenta and decays only: H, k, chunk and wire bits stay the preset's,
because they set the traffic, and the tuner answers "how good can this traffic be".

Sampling: TPE, seeded (the same trials on a rerun). Pruning: a median pruner on the val bpb at the
simulation's evaluation points (Tier.eval_points), so a bad trial stops early. The study lives
in an SQLite file: a rerun of the same command (same preset, tier and steps) continues it up to
`trials` finished trials; Ctrl+C leaves it intact (an unfinished trial counts as failed and is
not in the budget).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from bench.extras import import_extra
from bench.quality.presets import PRESETS, TIERS, Preset
from bench.quality.simulator import simulate_preset
from node.config import StrategyConfig, TrainConfig
from node.errors import SwarmtrainError
from node.outer.strategies import decoupled_momentum, diloco, sparseloco
from node.train import data
from node.train.trainer import search_space as train_space
from protocol.errors import ProtocolError

DDP_SPACE = {"train.inner_lr": ("float", 1e-3, 2e-2, True), "train.weight_decay": ("float", 0.0, 0.2, False)}
"""DDP's space: its AdamW learning rate and weight decay (the same budget as the others); DDP-Muon
adds Muon's own rate (node/train/trainer.search_space)."""

SPACES = {
    "diloco": diloco.search_space,
    "sparseloco": sparseloco.search_space,
    "decoupled-momentum": decoupled_momentum.search_space,
    "ddp-adamw": lambda cfg, train: dict(DDP_SPACE),
    "ddp-muon": lambda cfg, train: dict(DDP_SPACE),
}


class _Stopped(Exception):
    """Raised inside a trial when the user asked to stop (first Ctrl+C)."""


def search_space(preset: str) -> dict[str, tuple]:
    strat, train = PRESETS[preset]
    return {**SPACES[strat.name](strat, train), **train_space(train)}


def configs_for(preset: str, params: dict) -> Preset:
    """The preset's settings with the sampled values put in ('train.x' -> TrainConfig.x)."""
    strat, train = PRESETS[preset]
    s = {k: v for k, v in params.items() if not k.startswith("train.")}
    t = {k[len("train.") :]: v for k, v in params.items() if k.startswith("train.")}
    names_s, names_t = {f.name for f in fields(StrategyConfig)}, {f.name for f in fields(TrainConfig)}
    unknown = [k for k in s if k not in names_s] + [f"train.{k}" for k in t if k not in names_t]
    if unknown:
        raise SwarmtrainError(f"search space names unknown settings {unknown}", "fix the strategy's search_space")
    return Preset(replace(strat, **s), replace(train, **t))


def preset_values(preset: str) -> dict:
    """The preset's own value of every setting the search covers ('train.x' -> TrainConfig.x)."""
    strat, train = PRESETS[preset]
    return {
        k: getattr(train, k[len("train.") :]) if k.startswith("train.") else getattr(strat, k)
        for k in search_space(preset)
    }


def best_so_far(trials) -> list[dict]:
    """The study's curve: after each finished trial, the best val bpb found so far (None before any)."""
    curve, best = [], None
    for x in sorted(trials, key=lambda x: x.number):
        if x.value is not None and x.state.name == "COMPLETE":
            best = x.value if best is None else min(best, x.value)
        curve.append({"trial": x.number, "best": best})
    return curve


def _suggest(trial, name: str, spec: tuple):
    kind = spec[0]
    if kind == "float":
        _, low, high, log = spec
        return trial.suggest_float(name, low, high, log=log)
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    if kind == "cat":
        return trial.suggest_categorical(name, list(spec[1]))
    raise SwarmtrainError(f"search space entry {name}: unknown kind {kind!r}", "use float, int or cat")


def run_tune(
    preset: str,
    trials: int,
    tier: str,
    json_path: str,
    study_path: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    stop: threading.Event | None = None,
    say=print,
) -> dict:
    """Run (or continue) the study until it holds `trials` finished trials; write the JSON record."""
    optuna = import_extra("optuna", "bench tune")
    if preset not in PRESETS:
        raise SwarmtrainError(f"unknown strategy preset {preset!r}", f"known: {', '.join(PRESETS)}")
    if tier not in TIERS:
        raise SwarmtrainError(f"unknown tier {tier!r}", f"use one of: {', '.join(TIERS)}")
    if trials < 1:
        raise SwarmtrainError("--trials must be at least 1", "e.g. --trials 10")
    t = TIERS[tier] if steps is None else replace(TIERS[tier], steps=steps)
    if t.steps < 1:
        raise SwarmtrainError("--steps must be at least 1", "e.g. --steps 600")
    space = search_space(preset)
    study_path = study_path or str(Path(json_path).with_suffix(".db"))
    name = f"{preset}-{tier}-{t.steps}steps-seed{t.seeds[0]}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{study_path}",
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, trials // 2))),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=t.steps // 4),
    )
    held = len(study.get_trials(deepcopy=False))
    if not held:
        study.enqueue_trial(preset_values(preset))  # the preset's own settings first: a study never ends worse
    # a rerun continues the study: its sampler must not start from the first call's random state, which
    # drew the first call's points again (a resumed diloco study's first trial repeated its trial 5)
    study.sampler = optuna.samplers.TPESampler(seed=seed + held, n_startup_trials=min(5, max(1, trials // 2)))
    corpus = data.load_corpus("stdlib")
    stop = stop or threading.Event()
    torch.set_num_threads(1)  # one core, as bench quality's jobs: studies of several methods run side by side

    def finished() -> list:
        return [
            x
            for x in study.get_trials(deepcopy=False)
            if x.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ]

    def objective(trial) -> float:
        params = {k: _suggest(trial, k, spec) for k, spec in space.items()}
        trial.set_user_attr("steps_run", 0)

        def on_eval(step: int, bpb: float) -> None:
            trial.set_user_attr("steps_run", step)
            trial.report(bpb, step)
            if stop.is_set():
                raise _Stopped()
            if trial.should_prune():
                raise optuna.TrialPruned(f"val bpb {bpb:.4f} at step {step}")

        t0 = time.monotonic()
        try:
            run = simulate_preset(preset, t, t.seeds[0], corpus, configs=configs_for(preset, params), on_eval=on_eval)
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
        trial.set_user_attr("upload_bytes_per_step", run["upload_bytes_per_step"])
        trial.set_user_attr("dense_ring_bytes_per_step", run["dense_ring_bytes_per_step"])
        return run["val_bpb"]  # NaN (diverged): Optuna marks the trial failed

    def progress(study_, trial) -> None:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        value = f"val_bpb {trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.PRUNED:
            value = f"pruned at step {trial.user_attrs.get('steps_run', 0)}"
        best = (
            f"best {study_.best_value:.4f}"
            if any(x.state == optuna.trial.TrialState.COMPLETE for x in study_.get_trials(deepcopy=False))
            else ""
        )
        say(f"  trial {trial.number:>3}  {value:<26} {shown}  ({trial.user_attrs.get('seconds', 0):.0f} s)  {best}")

    done = len(finished())
    say(
        f"bench tune: {preset} on tier {tier} ({t.steps} steps, seed {t.seeds[0]}), {trials} trials "
        f"({done} already in {study_path}), space: {', '.join(space)}"
    )
    interrupted = False
    t0 = time.monotonic()
    try:
        while len(finished()) < trials and not stop.is_set():
            study.optimize(
                objective,
                n_trials=1,
                callbacks=[progress],
                catch=(ProtocolError, ValueError, RuntimeError, FloatingPointError),
            )
    except (_Stopped, KeyboardInterrupt):
        interrupted = True
    interrupted = interrupted or stop.is_set()
    if interrupted:
        say(f"  stopped: the study is kept in {study_path}; run the same command again to continue")
    record = _record(study, preset, tier, t, study_path, trials, time.monotonic() - t0, interrupted)
    Path(json_path).write_text(json.dumps(record, indent=2))
    if record["best_value"] is not None:
        say(f"best val_bpb {record['best_value']:.4f} with {record['best_params']}")
    return record


def _record(study, preset: str, tier: str, t, study_path: str, trials: int, seconds: float, interrupted: bool) -> dict:
    import optuna

    all_trials = study.get_trials(deepcopy=False)
    counted = [x for x in all_trials if x.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    complete = [x for x in all_trials if x.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda x: x.value) if complete else None
    strat, train = configs_for(preset, best.params) if best else PRESETS[preset]
    return {
        "preset": preset,
        "strategy": strat.name,
        "tier": tier,
        "steps": t.steps,
        "seed": t.seeds[0],
        "study": study.study_name,
        "study_path": study_path,
        "interrupted": interrupted,
        "search_space": {k: list(v) for k, v in search_space(preset).items()},
        "preset_values": preset_values(preset),
        "best_trial": best.number if best else None,
        "best_so_far": best_so_far(counted),
        "best_params": best.params if best else None,
        "best_value": best.value if best else None,
        "best_settings": {"strategy": strat.__dict__, "train": train.__dict__},
        "budget": {
            "trials_asked": trials,
            "trials_finished": len(counted),
            "trials_complete": len(complete),
            "trials_pruned": len(counted) - len(complete),
            "steps_per_trial": t.steps,
            "budget_steps": trials * t.steps,
            "steps_run": sum(x.user_attrs.get("steps_run", 0) for x in counted),
            "seconds": round(sum(x.user_attrs.get("seconds", 0) for x in counted), 1),
            "seconds_this_call": round(seconds, 1),
        },
        "trials": [
            {
                "number": x.number,
                "state": x.state.name,
                "params": x.params,
                "value": x.value,
                "intermediate": {str(k): v for k, v in sorted(x.intermediate_values.items())},
                "steps_run": x.user_attrs.get("steps_run"),
                "seconds": x.user_attrs.get("seconds"),
            }
            for x in all_trials
        ],
    }
