"""A v3 round's call: 'round `round` of run `run` is a reduce-scatter of exactly these signed
announcements, on the grid of `beacon` and `attempt`, owned by the `reach` members; run it with
me as leader' (docs/protocol.md "v3").

Signed by the round's leader and stored under `round:<r>:call` (protocol/keys.py call_key) before
any member sends a chunk, because the roster (with `result`, the state after the round) can only
be signed once the aggregate is applied. Every peer checks a call as it checks a roster (the
leader's slot, the beacon, its reveal, the listed announcements: node/round/checks.py); it has no
result. The roster that follows lists the same entries, beacon and attempt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from protocol.errors import ProtocolError
from protocol.fields import (
    chained_header,
    field,
    peer_list,
    sha256_field,
)
from protocol.records import MAX_ATTEMPT, MAX_ROSTER, MAX_SKIP
from protocol.signing import MAX_SIG

KIND = "call"


@dataclass(frozen=True, kw_only=True)
class Call:
    """A roster's first half: its members and grid, before anything is reduced. Its fields mean
    what the roster's of the same names mean (protocol/records.py Roster)."""

    run: str
    round: int
    leader: str
    prev: str
    base: str
    time: float
    entries: tuple[dict, ...]
    """The members' signed announcements, sorted by peer id (as a roster's)."""
    reveal: bytes
    beacon: str
    attempt: int
    reach: tuple[str, ...]
    """The members others can dial (may own chunks: node/scatter/grid.py place), sorted; fixed
    here so every member places the same grid, whatever heartbeats it reads."""
    skip: tuple[str, ...] = ()
    unserved: tuple[str, ...] = ()  # always empty: a call fetches no update (the roster's marks.check reads it)

    def to_wire(self) -> dict:
        d = {**asdict(self), "entries": list(self.entries), "reach": list(self.reach), "skip": list(self.skip)}
        del d["unserved"]
        return d

    @classmethod
    def from_wire(cls, d: object, *, max_bytes: int = 0) -> Call:
        w = "call"
        raw = field(d, "entries", list, where=w)
        if not 0 < len(raw) <= MAX_ROSTER or not all(isinstance(e, dict) for e in raw):
            raise ProtocolError(f"{w}: entries must be 1..{MAX_ROSTER} signed announcements")
        reveal, attempt = field(d, "reveal", bytes, where=w), field(d, "attempt", int, where=w)
        if len(reveal) > MAX_SIG or not 0 <= attempt <= MAX_ATTEMPT:
            raise ProtocolError(f"{w}: a reveal of {len(reveal)} bytes or attempt {attempt} is out of range")
        reach = peer_list(d, "reach", MAX_ROSTER, w)
        if not reach or list(reach) != sorted(reach):
            raise ProtocolError(f"{w}: reach must name at least one member, sorted")
        return cls(
            **chained_header(d, w),
            entries=tuple(raw),
            reveal=reveal,
            beacon=sha256_field(field(d, "beacon", str, where=w), w),
            attempt=attempt,
            reach=reach,
            skip=peer_list(d, "skip", MAX_SKIP, w),
        )
