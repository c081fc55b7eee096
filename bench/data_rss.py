"""Memory of a node's data against the size of its corpus (issue 19's target: a 1 GB text corpus
costs no more RSS than a 10 MB one).

For each size, a corpus of generated text files (64 kB each, in a temporary directory, deleted
afterwards) is read by fresh processes, one per row, each doing what a volunteer does at start:
list the files, hash them (the run's corpus digest), take its training shard and the held-out
split, then draw batches of windows.
  * tokenize: the first start, which tokenizes the shard and the split into files under a data
    dir (node/train/disk.py), then reads each window from them;
  * read: a later start, which finds those files and only reads windows;
  * in memory (before): the old path, the corpus's bytes read into memory and the shard held as an
    int64 tensor (what node/train/data.py did before issue 19).
Each process reports its RSS after its imports (torch), then resets its peak RSS (VmHWM) and
reports the peak from there on, so that the growth due to the data shows, and how much of that
growth is file-backed (mapped pages: the token files are read with pread, not mapped, so this
is the few shared libraries loaded after the imports, in every mode alike).
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILE_BYTES = 64 << 10
TIERS = {"quick": (10, 100), "full": (10, 1000)}
"""Corpus sizes (MB) per tier."""
MODES = ("tokenize", "read", "in-memory")
PEER = "bench-peer"


def _words(n_bytes: int) -> bytes:
    """Deterministic text: words drawn from a fixed vocabulary with Zipf-like weights."""
    rng = random.Random(19)
    vocab = ["".join(rng.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rng.randint(1, 9))) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    out, size = [], 0
    while size < n_bytes:
        line = " ".join(rng.choices(vocab, weights, k=12)) + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n_bytes]


def write_corpus(root: Path, megabytes: int) -> int:
    """Files of FILE_BYTES each, `megabytes` MB in all; each is a different cut of one text."""
    base = _words(1 << 20)
    n = megabytes * (1 << 20) // FILE_BYTES
    for i in range(n):
        sub = root / f"part{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        cut = (i * 7919) % len(base)
        (sub / f"doc{i:06d}.txt").write_bytes((base[cut:] + base[:cut])[:FILE_BYTES])
    return n


def _status_mb() -> dict[str, float]:
    """RSS now (VmRSS), its peak (VmHWM) and its file-backed part (RssFile), in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields.get(k, "0 kB").split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssFile")}


def _reset_peak() -> None:
    """Start the peak RSS (VmHWM) from now: importing torch peaks above the RSS it leaves, which
    would hide the data's growth below that peak (Linux >= 4.0: clear_refs' 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(mode: str, root: str, cache: str, batches: int) -> dict:
    """One start of a volunteer over the corpus in `root` (run in a fresh process)."""
    import torch

    from node.config import DataConfig, ModelConfig, TrainConfig
    from node.train import data

    import_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _reset_peak()
    base = _status_mb()
    t = time.perf_counter()
    cfg, ctx, batch = DataConfig(files=f"{root}/**/*.txt"), ModelConfig().ctx, TrainConfig().batch_size
    corpus = data.load_corpus(cfg)
    if mode == "in-memory":  # the old corpus: every document's bytes in memory
        corpus = data.Corpus(name=corpus.name, files=tuple(corpus.files), origin=corpus.origin)
    digest = corpus.sha256
    cache_dir = None if mode == "in-memory" else cache
    tokens = data.train_tokens(corpus, cfg, data.shard_of_peer(PEER, cfg), None, cache_dir)
    val = data.val_tokens(corpus, cfg, None, cache_dir)
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    for r in range(batches):
        x, y = data.windows(tokens, batch, ctx, data.batch_generator(0, PEER, r))
    data.windows(val, batch, ctx, torch.Generator().manual_seed(0))
    end = _status_mb()
    return {
        "mode": mode,
        "corpus_mb": round(corpus.nbytes / (1 << 20), 1),
        "digest": digest[:16],
        "shard_tokens": data.token_count(tokens),
        "start_s": round(start_s, 2),
        "batches_s": round(time.perf_counter() - t, 3),
        "import_peak_rss_mb": round(import_peak_mb, 1),
        "rss_after_imports_mb": round(base["VmRSS"], 1),
        "peak_rss_mb": round(end["VmHWM"], 1),
        "rss_end_mb": round(end["VmRSS"], 1),
        "file_backed_growth_mb": round(end["RssFile"] - base["RssFile"], 1),
    }


def run_data(tier: str, batches: int, json_path: str | None) -> list[dict]:
    rows = []
    for megabytes in TIERS[tier]:
        tmp = Path(tempfile.mkdtemp(prefix="swarmtrain-bench-data-"))
        try:
            t = time.perf_counter()
            files = write_corpus(tmp / "corpus", megabytes)
            made_s = time.perf_counter() - t
            for mode in MODES:
                argv = ["-m", "bench.data_rss", mode, str(tmp / "corpus"), str(tmp / "tokens"), str(batches)]
                out = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True)
                row = {"size_mb": megabytes, "files": files, "write_corpus_s": round(made_s, 1), "batches": batches}
                rows.append(row | json.loads(out.stdout.strip().splitlines()[-1]))
                print(data_table(rows[-1:], header=not rows[:-1]), flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if json_path:
        Path(json_path).write_text(json.dumps({"tier": tier, "rows": rows}, indent=1) + "\n")
    return rows


def data_table(rows: list[dict], header: bool = True) -> str:
    head = f"{'corpus':>8} {'mode':>10} {'start s':>8} {'after imports':>14} {'peak RSS':>9} {'growth':>7}"
    head += f" {'of it mapped':>12}"
    lines = [head] if header else []
    for r in rows:
        growth = r["peak_rss_mb"] - r["rss_after_imports_mb"]
        lines.append(
            f"{r['size_mb']:>5} MB {r['mode']:>10} {r['start_s']:>8.2f} {r['rss_after_imports_mb']:>11.0f} MB "
            f"{r['peak_rss_mb']:>6.0f} MB {growth:>4.0f} MB {r['file_backed_growth_mb']:>9.1f} MB"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # one child: MODE CORPUS_DIR TOKENS_DIR BATCHES
    print(json.dumps(child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))))
