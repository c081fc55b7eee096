"""Parsing user-given peer addresses (multiaddrs) with errors that name the fix."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from node.errors import SwarmtrainError

EXAMPLE = "/ip4/203.0.113.5/tcp/31337/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


@dataclass(frozen=True)
class Address:
    text: str  # as the user gave it; hivemind vendors its own multiaddr class, so pass strings
    host: str
    port: int
    peer_id: str


def parse_peer_address(text: str) -> Address:
    """Parse '/ip4|ip6|dns4|dns6/<host>/tcp/<port>/p2p/<peer id>' or raise SwarmtrainError."""
    try:
        m = multiaddr.Multiaddr(text.strip())
    except (MultiaddrError, ValueError, TypeError) as e:
        raise SwarmtrainError(
            f"initial peer {text!r} is not a valid multiaddr: {e}", f"an initial peer looks like {EXAMPLE}"
        ) from None
    names = [p.name for p in m.protocols()]
    host_proto = next((n for n in names if n in ("ip4", "ip6", "dns", "dns4", "dns6")), None)
    missing = [
        part
        for part, ok in (
            ("an IP or DNS host", host_proto),
            ("/tcp/<port>", "tcp" in names),
            ("/p2p/<peer id>", "p2p" in names),
        )
        if not ok
    ]
    if missing:
        raise SwarmtrainError(
            f"initial peer {text!r} lacks {', '.join(missing)}",
            f"copy the full address the bootstrap peer printed, like {EXAMPLE}",
        )
    return Address(
        text=str(m),
        host=m.value_for_protocol(host_proto),
        port=int(m.value_for_protocol("tcp")),
        peer_id=m.value_for_protocol("p2p"),
    )


def parse_peer_addresses(texts: list[str]) -> list[Address]:
    return [parse_peer_address(t) for t in texts]


ANNOUNCE_EXAMPLE = "/ip4/203.0.113.7/tcp/31337"


def parse_announce(texts: list[str]) -> list[str]:
    """--announce addresses, '/ip4|ip6|dns4|dns6/<host>/tcp/<port>' with a port other than 0 and
    no /p2p part (libp2p adds ours), or SwarmtrainError naming the bad one."""
    fix = (
        f"announce the address peers can dial, like {ANNOUNCE_EXAMPLE}: the router's public IP and the TCP "
        "port it forwards to this node's --port"
    )
    out = []
    for text in texts:
        try:
            m = multiaddr.Multiaddr(text.strip())
        except (MultiaddrError, ValueError, TypeError) as e:
            raise SwarmtrainError(f"announce address {text!r} is not a valid multiaddr: {e}", fix) from None
        names = [p.name for p in m.protocols()]
        hosts = [n for n in names if n in ("ip4", "ip6", "dns", "dns4", "dns6")]
        if len(hosts) != 1 or "tcp" not in names or m.value_for_protocol("tcp") == "0" or "p2p" in names:
            raise SwarmtrainError(f"announce address {text!r} is not one host and a TCP port other than 0", fix)
        out.append(str(m))
    return out


def shareable(maddrs: list[str]) -> list[str]:
    """Addresses others can dial, non-loopback first; each ends in /p2p/<peer id>."""
    return sorted(set(maddrs), key=lambda m: (m.startswith("/ip4/127.") or m.startswith("/ip6/::1"), m))


def initial_peers(texts: list[str], from_file: str = "", timeout: float = 0.0) -> list[Address]:
    """The peers given as flags plus those in a bootstrap peer's ready file (its `bootstrap.json`).

    The file may not exist yet when a bootstrap peer starts beside us (docker compose): wait
    up to `timeout` seconds for it.
    """
    peers = parse_peer_addresses(texts)
    if from_file:
        peers += parse_peer_addresses(_read_ready_file(Path(from_file), timeout))
    return peers


def _read_ready_file(path: Path, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # note: polling a file another process writes; no event to await
    try:
        maddrs = json.loads(path.read_text())["maddrs"]
    except FileNotFoundError:
        raise SwarmtrainError(
            f"initial peers file {path} does not exist (waited {timeout:.0f} s)",
            "start `swarmtrain bootstrap` first; it writes bootstrap.json into its --data-dir",
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SwarmtrainError(
            f"initial peers file {path} is not a bootstrap.json ({type(e).__name__}: {e})",
            "point --initial-peers-file at the bootstrap.json a bootstrap peer wrote",
        ) from None
    if not isinstance(maddrs, list) or not all(isinstance(m, str) for m in maddrs):
        raise SwarmtrainError(
            f"initial peers file {path}: 'maddrs' must be a list of multiaddrs",
            "point --initial-peers-file at the bootstrap.json a bootstrap peer wrote",
        )
    return maddrs[:1]  # the first is the one others can dial (non-loopback first)
