"""The run's model: the built-in byte-level GPT (plain torch), or a Hugging Face causal LM
(node/train/hf.py), optionally with LoRA adapters (node/train/lora.py). It knows nothing about the network.

Whatever the kind, a model maps (batch, time) token ids to (batch, time, vocab) logits, and the
swarm trains, exchanges and checkpoints `trainable(model)`: every parameter, or only the adapters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from node.config import ModelConfig, RunConfig
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
            raise SwarmtrainError(
                f"model {name} must be positive, got {getattr(cfg, name)}", f"set [model] {name} to 1 or more"
            )
    if cfg.d_model % cfg.n_head and not cfg.pretrained:
        raise SwarmtrainError(
            f"model d_model={cfg.d_model} is not divisible by n_head={cfg.n_head}",
            "choose n_head dividing d_model in run.toml [model]",
        )
    if cfg.kind == "byte-gpt":
        extra = [k for k in ("pretrained", "tokenizer", "hf_options", "n_kv_head", "d_ff") if getattr(cfg, k)]
        if extra:
            raise SwarmtrainError(
                f"[model] {', '.join(extra)} apply to Hugging Face models only",
                'set kind = "hf" in run.toml [model], or remove them',
            )
    elif cfg.n_kv_head and cfg.n_head % cfg.n_kv_head:
        raise SwarmtrainError(
            f"model n_head={cfg.n_head} is not divisible by n_kv_head={cfg.n_kv_head}",
            "choose n_kv_head dividing n_head in run.toml [model]",
        )


def build_model(cfg: ModelConfig, seed: int) -> nn.Module:
    """The round-0 model, identical on every peer: built on the CPU from `seed` (without adapters;
    `build_run_model` is the whole recipe of a run)."""
    check_model_config(cfg)
    if cfg.kind == "hf":
        return build_run_model(RunConfig(model=cfg, train=_seeded(seed))).model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(cfg)
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
    return model


def _seeded(seed: int):
    from node.config import TrainConfig

    return TrainConfig(seed=seed)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What the swarm trains, exchanges and checkpoints: every parameter, or only LoRA adapters."""
    return [p for p in model.parameters() if p.requires_grad]


def trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@dataclass
class BuiltModel:
    """A run's round-0 model with what peers must agree on about it."""

    model: nn.Module
    tokenizer: object | None = None
    """node.train.tokenizer.Tokenizer, or None: byte-level (vocabulary 256)."""
    fingerprint: dict = field(default_factory=dict)
    """Hugging Face runs: config/weights/tokenizer/init SHA-256 and the transformers version (manifest)."""

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in trainable(self.model))


# What the manifest's [model] section says about the model besides the run's settings.
FINGERPRINT_FIELDS = ("config_sha256", "weights_sha256", "tokenizer_sha256", "transformers_version", "init_sha256")


def fingerprint(run: RunConfig, *, pretrained_dir: str = "", tokenizer_dir: str = "") -> dict:
    """The cheap part of a model's fingerprint, checked before building anything: the transformers
    config, the pretrained weights' files and the tokenizer file (Hugging Face runs; {} otherwise)."""
    cfg = run.model
    if cfg.kind != "hf":
        return {}
    from node.train import hf
    from node.train.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir or cfg.tokenizer)
    pretrained = pretrained_dir or cfg.pretrained
    config = (
        hf.pretrained_config(pretrained)
        if pretrained
        else hf.hf_config(cfg, tokenizer.vocab_size if tokenizer else VOCAB)
    )
    return {
        "config_sha256": hf.config_sha256(config),
        "weights_sha256": hf.pretrained_sha256(pretrained) if pretrained else "",
        "tokenizer_sha256": tokenizer.sha256 if tokenizer else "",
        "transformers_version": hf.transformers_module().__version__,
    }


