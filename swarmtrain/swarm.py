"""join(), the Swarm handle and the optimizer wrapper: the whole API besides the Trainer callback."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import torch

from node.config import NodeConfig, RunConfig, from_dict, load_run_config, validate_node
from node.errors import SwarmtrainError
from node.peer import checkpoint
from node.peer.driver import Brought, Driver
from node.train.model import build_run_model, trainable
from node.watch.progress import Reporter


def join(
    initial_peers: Iterable[str] = (), run_id: str = "", *, run: RunConfig | dict | None = None, **settings
) -> Swarm:
    """Settings for this peer of a swarm; it joins when `swarm.optimizer(...)` is given the model.

    initial_peers: multiaddrs of peers in the swarm (an organizer's join line prints them).
    run_id:        the run to join, as the organizer names it (required when joining).
    run:           start a new run of your model instead (a RunConfig, or a dict of run.toml's
                   tables: {"strategy": {"inner_steps": 50}, "swarm": {...}}); this peer is its
                   organizer, `swarm.run_id` and `swarm.initial_peers` are what others join with.
    **settings:    any node setting (NodeConfig: data_dir, host, port, max_rounds, log_format,
                   status_port, ...; `swarmtrain join --help` lists them all).
    """
    cfg = from_dict(NodeConfig, {"initial_peers": list(initial_peers), "run_id": run_id, **settings}, "swarmtrain.join")
    organize = None
    if run is not None:
        organize = run if isinstance(run, RunConfig) else from_dict(RunConfig, _user_model(run), "swarmtrain.join run")
        organize = replace(organize, model=replace(organize.model, kind="user"))
        cfg = replace(cfg, new_swarm=cfg.new_swarm or not cfg.initial_peers)
    elif not run_id:
        raise SwarmtrainError(
            "swarmtrain.join: no run_id given",
            "pass run_id= as the run's organizer prints it, or run={...} to start a run of your own",
        )
    validate_node(cfg)
    return Swarm(cfg, organize)


def run_model(run: RunConfig | str | Path) -> torch.nn.Module:
    """The model a run of the command line's models trains (the byte GPT, or a Hugging Face model
    with LoRA adapters as its run file says), built from that run file or RunConfig: bring it to
    `swarm.optimizer` to join such a run from your own loop (the swarm's state replaces its
    weights as it joins). Pretrained or tokenizer files are looked for where the run file says."""
    cfg = run if isinstance(run, RunConfig) else load_run_config(run)
    return build_run_model(cfg).model


def _user_model(run: dict) -> dict:
    return {**run, "model": {"kind": "user", **run.get("model", {})}}


class Swarm:
    """This peer's place in a swarm: `optimizer()` joins, `leave()` (or the `with` block) leaves."""

    def __init__(self, cfg: NodeConfig, organize: RunConfig | None):
        self.cfg, self.organize = cfg, organize
        self.out = Reporter("json" if cfg.log_format == "json" else "text")
        self.stack = ExitStack()
        self.driver: Driver | None = None

    # ------------------------------------------------------------------------------ joining
    def optimizer(
        self,
        model: torch.nn.Module,
        inner_optimizer: torch.optim.Optimizer,
        *,
        tokens_per_step: int = 1,
        eval_fn: Callable[[torch.nn.Module], float] | None = None,
        eval_name: str = "eval",
    ) -> SwarmOptimizer:
        """Join with `model` and wrap `inner_optimizer` (built over the model's parameters).

        tokens_per_step: tokens (or samples) one step trains on; a round's updates weigh by them.
        eval_fn(model) -> float: measures the swarm's state after each round (reported as `eval_name`,
        e.g. "val_loss" or "accuracy", in the round line, on the page and in /metrics)."""
        driver = self.attach(model, inner_optimizer, tokens_per_step, eval_fn, eval_name)
        return SwarmOptimizer(driver, inner_optimizer)

    def attach(self, model, inner_optimizer, tokens_per_step: int, eval_fn=None, eval_name: str = "eval") -> Driver:
        """Join the run with `model` (the DHT starts here, in a thread of its own; any thread may
        call this). `inner_optimizer` None: someone else steps it (swarmtrain.hf.SwarmCallback)."""
        if self.driver is not None:
            raise SwarmtrainError("this Swarm has joined already", "one model per Swarm: call swarmtrain.join again")
        device = next(iter(model.parameters()), torch.empty(0)).device
        cfg = replace(self.cfg, device=str(device))
        brought = Brought(
            model=model,
            optimizer=inner_optimizer,
            tokens_per_step=tokens_per_step,
            eval_fn=eval_fn,
            eval_name=eval_name,
            organize=self.organize,
        )
        try:
            self.driver = Driver(cfg, self.stack, self.out, brought)
        except BaseException:
            self.stack.close()
            raise
        return self.driver

    # ---------------------------------------------------------------------------- what it holds
    @property
    def joined(self) -> Driver:
        if self.driver is None:
            raise SwarmtrainError("not joined yet", "call swarm.optimizer(model, optimizer) first")
        return self.driver

    @property
    def run_id(self) -> str:
        return self.joined.run_id

    @property
    def run(self) -> RunConfig:
        """The run's settings, as its manifest says (strategy, schedule, seed, ...)."""
        return self.joined.run

    @property
    def peer_id(self) -> str:
        return self.joined.me

    @property
    def initial_peers(self) -> list[str]:
        """Multiaddrs others can join through (this peer's)."""
        return self.joined.swarm.visible_maddrs()

    @property
    def round(self) -> int:
        """The round of the swarm's state this peer holds."""
        return self.joined.state.round

    @property
    def digest(self) -> str:
        """SHA-256 of the swarm's parameters as this peer holds them: equal on every peer."""
        return self.joined.state.digest

    @property
    def done(self) -> bool:
        """True once max_rounds is reached (or the peer left): stop your loop."""
        return not self.joined.going

    def export(self, out: str | Path) -> list[Path]:
        """Write the swarm's state: `out`/swarm-state.safetensors (the trained parameters, named as in
        the model), and for transformers models save_pretrained into `out` as well (peft models: the
        adapters in `out`/adapter and the merged model in `out`). Returns the paths written."""
        d = self.joined
        written = [checkpoint.write_safetensors(d.state, d.run_id, Path(out))]
        if hasattr(d.trainer.model, "save_pretrained"):
            from node.train.hf import export_pretrained

            model = copy.deepcopy(d.trainer.model)  # ours keeps its local progress
            with torch.no_grad():
                for p, src in zip(trainable(model), d.state.params, strict=True):
                    p.copy_(src)
            written += export_pretrained(model, out)
        return written

    # ------------------------------------------------------------------------------ leaving
    def leave(self, *, interrupted: bool = False) -> None:
        """Leave cleanly: the round in flight is applied first (unless `interrupted`: then it is
        dropped, and the checkpoint keeps the last finished round), then the DHT stops. The model
        then holds the swarm's state. Safe to call twice."""
        try:
            if self.driver is not None and self.driver.going is not None:
                self.driver.leave(interrupted=interrupted)
                self.driver.going = None  # left
        finally:
            self.stack.close()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.leave(interrupted=kind is not None)  # Ctrl+C or an error: do not wait on a roster


class SwarmOptimizer:
    """Your optimizer, with the swarm's rounds between its steps. Schedulers, clipping and
    zero_grad work on your optimizer as before (pass it, not this wrapper, to an LR scheduler)."""

    def __init__(self, driver: Driver, inner: torch.optim.Optimizer):
        self.driver, self.inner = driver, inner

    def step(self, closure=None, *, loss: float | torch.Tensor | None = None):
        """Your optimizer's step (diloco, sparseloco; ddp-adamw and decoupled-momentum send the
        gradient instead); at the end of the round's H steps or window, the swarm round: the
        model's parameters then hold the swarm's new state (plus, with overlap, your progress
        since). `loss` is reported (a tensor is read with .item(): a CPU-GPU sync point)."""
        if isinstance(loss, torch.Tensor):
            loss = loss.item()
        return self.driver.inner_step(closure, loss)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self):
        return self.inner.param_groups

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    @property
    def done(self) -> bool:
        """True once the swarm reached max_rounds (or the peer left): stop your loop."""
        return not self.driver.going
