"""The terminal panel: what a person at a terminal sees, and plain lines everywhere else."""

import io

from rich.console import Console

from node.watch.panel import LivePanel, PanelReporter, parse_event_line, reporter_for, use_panel
from node.watch.progress import Reporter


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def panel_text(feed) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    with LivePanel("test", console=console) as panel:
        feed(PanelReporter(panel))
    return out.getvalue()


def test_round_events_fill_the_panel_and_messages_scroll_above():
    def feed(r):
        r.say("peer Qm... joined run demo-1")
        r.event("round", round=3, peers=3, loss=2.5, sent=3_350_000, received=6_700_000, tokens_per_s=1234, step=150)

    text = panel_text(feed)
    assert "joined run demo-1" in text
    row = [line for line in text.splitlines() if "this node" in line][-1]
    for cell in ("3", "150", "2.5", "1,234", "3.4 MB", "6.7 MB", "training"):
        assert cell in row, (cell, row)
    assert "event=round" not in text  # rounds are the panel's, not lines


def test_demo_child_lines_become_rows_per_peer():
    def feed(r):
        r.child("peer0", "event=round round=2 peers=2 loss=3.1 sent=100 received=200")
        r.child("peer1", "event=round round=2 peers=2 loss=3.3 sent=100 received=200")
        r.child("peer1", "WARNING something a person should read")

    text = panel_text(feed)
    assert "[peer1] WARNING something" in text
    assert any("peer0" in line and "3.1" in line for line in text.splitlines())
    assert any("peer1" in line and "3.3" in line for line in text.splitlines())


def test_parse_event_line():
    assert parse_event_line("event=round round=3 loss=2.1") == ("round", {"round": "3", "loss": "2.1"})
    assert parse_event_line("INFO not an event") is None


def test_panel_only_on_a_terminal_and_only_for_auto(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert use_panel("auto", FakeTTY()) and not use_panel("auto", io.StringIO())
    assert not use_panel("text", FakeTTY()) and not use_panel("json", FakeTTY())
    monkeypatch.setenv("TERM", "dumb")
    assert not use_panel("auto", FakeTTY())


def test_reporter_for_a_pipe_is_plain_lines(capsys):
    with reporter_for("auto", "t") as r:  # pytest's stdout is not a terminal
        assert type(r) is Reporter
        r.event("round", round=1, loss=2.0)
    assert capsys.readouterr().out == "event=round round=1 loss=2\n"
