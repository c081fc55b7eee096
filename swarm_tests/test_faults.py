"""Faults a real swarm must ride out: a peer frozen for a long while (SIGSTOP of its whole process
group, like a laptop lid closed or a VM paused) that comes back and catches up, and a state donor
that dies while a late joiner downloads the swarm's state from it."""

from __future__ import annotations

import os
import signal
import time

from swarm_tests.conftest import Bootstrap, Proc, rounds_of, start_bootstrap, wait_line

FREEZE_S = 40.0
# The first round after the freeze may take collect_timeout + leader_backoff (18 s) when the frozen
# peer drew rank 0, plus a fetch bound (~7 s) for the update it announced before it froze: 25 s,
# and then the others fetch and apply; 30 s left 5 s of margin on a busy 2-core machine (one
# failure in a CI run: the second peer's round came after it).


def signal_group(p: Proc, sig: int) -> None:
    try:
        os.killpg(p.popen.pid, sig)
    except ProcessLookupError:
        pass


def join(procs, tmp_path, boot: Bootstrap, name: str, *extra: str) -> Proc:
    return procs(
        "join",
        "--run-id",
        boot.run_id,
        "--initial-peers",
        boot.maddr,
        "--host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path / name),
        "--name",
        name,
        "--threads",
        "1",
        "--status-port",
        "-1",
        *extra,
    )


def test_a_peer_frozen_for_40s_catches_up_after_the_thaw(procs, tmp_path, small_run):
    """One of three volunteers is stopped (SIGSTOP of its process group) once all three train
    together; the two others must go on as two while it is frozen, and within a minute of SIGCONT
    it must be back in a three-peer round that started after the thaw, on the others' digest."""
    run = (
        small_run.read_text()
        .replace("inner_steps = 4", "inner_steps = 8")
        .replace("collect_timeout = 20.0", "collect_timeout = 8.0")
    )
    small_run.write_text(run + "min_peers = 2\n")
    boot = start_bootstrap(procs, tmp_path, small_run)
    peers = [join(procs, tmp_path, boot, f"v{i}") for i in range(3)]
    for p in peers:
        p.wait_for(r"event=round round=\d+ peers=3 ", 120)  # all three are in the rounds together
    frozen, others = peers[0], peers[1:]
    mark = [len(p.lines) for p in others]
    signal_group(frozen, signal.SIGSTOP)  # the node, its DHT child and its p2pd: all of it stops
    frozen_at = time.monotonic()
    try:
        # the two others notice the silence and go on training as two, round after round
        # (up to ~25 s when the frozen peer was to lead the round: see FREEZE_S)
        for p, since in zip(others, mark):
            wait_line(p, r"event=round round=\d+ peers=2 ", FREEZE_S - (time.monotonic() - frozen_at), since)
        time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))  # the freeze itself, not a wait for output
        during = [rounds_of(p, since) for p, since in zip(others, mark)]
        assert all(sum(n == 2 for n, _ in d.values()) >= 3 for d in during), during  # they kept training
        at_thaw = max(max(rounds_of(p)) for p in others)  # the swarm's round when the peer comes back
        thaw_mark = len(frozen.lines)
    finally:
        signal_group(frozen, signal.SIGCONT)  # also on failure: a stopped process ignores SIGTERM until continued

    # back in the rounds with the others, on a round that started after the thaw
    back = wait_line(
        frozen, r"event=round round=(\d+) peers=3 ", 60, thaw_mark, accept=lambda m: int(m[1]) > at_thaw
    )  # not a round left over from before the freeze
    r = int(back[1])
    for p in others:
        wait_line(p, rf"event=round round={r} ", 30)
    mine = rounds_of(frozen, thaw_mark)
    theirs = [rounds_of(p) for p in others]
    assert mine[r][1] == theirs[0][r][1] == theirs[1][r][1], (r, mine[r], theirs[0][r], theirs[1][r])
    for rr, (_, digest) in mine.items():  # every round it completed after the thaw is the swarm's round
        for t in theirs:
            if rr in t:
                assert t[rr][1] == digest, (rr, digest, t[rr])


def test_the_state_donor_dies_mid_download_and_the_joiner_takes_the_state_from_the_next(procs, tmp_path, small_run):
    """A joiner downloads the swarm's state from one donor; the donor is killed (SIGKILL of its
    process group) the moment the download starts. The download fails, and the joiner takes the
    same state from the next donor, then trains with the others on their digests.

    Every volunteer caps its upload at 1 Mbit/s (--upload-limit-mbit), so a state of ~1 MB
    takes seconds to send and the kill surely lands mid-download; min_peers = 3, so the two
    others hold the swarm's state still while the joiner arrives (they cannot finish a round
    without a third peer until 80% of round_timeout)."""
    small_run.write_text(small_run.read_text().replace("[swarm]\n", "[swarm]\nmin_peers = 3\n"))
    boot = start_bootstrap(procs, tmp_path, small_run)
    vols = [join(procs, tmp_path, boot, f"v{i}", "--upload-limit-mbit", "1") for i in range(3)]
    ids = {p.wait_for(r"event=joined peer=(\S+)", 120).group(1): p for p in vols}
    for p in vols:  # round 2: the heartbeats the joiner reads say state_round >= 1 (one says 0 for a while)
        wait_line(p, r"event=round round=(\d+) peers=3 ", 120, accept=lambda m: int(m[1]) >= 2)
    joiner = join(procs, tmp_path, boot, "late")
    me = joiner.wait_for(r"peer (\S+) \(late\) joined run", 90)[1]  # printed before it looks for the state
    fetch = joiner.wait_for(r"event=state_fetch donor=(\S+) round=(\d+)", 90)
    donor_id = next(pid for pid in ids if pid.startswith(fetch[1]))
    donor = ids.pop(donor_id)
    sending = donor.wait_for(rf"event=state_serving peer={me[:16]} bytes=(\d+)", 30)
    assert int(sending[1]) > 500_000  # seconds at 1 Mbit/s: the kill lands mid-download
    signal_group(donor, signal.SIGKILL)
    donor.wait(10)
    others = list(ids.values())

    joined = joiner.wait_for(r"event=joined peer=\S+ .*round=(\d+) state=(\S+)", 120)
    assert joined[2] == "from_peers", joiner.output[-3000:] + "\n=====\n".join(v.output[-6000:] for v in vols)
    held = int(joined[1])
    failed = joiner.wait_for(rf"event=state_fetch_failed donor={donor_id[:16]} reason=(.*)", 1)
    assert "dial" not in failed[1], failed[0]  # the stream was open: the donor died while serving it
    synced = joiner.wait_for(r"event=state_synced round=(\d+) donor=(\S+)", 1)
    assert synced[2] != donor_id[:16] and synced[2] in {p[:16] for p in ids}, synced[0]
    lines = joiner.lines
    assert lines.index(fetch.string) < lines.index(failed.string) < lines.index(synced.string), joiner.output[-3000:]

    # and it trains with the two others, on their state
    back = wait_line(joiner, r"event=round round=(\d+) peers=3 ", 60, accept=lambda m: int(m[1]) > held + 1)
    r = int(back[1])
    for p in others:
        wait_line(p, rf"event=round round={r} ", 30)
    mine, theirs = rounds_of(joiner), [rounds_of(p) for p in others]
    assert mine[r][1] == theirs[0][r][1] == theirs[1][r][1], (r, mine[r], theirs[0][r], theirs[1][r])
    for rr, (_, digest) in mine.items():
        assert all(t[rr][1] == digest for t in theirs if rr in t), rr
