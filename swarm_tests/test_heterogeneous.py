"""A 4x slower peer beside two fast ones, with a compute window: nobody waits for it, it still
contributes (fewer tokens, weighted as such), and every peer ends each round on the same state."""

import re

from swarm_tests.conftest import join_args, start_bootstrap

ROUNDS = 8


def rounds_of(output: str) -> dict[int, tuple[str, int, int]]:
    """round -> (digest, peers in the roster, inner steps this peer ran)"""
    return {
        int(m[1]): (m[3], int(m[2]), int(m[4]))
        for m in re.finditer(r"event=round round=(\d+) peers=(\d+) .*digest=(\w+) .*steps=(\d+)", output)
    }


def test_a_slow_peer_adds_fewer_tokens_and_nobody_waits_for_it(procs, tmp_path, small_run):
    small_run.write_text(
        small_run.read_text()
        .replace("inner_steps = 4", "inner_steps = 8")
        .replace("round_seconds = 0.0\n", "round_seconds = 1.0\nmax_inner_steps = 400\nmin_peers = 3\n")
    )
    boot = start_bootstrap(procs, tmp_path, small_run)
    peers = [
        procs(
            *join_args(
                boot, str(tmp_path / f"v{i}"), "--max-rounds", str(ROUNDS), *(["--slowdown", "4"] if i == 2 else [])
            )
        )
        for i in range(3)
    ]
    for p in peers:
        assert p.wait(300) == 0, p.output[-3000:]
    fast, slow = [rounds_of(p.output) for p in peers[:2]], rounds_of(peers[2].output)
    shared = set(fast[0]) & set(fast[1]) & set(slow)
    assert len(shared) >= 3, (fast, slow)
    for r in shared:  # one model: the same digest on every peer, whatever its speed
        assert fast[0][r][0] == fast[1][r][0] == slow[r][0], r
    together = [r for r in shared if slow[r][1] == 3]
    assert together, "the slow peer never made it into a roster"
    fast_steps = sorted(s for f in fast for _, _, s in f.values())
    slow_steps = sorted(s for _, _, s in slow.values())
    assert slow_steps[len(slow_steps) // 2] < fast_steps[len(fast_steps) // 2], (slow_steps, fast_steps)
