"""Consumer links on one machine: each peer in its own network namespace, behind a link with
its own upload and download rate, delay, jitter and loss (this kernel has no netem).

Each peer namespace holds one TUN device. One forwarder process (`forward` below) reads every
packet a peer sends, passes it through two stages, the sender's `up` stage and the receiver's
`down` stage, and writes it into the receiver's TUN. The forwarder is the hub: it routes by the
IPv4 destination, so no hub namespace or kernel forwarding is needed.

A spec describes the path between two peers that have the same spec, so each stage adds half of
each one-way figure: rtt/4 of delay, +-jitter/2, and a loss chance p with (1-p)^2 = 1-loss. Two
peers with rtt=50ms see a 50 ms RTT; in general the RTT between a and b is (rtt_a + rtt_b) / 2.

The forwarder can also cut the network into groups (`partition 0,1,2|3,4` on its stdin, undone
by `heal`): packets between peers of different groups are dropped, also those already on the
way. See docs/links.md.
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import functools
import heapq
import itertools
import json
import math
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from node.errors import SwarmtrainError

PARTITION_FORM = (
    "give the groups of peer numbers, each group comma-separated and the groups separated by |, "
    "e.g. 0,1,2|3,4; every peer at most once, peers left out are cut off from everyone"
)
FORM = (
    "write key=value pairs separated by commas, e.g. up=20mbit,down=100mbit,rtt=50ms,jitter=5ms,loss=1%,"
    "queue=200ms; rates in bit, kbit, mbit or gbit (kbps, mbps, gbps also mean bits), times in s, ms or us, "
    "loss in % or as a fraction; leave a key out for no limit"
)

# unit -> (multiply, divide): dividing keeps "50ms" exactly the float 0.05, as 50 / 1000 is
RATE_UNITS = {
    "gbit": (10**9, 1),
    "mbit": (10**6, 1),
    "kbit": (1000, 1),
    "bit": (1, 1),
    "gbps": (10**9, 1),
    "mbps": (10**6, 1),
    "kbps": (1000, 1),
    "bps": (1, 1),
}
TIME_UNITS = {"s": (1, 1), "ms": (1, 1000), "us": (1, 10**6)}
LOSS_UNITS = {"%": (1, 100), "": (1, 1)}
NUMBER = re.compile(r"^((?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([a-z%]*)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One peer's consumer link, e.g. LinkSpec.parse("up=20mbit,down=100mbit,rtt=50ms,loss=1%")."""

    up_bps: float = 0.0
    """Upload rate in bit/s: what this peer can send. 0 is unlimited."""
    down_bps: float = 0.0
    """Download rate in bit/s: what this peer can receive. 0 is unlimited."""
    rtt_s: float = 0.0
    """Round-trip time in seconds to a peer with the same spec; each direction of the link adds rtt/4."""
    jitter_s: float = 0.0
    """Seconds the one-way delay to a peer with the same spec varies by (+-); never reorders packets."""
    loss: float = 0.0
    """Fraction of packets lost one way between two peers with this spec (0.01 is 1%)."""
    queue_s: float = 0.2
    """Most seconds a packet waits behind others for a rate-limited line before it is dropped (a
    modem's buffer; 200 ms unless given)."""

    KEYS = {
        "up": ("up_bps", RATE_UNITS),
        "down": ("down_bps", RATE_UNITS),
        "rtt": ("rtt_s", TIME_UNITS),
        "jitter": ("jitter_s", TIME_UNITS),
        "loss": ("loss", LOSS_UNITS),
        "queue": ("queue_s", TIME_UNITS),
    }

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """'up=20mbit,down=100mbit,rtt=50ms,jitter=5ms,loss=1%'; '' or 'unlimited' is no limit at all."""
        values: dict[str, float] = {}
        parts = [p.strip() for p in text.split(",") if p.strip()]
        for part in parts if parts != ["unlimited"] else []:
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or key not in cls.KEYS:
                raise _bad(part, f"expected one of {', '.join(k + '=' for k in cls.KEYS)}")
            field, units = cls.KEYS[key]
            if field in values:
                raise _bad(part, f"{key} is given twice")
            values[field] = _number(part, value, units)
            if units is RATE_UNITS and values[field] == 0:
                raise _bad(part, "a rate must be above 0; leave it out for no limit")
            if field == "loss" and values[field] > 1:
                raise _bad(part, "loss is at most 100%")
        return cls(**values)

    def __str__(self) -> str:
        parts = []
        for key, (field, units) in self.KEYS.items():
            value = getattr(self, field)
            if value != getattr(LinkSpec, field):
                parts.append(f"{key}={_format(value, units)}")
        return ",".join(parts) or "unlimited"


