"""The real network: hivemind's DHT, libp2p update streams, the RoundNet the round protocol runs over,
DHT record validators, peer addresses, identity keys and signed telemetry."""

import os

# hivemind's futures (hivemind/utils/mpfuture.py) keep their state in a byte of torch shared
# memory, and it sets torch's sharing strategy from this variable when first imported: its
# default, "file_system", starts a torch_shm_manager process per node (~100 MB RSS, libtorch
# loaded). "file_descriptor" (torch's own default on Linux) passes the memory to the DHT process
# as a file descriptor and needs no manager. Before any hivemind import: every one is in node.p2p.
os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

from node.p2p.process import lean_hivemind  # noqa: E402  (after the variable above)

lean_hivemind()  # before any hivemind import: every one of ours is in node.p2p
