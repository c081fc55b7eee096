"""Home routers on one machine: peers on a public segment, and peers each behind its own
masquerading NAT router that no one outside can dial in through (docs/links.md, "NAT").

    public peers  11.77.0.10, .11, ...  (one segment: "the internet", a bridge in a hub namespace)
    router h      11.77.0.(100+h) on the public side, 192.168.(h+1).1 on the home side
    home peer h   192.168.(h+1).2, default route through router h

Each router forwards (the only namespaces that do), masquerades what leaves its public side
(nft `masquerade`), and drops every new connection coming in from outside: there is no port
forwarding. Every public peer and every router has a route to every home subnet through that
home's router, so a dial to a home peer's private address is not refused for want of a route
but reaches its router and is dropped there, silently, as a home router's firewall does: the
NAT alone keeps it out, and the dialler waits for a timeout, as it would on the internet.

Namespaces are named `<prefix><pid>n<serial>-<i>` (prefix `sn`), deleted on exit, also on an
exception; those of a crashed run are deleted when the next network starts (bench/linkemu.py).
`python -m bench.natemu check` builds a network and says what can reach what.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
import sys

from bench.linkemu import delete_namespace, ip_command, remove_stale_namespaces
from node.errors import SwarmtrainError

# Global addresses, as on the internet: libp2p's DHTs keep a peer only where its addresses fit
# (public ones in the WAN DHT, private ones in the LAN DHT), and documentation ranges such as
# 203.0.113.0/24 fit neither, so peers there never find each other. These namespaces have no
# link out of the machine, so no packet to 11.77.0.0/24 ever leaves it.
PUBLIC_NET = "11.77.0"
BRIDGE, WAN, LAN, ETH = "br0", "wan", "lan", "eth0"

# The router's rules. Forwarded inbound traffic passes only when it answers a connection opened
# from inside (conntrack), which is what masquerading NAT without port forwarding allows.
ROUTER_RULES = f"""\
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN}" masquerade
    }}
}}
table ip filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{LAN}" accept
    }}
}}
"""


@functools.cache
def missing_requirements() -> str | None:
    """None when namespaces, veth pairs, a bridge and nft work here, else why not (tests skip with it)."""
    if os.geteuid() != 0:
        return "NAT emulation needs root (network namespaces, veth pairs, nft)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if not shutil.which(tool):
            return f"NAT emulation needs the `{tool}` command (apt-get install {package})"
    probe = f"snprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    try:
        for args in (
            ["ip", "-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
            ["ip", "-n", probe, "link", "add", "probebr", "type", "bridge"],
            ["ip", "netns", "exec", probe, "nft", "-f", "-"],
        ):
            done = subprocess.run(args, input=ROUTER_RULES, capture_output=True, text=True)
            if done.returncode:
                return f"`{' '.join(args)}` fails here: {done.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NatNetwork:
    """`public` peers on the public segment, then `homes` peers each behind its own NAT router.

    Peers are numbered 0 .. public-1 (public), then public .. public+homes-1 (home h = k - public).
    A context manager: on exit, also on an exception, everything in its namespaces is killed and
    the namespaces are deleted."""

    _serial = itertools.count()

    def __init__(self, *, public: int, homes: int, prefix: str = "sn"):
        if not (1 <= public <= 50 and 0 <= homes <= 50):
            raise SwarmtrainError(
                f"cannot emulate {public} public peers and {homes} homes", "use 1-50 public peers and 0-50 homes"
            )
        self.public, self.homes, self.prefix = public, homes, prefix
        self.name = f"{prefix}{os.getpid()}n{next(self._serial)}"  # pid + serial: parallel users never collide
        # one namespace per peer, then one per router, then the hub holding the bridge
        self.namespaces = [f"{self.name}-{i}" for i in range(public + 2 * homes + 1)]

    @property
    def peers(self) -> int:
        return self.public + self.homes

    def is_home(self, k: int) -> bool:
        return k >= self.public

    def address(self, k: int) -> str:
        """Peer k's own address: public, or private behind its router."""
        return f"192.168.{k - self.public + 1}.2" if self.is_home(k) else f"{PUBLIC_NET}.{10 + k}"

    def router_address(self, home: int) -> str:
        """The public address of home `home`'s router: what the home peer's connections come from."""
        return f"{PUBLIC_NET}.{100 + home}"

    def exec_prefix(self, k: int) -> list[str]:
        """Put this in front of a command to run it inside peer k's namespace."""
        return ["ip", "netns", "exec", self.namespaces[k]]

    def _router(self, home: int) -> str:
        return self.namespaces[self.peers + home]

    def _hub(self) -> str:
        return self.namespaces[-1]

    def __enter__(self) -> NatNetwork:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        remove_stale_namespaces(self.prefix)
        for ns in self.namespaces:
            ip_command("netns", "add", ns)
            ip_command("-n", ns, "link", "set", "lo", "up")
        ip_command("-n", self._hub(), "link", "add", BRIDGE, "type", "bridge")
        ip_command("-n", self._hub(), "link", "set", BRIDGE, "up")
        for k in range(self.public):
            self._plug(self.namespaces[k], ETH, f"p{k}", f"{self.address(k)}/24")
            for h in range(self.homes):
                ip_command(
                    "-n", self.namespaces[k], "route", "add", f"192.168.{h + 1}.0/24", "via", self.router_address(h)
                )
        for h in range(self.homes):
            self._start_home(h)

    def _plug(self, ns: str, inside: str, hub_side: str, cidr: str) -> None:
        """A veth pair from `ns` (named `inside`, holding `cidr`) to a port of the hub's bridge."""
        ip_command("-n", self._hub(), "link", "add", hub_side, "type", "veth", "peer", "name", inside, "netns", ns)
        ip_command("-n", self._hub(), "link", "set", hub_side, "master", BRIDGE, "up")
        ip_command("-n", ns, "addr", "add", cidr, "dev", inside)
        ip_command("-n", ns, "link", "set", inside, "up")

    def _start_home(self, h: int) -> None:
        router, home = self._router(h), self.namespaces[self.public + h]
        lan = f"192.168.{h + 1}"
        self._plug(router, WAN, f"r{h}", f"{self.router_address(h)}/24")
        ip_command("-n", router, "link", "add", LAN, "type", "veth", "peer", "name", ETH, "netns", home)
        ip_command("-n", router, "addr", "add", f"{lan}.1/24", "dev", LAN)
        ip_command("-n", router, "link", "set", LAN, "up")
        ip_command("-n", home, "addr", "add", f"{lan}.2/24", "dev", ETH)
        ip_command("-n", home, "link", "set", ETH, "up")
        ip_command("-n", home, "route", "add", "default", "via", f"{lan}.1")
        for other in range(self.homes):  # other homes' private addresses lead to their routers, and stop there
            if other != h:
                ip_command("-n", router, "route", "add", f"192.168.{other + 1}.0/24", "via", self.router_address(other))
        _run(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _run(["ip", "netns", "exec", router, "nft", "-f", "-"], stdin=ROUTER_RULES)

    def close(self) -> None:
        """Stop everything still running in our namespaces, then delete them (the veth pairs and
        the bridge go with them)."""
        for ns in self.namespaces:
            delete_namespace(ns)  # and what is still inside it


def _run(args: list[str], stdin: str | None = None) -> None:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise SwarmtrainError(
            f"`{' '.join(args)}` failed: {done.stderr.strip()}",
            "NAT emulation needs root, `ip netns` and nftables (see docs/links.md)",
        )


# ---- what can reach what: one TCP connection, from one namespace to an address in another

LISTEN = (
    "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(); "
    "print(s.getsockname()[1], flush=True); s.settimeout(float(sys.argv[2])); "
    "c, peer = s.accept(); print(peer[0], flush=True)"
)
DIAL = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close(); print('ok')\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)


