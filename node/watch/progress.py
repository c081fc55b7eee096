"""Progress output: key=value lines (or JSON lines) on stdout, one per event."""

from __future__ import annotations

import json
import sys
import time
from typing import IO


class Reporter:
    def __init__(self, fmt: str = "text", stream: IO[str] | None = None, prefix: str = ""):
        self.fmt, self.stream, self.prefix = fmt, stream or sys.stdout, prefix

    def event(self, kind: str, /, **fields) -> None:
        """One machine-readable line: 'event=round round=3 loss=2.1' or {"event": "round", ...}."""
        if self.fmt == "json":
            line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields})
        else:
            line = text_line(kind, fields)
        print(self.prefix + line, file=self.stream, flush=True)

    def child(self, label: str, line: str) -> None:
        """A line from a child process (the demo's peers), shown with its label."""
        print(f"[{label}] {line}", file=self.stream, flush=True)

    def say(self, text: str) -> None:
        """A sentence for a person (suppressed in JSON mode, where every line must parse)."""
        if self.fmt == "json":
            self.event("message", text=text)
        else:
            print(self.prefix + text, file=self.stream, flush=True)


def text_line(kind: str, fields: dict) -> str:
    """'event=round round=3 loss=2.1': the key=value form of an event."""
    return " ".join([f"event={kind}"] + [f"{k}={format_value(v)}" for k, v in fields.items()])


def format_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(format_value(x) for x in v)
    return str(v)
