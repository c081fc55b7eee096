"""The corpus on disk: documents read from your files when needed, and tokens written once into
files that windows are read from.

Your own data (`[data] files = "GLOB"`): the documents of text, .jsonl and .parquet files and of
datasets' save_to_disk directories, named relative to the glob's directory.

Only the names stay in memory: a document's bytes are read from disk when the digest or the
tokenizer asks for them (Documents), so a corpus larger than memory can be hashed and
tokenized one document at a time. A .jsonl / .parquet file is parsed once to list its records
and again when its records are read (the last file's records are kept); a datasets directory is
memory-mapped Arrow, read row by row.

Tokens on disk: one split of a corpus tokenized once into a file, read a window at a time.

A node's training shard and held-out split are written once under its data dir
(<data_dir>/tokens/<key>.<dtype>), key = sha256(corpus digest, tokenizer digest, split rule,
split), and read through TokenFile afterwards: a window reads its ctx + 1 tokens from the page
cache, so the node's memory does not grow with the corpus (bench data measures it). The ids are
stored in the narrowest unsigned type the vocabulary allows: uint8 for bytes (vocabulary 256),
uint16 up to 65,536 ids, else uint32. The file is written one batch of documents at a time, to a
temporary name renamed into place when complete (a partial file whose writer is gone is deleted),
so a node stopped halfway writes it again and two nodes sharing a data dir never read a partial
file. It holds exactly the ids that tokenizing the whole split at once would give (documents
joined by the separator's ids), so the batches drawn from it are those drawn from the in-memory
tensor.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from node.errors import SwarmtrainError


class Documents(Sequence):
    """(name, bytes) of each document, sorted by name, read from disk only when asked: a corpus
    larger than memory keeps only its names there. `read(i)` gives document i's bytes."""

    def __init__(self, names: list[str], read: Callable[[int], bytes]):
        self.names, self.read = names, read

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.names[i], self.read(i)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return (self[i] for i in range(len(self)))


GLOB_CHARS = "*?["
TEXT_SUFFIXES = (".jsonl", ".json", ".parquet")


def glob_root(pattern: str) -> Path:
    """The directory a glob's names are relative to: its leading components without wildcards."""
    parts = Path(pattern).expanduser().parts
    fixed = []
    for part in parts:
        if any(c in part for c in GLOB_CHARS):
            break
        fixed.append(part)
    root = Path(*fixed) if fixed else Path(".")
    return root.parent if len(fixed) == len(parts) and not root.is_dir() else root


def records(path: Path, text_field: str) -> list[str]:
    """The text of each record of a .jsonl / .parquet file (jsonl: one JSON object per line)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # installed with the datasets library ([hf] extra)
        except ImportError:
            raise SwarmtrainError(
                f"{path} is parquet, but pyarrow is not installed", "pip install 'swarmtrain[hf]'"
            ) from None
        table = pq.read_table(path, columns=None)
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


def _saved_dataset(path: Path, text_field: str):
    """A directory written by datasets' Dataset.save_to_disk: one document per non-empty row."""
    try:
        import datasets
    except ImportError:
        raise SwarmtrainError(
            f"{path} is a datasets directory, but 'datasets' is not installed", "pip install 'swarmtrain[hf]'"
        ) from None
    ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow: rows are read when asked for
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in sorted(ds)])
    if text_field not in ds.column_names:
        raise SwarmtrainError(
            f"{path} has no column {text_field!r} (columns: {', '.join(ds.column_names)})",
            "set [data] text_field in run.toml to the column holding the text",
        )
    ds = ds.select_columns([text_field])
    rows = np.flatnonzero(ds.data.column(text_field).is_valid().to_numpy(zero_copy_only=False)).tolist()
    docs = sorted((f"{path.name}#{i}", i) for i in rows)
    return Documents([n for n, _ in docs], lambda k: str(ds[docs[k][1]][text_field]).encode("utf-8"))


