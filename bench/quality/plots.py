"""`bench quality --plot`: the learning curves, and the frontier (quality gap against traffic)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.extras import pyplot
from bench.quality.summary import BANDS, DDP_REFERENCES, seed_gaps


def frontier_path(plot_path: str) -> str:
    """Where --plot P.png puts the frontier: P-frontier.png beside it."""
    p = Path(plot_path)
    return str(p.with_name(f"{p.stem}-frontier{p.suffix or '.png'}"))


def plot_frontier(rows: list[dict], path: str, title: str) -> None:
    """Gap to DDP against upload reduction (log x): one point per preset (the mean of its seeds'
    gaps), bars from its best to its worst seed (each seed against DDP's run of the same seed)."""
    plt = pyplot()
    reference = rows[0]["reference"] if rows else ""
    ddp = next((r for r in rows if r["strategy"] == reference), None)
    if ddp is None:
        return
    fig, ax = plt.subplots(figsize=(10, 6))
    placed: list[tuple[float, float]] = []
    front = frontier(rows)
    for r in sorted(rows, key=lambda r: (r["upload_reduction"], -r["gap_vs_ddp"])):
        if r["strategy"].startswith(DDP_REFERENCES):
            if r["strategy"] != reference:  # another DDP (e.g. the untuned preset): a level, not a point
                ax.axhline(100 * r["gap_vs_ddp"], color="grey", lw=0.8, ls="--")
                ax.text(
                    0.01,
                    100 * r["gap_vs_ddp"],
                    f" {r['strategy']}",
                    transform=ax.get_yaxis_transform(),
                    fontsize=7,
                    color="grey",
                    va="bottom",
                )
            continue
        gaps = [100 * g for g in seed_gaps(r, ddp)]
        mean = sum(gaps) / len(gaps)  # the mean of the seeds' gaps (within 0.1 point of the row's gap)
        x = r["upload_reduction"]
        if r["strategy"] not in front:  # behind the frontier: a point without a name, so names stay legible
            ax.plot([x], [mean], "o", color="lightgrey", ms=4)
            continue
        ax.errorbar([x], [mean], yerr=[[mean - min(gaps)], [max(gaps) - mean]], fmt="o", capsize=3)
        near = sum(abs(math.log10(x / px)) < 0.1 and abs(mean - py) < 4 for px, py in placed)
        placed.append((x, mean))
        ax.annotate(r["strategy"], (x, mean), textcoords="offset points", xytext=(5, 4 - 11 * near), fontsize=7)
    for band in BANDS:
        ax.axvline(band, color="grey", lw=0.6, ls=":")
    ax.plot([1000, 10000], [2, 2], color="green", lw=1.5, label="target: <= 2% at >= 1,000x")
    ax.plot([10000, 100000], [5, 5], color="orange", lw=1.5, label="target: <= 5% at >= 10,000x")
    ax.plot([], [], "o", color="lightgrey", ms=4, label="behind the frontier (unnamed)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(
        xscale="log",
        xlabel="upload reduction vs a dense fp32 ring all-reduce (log)",
        ylabel=f"val bpb gap vs {reference} (%)",
        title=f"{title}: quality against traffic",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier(rows: list[dict]) -> set[str]:
    """The compressed presets no other beats on both axes (as much upload reduction or more, and a
    smaller gap): the ones the plot names."""
    methods = [r for r in rows if not r["strategy"].startswith(DDP_REFERENCES)]
    return {
        r["strategy"]
        for r in methods
        if not any(
            o["upload_reduction"] >= r["upload_reduction"] and o["gap_vs_ddp"] < r["gap_vs_ddp"] for o in methods
        )
    }


def plot_curves(runs: list[dict], path: str, title: str) -> None:
    """Held-out bpb against tokens (left) and against bytes uploaded per worker (right), one line per preset."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for preset in dict.fromkeys(r["strategy"] for r in runs):
        r = next(x for x in runs if x["strategy"] == preset)
        tok = [c["tokens"] for c in r["curve"]]
        bpb = [c["val_bpb"] for c in r["curve"]]
        up = [max(1.0, c["upload_bytes"]) for c in r["curve"]]
        a.plot(tok, bpb, marker=".", label=preset)
        b.plot(up, bpb, marker=".", label=preset)
    a.set(xlabel="tokens (all workers)", ylabel="held-out bits per byte", title=title)
    b.set(
        xlabel="bytes uploaded per worker (log)",
        ylabel="held-out bits per byte",
        xscale="log",
        title="quality against traffic",
    )
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
