"""The real network: hivemind's DHT, libp2p update streams, the RoundNet the round protocol runs over,
DHT record validators, peer addresses, identity keys and signed telemetry."""

import os

# hivemind/utils/mpfuture.py (imported with any hivemind.utils) sets torch's sharing strategy
# from this variable: its default, "file_system", starts a torch_shm_manager process per node
# (~100 MB RSS, libtorch loaded) once shared memory is used. "file_descriptor" (torch's own default
# on Linux) needs no manager. Our DHT runs in-process and uses no MPFuture, but code that forks a
# hivemind.DHT (swarm_tests' attackers, hivemind's averagers) does. Before any hivemind import:
# every one is in node.p2p.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

from node.p2p.process import lean_hivemind  # noqa: E402  (after the variable above)

lean_hivemind()  # before any hivemind import: every one of ours is in node.p2p