def connect(net: NatNetwork, *, dialler: int, listener: int, host: str | None = None, timeout: float = 2.0) -> dict:
    """Peer `dialler` opens a TCP connection to a socket peer `listener` listens on, at `host`
    (default: the listener's own address). {"result": "ok" or the error's name, "seen_from": the
    source address the listener saw, or None}."""
    bind = net.address(listener)
    server = subprocess.Popen(
        [*net.exec_prefix(listener), sys.executable, "-c", LISTEN, bind, str(timeout + 1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = server.stdout.readline().strip()
        dial = [*net.exec_prefix(dialler), sys.executable, "-c", DIAL, host or bind, port, str(timeout)]
        result = subprocess.run(dial, capture_output=True, text=True, timeout=timeout + 10).stdout.strip()
        seen = server.stdout.readline().strip() if result == "ok" else None
        return {"result": result, "seen_from": seen}
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def check(net: NatNetwork) -> list[str]:
    """What a NAT must do, each a failed expectation when it does not: a home peer reaches a
    public peer, which sees the router's address; no one outside reaches a home peer, neither at
    its private address nor at its router's. Empty when all hold."""
    home, first = net.public, 0
    wrong = []
    out = connect(net, dialler=home, listener=first)
    if out != {"result": "ok", "seen_from": net.router_address(0)}:
        wrong.append(f"home peer -> public peer: {out}, expected ok, seen from {net.router_address(0)}")
    for host in (None, net.router_address(0)):
        out = connect(net, dialler=first, listener=home, host=host)
        if out["result"] == "ok":
            wrong.append(f"public peer -> home peer at {host or net.address(home)}: connected; a NAT must keep it out")
    if net.homes > 1:
        out = connect(net, dialler=home + 1, listener=home)
        if out["result"] == "ok":
            wrong.append(f"home peer -> other home peer at {net.address(home)}: connected; its NAT must keep it out")
    return wrong


def main(argv: list[str]) -> None:
    if argv != ["check"]:
        sys.exit("usage: python -m bench.natemu check")
    if (why := missing_requirements()) is not None:
        sys.exit(why)
    with NatNetwork(public=1, homes=2) as net:
        wrong = check(net)
    print(json.dumps({"ok": not wrong, "wrong": wrong}))
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
