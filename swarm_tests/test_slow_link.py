"""A swarm over consumer links: the bootstrap and two volunteers, each in its own network
namespace behind up=20mbit,down=100mbit,rtt=50ms,loss=1% (bench/linkemu.py), still train
rounds to equal digests. Skipped with the reason where namespaces or TUN devices do not work."""

import re

import pytest

from bench.linkemu import EmulatedNetwork, LinkSpec, missing_requirements
from swarm_tests.conftest import Proc, bootstrap_ready, kill_all, starter

LINK = "up=20mbit,down=100mbit,rtt=50ms,loss=1%"
ROUNDS = 3


def test_volunteers_on_consumer_links_reach_equal_digests(tmp_path, small_run):
    if (why := missing_requirements()) is not None:
        pytest.skip(why)
    small_run.write_text(small_run.read_text() + "min_peers = 2\n")  # both volunteers train every round
    link = LinkSpec.parse(LINK)
    started: list[Proc] = []
    with EmulatedNetwork([link] * 3) as net:
        start = starter(net, tmp_path, started)

        try:
            boot = start(0, "bootstrap", "--run", str(small_run), "--startup-timeout", "60")
            _, maddr, run_id = bootstrap_ready(boot)
            assert f"/ip4/{net.address(0)}/" in maddr, maddr  # announced on its namespace address
            volunteers = [
                start(k, "join", "--run-id", run_id, "--initial-peers", maddr, "--threads", "1") for k in (1, 2)
            ]
            rounds = [_rounds(v, ROUNDS) for v in volunteers]
            stats = net.stats()
        finally:
            kill_all(started)
    print(f"\nlink {LINK}: rounds (round, train_s, exchange_s, digest) {rounds}\nlink stats {stats}")
    digests = [{r[0]: r[3] for r in v} for v in rounds]
    common = sorted(set(digests[0]) & set(digests[1]))
    assert len(common) >= ROUNDS, rounds
    assert all(digests[0][r] == digests[1][r] for r in common), rounds
    assert sum(s["up"]["lost"] + s["down"]["lost"] for s in stats) > 0  # the links did lose packets


def _rounds(p: Proc, n: int) -> list[tuple[int, float, float, str]]:
    """(round, train_s, exchange_s, digest) of a volunteer's rounds, once it has done n of them."""
    fields = r"event=round round=(\d+) .*train_s=(\S+) exchange_s=(\S+) .*digest=(\S+)"
    p.wait_for(fields.replace(r"(\d+)", str(n), 1), 240)
    found = [re.search(fields, line) for line in p.lines]
    return [(int(m[1]), float(m[2]), float(m[3]), m[4]) for m in found if m]
