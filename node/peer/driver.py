"""A peer driven from a user's own training loop (the swarmtrain API): any torch model, any torch
optimizer, any loss and data.

It is the CLI's volunteer with four things swapped (NodeParts' hooks): the model is the user's,
checked against the run's pinned layout (node/train/layout.py) instead of built from the
manifest; the inner step is the user's optimizer; there is no corpus of ours; the held-out
metric is the user's eval callback. The rounds themselves (Peer.begin / stepped / end: encode,
announce, roster, apply, checkpoint, report) are the CLI's, unchanged.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from node.config import NodeConfig, RunConfig, validate_run
from node.errors import SwarmtrainError
from node.p2p.identity import load_identity_key
from node.peer import manifest as manifests
from node.peer.volunteer import Peer
from node.peer.wiring import LoadedData
from node.train import data, layout
from node.train.model import BuiltModel, trainable
from node.watch.progress import Reporter


@dataclass(frozen=True, kw_only=True)
class Brought:
    """What a user's script brings to the swarm."""

    model: torch.nn.Module
    """The model; the swarm trains and exchanges its parameters with requires_grad (all, or LoRA adapters)."""
    optimizer: torch.optim.Optimizer | None
    """The inner optimizer; None when someone else steps it (the Hugging Face Trainer)."""
    tokens_per_step: int
    """Tokens (or samples) one inner step of this peer trains on: what its updates sign for."""
    eval_fn: Callable[[torch.nn.Module], float] | None = None
    """Measures the swarm's state after each round (the report's held-out metric); None: not measured."""
    eval_name: str = "eval"
    """What eval_fn measures, as the round line, the page and /metrics name it (e.g. 'val_loss')."""
    organize: RunConfig | None = None
    """Start this run (its manifest names this peer as organizer) instead of joining one."""


class UserTrainer:
    """The user's optimizer, with what the round needs of a trainer (InnerTrainer's interface)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None):
        self.model, self.optimizer = model, optimizer
        self.params = trainable(model)
        self.steps = 0  # this peer's inner steps so far

    @torch.no_grad()
    def load_params(self, params: list[torch.Tensor]) -> None:
        """Overwrite the trained tensors with the swarm's, in place: the optimizer keeps its state."""
        for p, src in zip(self.params, params, strict=True):
            p.copy_(src)


