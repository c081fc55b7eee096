"""A byte-level GPT in plain torch. It knows nothing about the network or the swarm."""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from node.config import ModelConfig
from node.errors import SwarmtrainError

VOCAB = 256  # bytes


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc_in = nn.Linear(d, 4 * d, bias=False)
        self.fc_out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_out(F.gelu(self.fc_in(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, cfg.d_model)
        self.pos = nn.Embedding(cfg.ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg.d_model, cfg.n_head) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(batch, time) bytes -> (batch, time, 256) logits."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        h = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h) @ self.tok.weight.t()  # tied output head


def check_model_config(cfg: ModelConfig) -> None:
    """Raise if this version cannot build the model a manifest describes."""
    for name in ("d_model", "n_layer", "n_head", "ctx"):
        if getattr(cfg, name) <= 0:
            raise SwarmtrainError(f"model {name} must be positive, got {getattr(cfg, name)}")
    if cfg.d_model % cfg.n_head:
        raise SwarmtrainError(f"model d_model={cfg.d_model} is not divisible by n_head={cfg.n_head}",
                              "choose n_head dividing d_model in run.toml [model]")


def build_model(cfg: ModelConfig, seed: int) -> GPT:
    """The round-0 model, identical on every peer: built on the CPU from `seed`."""
    check_model_config(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(cfg)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
    return model


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per byte."""
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


def digest(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of fp32 CPU values in order: equal digests mean bit-identical parameters."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
