"""The Ray launcher's pieces that need no Ray: per-actor command lines and a clean stop."""

import sys

from node.commands.ray_launch import RayOptions, VolunteerActor, volunteer_argv
from node.config import NodeConfig


def test_each_actor_is_a_peer_of_its_own():
    cfg = NodeConfig(initial_peers=["/ip4/1.2.3.4/tcp/5/p2p/QmX"], data_dir="d", port=4000, max_rounds=3, eval=True)
    argvs = [volunteer_argv(cfg, i, RayOptions(volunteers=2), "cpu") for i in range(2)]
    for i, argv in enumerate(argvs):
        assert argv[:4] == [sys.executable, "-m", "node.cli", "join"]
        flags = " ".join(argv[4:])
        assert f"--data-dir d/ray-{i}" in flags and f"--name ray-{i}" in flags and f"--port {4000 + i}" in flags
        assert "--initial-peers /ip4/1.2.3.4/tcp/5/p2p/QmX" in flags and "--max-rounds 3" in flags
        assert "--eval" in argv and "--device cpu" in flags and "--identity" not in flags
    assert argvs[0] != argvs[1]


def test_stop_asks_the_peer_to_leave_and_returns_its_code(tmp_path):
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('leaving', flush=True), sys.exit(130)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    actor = VolunteerActor("ray-0", [sys.executable, "-c", script])
    actor.start()
    import time

    deadline = time.monotonic() + 20
    lines = []
    while "ready" not in lines and time.monotonic() < deadline:
        lines += actor.drain()[0]
        time.sleep(0.05)
    assert actor.stop(timeout=20) == 130
    time.sleep(0.2)
    lines += actor.drain()[0]
    assert "leaving" in lines