class Driver(Peer):
    """Joins (or starts) a run at construction and opens its first round: the model then holds
    the swarm's state. `stepped()` after each inner step; `end()` to leave."""

    def __init__(self, cfg: NodeConfig, stack: ExitStack, reporter: Reporter, brought: Brought):
        if brought.tokens_per_step < 1:
            raise SwarmtrainError(
                f"tokens_per_step = {brought.tokens_per_step}", "pass the tokens (or samples) of one step, at least 1"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", brought.eval_name):
            raise SwarmtrainError(
                f"eval_name = {brought.eval_name!r}", "name the metric in lower case letters, digits and _ (val_loss)"
            )
        if brought.organize is not None:
            validate_run(brought.organize, "swarmtrain.join(run=...)")
            if brought.organize.model.kind != "user":
                raise SwarmtrainError("a run started from Python trains your model", 'leave run.model.kind as "user"')
        self.brought = brought
        super().__init__(cfg, stack, reporter)
        if brought.eval_fn is not None:
            self.reports.metric = brought.eval_name
        self.stop = threading.Event()  # set by leave(interrupted=True): Ctrl+C
        self.going = self.begin(self.stop)
        if not self.going:
            self.trainer.load_params(self.state.params)

    # ---------------------------------------------------------------------- NodeParts' hooks
    def find_run(self) -> manifests.RunFound:
        run = self.brought.organize
        if run is None:
            return super().find_run()
        pinned = layout.pin(self.brought.model, self.brought.tokens_per_step)
        key = load_identity_key(self.swarm.identity_path)  # the run id commits to our peer id
        run_id, envelope = manifests.sign(key, manifests.build_manifest(run, None, pinned=pinned))
        manifests.publish(self.swarm, envelope)
        return manifests.fetch(self.swarm, run_id, self.cfg.startup_timeout)  # as a joiner reads it: checked

    def build_model(self) -> BuiltModel:
        if not self.brought_run:  # a run of the CLI's models: yours must be built like it
            built = super().build_model()
            layout.check_like(self.brought.model, built.model)
            return BuiltModel(model=self.brought.model, tokenizer=built.tokenizer, fingerprint=built.fingerprint)
        layout.check(self.brought.model, self.manifest["model"])  # names the first difference
        return BuiltModel(model=self.brought.model)

    @property
    def brought_run(self) -> bool:
        """Whether this run trains a model its peers bring from Python (else: the CLI's model)."""
        return self.run.model.kind == "user"

    def make_trainer(self, model: torch.nn.Module) -> UserTrainer:
        return UserTrainer(model, self.brought.optimizer)

    def load_data(self, corpus) -> LoadedData:
        if not self.brought_run and self.run.robust.scoring:  # the run's model: scored on the run's batch
            return LoadedData(tokens=None, val=None, score=data.val_tokens(corpus, self.run.data, self.built.tokenizer))
        if self.run.robust.scoring:
            raise SwarmtrainError(
                "[robust] scoring needs a batch every peer can draw and a loss to score it with: runs of a "
                "model brought from Python cannot score updates yet",
                "set robust.scoring = false in the run (the robust aggregator still applies)",
            )
        return LoadedData(tokens=None, val=None, score=None)  # the user's data stays in the user's loop

    def token_counts(self) -> dict:
        nominal = self.manifest["model"].get("tokens_per_step")  # a CLI model's run: batch_size x ctx (0)
        return {"step_tokens": self.brought.tokens_per_step, "nominal_step_tokens": nominal or 0}

    def evaluate(self) -> float | None:
        if self.brought.eval_fn is None:
            return None
        model = self.applier.scratch  # the trainer's own model unless it must keep training (overlap)
        _load(model, self.state)  # (the trainer's own: the next round reloads where it starts)
        was = model.training
        try:
            return float(self.brought.eval_fn(model))
        finally:
            model.train(was)

    # ------------------------------------------------------------------------- the user's loop
    def inner_step(self, closure=None, loss: float | None = None):
        """The user's optimizer step (when the strategy steps locally: diloco, sparseloco; the
        step-wise strategies send the gradient instead), then the round's bookkeeping."""
        out = None
        if self.strategy.local_optimizer and self.trainer.optimizer is not None:
            out = self.trainer.optimizer.step(closure) if closure is not None else self.trainer.optimizer.step()
        if loss is None and isinstance(out, torch.Tensor):
            loss = out.item()  # note: a CPU-GPU sync point, only with a closure
        self.after_step(loss)
        return out

    def after_step(self, loss: float | None = None) -> bool:
        """Count one inner step taken (by inner_step, or by a Trainer); at the round's end this is
        where the round runs. False once the peer is done (max_rounds): the model then holds
        the swarm's final state."""
        self.trainer.steps += 1
        if self.going:
            self.going = self.stepped(loss, self.stop)
            if not self.going:
                self.settle(self.stop)  # (overlap) the last round is still in flight: apply it first
                self.trainer.load_params(self.state.params)
        return self.going

    def leave(self, *, interrupted: bool = False) -> None:
        """Apply a round in flight (unless interrupted: Ctrl+C drops it; the checkpoint holds the
        last finished round), withdraw the heartbeat, and load the swarm's state into the model."""
        if interrupted:
            self.stop.set()
        self.going = False
        self.end(self.stop)
        self.trainer.load_params(self.state.params)


@torch.no_grad()
def _load(model: torch.nn.Module, state) -> None:
    for p, src in zip(trainable(model), state.params, strict=True):
        p.copy_(src)