def _bad(part: str, why: str) -> SwarmtrainError:
    return SwarmtrainError(f"bad link spec part {part!r}: {why}", FORM)


def _number(part: str, value: str, units: dict[str, tuple[int, int]]) -> float:
    m = NUMBER.match(value)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in units:
        accepted = ", ".join(u or "a plain fraction" for u in units)
        raise _bad(part, f"expected a number >= 0 with a unit: {accepted}")
    mul, div = units[unit]
    number = float(m.group(1))
    if not math.isfinite(number):
        raise _bad(part, "the number is too large")
    return number * mul / div


def _format(value: float, units: dict[str, tuple[int, int]]) -> str:
    """In the largest unit that reads as a number >= 1 and parses back to exactly `value`."""
    for unit, (mul, div) in units.items():
        scaled = value * div / mul
        text = str(int(scaled)) if scaled == int(scaled) else repr(scaled)
        if scaled >= 1 and "e" not in text and float(text) * mul / div == value:
            return text + unit
    base = next(u for u, (mul, div) in units.items() if mul == div == 1)
    return (str(int(value)) if value == int(value) else repr(value)) + base  # repr round-trips any float


@functools.cache
def missing_requirements() -> str | None:
    """None when namespaces and TUN devices work here, else why not (tests skip with it)."""
    if os.geteuid() != 0:
        return "link emulation needs root (network namespaces and TUN devices)"
    if not shutil.which("ip"):
        return "link emulation needs the `ip` command (iproute2)"
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as e:
        return f"link emulation needs /dev/net/tun: {e.strerror}"
    probe = f"stprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def parse_partition(text: str, n_peers: int) -> tuple[tuple[int, ...], ...]:
    """'0,1,2|3,4' -> ((0, 1, 2), (3, 4)): the groups of a partition of peers 0..n_peers-1."""
    groups = []
    seen: set[int] = set()
    for part in text.split("|"):
        members = [m.strip() for m in part.split(",")]
        if not part.strip() or not all(m.isdigit() for m in members):
            raise SwarmtrainError(
                f"bad partition {text!r}: group {part.strip()!r} is not a list of peer numbers", PARTITION_FORM
            )
        group = tuple(int(m) for m in members)
        for k in group:
            if k >= n_peers:
                raise SwarmtrainError(
                    f"bad partition {text!r}: there is no peer {k} (peers are 0-{n_peers - 1})", PARTITION_FORM
                )
            if k in seen:
                raise SwarmtrainError(f"bad partition {text!r}: peer {k} is in more than one group", PARTITION_FORM)
            seen.add(k)
        groups.append(group)
    return tuple(groups)


def group_of(groups: tuple[tuple[int, ...], ...], n_peers: int) -> list[int]:
    """Each peer's group number; a peer left out of every group is alone (a group of its own that
    no other peer shares): two peers talk only when their numbers are equal."""
    found = {k: g for g, group in enumerate(groups) for k in group}
    return [found.get(k, -1 - k) for k in range(n_peers)]


def parse_command(line: str, n_peers: int) -> tuple[str, tuple[tuple[int, ...], ...] | None]:
    """One line of the forwarder's stdin: ('stats', None), ('heal', None) or ('partition', groups)."""
    word, _, rest = line.strip().partition(" ")
    if word in ("stats", "heal") and not rest.strip():
        return word, None
    if word == "partition":
        return word, parse_partition(rest, n_peers)
    raise SwarmtrainError(
        f"unknown link forwarder command {line.strip()!r}", "send 'stats', 'partition 0,1|2,3' or 'heal', one a line"
    )


