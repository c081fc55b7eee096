"""What a peer's announced addresses say about who can dial it (pure: no sockets).

node/p2p/reach.py words it for the user; the election (node/round/election.py) keeps peers no one
outside their network can dial from leading a swarm that has peers who can be dialled.
"""

from __future__ import annotations

import ipaddress


def host_port(maddr: str) -> tuple[str, str] | None:
    """('192.168.1.2', '4001') of '/ip4/192.168.1.2/tcp/4001/p2p/Qm...' (or a /dns4 name); None for other forms."""
    parts = maddr.split("/")
    if len(parts) > 4 and parts[1] in ("ip4", "ip6", "dns", "dns4", "dns6") and parts[3] == "tcp":
        return parts[2], parts[4]
    return None


def scope(host: str) -> str:
    """'public', 'private' or 'loopback' for one IP address. A DNS name counts as public: only
    --announce gives one, and whoever announces a name means peers elsewhere to resolve it."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "public"
    return "loopback" if ip.is_loopback else "public" if ip.is_global else "private"


def kind_of(maddrs: list[str]) -> str:
    """The best way in that `maddrs` offer: public > relay > private > loopback > unknown. A relay
    beats a private address: peers outside can dial the node through the relay, not at the address."""
    kinds = {"relay" if "p2p-circuit" in m.split("/") else scope(hp[0]) for m in maddrs if (hp := host_port(m))}
    return next((k for k in ("public", "relay", "private", "loopback") if k in kinds), "unknown")


def dialable(maddrs: list[str] | tuple[str, ...]) -> bool:
    """Whether peers elsewhere can open a connection to these addresses: a public one or a relay."""
    return kind_of(list(maddrs)) in ("public", "relay")
