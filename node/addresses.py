"""Parsing user-given peer addresses (multiaddrs) with errors that name the fix."""
from __future__ import annotations

from dataclasses import dataclass

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
        raise SwarmtrainError(f"initial peer {text!r} is not a valid multiaddr: {e}",
                              f"an initial peer looks like {EXAMPLE}") from None
    names = [p.name for p in m.protocols()]
    host_proto = next((n for n in names if n in ("ip4", "ip6", "dns", "dns4", "dns6")), None)
    missing = [part for part, ok in (("an IP or DNS host", host_proto), ("/tcp/<port>", "tcp" in names),
                                     ("/p2p/<peer id>", "p2p" in names)) if not ok]
    if missing:
        raise SwarmtrainError(f"initial peer {text!r} lacks {', '.join(missing)}",
                              f"copy the full address the bootstrap peer printed, like {EXAMPLE}")
    return Address(text=str(m), host=m.value_for_protocol(host_proto), port=int(m.value_for_protocol("tcp")),
                   peer_id=m.value_for_protocol("p2p"))


def parse_peer_addresses(texts: list[str]) -> list[Address]:
    return [parse_peer_address(t) for t in texts]
