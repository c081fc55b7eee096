"""Optional differential privacy of each peer's updates, DP-FedAvg style (McMahan et al. 2018).

Before a peer encodes its round's update it clips its local progress to an L2 norm of `clip` and
adds Gaussian noise of standard deviation `noise_multiplier * clip`:
  * diloco / sparseloco (the update is the pseudo-gradient global - local):
        local := global - privatize(global - local)        on the trained tensors
  * ddp-adamw / decoupled-momentum (the update is made from the gradient):
        p.grad := privatize(p.grad)
Everything the strategy then sends, and any error feedback it keeps, is computed from the
privatized values only, so the guarantee survives (post-processing). The strategies are not
touched: this runs just before `strategy.make_update`.

What is protected: a peer's whole local data set (user-level DP), for each round it takes part in,
against anyone who sees its updates: other peers, relays, observers of the DHT. Each release is
the Gaussian mechanism with sampling rate 1; the (epsilon, delta) spent so far comes from opacus's
RDP accountant (never hand-rolled). The noise comes from the operating system's randomness, never
from the run's seed: noise that others could regenerate would protect nothing.

With privacy off, `make_privacy` returns `NoPrivacy`, an object that does nothing.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import torch

from node.config import PrivacyConfig
from node.errors import SwarmtrainError
from node.train.model import trainable


class NoPrivacy:
    """Privacy off: no clipping, no noise, no accounting."""

    enabled = False
    epsilon: float | None = None
    delta: float | None = None
    releases = 0

    def before_update(self, state, model: torch.nn.Module) -> None:
        return None

    def report(self) -> dict:
        return {}


def _accountant():
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:
        raise SwarmtrainError(
            "this run asks for differential privacy, but opacus (its accountant) is not installed",
            "pip install 'swarmtrain[privacy]'",
        ) from None
    return RDPAccountant()


class GaussianPrivacy:
    """Clip each round's local progress to `clip` (L2, over all trained tensors) and add
    N(0, (noise_multiplier * clip)^2) to every coordinate; account each release."""

    enabled = True

    def __init__(
        self,
        cfg: PrivacyConfig,
        *,
        pseudo_gradient: bool,
        on_epsilon: Callable[[float], None] | None = None,
        generator: torch.Generator | None = None,
    ):
        if cfg.clip <= 0 or cfg.noise_multiplier < 0 or not 0 < cfg.delta < 1:
            raise SwarmtrainError(
                f"[privacy] needs clip > 0, noise_multiplier >= 0 and 0 < delta < 1; got "
                f"clip={cfg.clip}, noise_multiplier={cfg.noise_multiplier}, delta={cfg.delta}",
                "fix run.toml [privacy] (clip = 0 turns privacy off)",
            )
        self.cfg = cfg
        self.pseudo_gradient = pseudo_gradient
        self.accountant = _accountant()
        self.on_epsilon = on_epsilon or (lambda eps: None)
        self.gen = generator or torch.Generator().manual_seed(secrets.randbits(63))  # never the run's seed
        self.releases = 0
        self.delta = cfg.delta
        self.epsilon: float | None = 0.0
        self.last_norm = 0.0

    def privatize(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Clipped and noised copies (CPU fp32)."""
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))
        self.last_norm = norm
        scale = min(1.0, self.cfg.clip / norm) if norm > 0 else 1.0
        std = self.cfg.noise_multiplier * self.cfg.clip
        out = []
        for t in tensors:
            noisy = t * scale
            if std > 0:
                noisy = noisy + torch.randn(t.shape, generator=self.gen, dtype=torch.float32) * std
            out.append(noisy)
        return out

    @torch.no_grad()
    def before_update(self, state, model: torch.nn.Module) -> None:
        """Replace this round's local progress by its privatized version, in place, and account it."""
        params = trainable(model)
        if self.pseudo_gradient:
            local = [p.detach().to("cpu", torch.float32) for p in params]
            noisy = self.privatize([g - l for g, l in zip(state.params, local)])
            for p, g, d in zip(params, state.params, noisy):
                p.copy_((g - d).to(p.device, p.dtype))
        else:
            grads = [
                p.grad.detach().to("cpu", torch.float32) if p.grad is not None else torch.zeros(p.shape) for p in params
            ]
            noisy = self.privatize(grads)
            for p, d in zip(params, noisy):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(d.to(p.grad.device, p.grad.dtype))
        self.accountant.step(noise_multiplier=self.cfg.noise_multiplier, sample_rate=1.0)
        self.releases += 1
        self.epsilon = self.spent()
        self.on_epsilon(self.epsilon)

    def spent(self) -> float:
        """Epsilon spent so far at `delta` (inf without noise)."""
        if self.releases == 0:
            return 0.0
        if self.cfg.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.cfg.delta))

    def report(self) -> dict:
        eps = self.epsilon
        return {
            "epsilon": eps if eps is None or math.isfinite(eps) else "inf",
            "delta": self.cfg.delta,
            "releases": self.releases,
            "clip": self.cfg.clip,
            "noise_multiplier": self.cfg.noise_multiplier,
        }


def make_privacy(
    cfg: PrivacyConfig, *, local_optimizer: bool, on_epsilon: Callable[[float], None] | None = None
) -> NoPrivacy | GaussianPrivacy:
    """The run's privacy object. `local_optimizer` is the strategy's: True when its update is a
    pseudo-gradient (diloco, sparseloco), False when it is made from p.grad (ddp-adamw, DeMo)."""
    if cfg.clip <= 0:
        return NoPrivacy()
    return GaussianPrivacy(cfg, pseudo_gradient=local_optimizer, on_epsilon=on_epsilon)
