"""A CPU quota for one peer's processes (`bench swarm --slow-quota`): a cgroup whose processes
together get a fraction of one core, as a volunteer's busy laptop gives. Unlike --slow-peer's
sleeps, everything the node runs is slowed: its training, its DHT thread and its libp2p daemon
(children inherit the cgroup), so leading, serving and fetching are as slow as computing.

cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`), as root.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from node.errors import SwarmtrainError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def missing() -> str | None:
    """Why a quota cannot be set here (None: it can)."""
    if os.geteuid() != 0:
        return "a CPU quota needs root (cgroups)"
    if not _v2() and not (ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return "no cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us) under /sys/fs/cgroup"
    return None


def _v2() -> bool:
    controllers = ROOT / "cgroup.controllers"
    return controllers.exists() and "cpu" in controllers.read_text().split()


class CpuQuota:
    """A cgroup `name` limited to `fraction` of one core; `prefix()` starts a command inside it."""

    def __init__(self, name: str, fraction: float):
        if why := missing():
            raise SwarmtrainError(f"--slow-quota: {why}", "run as root on Linux, or use --slow-peer instead")
        if not 0 < fraction <= 64:
            raise SwarmtrainError(f"--slow-quota {fraction}", "give a fraction of one core, e.g. 0.25")
        quota = str(max(1000, int(fraction * PERIOD_US)))
        self.path = (ROOT if _v2() else ROOT / "cpu") / name
        self.path.mkdir(exist_ok=True)
        if _v2():
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(quota)

    def prefix(self) -> list[str]:
        """A command prefix that moves the shell into the cgroup, then execs the command."""
        return ["sh", "-c", f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"', "sh"]

    def close(self) -> None:
        """Kill what is left inside, then remove the cgroup."""
        for _ in range(20):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.path.rmdir()
        except OSError:
            pass  # a process still exiting: the kernel keeps the group until it is gone
