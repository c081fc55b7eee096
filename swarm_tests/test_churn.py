"""A peer dies mid-run (kill -9 of its whole process group, like a machine losing power):
the swarm notices through its expired heartbeat, a new leader takes over, and the survivors
keep training to identical parameters."""

import json
import os
import signal

from swarm_tests.conftest import start_bootstrap, volunteer

ROUNDS = 25  # rounds of the small run take well under a second


def test_leader_killed_mid_round_survivors_finish_identical(procs, tmp_path, small_run):
    # no one trains alone at the start; the dead leader's round is taken over in seconds. The
    # organizer leads the first rounds (all three start together in them; without a young run one
    # may split off at the genesis), and bootstrap_peers = 2 lets the two survivors stay grown and
    # lead (at the default 3 the organizer would lead every round after the kill)
    run = small_run.read_text().replace("collect_timeout = 20.0", "collect_timeout = 8.0")
    small_run.write_text(run + "min_peers = 2\nleader_backoff = 4.0\nbootstrap_peers = 2\n")
    boot = start_bootstrap(procs, tmp_path, small_run)
    started = [volunteer(procs, boot, tmp_path, f"v{i}", ROUNDS) for i in range(3)]
    nodes = {p.wait_for(r"event=joined peer=(\S+)", 120).group(1): (i, p) for i, p in enumerate(started)}
    for _, p in nodes.values():
        p.wait_for(r"event=round round=\d+ peers=3 ", 120)  # all three are in the rounds now
    leader = min(nodes)  # leaders are ranked by a hash per round: every peer leads some of them
    victim_index, victim = nodes.pop(leader)
    os.killpg(victim.popen.pid, signal.SIGKILL)
    victim.wait(10)

    for _, p in nodes.values():
        assert p.wait(240) == 0, p.output[-3000:]
    results = [json.loads((tmp_path / f"v{i}.json").read_text()) for i, _ in nodes.values()]
    assert [r["rounds_completed"] for r in results] == [ROUNDS, ROUNDS]
    assert results[0]["digest"] == results[1]["digest"]
    for _, p in nodes.values():
        assert f"event=round round={ROUNDS} peers=2 " in p.output  # the dead peer is out of the rounds