# ---- the forwarder: runs in its own process, `python -m bench.linkemu forward NS=SPEC ...`

TUN_NAME = "swl0"
CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


class Stage:
    """One direction of one link: a FIFO line at a rate, then a delay with jitter, and loss."""

    def __init__(self, rate_bps: float, delay_s: float, jitter_s: float, loss: float, queue_s: float):
        self.bytes_per_s, self.delay, self.jitter = rate_bps / 8, delay_s, jitter_s
        self.loss, self.queue_s = loss, queue_s
        self.line_free = 0.0  # when the line has sent everything queued on it
        self.last_exit = 0.0  # jitter delays packets but never reorders them, as on a real line
        self.counts = {"forwarded": 0, "lost": 0, "queue_dropped": 0, "partitioned": 0}

    def admit(self, size: int, now: float) -> float | None:
        """The time the packet leaves this stage, or None when it is dropped."""
        sent = now
        if self.bytes_per_s:
            start = max(now, self.line_free)
            if start - now > self.queue_s:
                self.counts["queue_dropped"] += 1
                return None
            sent = self.line_free = start + size / self.bytes_per_s
        if self.loss and random.random() < self.loss:  # lost on the wire: it used the line first
            self.counts["lost"] += 1
            return None
        delay = max(0.0, self.delay + random.uniform(-self.jitter, self.jitter))
        self.last_exit = max(sent + delay, self.last_exit)
        self.counts["forwarded"] += 1
        return self.last_exit


def stages_of(spec: LinkSpec) -> tuple[Stage, Stage]:
    """(up, down) stages: each adds half of a one-way path between two peers with this spec."""
    loss = 1 - math.sqrt(1 - spec.loss)  # two stages in a row lose `spec.loss` together
    half = (spec.rtt_s / 4, spec.jitter_s / 2, loss, spec.queue_s)
    return Stage(spec.up_bps, *half), Stage(spec.down_bps, *half)


def open_tun(namespace: str) -> int:
    """Create our TUN device inside `namespace`; it disappears when the fd closes."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), IFF_TUN | IFF_NO_PI))
        return fd
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)


class Forwarder:
    """The forwarder's state: the links, the packets on their way, and the partition if any."""

    def __init__(self, tuns: list[int], specs: list[LinkSpec]):
        self.tuns = tuns
        self.links = [stages_of(spec) for spec in specs]
        self.peer_of = {fd: k for k, fd in enumerate(tuns)}
        self.index_of = {address_bytes(k): k for k in range(len(tuns))}
        self.pending: list = []  # (due time, sequence, stage to enter next or None to deliver, src, dst, packet)
        self.seq = itertools.count()
        self.group: list[int] | None = None  # each peer's group while partitioned (group_of), else None
        self.stdin = b""  # a command line not yet complete

    def cut(self, src: int, dst: int) -> bool:
        """Does the partition drop a packet from src to dst? (Counted at the sender's up stage.)"""
        if self.group is None or self.group[src] == self.group[dst]:
            return False
        self.links[src][0].counts["partitioned"] += 1
        return True

    def receive(self, fd: int, now: float) -> None:
        for packet in _drain(fd):
            if len(packet) < 20:
                continue  # not an IPv4 header (an empty read)
            # only IPv4 to a known peer travels; the kernel's own IPv6 chatter on the TUN does not
            dst = self.index_of.get(packet[16:20]) if packet[0] >> 4 == 4 else None
            src = self.peer_of[fd]
            if dst is None or self.cut(src, dst):
                continue
            due = self.links[src][0].admit(len(packet), now)
            if due is not None:
                heapq.heappush(self.pending, (due, next(self.seq), self.links[dst][1], src, dst, packet))

    def deliver(self) -> None:
        """Move every packet that is due into its next stage, or out into the receiver's TUN."""
        while self.pending and self.pending[0][0] <= time.monotonic():
            due, _, stage, src, dst, packet = heapq.heappop(self.pending)
            if self.cut(src, dst):
                continue  # cut while on its way: a partition drops what is in flight too
            if stage is None:
                try:
                    os.write(self.tuns[dst], packet)
                except OSError:
                    pass  # the receiver's TUN is down: the packet is lost, as on a real line
                continue
            # the down stage starts at the due time, not at now: a late loop must not slow the line
            due = stage.admit(len(packet), due)
            if due is not None:
                heapq.heappush(self.pending, (due, next(self.seq), None, src, dst, packet))

    def answer_stdin(self) -> bool:
        """Answer each complete command line with one JSON line; False when stdin closed (our owner is gone)."""
        data = os.read(0, 4096)
        self.stdin += data
        *lines, self.stdin = self.stdin.split(b"\n")
        for line in lines:
            if line.strip():
                print(json.dumps(self.command(line.decode(errors="replace"))), flush=True)
        return bool(data)

    def command(self, line: str):
        try:
            word, groups = parse_command(line, len(self.tuns))
        except SwarmtrainError as e:
            return {"error": str(e), "help": e.help}
        if word == "stats":
            return [{"up": up.counts, "down": down.counts} for up, down in self.links]
        if word == "heal":
            self.group = None
            return {"healed": True}
        self.group = group_of(groups, len(self.tuns))
        return {"partitioned": [list(g) for g in groups]}


