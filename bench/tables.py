"""Markdown tables, as the benchmarks print them and docs/*.md quote them: one renderer for all."""

from __future__ import annotations

from collections.abc import Iterable


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A GitHub markdown table: `header` cells, then one line per row of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)
