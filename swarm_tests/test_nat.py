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


def run_behind_nat(tmp_path: Path, run: Path, *, public: int, homes: tuple[int, ...], rounds: int, wait: float):
    """A bootstrap (peer 0) and volunteers 1 .. public-1 on the public segment, volunteers `homes`
    each behind its own NAT: each trains `rounds` rounds. (exit codes, the `joined` line of each,
    the volunteers' Procs, their result JSONs, seconds from the bootstrap's start to the last leave)."""
    started: list[Proc] = []
    t0 = time.monotonic()
    with NatNetwork(public=public, homes=len(homes)) as net:
        start = starter(net, tmp_path, started, t0=t0)  # a home peer listens on (so announces) its private address
        try:
            boot = start(0, "bootstrap", "--run", str(run), "--startup-timeout", "60")
            _, maddr, run_id = bootstrap_ready(boot)
            join = ["join", "--run-id", run_id, "--initial-peers", maddr, "--threads", "1", "--status-port", "-1"]
            join += ["--max-rounds", str(rounds)]
            vols = {
                k: start(k, *join, "--name", f"v{k}", "--result-json", str(tmp_path / f"v{k}.json"))
                for k in (*range(1, public), *homes)
            }
            joined = {k: v.wait_for(r"event=joined .* maddr=(\S+) reach=(\w+)", 120) for k, v in vols.items()}
            codes = {k: v.wait(wait) for k, v in vols.items()}
        finally:
            kill_all(started)
    elapsed = time.monotonic() - t0
    assert codes == {k: 0 for k in vols}, {k: vols[k].output[-3000:] for k, c in codes.items() if c}
    for k in homes:
        assert joined[k].group(2) == "private" and joined[k].group(1).startswith(f"/ip4/{net.address(k)}/")
    results = {k: json.loads((tmp_path / f"v{k}.json").read_text()) for k in vols}
    return net, joined, vols, results, elapsed


def test_peers_behind_nat_contribute_to_every_round(tmp_path, small_run):
    if (why := missing_requirements()) is not None:
        pytest.skip(why)
    small_run.write_text(
        small_run.read_text()
        .replace("[swarm]\n", "[swarm]\n" + RUN_SWARM)
        .replace("collect_timeout = 20.0\n", "")
        .replace("round_timeout = 60.0\n", "")
    )
    net, joined, vols, results, elapsed = run_behind_nat(
        tmp_path, small_run, public=2, homes=HOMES, rounds=ROUNDS, wait=150
    )

    # what each announced, and what it was told about it
    assert joined[1].group(2) == "public" and f"/ip4/{net.address(1)}/" in joined[1].group(1)
    for k in HOMES:
        assert "not reachable from outside (behind NAT" in vols[k].output and "--announce" in vols[k].output

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


V3_ROUNDS = 8
V3_HOMES = (3, 4)  # volunteers 1 and 2 are public; 3 and 4 each behind its own NAT


def test_v3_rounds_with_peers_behind_nat(tmp_path, small_run):
    """v3 (docs/protocol.md "v3") with half its members behind NAT: owners, part owners and the
    leader are the two reachable volunteers (the call's `reach`), and the NAT'd ones only dial out
    (chunks to owners, receipts and verdicts to the leader, final parts from their owners), so
    nobody ever dials them. Every round of all four is a reduce-scatter (scatter_min_peers = 4)
    but the young run's first ones, which the organizer leads as verify-all (it trains nothing).
    Each member counts its v3 messages in its result JSON (`scatter_bytes_*`)."""
    if (why := missing_requirements()) is not None:
        pytest.skip(why)
    small_run.write_text(
        small_run.read_text()
        .replace("[strategy]\n", '[strategy]\nname = "diloco"\nwire_dtype = "int8"\n')
        .replace("[swarm]\n", "[swarm]\nscatter_min_peers = 4\n" + RUN_SWARM.replace("min_peers = 3", "min_peers = 4"))
        .replace("collect_timeout = 20.0\n", "")
        .replace("round_timeout = 60.0\n", "")
    )
    net, joined, vols, results, elapsed = run_behind_nat(
        tmp_path, small_run, public=3, homes=V3_HOMES, rounds=V3_ROUNDS, wait=150
    )
    assert {k: joined[k].group(2) for k in (1, 2)} == {1: "public", 2: "public"}
    assert {k: r["rounds_completed"] for k, r in results.items()} == {k: V3_ROUNDS for k in vols}
    assert len({r["digest"] for r in results.values()}) == 1, {k: r["digest"] for k, r in results.items()}
    ledger = Path(results[1]["ledger"])
    accepted, problems = verify([line.envelope for line in read_file(ledger)])
    assert not problems, problems
    volunteers = {r["peer"] for r in results.values()}
    v3 = [a.roster.round for a in accepted if a.roster.finals]
    # the young run's rounds (bootstrap_peers 3: two here) are the organizer's, verify-all; then all v3
    assert all(a.roster.leader not in volunteers for a in accepted if not a.roster.finals), accepted
    assert len(v3) >= V3_ROUNDS - 3, v3
    for k, r in results.items():
        assert r["scatter_bytes_sent"] > 0 and r["scatter_bytes_received"] > 0, (k, r)
    shares = {k: contributions(ledger, results[k]["peer"]) for k in V3_HOMES}
    in_v3 = {
        k: sum(results[k]["peer"] in {x.peer for x in a.announcements} for a in accepted if a.roster.finals)
        for k in V3_HOMES
    }
    assert all(n >= SHARE * len(v3) for n in in_v3.values()), (in_v3, v3)
    update = results[1]["update_bytes_per_peer"]
    per = update * len(v3)
    print(
        "\nv3 behind NAT: NAT'd peers' updates in the rounds from their first: "
        + ", ".join(f"peer {k}: {n}/{span} ({n / span:.0%})" for k, (n, span) in shares.items())
        + f"; in the v3 rounds {v3}: {in_v3}; per peer per v3 round (x one update of {update} bytes) up/down: "
        + ", ".join(
            f"v{k} {r['scatter_bytes_sent'] / per:.2f}/{r['scatter_bytes_received'] / per:.2f}"
            for k, r in results.items()
        )
        + f"; {V3_ROUNDS} rounds, {elapsed:.1f} s from the bootstrap's start to the last leave"
    )
    for k, (n, span) in shares.items():
        assert n >= SHARE * span, (k, n, span, vols[k].output[-3000:])
