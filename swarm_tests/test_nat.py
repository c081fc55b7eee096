"""Peers behind NAT take full part (issue 17, item 4).

A bootstrap (peer 0) and one volunteer (peer 1) on the public segment; two volunteers (peers 2
and 3) each behind its own masquerading NAT router, in its own home subnet (bench/natemu.py):
they dial out, and nothing dials in to them. They listen on their private addresses with port 0,
and that is all they announce, so no peer holds an address it could dial them at: the other
peers reach them only over connections they opened themselves (libp2p reuses those).

Asserted: each volunteer says whether it is reachable (the public one 'public', the NAT'd ones
'private', node/p2p/reach.py); all three apply every round and end on one digest; and each
NAT'd peer's update is in at least 95% of the rounds of the ledger from its first one on.

Every volunteer is waited for at the start ([swarm] min_peers 3): with the default of 1, a
volunteer that starts first trains its 10 rounds alone before the others arrive. A NAT'd peer
that led a round could not fetch the other NAT'd peer's update (no connection between them,
"routing: not found"); peers that cannot be dialled no longer lead where an eligible one can
(node/round/election.py: candidates), so every roster here is the reachable volunteer's.

Skipped with the reason where namespaces or nft do not work.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from bench.natemu import NatNetwork, check, missing_requirements
from node.round.ledger import read_file, verify
from swarm_tests.conftest import Proc, bootstrap_ready, kill_all, starter

ROUNDS = 10
SHARE = 0.95  # of the rounds from its first on, each NAT'd peer's update is in at least this many
VOLS, HOMES = (1, 2, 3), (2, 3)  # the volunteers, and those of them behind NAT
# Short rounds (the small model's 4 inner steps take well under a second) and short turns, so that
# a round a NAT'd peer leads costs seconds: the next-ranked leader's turn comes after
# collect_timeout + leader_backoff.
RUN_SWARM = """\
min_peers = 3
collect_timeout = 2.0
round_timeout = 15.0
leader_backoff = 1.0
"""


def test_the_nat_lets_home_peers_dial_out_and_nobody_dial_in():
    if (why := missing_requirements()) is not None:
        pytest.skip(why)
    with NatNetwork(public=1, homes=2) as net:
        assert check(net) == []


def contributions(ledger: Path, peer: str) -> tuple[int, int]:
    """(rounds whose roster holds the peer's update, rounds from its first such one to the ledger's last)."""
    accepted, problems = verify([line.envelope for line in read_file(ledger)])
    assert not problems, problems
    rounds = {a.roster.round: {ann.peer for ann in a.announcements} for a in accepted}
    mine = sorted(r for r, peers in rounds.items() if peer in peers)
    assert mine, f"{peer} is in no roster of {ledger}"
    return len(mine), len([r for r in rounds if r >= mine[0]])


def test_peers_behind_nat_contribute_to_every_round(tmp_path, small_run):
    if (why := missing_requirements()) is not None:
        pytest.skip(why)
    small_run.write_text(
        small_run.read_text()
        .replace("[swarm]\n", "[swarm]\n" + RUN_SWARM)
        .replace("collect_timeout = 20.0\n", "")
        .replace("round_timeout = 60.0\n", "")
    )
    started: list[Proc] = []
    t0 = time.monotonic()
    with NatNetwork(public=2, homes=2) as net:
        start = starter(net, tmp_path, started, t0=t0)  # a home peer listens on (so announces) its private address

        try:
            boot = start(0, "bootstrap", "--run", str(small_run), "--startup-timeout", "60")
            _, maddr, run_id = bootstrap_ready(boot)
            join = ["join", "--run-id", run_id, "--initial-peers", maddr, "--threads", "1", "--status-port", "-1"]
            join += ["--max-rounds", str(ROUNDS)]
            vols = {k: start(k, *join, "--name", f"v{k}", "--result-json", str(tmp_path / f"v{k}.json")) for k in VOLS}
            joined = {k: v.wait_for(r"event=joined .* maddr=(\S+) reach=(\w+)", 120) for k, v in vols.items()}
            codes = {k: v.wait(150) for k, v in vols.items()}
        finally:
            kill_all(started)
    elapsed = time.monotonic() - t0
    assert codes == {k: 0 for k in vols}, {k: vols[k].output[-3000:] for k, c in codes.items() if c}

    # what each announced, and what it was told about it
    assert joined[1].group(2) == "public" and f"/ip4/{net.address(1)}/" in joined[1].group(1)
    for k in HOMES:
        assert joined[k].group(2) == "private" and joined[k].group(1).startswith(f"/ip4/{net.address(k)}/")
        assert "not reachable from outside (behind NAT" in vols[k].output and "--announce" in vols[k].output

    results = {k: json.loads((tmp_path / f"v{k}.json").read_text()) for k in vols}
    assert {k: r["rounds_completed"] for k, r in results.items()} == {k: ROUNDS for k in vols}
    assert len({r["digest"] for r in results.values()}) == 1, {k: r["digest"] for k, r in results.items()}
    ledger = Path(results[1]["ledger"])  # the public volunteer's: it applied every round
    shares = {k: contributions(ledger, results[k]["peer"]) for k in HOMES}
    cant = {k: len(re.findall(r"leaving out .*routing: not found", vols[k].output)) for k in HOMES}
    print(
        "\nNAT'd peers' updates in the rounds from their first: "
        + ", ".join(f"peer {k}: {n}/{span} ({n / span:.0%})" for k, (n, span) in shares.items())
        + f"; {ROUNDS} rounds, {elapsed:.1f} s from the bootstrap's start to the last leave"
        + f"; fetches a NAT'd leader could not make (per peer) {cant}"
    )
    for k, (n, span) in shares.items():
        assert n >= SHARE * span, (k, n, span, vols[k].output[-3000:])
