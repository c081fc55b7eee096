"""The inner step: plain torch AdamW on a peer's own data. No network in here."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from node.config import TrainConfig
from node.train.model import loss_fn, trainable


def search_space(train: TrainConfig) -> dict[str, tuple]:
    """What `bench tune` adds for the inner optimizer, whatever the strategy (see
    node/outer/strategies/diloco.search_space): Muon's own learning rate when Muon is on."""
    return {"train.muon_lr": ("float", 1e-3, 3e-2, True)} if train.inner_optimizer == "muon" else {}


def warmup_constant(cfg: TrainConfig) -> Callable[[int], float]:
    """The swarm's schedule: linear warm-up over warmup_steps, then constant (no known end)."""
    return lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps))


def warmup_cosine(cfg: TrainConfig, total: int, floor: float = 0.1) -> Callable[[int], float]:
    """Benchmarks' schedule: warm-up, then cosine decay to `floor` at step `total`."""

    def scale(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        p = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    return scale


def muon_matrices(model: nn.Module) -> set[int]:
    """ids of the parameters Muon trains: the 2-D weights of Linear layers, output heads left out
    (embeddings, heads, norms and biases stay with AdamW, as in the Muon and MuLoCo papers)."""
    out = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.weight.requires_grad and "head" not in name.rsplit(".", 1)[-1]:
            out.add(id(mod.weight))
    return out


# Mixed precision of the inner step ([train] precision): autocast for forward and loss, and for
# fp16 a gradient scaler. Weights, optimizer state and the swarm's state stay fp32: autocast only
# changes how each peer's own steps round, never the bits peers must agree on.
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """'fp32' does nothing (the same operations as without it); 'bf16' autocasts; 'fp16'
    autocasts and scales the loss so small gradients survive (torch.amp.GradScaler)."""

    def __init__(self, precision: str, device: torch.device):
        self.dtype = PRECISION_DTYPES.get(precision)
        self.device_type = device.type
        fp16 = precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16) if fp16 else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def unscale(self, opts: list[torch.optim.Optimizer], params: list[torch.Tensor]) -> bool:
        """Turn scaled gradients back into true ones (before clipping); False where one overflowed."""
        if self.scaler is None:
            return True
        for opt in opts:
            self.scaler.unscale_(opt)
        grads = [p.grad for p in params if p.grad is not None]
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True

    def step(self, opt: torch.optim.Optimizer) -> None:
        """opt.step(), skipped by the scaler when this step's gradient overflowed."""
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)

    def update(self) -> None:
        """The next step's loss scale (halved after an overflow, grown after a run without one)."""
        if self.scaler is not None:
            self.scaler.update()


