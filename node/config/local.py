"""How one node runs (NodeConfig): what is this machine's own, not the run's. Its sources, in
order, are defaults < --config file < SWARMTRAIN_* environment < flags (node/config/load.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

LogFormat = Literal["auto", "text", "json"]
EventLoop = Literal["uvloop", "asyncio"]


@dataclass(kw_only=True, frozen=True)
class NodeConfig:
    initial_peers: list[str] = field(default_factory=list)
    """Multiaddrs of peers already in the swarm, e.g. /ip4/203.0.113.5/tcp/31337/p2p/12D3KooW..."""
    initial_peers_file: str = ""
    """Also read initial peers from this bootstrap.json (written by `swarmtrain bootstrap` into its data dir)."""
    new_swarm: bool = False
    """Start a new swarm instead of joining one (no initial peers needed)."""
    host: str = "0.0.0.0"
    """IP address to listen on (127.0.0.1 keeps the node on this machine)."""
    port: int = 0
    """TCP port to listen on; 0 picks a free one."""
    announce: list[str] = field(default_factory=list)
    """Addresses other peers dial this node at, instead of the ones it listens on, e.g.
    /ip4/203.0.113.7/tcp/31337 behind a router that forwards TCP port 31337 to this machine's
    --port 31337 (`swarmtrain doctor` says whether this node is reachable without it)."""
    data_dir: str = "swarmtrain-data"
    """Directory for this node's identity key, checkpoint and logs."""
    identity: str = ""
    """Private key file that fixes the peer id; default <data_dir>/identity.key (created if missing)."""
    name: str = ""
    """Human-readable node name shown to others; default derived from the peer id."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda[:N]' or 'mps' (Apple GPUs)."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""
    slowdown: float = 1.0
    """Run this many times slower than the machine can (sleeping after each inner step): for tests
    and benchmarks that need a slow peer beside fast ones. 1: full speed."""
    upload_limit_mbit: float = 0.0
    """Cap on what this node uploads (updates, states), in Mbit/s, for a volunteer who shares a
    home link; 0: no cap."""
    max_inbound_streams: int = 64
    """Requests this node serves at once, from all peers together, whatever the number of their
    identities (a quarter of them kept for the round's members)."""
    max_state_uploads: int = 2
    """States this node sends at once, to anyone: each holds about two copies of the state until sent."""
    max_fetch_mb_in_flight: float = 512.0
    """MiB of answers this node reads from peers at once, before they are checked (one larger answer
    is read alone)."""
    event_loop: EventLoop = "uvloop"
    """The exchange's and the DHT thread's asyncio loops: 'uvloop' (faster; falls back to 'asyncio'
    where uvloop is missing) or 'asyncio'. `swarmtrain bench exchange` compares them."""
    startup_timeout: float = 60.0
    """Seconds to wait for the libp2p daemon to start and for initial peers to answer."""
    run_id: str = ""
    """The run to join, as the organizer's join line names it. Required: anyone may store a run in
    the DHT. It may be left empty only with --new-swarm, or when the --initial-peers-file
    bootstrap.json names the run."""
    max_rounds: int = 0
    """Leave after the swarm's state reaches this round; 0 trains until stopped."""
    eval: bool = False
    """Measure held-out bits per byte after every round (costs one forward pass over the val set)."""
    result_json: str = ""
    """Write a JSON summary of this node (digest, bytes, rounds) here on exit."""
    log_format: LogFormat = "auto"
    """'auto' (a live panel on a terminal, else key=value lines), 'text' (key=value lines) or 'json'
    (one object per line)."""
    status_host: str = "127.0.0.1"
    """Address of the status page, /api/status and /metrics (0.0.0.0 lets Prometheus elsewhere scrape)."""
    status_port: int = 0
    """Port of the status page; 0 picks a free one (printed at start), -1 turns the page off."""
    pretrained_dir: str = ""
    """Where this node keeps its copy of the run's pretrained weights; default the run's [model] pretrained path."""
    tokenizer_dir: str = ""
    """Where this node keeps its copy of the run's tokenizer; default the run's [model] tokenizer path."""
    data_files: str = ""
    """Glob of this node's copy of the run's own data files; default the run's [data] files glob."""
