"""The live terminal panel of `join` and `demo` (rich): one row per peer, redrawn in place.

Only used on a terminal; with output to a pipe or file the same events are plain lines
(progress.Reporter), so logs stay greppable. Other messages scroll above the panel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from node.watch.progress import Reporter, format_value, text_line

COLUMNS = (
    ("round", "round"),
    ("step", "step"),
    ("loss", "loss"),
    ("val_bpb", "val bpb"),
    ("tokens_per_s", "tokens/s"),
    ("peers", "peers"),
    ("sent", "sent"),
    ("received", "received"),
    ("state", "state"),
)

if TYPE_CHECKING:  # rich is imported by the panel only: a node with its output to a pipe or file never loads it
    from rich.console import Console
    from rich.table import Table


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class LivePanel:
    """Rows keyed by peer label; `update()` merges an event's fields, `log()` prints above."""

    def __init__(self, title: str, console: Console | None = None):
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = console or Console()
        self.rows: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LivePanel:
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._live.stop()

    def update(self, label: str, kind: str, fields: dict) -> None:
        with self._lock:
            if kind == "left" and label not in self.rows:
                return  # a bootstrap peer leaving: not a trainer, no row
            row = self.rows.setdefault(label, {})
            row.update(fields)
            row["state"] = {"joined": "training", "round": "training", "round_failed": "resyncing", "left": "left"}.get(
                kind, row.get("state", "")
            )
            self._live.update(self.render())

    def log(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def render(self) -> Table:
        from rich.table import Table

        table = Table(title=self.title, title_justify="left", expand=False)
        table.add_column("peer")
        for _, header in COLUMNS:
            table.add_column(header, justify="left" if header == "state" else "right")
        for label, row in sorted(self.rows.items()):
            table.add_row(label, *[self._cell(key, row.get(key)) for key, _ in COLUMNS])
        return table

    @staticmethod
    def _cell(key: str, value) -> str:
        if value is None or value == "":
            return "–"
        if key in ("sent", "received"):
            try:
                return human_bytes(float(value))
            except ValueError:
                return str(value)
        if key == "tokens_per_s":
            try:
                return f"{float(value):,.0f}"
            except ValueError:
                return str(value)
        return format_value(value) if isinstance(value, float) else str(value)


class PanelReporter(Reporter):
    """A Reporter for a terminal: round events feed the panel, everything else scrolls above it."""

    PANEL_EVENTS = ("joined", "round", "round_failed", "left")

    def __init__(self, panel: LivePanel, label: str = "this node"):
        super().__init__("text")
        self.panel, self.label = panel, label

    def event(self, kind: str, /, **fields) -> None:
        if kind in self.PANEL_EVENTS:
            self.panel.update(self.label, kind, fields)
        if kind not in ("round",):  # rounds live in the panel; the rest is worth a line
            self.panel.log(text_line(kind, fields))

    def say(self, text: str) -> None:
        self.panel.log(text)

    def child(self, label: str, line: str) -> None:
        parsed = parse_event_line(line)
        if parsed and parsed[0] in self.PANEL_EVENTS:
            self.panel.update(label, parsed[0], parsed[1])
            if parsed[0] == "round":
                return
        self.panel.log(f"[{label}] {line}")


def parse_event_line(line: str) -> tuple[str, dict] | None:
    """'event=round round=3 loss=2.1' -> ('round', {'round': '3', 'loss': '2.1'}); None if not an event."""
    parts = line.split()
    if not parts or not parts[0].startswith("event="):
        return None
    fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    return parts[0][6:], fields


@contextmanager
def reporter_for(fmt: str, title: str) -> Iterator[Reporter]:
    """A PanelReporter drawing a live panel on a terminal, else a line Reporter ('text' or 'json')."""
    if not use_panel(fmt):
        yield Reporter("json" if fmt == "json" else "text")
        return
    with LivePanel(title) as panel:
        yield PanelReporter(panel)


def use_panel(fmt: str, stream=None) -> bool:
    """The panel is for people at a terminal: 'auto' on a TTY (not TERM=dumb)."""
    import os
    import sys

    stream = stream or sys.stdout
    return fmt == "auto" and stream.isatty() and os.environ.get("TERM", "") != "dumb"
