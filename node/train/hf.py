"""Hugging Face Transformers causal LMs, seen the way the byte GPT is: forward(ids) -> logits.

Two sources, both without a hub download:
  * from config: `[model] kind = "hf"`, `arch` (a transformers model type) and the sizes; built
    on the CPU from the run's seed, so every peer starts from the same bits;
  * `pretrained = "DIR"`: local weights in save_pretrained form (config.json + safetensors).
Their fingerprints (config and weights SHA-256, transformers version) go into the manifest.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from node.config import ModelConfig
from node.errors import SwarmtrainError

# config keys that say nothing about the model's function
VOLATILE_CONFIG_KEYS = (
    "transformers_version",
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "architectures",
    "_attn_implementation_autoset",
    "output_attentions",
    "output_hidden_states",
    "use_cache",
    "return_dict",
)


def transformers_module():
    try:
        import transformers
    except ImportError:
        raise SwarmtrainError(
            "this run trains a Hugging Face model, but 'transformers' is not installed", "pip install 'swarmtrain[hf]'"
        ) from None
    transformers.logging.set_verbosity_error()  # no warnings about unused generation keys
    transformers.logging.disable_progress_bar()  # no "Loading weights" bars in key=value output
    return transformers


class CausalLM(nn.Module):
    """A transformers causal LM with the byte GPT's interface. `token_bytes` (a buffer, not a
    parameter) holds the bytes of text behind each token id, for bits per byte."""

    def __init__(self, hf: nn.Module, token_bytes: torch.Tensor | None = None):
        super().__init__()
        self.hf = hf
        if token_bytes is not None:
            self.register_buffer("token_bytes", token_bytes, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(batch, time) token ids -> (batch, time, vocab) logits."""
        return self.hf(input_ids=idx, use_cache=False).logits


def hf_config(cfg: ModelConfig, vocab_size: int):
    """The transformers config a run's [model] table describes (random-init models)."""
    tf = transformers_module()
    kwargs = dict(
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        max_position_embeddings=cfg.ctx,
        vocab_size=vocab_size,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    try:
        probe = tf.AutoConfig.for_model(cfg.arch)
    except ValueError:
        raise SwarmtrainError(
            f"transformers {tf.__version__} knows no model type {cfg.arch!r}",
            "use a model type transformers can build, e.g. 'gpt2', 'llama', 'qwen2', 'mistral'",
        ) from None
    d_ff = cfg.d_ff or 4 * cfg.d_model
    if hasattr(probe, "intermediate_size"):
        kwargs["intermediate_size"] = d_ff
    elif hasattr(probe, "n_inner"):
        kwargs["n_inner"] = d_ff
    if hasattr(probe, "num_key_value_heads"):
        kwargs["num_key_value_heads"] = cfg.n_kv_head or cfg.n_head
    if hasattr(probe, "head_dim"):
        kwargs["head_dim"] = cfg.d_model // cfg.n_head
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
        if hasattr(probe, key):
            kwargs[key] = 0.0  # like the byte GPT: no dropout unless hf_options asks for it
    kwargs.update(cfg.hf_options)
    return tf.AutoConfig.for_model(cfg.arch, **kwargs)


def config_sha256(config) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def pretrained_sha256(path: str | Path) -> str:
    """SHA-256 of a save_pretrained directory's weights: the bytes of its *.safetensors files, by name
    (a copy of the directory has the same hash; cheap to check before building anything)."""
    p = check_pretrained_dir(path)
    h = hashlib.sha256()
    for f in sorted(p.glob("*.safetensors")):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def pretrained_config(path: str | Path):
    tf = transformers_module()
    return tf.AutoConfig.from_pretrained(str(check_pretrained_dir(path)), local_files_only=True)


def check_pretrained_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not (p / "config.json").is_file() or not any(p.glob("*.safetensors")):
        raise SwarmtrainError(
            f"{p} holds no pretrained model (config.json and *.safetensors)",
            "point [model] pretrained (or --pretrained-dir) at a directory written by "
            "model.save_pretrained(DIR); nothing is downloaded from a hub",
        )
    return p


def build_hf(cfg: ModelConfig, seed: int, vocab_size: int, pretrained_dir: str = "") -> nn.Module:
    """The round-0 transformers model on the CPU, fp32: loaded from `pretrained_dir` or built from config."""
    tf = transformers_module()
    if pretrained_dir:
        path = check_pretrained_dir(pretrained_dir)
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise SwarmtrainError(
                f"could not load the pretrained model in {path}: {e}",
                "re-save it with model.save_pretrained(DIR) (safetensors)",
            ) from None
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and cfg.ctx > positions:
            raise SwarmtrainError(
                f"[model] ctx={cfg.ctx} is longer than the pretrained model's {positions} positions",
                f"set ctx <= {positions} in run.toml [model]",
            )
        if model.config.vocab_size < vocab_size:
            raise SwarmtrainError(
                f"the tokenizer has {vocab_size} ids but the pretrained model only {model.config.vocab_size}",
                "use the tokenizer the model was trained with",
            )
    else:
        config = hf_config(cfg, vocab_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = tf.AutoModelForCausalLM.from_config(config)
        model = model.float()
    model.train()
    return model


def save_pretrained(model: nn.Module, out_dir: str | Path) -> Path:
    """Write a CausalLM (or a transformers model) as config.json + model.safetensors."""
    hf = model.hf if isinstance(model, CausalLM) else model
    out = Path(out_dir)
    hf.save_pretrained(str(out), safe_serialization=True)
    return out


def export_pretrained(model: nn.Module, out_dir: str | Path) -> list[Path]:
    """A trained model for the transformers world: save_pretrained into `out_dir`. A peft model
    (LoRA) saves its adapters in `out_dir`/adapter (reload: PeftModel.from_pretrained(base, it))
    and the base with the adapters merged in `out_dir` (merging rounds: logits close to, not
    equal to, the adapted model's). Returns the directories written."""
    out = Path(out_dir)
    hf = model.hf if isinstance(model, CausalLM) else model
    if hasattr(hf, "merge_and_unload"):  # a peft model
        hf.save_pretrained(str(out / "adapter"))
        copy.deepcopy(hf).merge_and_unload().save_pretrained(str(out), safe_serialization=True)
        return [out, out / "adapter"]
    hf.save_pretrained(str(out), safe_serialization=True)
    return [out]
