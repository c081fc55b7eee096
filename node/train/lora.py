"""LoRA fine-tuning (PEFT): the base model is frozen; only the adapters train, travel and aggregate.

`apply_lora` injects the adapters (initialised from the run's seed, so every peer starts from the
same bits) and freezes everything else. From then on "the model's parameters" for the swarm are
`trainable(model)`: the strategies exchange only those, SwarmState and the checkpoint hold only
those, and the frozen base is pinned by the weights SHA-256 in the run manifest.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from node.config import PeftConfig
from node.errors import SwarmtrainError

BYTE_GPT_TARGETS = ["qkv", "proj"]  # the byte GPT's attention projections


def default_targets(model_type: str | None) -> list[str]:
    if model_type is None:
        return BYTE_GPT_TARGETS
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    if model_type not in defaults:
        raise SwarmtrainError(
            f"PEFT has no default LoRA target modules for model type {model_type!r}",
            "name them in run.toml [peft] target_modules, e.g. ['q_proj', 'v_proj']",
        )
    return list(defaults[model_type])


def apply_lora(model: nn.Module, cfg: PeftConfig, seed: int, model_type: str | None) -> nn.Module:
    """Add LoRA adapters to `model` in place, freeze the rest, and return it."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise SwarmtrainError(
            "this run fine-tunes with LoRA, but 'peft' is not installed", "pip install 'swarmtrain[hf]'"
        ) from None
    if cfg.r < 1:
        raise SwarmtrainError(f"[peft] r must be at least 1, got {cfg.r}", "set [peft] r to 1 or more, e.g. 8")
    if not 0 <= cfg.dropout < 1:
        raise SwarmtrainError(f"[peft] dropout must be in [0, 1), got {cfg.dropout}", "set [peft] dropout in [0, 1)")
    targets = list(cfg.target_modules) or default_targets(model_type)
    lora = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        bias="none",
        fan_in_fan_out=model_type == "gpt2",
    )  # GPT-2 keeps its Linear layers as Conv1D (in x out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 0x10A)  # adapters: A random (kaiming), B zero, the same on every peer
        try:
            inject_adapter_in_model(lora, model)
        except ValueError as e:
            raise SwarmtrainError(f"LoRA: {e}", "fix run.toml [peft] target_modules") from None
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in model.parameters()):
        raise SwarmtrainError(f"LoRA found no module named {targets} to adapt", "fix run.toml [peft] target_modules")
    return model
