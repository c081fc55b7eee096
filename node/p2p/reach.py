"""Can peers outside this node's network dial it? What that means for it, and how to change it.

A volunteer behind a home router's NAT listens on a private address (192.168.1.2): nobody
outside its home can open a connection to it. It still trains, because libp2p reuses the
connections a peer opens itself: the reachable peers it dials answer it, fetch its updates and
send it theirs over those (swarm_tests/test_nat.py measures it). Peers it never dialled cannot
reach it at all: other peers behind NAT, and joiners.

The judgement here reads the addresses a node announces, which is what others would dial; it is
not a dial-back test, so a public address whose port a firewall drops still reads as reachable.
`swarmtrain doctor`, the join output and the status page word it the same way (`judge`).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from protocol.maddrs import host_port, kind_of, scope

EXAMPLE_PORT = 31337  # the port a fix suggests when the node picks a free one (--port 0)
UNROUTED = "192.0.2.1"  # TEST-NET-1: a target for the kernel's route lookup; no packet is ever sent to it


@dataclass(frozen=True, kw_only=True)
class Reachability:
    """Whether peers elsewhere can dial this node, in the words a person reads."""

    kind: str
    """'public' (a global address), 'relay' (only through a libp2p relay), 'private' (only private
    addresses: behind NAT or on a LAN), 'loopback' (only this machine) or 'unknown' (no address)."""
    reachable: bool | None
    """Can peers outside this node's own network dial it? None: no address to judge by."""
    summary: str
    """One line: reachable or not, and the addresses that say so."""
    meaning: str
    """What it means for this node's part in the swarm."""
    fix: str = ""
    """How to become reachable ('' when it is, or when nothing needs fixing)."""

    @property
    def wire(self) -> str:
        """The kind as a signed metrics record carries it (protocol.kinds.metrics.REACHABILITY): a
        loopback-only node is 'private' there, as it was before this module told them apart."""
        return "private" if self.kind == "loopback" else self.kind

    def as_dict(self) -> dict:
        """For the status page (/api/status `node.reachability`)."""
        return {"kind": self.kind, "reachable": self.reachable, "summary": self.summary,
                "meaning": self.meaning, "fix": self.fix}  # fmt: skip


def _shown(maddrs: list[str], kind: str) -> str:
    """'11.77.0.11:40655': the first two addresses of `kind` in `maddrs`, as host:port."""
    found = [
        hp[0] + (f":{hp[1]}" if hp[1] != "0" else "") for m in maddrs if (hp := host_port(m)) and scope(hp[0]) == kind
    ]
    return ", ".join(list(dict.fromkeys(found))[:2]) or "none"


def become_reachable(port: int) -> str:
    """The fix for a node behind NAT: the flags that exist (node/config NodeConfig: port, announce)."""
    p = port or EXAMPLE_PORT
    fixed = "" if port else " (a fixed port: --port 0 picks a new one at every start)"
    return (
        f"forward TCP port {p} on your router to this machine and announce the router's public address: "
        f"--port {p} --announce /ip4/<router's public IP>/tcp/{p}{fixed}; or enable UPnP or NAT-PMP on the "
        "router, which this node then asks for a forwarded port by itself; or run it on a machine with a "
        "public address"
    )


def judge(maddrs: list[str], *, port: int = 0) -> Reachability:
    """What `maddrs` (the addresses a node announces) mean for it; `port` is its --port, for the fix."""
    kind = kind_of(maddrs)
    if kind == "public":
        at = _shown(maddrs, "public")
        return Reachability(
            kind=kind,
            reachable=True,
            summary=f"reachable from outside: this node has the public address {at}",
            meaning="peers can dial it, so it takes every part in a round: it may lead, pass updates on "
            "and serve the state to joiners. (Judged from the address: a firewall that drops the port "
            "would still keep peers out.)",
        )
    if kind == "relay":
        return Reachability(
            kind=kind,
            reachable=True,
            summary="reachable from outside only through a libp2p relay",
            meaning="peers dial it through the relay: slower than directly, and the relay may limit what passes.",
            fix=become_reachable(port),
        )
    if kind == "private":
        return Reachability(
            kind=kind,
            reachable=False,
            summary="not reachable from outside (behind NAT, or on a private network): this node has only "
            f"the private address {_shown(maddrs, 'private')}",
            meaning="it still trains: it dials the reachable peers itself, and they fetch its updates and "
            "send it theirs over those connections. Peers it never dialled cannot reach it (other peers "
            "behind NAT, joiners), so it does not lead rounds while a reachable peer may (a round it led "
            "could not fetch their updates), and joiners take the state from reachable peers. In a swarm with "
            "no public peer (one private network, such as a lab's cluster) every peer counts as reachable.",
            fix=become_reachable(port),
        )
    if kind == "loopback":
        return Reachability(
            kind=kind,
            reachable=False,
            summary=f"reachable only from this machine: it listens on {_shown(maddrs, 'loopback')}",
            meaning="it trains only with peers on this machine (a local swarm).",
            fix="--host 0.0.0.0 (every interface) or this machine's address lets other machines dial it",
        )
    return Reachability(
        kind="unknown",
        reachable=None,
        summary="reachability unknown: this node announces no address it can be dialled at",
        meaning="",
    )


def local_maddrs(host: str, port: int, towards: list[str]) -> list[str]:
    """The address a node started with --host `host` would announce, without starting it: `host`
    itself, or for 0.0.0.0 the address its traffic to `towards` (the initial peers' hosts) leaves
    from. (A started node announces every interface's address; this finds the one its route
    uses, which is the one that matters behind a NAT.)"""
    if host not in ("0.0.0.0", "::", ""):
        return [f"/ip4/{host}/tcp/{port}"]
    outside = [t for t in towards if scope(t) != "loopback"]  # a peer on this machine says nothing of outside
    for target in [*outside, UNROUTED]:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((target, 9))  # a UDP connect only picks the route and our source address
                return [f"/ip4/{s.getsockname()[0]}/tcp/{port}"]
        except OSError:  # no route there (or a name that does not resolve): try the next
            continue
    return []
