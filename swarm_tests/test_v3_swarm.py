"""Round protocol v3 in real processes: a bootstrap peer and 4 volunteers on loopback, diloco on
an int8 wire with `[swarm] scatter_min_peers = 4`, so every round of all four is a reduce-scatter
(the leader's call, every member's part over the exchange, the roster after). All end bit-identical,
and each moved about verify-all's bytes: at N = 4 both move about N - 1 = 3 updates each way a round
(v3's ~3 is flat in N; its win starts above: docs/benchmarks.md), so the bound has room for records.
The young run's first rounds (bootstrap_peers 3: two here) are the organizer's witness's, which
trains nothing and leads them verify-all; every round after is v3, which the witness follows
without the state (it fetches none)."""

from __future__ import annotations

import json
from pathlib import Path

from node.round.ledger import read_file, verify
from swarm_tests.conftest import SMALL_RUN, start_bootstrap, volunteer

PEERS, ROUNDS, YOUNG = 4, 5, 2


def test_v3_rounds_of_four_volunteers_end_bit_identical_with_fewer_bytes(procs, tmp_path):
    run = tmp_path / "run.toml"
    text = SMALL_RUN.replace("[strategy]\n", '[strategy]\nname = "diloco"\nwire_dtype = "int8"\n')
    run.write_text(text.replace("[swarm]\n", f"[swarm]\nscatter_min_peers = {PEERS}\nmin_peers = {PEERS}\n"))
    boot = start_bootstrap(procs, tmp_path, run)
    peers = [volunteer(procs, boot, tmp_path, f"v{i}", ROUNDS) for i in range(PEERS)]
    for p in peers:
        assert p.wait(240) == 0, p.output[-3000:]
    results = [json.loads((tmp_path / f"v{i}.json").read_text()) for i in range(PEERS)]
    assert all(r["rounds_completed"] == ROUNDS for r in results), [r["rounds_completed"] for r in results]
    assert len({r["digest"] for r in results}) == 1, [r["digest"] for r in results]
    accepted, problems = verify([line.envelope for line in read_file(Path(results[0]["ledger"]))])
    assert not problems, problems
    v3 = [a.roster.round for a in accepted if a.roster.finals]
    assert v3 == list(range(YOUNG + 1, ROUNDS + 1)), [(a.roster.round, a.roster.leader[:8]) for a in accepted]
    # grown, the witness follows the chain without the state (node/peer/witness.py follow_chain):
    # it cannot apply a v3 round, and before, it downloaded the whole state after each
    assert "event=state_fetch" not in boot.proc.output, boot.proc.output[-3000:]
    update = results[0]["update_bytes_per_peer"]
    for r in results:
        got = r["scatter_bytes_received"] + r["scatter_bytes_sent"]
        v2 = 2 * (PEERS - 1) * update * len(v3)  # verify-all: N - 1 updates down, as many up on average
        print(f"{r['name']}: v3 {got} bytes up+down in {len(v3)} v3 rounds, verify-all {v2}, update {update}")
        assert 0 < got < 1.15 * v2, (got, v2)  # measured: 0.97 x (3 rounds, 2.11 MB against 2.18 MB)