class PlainAdamW:
    """AdamW with decoupled weight decay, one parameter group, in plain tensor ops.

    torch.optim.AdamW computes the same thing, but its constructor, `step` and `zero_grad` import
    `torch._dynamo` (the compiler: about 1 s and 70 MB of a volunteer's memory) even when nothing is
    compiled. This does the single-tensor update torch runs on CPU tensors, operation for operation,
    so inner steps are bit for bit torch.optim.AdamW(foreach=False)'s (tested). On an accelerator
    the trainer keeps torch's own (its fused kernels matter there, the import does not). It has what
    the trainer and torch.amp.GradScaler use: `param_groups` (`lr` set by the schedule each step),
    `step()`, `zero_grad()`, `state`."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.param_groups = [{"params": params, "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}]
        self.state: dict[torch.Tensor, dict] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)

    def _update(self, param: torch.Tensor, group: dict) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state.setdefault(param, {})
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        step, exp_avg, exp_avg_sq, grad = state["step"], state["exp_avg"], state["exp_avg_sq"], param.grad
        if decay != 0:
            param.mul_(1 - lr * decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if set_to_none:
                    param.grad = None
                elif param.grad is not None:
                    param.grad.zero_()


class InnerTrainer:
    """AdamW on `trainable(model)`: every parameter, or only LoRA adapters (the base stays frozen);
    with TrainConfig.inner_optimizer 'muon', Muon on the Linear weights and AdamW on the rest."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, device: torch.device, schedule: Callable[[int], float] | None = None
    ):
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        self.schedule = schedule or warmup_constant(cfg)
        self.params = trainable(self.model)
        self.opts = self._optimizers(cfg)
        self.opt = self.opts[0]
        self.mixed = MixedPrecision(cfg.precision, device)
        self.steps = 0  # this peer's local steps so far (drives the schedule)

    def _optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer | PlainAdamW]:
        if cfg.inner_optimizer not in ("adamw", "muon"):
            raise ValueError(f"inner_optimizer {cfg.inner_optimizer!r} is not one of adamw, muon")
        mats = muon_matrices(self.model) if cfg.inner_optimizer == "muon" else set()
        rest = [p for p in self.params if id(p) not in mats]
        opts: list[torch.optim.Optimizer | PlainAdamW] = []
        if rest or not mats:
            adamw = PlainAdamW if self.device.type == "cpu" else torch.optim.AdamW  # see PlainAdamW
            opts.append(adamw(rest, lr=cfg.inner_lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay))
            opts[-1].param_groups[0]["base_lr"] = cfg.inner_lr
        if mats:
            mlr = cfg.muon_lr or cfg.inner_lr
            opts.append(
                torch.optim.Muon(
                    [p for p in self.params if id(p) in mats],
                    lr=mlr,
                    weight_decay=cfg.weight_decay,
                    adjust_lr_fn="match_rms_adamw",
                )
            )
            opts[-1].param_groups[0]["base_lr"] = mlr
        return opts

    def lr(self) -> float:
        return self.cfg.inner_lr * self.schedule(self.steps)

    def step(self, x: torch.Tensor, y: torch.Tensor, *, apply: bool = True) -> float:
        """Forward, backward, clip; then an AdamW step if `apply` (else the gradient stays in .grad).
        With micro_batch, the batch's gradient accumulates over its micro-batches; with a
        precision, forward and loss run under autocast (fp16: scaled, a step with an overflow
        skipped, and without `apply` its gradient zeroed)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.model.zero_grad(set_to_none=True)
        loss = self.backward(x, y)
        finite = self.mixed.unscale(self.opts, self.params)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        if apply:
            scale = self.schedule(self.steps)
            for opt in self.opts:
                for group in opt.param_groups:
                    group["lr"] = group["base_lr"] * scale
                self.mixed.step(opt)
        elif not finite:
            self.model.zero_grad(set_to_none=False)  # an fp16 overflow: send no gradient, not inf
        self.mixed.update()
        self.steps += 1
        return loss.item()  # note: a CPU-GPU sync point, once per step

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss, its gradient accumulated in .grad (micro-batch by micro-batch)."""
        size = self.cfg.micro_batch or x.shape[0]
        if size >= x.shape[0]:  # one pass: the same operations as without micro-batching
            with self.mixed.autocast():
                loss = loss_fn(self.model(x), y)
            self.mixed.backward(loss)
            return loss.detach()
        total = torch.zeros((), device=x.device)
        for xs, ys in zip(x.split(size), y.split(size), strict=True):
            with self.mixed.autocast():
                loss = loss_fn(self.model(xs), ys) * (xs.shape[0] / x.shape[0])  # a share of the batch mean
            self.mixed.backward(loss)
            total += loss.detach()
        return total

    @torch.no_grad()
    def load_params(self, params: list[torch.Tensor]) -> None:
        """Overwrite the trained tensors with the swarm's (AdamW moments are kept)."""
        if len(params) != len(self.params):
            raise ValueError(f"state holds {len(params)} tensors, the model trains {len(self.params)}")
        for p, src in zip(self.params, params):
            p.copy_(src)


@torch.no_grad()
def evaluate_bpb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch: int = 16) -> float:
    """Held-out bits per byte: summed cross-entropy in nats / ln 2 / the bytes behind the targets.

    Byte-level models: one byte per token. Tokenized models carry `token_bytes` (bytes of text
    behind each id), so runs with different tokenizers compare."""
    model.eval()
    token_bytes = getattr(model, "token_bytes", None)
    nats, nbytes = 0.0, 0
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        logits = model(xb)
        nats += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), yb.reshape(-1), reduction="sum"
        ).item()
        nbytes += int(token_bytes[yb].sum().item()) if token_bytes is not None else yb.numel()
    model.train()
    return nats / max(1, nbytes) / math.log(2)