def own_files(pattern: str, text_field: str = "text"):
    """Your own data: Documents named relative to the glob's directory, sorted by name."""
    p = Path(pattern).expanduser()
    if p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
        return _saved_dataset(p, text_field)
    root = glob_root(pattern)
    if p.is_dir():  # a plain directory: every file below it
        p = p / "**" / "*"
    paths = sorted(f for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
    if not paths:
        raise SwarmtrainError(
            f"no files match {pattern!r} (from {os.getcwd()})",
            "check [data] files in run.toml, or point --data-files at your copy of the run's data",
        )
    docs: list[tuple[str, str, int]] = []  # (name, file, record index; -1: the whole file)
    for f in paths:
        name = os.path.relpath(f, root).replace(os.sep, "/")
        if f.endswith(TEXT_SUFFIXES):
            docs += [(f"{name}#{i}", f, i) for i in range(len(records(Path(f), text_field)))]
        else:
            docs.append((name, f, -1))
    docs.sort()
    parsed = lru_cache(maxsize=1)(lambda f: records(Path(f), text_field))  # one file's records at a time

    def read(k: int) -> bytes:
        _, f, i = docs[k]
        if i < 0:
            with open(f, "rb") as fh:
                return fh.read()
        return parsed(f)[i].encode("utf-8")

    return Documents([n for n, _, _ in docs], read)


# ----------------------------------------------------------------------- tokens on disk
FORMAT = 1  # bump when the file layout changes: old files are then written again
BATCH_BYTES = 8 << 20  # documents tokenized together (tokenizers' encode_batch runs them in parallel)


def dtype_for(tokenizer) -> np.dtype:
    """The narrowest unsigned type holding every id of `tokenizer` (None: bytes)."""
    vocab = 256 if tokenizer is None else tokenizer.vocab_size
    return np.dtype(np.uint8 if vocab <= 1 << 8 else np.uint16 if vocab <= 1 << 16 else np.uint32)


def token_path(cache_dir: str | Path, what: str, tokenizer) -> Path:
    """Where the tokens of `what` (corpus digest, split rule and split, as one string) are kept."""
    tok = "bytes" if tokenizer is None else tokenizer.sha256
    key = hashlib.sha256(f"swarmtrain-tokens-v{FORMAT}|{tok}|{what}".encode()).hexdigest()[:32]
    return Path(cache_dir) / f"{key}.{dtype_for(tokenizer).name}"


def _batches(docs: Iterable[bytes]) -> Iterator[list[bytes]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _remove_stale(path: Path) -> None:
    """Delete the partial files of `path` that nodes stopped while writing it left behind."""
    for part in path.parent.glob(f"{path.name}.*.tmp"):
        try:
            os.kill(int(part.suffixes[-2][1:]), 0)  # its writer still runs: leave it
        except ProcessLookupError:
            part.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass


def write_tokens(path: Path, docs: Iterable[bytes], separator: bytes, tokenizer) -> None:
    """Tokenize `docs` (joined by `separator`) into `path`, never holding more than a batch of them."""
    dtype = dtype_for(tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        if tokenizer is None:  # bytes: one document in memory at a time
            for i, doc in enumerate(docs):
                if i:
                    fh.write(separator)
                fh.write(doc)
        else:  # a batch of documents at a time (BATCH_BYTES)
            sep = tokenizer.encode([b"", b""], separator).numpy().astype(dtype)  # the separator's ids
            for n, batch in enumerate(_batches(docs)):
                if n:
                    fh.write(sep.tobytes())
                fh.write(tokenizer.encode(batch, separator).numpy().astype(dtype).tobytes())
    os.replace(tmp, path)


class TokenFile:
    """A split's ids on disk, read a window at a time with pread: nothing of the file is mapped or
    held, so the reader's RSS stays flat whatever the corpus' size. (Memory-mapped pages count in
    RSS, and the kernel maps 64 kB around each page a random window touches, read-ahead off or
    not: 200 batches mapped 15.8 MB of a 16 MB shard when measured.)"""

    def __init__(self, path: Path):
        self.path, self.dtype = path, np.dtype(path.suffix[1:])
        self.fd = os.open(path, os.O_RDONLY)  # closed when the object goes (weakref.finalize)
        weakref.finalize(self, os.close, self.fd)
        self.count = os.fstat(self.fd).st_size // self.dtype.itemsize

    def __len__(self) -> int:
        return self.count

    def read(self, start: int, count: int) -> np.ndarray:
        """ids[start : start + count]."""
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self.fd, count * size, start * size), dtype=self.dtype)


def cached_tokens(cache_dir: str | Path, what: str, docs: Iterable[bytes], separator: bytes, tokenizer) -> TokenFile:
    """The tokens of `what`, written from `docs` (an iterable read only on a miss) the first time."""
    path = token_path(cache_dir, what, tokenizer)
    if not path.exists():
        write_tokens(path, docs, separator, tokenizer)
    return TokenFile(path)