def check_fingerprint(found: dict, wanted: dict, *, pretrained: str = "", tokenizer: str = "") -> None:
    """Raise, naming the fix, where this node's model files or libraries differ from the run's."""

    def short(h) -> str:
        return (str(h)[:16] + "...") if h else "none"

    version = wanted.get("transformers_version", "?")
    if found.get("tokenizer_sha256", "") != wanted.get("tokenizer_sha256", ""):
        raise SwarmtrainError(
            f"the tokenizer differs from the run's: SHA-256 {short(found.get('tokenizer_sha256'))} "
            f"here ({tokenizer or 'none'}), {short(wanted.get('tokenizer_sha256'))} in the run",
            "copy the organizer's tokenizer.json and point --tokenizer-dir at its directory",
        )
    if found.get("weights_sha256", "") != wanted.get("weights_sha256", ""):
        raise SwarmtrainError(
            f"the pretrained weights differ from the run's: SHA-256 "
            f"{short(found.get('weights_sha256'))} here ({pretrained or 'none'}), "
            f"{short(wanted.get('weights_sha256'))} in the run",
            "copy the organizer's save_pretrained directory (config.json + *.safetensors) "
            "and point --pretrained-dir at it",
        )
    if found.get("config_sha256", "") != wanted.get("config_sha256", ""):
        raise SwarmtrainError(
            f"the model's transformers config differs from the run's "
            f"({short(found.get('config_sha256'))} here, {short(wanted.get('config_sha256'))} "
            f"in the run; transformers {found.get('transformers_version')} here, {version} there)",
            f"install transformers=={version}, and use the organizer's model files",
        )
    if "init_sha256" in found and found["init_sha256"] != wanted.get("init_sha256"):
        raise SwarmtrainError(
            "this node builds other round-0 weights than the run's "
            f"({short(found['init_sha256'])} here, {short(wanted.get('init_sha256'))} in the run)",
            f"install the organizer's library versions (transformers=={version}, and its peft "
            "and torch) so the model and adapters initialise to the same bits",
        )


def build_run_model(
    run: RunConfig, *, pretrained_dir: str = "", tokenizer_dir: str = "", expect: dict | None = None
) -> BuiltModel:
    """The whole recipe: base model (byte GPT or transformers), tokenizer, LoRA adapters.
    `pretrained_dir` / `tokenizer_dir` override where this node keeps the run's files; `expect`
    (a manifest's [model] section) makes a differing fingerprint an error. A model larger than this
    machine's memory is a SwarmtrainError naming the sizes, not torch's allocation traceback."""
    try:
        return _build(run, pretrained_dir, tokenizer_dir, expect)
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "allocate" not in str(e):
            raise
        m = run.model
        raise SwarmtrainError(
            f"the run's model (d_model={m.d_model}, n_layer={m.n_layer}, ctx={m.ctx}) does not fit in this "
            f"machine's memory: {str(e).splitlines()[0][:160]}",
            "make [model] smaller in the run file, or use a machine with more memory (`swarmtrain doctor --run` "
            "estimates what a run needs)",
        ) from None


def _build(run: RunConfig, pretrained_dir: str, tokenizer_dir: str, expect: dict | None) -> BuiltModel:
    cfg = run.model
    check_model_config(cfg)
    if cfg.kind == "user":
        raise SwarmtrainError(
            f"run {run.name!r} trains a model its peers bring from Python: the command line cannot build it",
            "join it from a training script with swarmtrain.join(run_id=..., initial_peers=[...]) (docs/api.md)",
        )
    tokenizer, model_type = None, None
    prints = fingerprint(run, pretrained_dir=pretrained_dir, tokenizer_dir=tokenizer_dir)
    if expect is not None:
        check_fingerprint(
            prints, expect, pretrained=pretrained_dir or cfg.pretrained, tokenizer=tokenizer_dir or cfg.tokenizer
        )
    if cfg.kind == "hf":
        from node.train import hf
        from node.train.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_dir or cfg.tokenizer)
        base = hf.build_hf(
            cfg, run.train.seed, tokenizer.vocab_size if tokenizer else VOCAB, pretrained_dir or cfg.pretrained
        )
        model_type = base.config.model_type
        model = hf.CausalLM(base, tokenizer.token_bytes() if tokenizer else None)
    else:
        model = build_model(cfg, run.train.seed)
    if run.peft.method == "lora":
        from node.train.lora import apply_lora

        apply_lora(model, run.peft, run.train.seed, model_type)
    if prints or run.peft.method != "none":
        prints["init_sha256"] = digest(trainable(model))  # the adapters' (or the model's) round-0 bits
    if expect is not None:
        check_fingerprint(prints, expect)
    return BuiltModel(model=model, tokenizer=tokenizer, fingerprint=prints)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per token (per byte for byte-level models)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def digest(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of fp32 CPU values in order: equal digests mean bit-identical parameters."""
    return _hashed(hashlib.sha256(), tensors).hexdigest()


def digests(tensors: list[torch.Tensor], more: list[torch.Tensor]) -> tuple[str, str]:
    """digest(tensors) and digest(tensors + more), reading `tensors` once (a model's parameters
    are most of what a peer hashes, and it needs both digests every round)."""
    h = _hashed(hashlib.sha256(), tensors)
    return h.hexdigest(), _hashed(h.copy(), more).hexdigest()


def _hashed(h, tensors: list[torch.Tensor]):
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h
