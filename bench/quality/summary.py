"""`bench quality`'s rows: runs summarized per preset, merged across results files, and the
tables docs/benchmarks.md quotes (every preset; the best preset of each traffic band)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.tables import markdown_table

DDP_REFERENCES = ("ddp-adamw", "ddp-muon")
"""The data-parallel references: every gap is measured against the better of those in the run."""


def best_reference(rows: list[dict]) -> str:
    """The DDP reference with the lower mean bpb among `rows` (ddp-adamw where only it ran)."""
    there = [r for r in rows if r["strategy"] in DDP_REFERENCES]
    return min(there, key=lambda r: r["val_bpb"])["strategy"] if there else DDP_REFERENCES[0]


def summarize(runs: list[dict], reference: str | None = None) -> list[dict]:
    """One row per strategy: means over seeds, ratios against the ring and the reference's bpb
    (None: the better DDP of the run, named in each row's `reference`; or a preset, e.g. a tuned DDP)."""
    rows = []
    for preset in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == preset]
        seeded = all("seed" in r for r in rs)  # (runs recorded before seeds were kept lack them)
        if seeded:  # in seed order: seed_gaps pairs each seed with the reference's run of the same seed
            rs.sort(key=lambda r: r["seed"])
        row = {
            k: rs[0][k]
            for k in (
                "strategy",
                "params",
                "tokens",
                "upload_bytes_per_step",
                "download_bytes_per_step",
                "dense_ring_bytes_per_step",
                "payload_bytes",
            )
        }
        row["upload_reduction"] = row["dense_ring_bytes_per_step"] / row["upload_bytes_per_step"]
        if "own_upload_bytes_per_step" in rs[0]:  # (runs recorded before upload once lack it)
            row["own_upload_reduction"] = row["dense_ring_bytes_per_step"] / rs[0]["own_upload_bytes_per_step"]
        row["download_reduction"] = row["dense_ring_bytes_per_step"] / row["download_bytes_per_step"]
        row["val_bpb"] = sum(r["val_bpb"] for r in rs) / len(rs)
        row["val_bpb_per_seed"] = [r["val_bpb"] for r in rs]
        if seeded:
            row["seeds"] = [r["seed"] for r in rs]
        row["seconds"] = sum(r["seconds"] for r in rs)
        rows.append(row)
    reference = reference or best_reference(rows)
    ddp = next((r["val_bpb"] for r in rows if r["strategy"] == reference), None)
    for row in rows:
        row["gap_vs_ddp"] = (row["val_bpb"] - ddp) / ddp if ddp else None
        row["reference"] = reference
    return rows


def merge_rows(paths: list[str], reference: str | None = None) -> list[dict]:
    """Rows of several `bench quality --json` files of the same tier, gaps recomputed against the
    reference (deterministic: the same preset and seed give the same run in every file)."""
    runs, seen = [], set()
    for p in paths:
        for r in json.loads(Path(p).read_text())["runs"]:
            if (r["strategy"], r["seed"]) not in seen:
                seen.add((r["strategy"], r["seed"]))
                runs.append(r)
    return summarize(runs, reference)


def seed_gaps(row: dict, ddp: dict) -> list[float]:
    """The row's gap to DDP per seed (each seed against DDP's run of the same seed)."""
    ref = dict(zip(ddp.get("seeds", range(len(ddp["val_bpb_per_seed"]))), ddp["val_bpb_per_seed"]))
    mine = zip(row.get("seeds", range(len(row["val_bpb_per_seed"]))), row["val_bpb_per_seed"])
    return [(b - ref[seed]) / ref[seed] for seed, b in mine if seed in ref]


BANDS = (100, 1000, 3000, 10000)
"""The upload-reduction bands of issue 11's table (at least this many times less than the fp32 ring)."""


def band_table(rows: list[dict]) -> str:
    """The best gap at >= each band's reduction (the row with the lowest mean gap there), against
    the rows' reference."""
    reference = rows[0]["reference"]
    ddp = next(r for r in rows if r["strategy"] == reference)
    lines = []
    for band in BANDS:
        there = [r for r in rows if r["upload_reduction"] >= band and not r["strategy"].startswith(DDP_REFERENCES)]
        if not there:
            lines.append([f">= {band:,}x", "none", "-", "-", "-"])
            continue
        best = min(there, key=lambda r: r["gap_vs_ddp"])
        per = " / ".join(f"{g:+.1%}" for g in seed_gaps(best, ddp))
        lines.append(
            [
                f">= {band:,}x",
                best["strategy"],
                f"{best['gap_vs_ddp']:+.1%} ({per})",
                f"{best['upload_reduction']:,.0f}x",
                bits_per_sync(best),
            ]
        )
    head = ["band", "best preset", f"gap vs {reference} (mean; per seed)", "upload reduction", "bits/param/sync"]
    return markdown_table(head, lines)


def bits_per_sync(row: dict) -> str:
    """Bits a worker sends per parameter per synchronisation (the unit Psyche reports): its
    payload's bytes over the parameters; DDP's payload is one step's gradient."""
    if not row.get("params") or row.get("payload_bytes") is None:
        return "-"
    return f"{8 * row['payload_bytes'] / row['params']:.3g}"


def quality_table(rows: list[dict]) -> str:
    """The rows as the table in docs/benchmarks.md."""
    return markdown_table(
        [
            "strategy",
            "val bpb",
            f"gap vs {rows[0]['reference'] if rows else 'DDP'}",
            "upload B/step",
            "download B/step",
            "upload reduction",
            "download reduction",
            "bits/param/sync",
        ],
        (
            [
                r["strategy"],
                f"{r['val_bpb']:.4f}",
                f"{r['gap_vs_ddp']:+.1%}",
                f"{r['upload_bytes_per_step']:,.0f}",
                f"{r['download_bytes_per_step']:,.0f}",
                f"{r['upload_reduction']:,.1f}x",
                f"{r['download_reduction']:,.1f}x",
                bits_per_sync(r),
            ]
            for r in rows
        ),
    )
