"""The metrics record: a peer's signed account of its training, read by monitors and status pages.

Like every record in protocol/records.py, it comes from other peers, so `from_wire` checks every
field's type and range and raises ProtocolError.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from protocol.errors import ProtocolError
from protocol.fields import count_field, field, finite_field, optional_float, peer_id_field, round_field
from protocol.records import MAX_ROSTER

MAX_METRICS_HISTORY = 64
MAX_METRICS_BODY = 16 * 1024
ROUND_RESULTS = ("ok", "failed", "timeout", "skipped")
REACHABILITY = ("public", "private", "relay", "unknown")


@dataclass(frozen=True, kw_only=True)
class MetricsRecord:
    """'Here is how my training goes.' Signed by the peer (protocol/signing.py) and read by monitors.

    Counters are totals since the node started; `history` holds the last rounds' losses as
    [round, train loss, val bits/byte or None], `recent` the last rounds as
    [round, result, group size, seconds, end time (unix seconds)].
    """

    peer: str
    name: str
    device: str
    version: str
    round: int
    local_step: int
    time: float
    loss: float | None
    val_bpb: float | None
    tokens_per_s: float | None
    tokens: int
    sent: int
    received: int
    dense: int
    rounds_ok: int
    rounds_failed: int
    reachability: str
    history: tuple[tuple[int, float, float | None], ...] = ()
    recent: tuple[tuple[int, str, int, float, float], ...] = ()

    def to_wire(self) -> dict:
        d = asdict(self)
        d["history"] = [list(h) for h in self.history]
        d["recent"] = [list(r) for r in self.recent]
        return d

    @classmethod
    def from_wire(cls, d: object) -> MetricsRecord:
        w = "metrics record"
        history, recent = field(d, "history", list, where=w), field(d, "recent", list, where=w)
        if len(history) > MAX_METRICS_HISTORY or len(recent) > MAX_METRICS_HISTORY:
            raise ProtocolError(f"{w}: more than {MAX_METRICS_HISTORY} history entries")
        reach = field(d, "reachability", str, where=w)
        if reach not in REACHABILITY:
            raise ProtocolError(f"{w}: reachability {reach[:20]!r} is not one of {REACHABILITY}")
        return cls(
            peer=peer_id_field(field(d, "peer", str, where=w), w),
            name=field(d, "name", str, where=w),
            device=field(d, "device", str, where=w),
            version=field(d, "version", str, where=w),
            round=round_field(field(d, "round", int, where=w), w),
            local_step=count_field(d, "local_step", w),
            time=finite_field(field(d, "time", float, where=w), "time", w),
            loss=optional_float(d, "loss", w),
            val_bpb=optional_float(d, "val_bpb", w),
            tokens_per_s=optional_float(d, "tokens_per_s", w),
            tokens=count_field(d, "tokens", w),
            sent=count_field(d, "sent", w),
            received=count_field(d, "received", w),
            dense=count_field(d, "dense", w),
            rounds_ok=count_field(d, "rounds_ok", w),
            rounds_failed=count_field(d, "rounds_failed", w),
            reachability=reach,
            history=tuple(_history_entry(h, w) for h in history),
            recent=tuple(_recent_entry(r, w) for r in recent),
        )


def _history_entry(h: object, w: str) -> tuple[int, float, float | None]:
    if not (
        isinstance(h, list)
        and len(h) == 3
        and isinstance(h[0], int)
        and isinstance(h[1], (int, float))
        and (h[2] is None or isinstance(h[2], (int, float)))
    ):
        raise ProtocolError(f"{w}: history entry must be [round, loss, val_bpb|None]")
    return (
        round_field(h[0], w),
        finite_field(float(h[1]), "history", w),
        None if h[2] is None else finite_field(float(h[2]), "history", w),
    )


def _recent_entry(r: object, w: str) -> tuple[int, str, int, float, float]:
    if not (
        isinstance(r, list)
        and len(r) == 5
        and isinstance(r[0], int)
        and r[1] in ROUND_RESULTS
        and isinstance(r[2], int)
        and 0 <= r[2] <= MAX_ROSTER
        and isinstance(r[3], (int, float))
        and isinstance(r[4], (int, float))
    ):
        raise ProtocolError(f"{w}: recent entry must be [round, result, group size, seconds, time]")
    seconds, end = finite_field(float(r[3]), "recent", w), finite_field(float(r[4]), "recent", w)
    return (round_field(r[0], w), r[1], r[2], seconds, end)
