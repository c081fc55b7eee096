"""The in-memory DHT and transport the round protocol's tests run on. They live in
bench/fakenet.py, so that `bench byzantine --sybil` (which may not import tests/) runs the same
fake network; this module keeps the names every test imports."""

from bench.fakenet import (
    BusNet,
    FakeClock,
    FakeDHT,
    FakeNet,
    ScatterBus,
    digest_of,
    in_step,
    new_key,
    sealed_roster,
    ungated,
)

__all__ = [
    "BusNet",
    "FakeClock",
    "FakeDHT",
    "FakeNet",
    "ScatterBus",
    "digest_of",
    "in_step",
    "new_key",
    "sealed_roster",
    "ungated",
]
