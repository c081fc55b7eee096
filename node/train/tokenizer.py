"""Tokenizers of Hugging Face runs: a tokenizer.json in a local directory (the tokenizers library).

The built-in model stays byte-level. An HF run may name a tokenizer directory; its SHA-256 goes
into the run manifest, so peers tokenizing differently refuse the run. Held-out bits per byte
stays the metric: `token_bytes()` says how many bytes of text stand behind each token id, and
the evaluation divides the summed cross-entropy by those bytes, so runs with different
tokenizers (or none) compare.

Nothing is downloaded: tokenizers are read from files, or trained here (`train_bpe`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

import torch

from node.errors import SwarmtrainError

TOKENIZER_FILE = "tokenizer.json"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise SwarmtrainError(
            "this run names a tokenizer, but the 'tokenizers' library is not installed", "pip install 'swarmtrain[hf]'"
        ) from None
    return tokenizers


def tokenizer_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    f = p / TOKENIZER_FILE if p.is_dir() else p
    if not f.is_file():
        raise SwarmtrainError(
            f"no tokenizer at {p} (looked for {f})",
            "point [model] tokenizer (or --tokenizer-dir) at a directory holding tokenizer.json, "
            "e.g. one written by tokenizer.save_pretrained(DIR) or node.train.tokenizer.train_bpe",
        )
    return f


class Tokenizer:
    """A tokenizers.Tokenizer plus what swarmtrain needs of it: a hash, ids as tensors, bytes per id."""

    def __init__(self, path: str | Path):
        self.file = tokenizer_file(path)
        self.raw = self.file.read_bytes()
        self.tok = _tokenizers().Tokenizer.from_str(self.raw.decode("utf-8"))

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, docs: Iterable[bytes], separator: bytes) -> torch.Tensor:
        """Documents (bytes) -> one 1-D long tensor of ids, documents joined by `separator`'s ids."""
        sep = self.tok.encode(separator.decode("utf-8", "replace"), add_special_tokens=False).ids
        out: list[int] = []
        texts = [d.decode("utf-8", "replace") for d in docs]
        for i, enc in enumerate(self.tok.encode_batch(texts, add_special_tokens=False)):
            if i:
                out.extend(sep)
            out.extend(enc.ids)
        return torch.tensor(out, dtype=torch.long)

    def token_bytes(self) -> torch.Tensor:
        """Bytes of text behind each id (special tokens: 0). Exact for byte-level BPE (GPT-2, Llama 3,
        Qwen style), where each character of a token stands for one byte; otherwise the UTF-8 length
        of the decoded token."""
        t = _tokenizers()
        byte_level = isinstance(self.tok.decoder, t.decoders.ByteLevel) or isinstance(
            self.tok.pre_tokenizer, t.pre_tokenizers.ByteLevel
        )
        special = {a.content for a in self.tok.get_added_tokens_decoder().values() if a.special}
        out = torch.zeros(self.vocab_size, dtype=torch.long)
        for i in range(self.vocab_size):
            tok = self.tok.id_to_token(i)
            if tok is None or tok in special:
                continue
            out[i] = len(tok) if byte_level else len(self.tok.decode([i]).encode("utf-8"))
        return out


def load_tokenizer(path: str) -> Tokenizer | None:
    """The run's tokenizer, or None for byte-level models."""
    return Tokenizer(path) if path else None


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> Path:
    """Train a byte-level BPE tokenizer here (no download) and save tokenizer.json into `out_dir`."""
    t = _tokenizers()
    tok = t.Tokenizer(t.models.BPE())
    tok.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = t.decoders.ByteLevel()
    trainer = t.trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=t.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / TOKENIZER_FILE))
    return out