def forward(namespaces: list[str], specs: list[LinkSpec]) -> None:
    """Forward packets between the peers' TUNs until stdin closes; stdin lines 'stats', 'partition
    0,1|2,3' and 'heal' are each answered with one JSON line (the counts, or the acknowledgement)."""
    fw = Forwarder([open_tun(ns) for ns in namespaces], specs)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        timeout = max(0.0, fw.pending[0][0] - time.monotonic()) if fw.pending else None
        readable, _, _ = select.select([0, *fw.tuns], [], [], timeout)
        now = time.monotonic()
        if 0 in readable and not fw.answer_stdin():
            return
        for fd in readable:
            if fd != 0:
                fw.receive(fd, now)
        fw.deliver()


def _drain(fd: int) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(os.read(fd, 65535))
        except BlockingIOError:
            return packets


def address(k: int) -> str:
    """Peer k's address inside its namespace."""
    return f"10.77.0.{k + 1}"


def address_bytes(k: int) -> bytes:
    return bytes(int(x) for x in address(k).split("."))


# ---- the network, from the test's side


class EmulatedNetwork:
    """N peers, each in a namespace behind its own link; a context manager that cleans up."""

    MAX_PEERS = 250  # one /24
    _serial = itertools.count()

    def __init__(self, specs: list[LinkSpec], prefix: str = "st"):
        if not 1 <= len(specs) <= self.MAX_PEERS:
            raise SwarmtrainError(
                f"{len(specs)} peers cannot share one emulated network", f"use 1 to {self.MAX_PEERS} link specs"
            )
        self.specs = list(specs)
        self.prefix = prefix
        # pid + serial: parallel users (other processes, other networks here) never collide
        self.name = f"{prefix}{os.getpid()}n{next(self._serial)}"
        self.namespaces = [f"{self.name}-{k}" for k in range(len(specs))]
        self.forwarder: subprocess.Popen | None = None

    def address(self, k: int) -> str:
        return address(k)

    def exec_prefix(self, k: int) -> list[str]:
        """Put this in front of a command to run it inside peer k's namespace."""
        return ["ip", "netns", "exec", self.namespaces[k]]

    def stats(self) -> list[dict[str, dict[str, int]]]:
        """Per peer: {'up': {'forwarded', 'lost', 'queue_dropped', 'partitioned'}, 'down': {...}}
        packet counts ('partitioned' counts at the sender's up stage)."""
        return self._ask("stats")

    def partition(self, groups: list[list[int]]) -> None:
        """Cut the network: from now on (when this returns, the forwarder has taken it), packets
        between peers of different groups are dropped, also those already on their way. A peer
        in no group is cut off from everyone. Replaces any earlier partition."""
        text = "|".join(",".join(str(k) for k in group) for group in groups)
        parse_partition(text, len(self.specs))  # a bad one is refused here, before the forwarder sees it
        self._ask(f"partition {text}")

    def heal(self) -> None:
        """Undo the partition: every peer reaches every other again (when this returns)."""
        self._ask("heal")

    def _ask(self, command: str):
        """Send one command line to the forwarder and return its one JSON answer line."""
        try:
            self.forwarder.stdin.write(command.encode() + b"\n")
            self.forwarder.stdin.flush()
            line = self.forwarder.stdout.readline()
        except (BrokenPipeError, AttributeError, ValueError):  # never started, or already closed
            line = b""
        if not line:
            raise SwarmtrainError(
                "the link forwarder is not running", f"call {command.split()[0]}() inside the `with` block"
            )
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise SwarmtrainError(answer["error"], answer.get("help", ""))
        return answer

    def __enter__(self) -> EmulatedNetwork:
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
        root = str(Path(__file__).resolve().parents[2])  # so that `-m node...` finds this very package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.forwarder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.linkemu",
                "forward",
                *[f"{ns}={s}" for ns, s in zip(self.namespaces, self.specs)],
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        if self.forwarder.stdout.readline() != b"ready\n":
            raise SwarmtrainError(
                "the link forwarder did not start (its error is above)",
                "check that this runs as root with /dev/net/tun",
            )
        for k, ns in enumerate(self.namespaces):
            commands = f"link set lo up\naddr add {address(k)}/24 dev {TUN_NAME}\nlink set {TUN_NAME} mtu 1500 up\n"
            ip_command("-n", ns, "-batch", "-", stdin=commands)

    def close(self) -> None:
        """Stop everything still running in our namespaces, the forwarder, then the namespaces."""
        for ns in self.namespaces:
            kill_namespace_processes(ns)
        if self.forwarder is not None:
            self.forwarder.stdin.close()  # end of stdin is the forwarder's signal to stop
            try:
                self.forwarder.wait(5)
            except subprocess.TimeoutExpired:
                self.forwarder.kill()
                self.forwarder.wait()
            self.forwarder.stdout.close()
        for ns in self.namespaces:
            delete_namespace(ns)


