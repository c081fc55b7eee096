"""Field checks for records read off the wire (protocol/records.py, protocol/kinds/): each
returns the value or raises ProtocolError naming where and what."""

from __future__ import annotations

import re

from protocol.errors import ProtocolError

# \Z, not $: `$` also matches before a final newline, a second spelling of one value (protocol 24)
PEER_ID_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{20,128}\Z")  # base58
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
MAX_TEXT = 256


def field(d: object, name: str, kind: type | tuple, *, where: str):
    if not isinstance(d, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(d).__name__}")
    if name not in d:
        raise ProtocolError(f"{where}: missing field {name!r}")
    value = d[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(f"{where}: field {name!r} has type {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ProtocolError(f"{where}: field {name!r} is longer than {MAX_TEXT} characters")
    return value


def optional_field(d: object, name: str, kind: type, default: object, *, where: str):
    """A field a map may lack (a roster of an older peer): then `default`."""
    return field(d, name, kind, where=where) if isinstance(d, dict) and name in d else default


def peer_id_field(value: str, where: str) -> str:
    if not PEER_ID_RE.match(value):
        raise ProtocolError(f"{where}: {value[:40]!r} is not a base58 peer id")
    return value


def sha256_field(value: str, where: str) -> str:
    if not SHA256_RE.match(value):
        raise ProtocolError(f"{where}: {value[:70]!r} is not a lowercase SHA-256 hex digest")
    return value


def round_field(value: int, where: str) -> int:
    if value < 0 or value > 2**40:
        raise ProtocolError(f"{where}: round {value} out of range")
    return value


def run_field(value: str, where: str) -> str:
    if 0 < len(value) <= 128:
        return value
    raise ProtocolError(f"{where}: bad run id")


def optional_float(d: object, name: str, where: str) -> float | None:
    value = d.get(name) if isinstance(d, dict) else None
    if value is None:
        return None
    return finite_field(field(d, name, float, where=where), name, where)


def finite_field(value: float, name: str, where: str) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise ProtocolError(f"{where}: field {name!r} is not finite")
    return value


def seconds_field(value: object, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise ProtocolError(f"{where}: field {name!r} must be seconds in [0, 3600)")
    return float(value)


def count_field(d: object, name: str, where: str) -> int:
    value = field(d, name, int, where=where)
    if not 0 <= value < 2**62:
        raise ProtocolError(f"{where}: field {name!r} out of range")
    return value


def peer_list(d: object, name: str, most: int, where: str) -> tuple[str, ...]:
    """An optional list of at most `most` distinct peer ids (absent: empty)."""
    value = optional_field(d, name, list, [], where=where)
    if len(value) > most or not all(isinstance(p, str) for p in value) or len(set(value)) != len(value):
        raise ProtocolError(f"{where}: {name} must be at most {most} distinct peer ids")
    return tuple(peer_id_field(p, where) for p in value)


def envelope_list(d: object, name: str, kind: str, most: int, where: str) -> tuple[dict, ...]:
    """An optional list of at most `most` maps shaped as signed `kind` envelopes (body, key and sig
    bytes): their signatures and bodies are checked where they are opened (protocol/signed.py)."""
    value = optional_field(d, name, list, [], where=where)
    if len(value) > most or not all(
        isinstance(e, dict) and e.get("kind") == kind and all(type(e.get(k)) is bytes for k in ("body", "key", "sig"))
        for e in value
    ):
        raise ProtocolError(f"{where}: {name} must be at most {most} signed {kind} envelopes")
    return tuple(value)


def led_header(d: object, where: str) -> dict:
    """The fields of every record a round's leader signs about it (run, round, leader, base, time), checked."""
    return {
        "run": run_field(field(d, "run", str, where=where), where),
        "round": round_field(field(d, "round", int, where=where), where),
        "leader": peer_id_field(field(d, "leader", str, where=where), where),
        "base": sha256_field(field(d, "base", str, where=where), where),
        "time": finite_field(field(d, "time", float, where=where), "time", where),
    }


def chained_header(d: object, where: str) -> dict:
    """The fields a roster and a v3 call share: led_header's and `prev`, checked."""
    return {**led_header(d, where), "prev": sha256_field(field(d, "prev", str, where=where), where)}