def delete_namespace(ns: str) -> None:
    """Delete `ns`, then kill what is still inside it. A process started by `ip netns exec` just
    before the first kill may not have entered the namespace yet, so `ip netns pids` missed it; once
    the name is gone nothing new can enter, and a scan of /proc by the namespace's inode finds
    what did (twice empty in a row: one that was entering has entered)."""
    try:
        inode = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        inode = None
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    empty = 0
    while inode is not None and empty < 2:
        inside = [pid for pid in _pids() if _net_inode(pid) == inode]
        for pid in inside:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        empty = 0 if inside else empty + 1
        time.sleep(0.05)


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _net_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def remove_stale_namespaces(prefix: str) -> None:
    """Delete namespaces named like ours whose owner process is gone (a crashed earlier run)."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)n\d+-\d+$")
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        m = pattern.match(name)
        if m and (int(m.group(1)) == os.getpid() or not Path(f"/proc/{m.group(1)}").exists()):
            delete_namespace(name)  # and what is inside it


def kill_namespace_processes(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def ip_command(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(["ip", *args], input=stdin, capture_output=True, text=True)
    if done.returncode:
        raise SwarmtrainError(
            f"`ip {' '.join(args)}` failed: {done.stderr.strip()}",
            "link emulation needs root and working `ip netns` (see docs/links.md)",
        )


def main(argv: list[str]) -> None:
    if argv[:1] != ["forward"]:
        sys.exit("usage: python -m bench.linkemu forward NAMESPACE=SPEC ...")
    pairs = [arg.split("=", 1) for arg in argv[1:]]
    forward([ns for ns, _ in pairs], [LinkSpec.parse(spec) for _, spec in pairs])


if __name__ == "__main__":
    main(sys.argv[1:])
