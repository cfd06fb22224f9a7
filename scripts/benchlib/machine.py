"""The machine line printed first: CPU, Python, versions of ioserver and its peers,
the commit, which core runs, load; and a meter of the CPU other processes used.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from time import perf_counter

from .harness import ROOT

# ---------------------------------------------------------------------------------------
# Machine line


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        if git("status", "--porcelain", "--", "ioserver"):
            commit += " (ioserver/ has uncommitted changes)"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _core_name() -> str:
    """Which ioserver core this process runs (IOSERVER_PURE=1 forces pure Python)."""
    import ioserver

    return "native" if ioserver.NATIVE else "python"


def machine_info() -> dict[str, str]:
    try:
        import zmq

        libzmq = zmq.zmq_version()
    except ImportError:
        libzmq = "absent"
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} (usable {affinity})",
        "python": f"{platform.python_version()} {platform.python_implementation()}",
        "uvloop": _version("uvloop"),
        "janus": _version("janus"),
        "culsans": _version("culsans"),
        "aiologic": _version("aiologic"),
        "pyzmq": f"{_version('pyzmq')} (libzmq {libzmq})",
        "anyio": _version("anyio"),
        "commit": _git_commit(),
        "core": _core_name(),
        "load": load,
    }


def _cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class BusyMeter:
    """How many cores *other* processes kept busy while we ran (the machine's noise)."""

    def __init__(self) -> None:
        self.t0 = perf_counter()
        self.busy0 = _cpu_busy_seconds()
        self.own0 = sum(os.times()[:2])

    def others(self) -> float | None:
        busy = _cpu_busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        own = sum(os.times()[:2]) - self.own0
        return max(0.0, (busy - self.busy0 - own) / (perf_counter() - self.t0))


def machine_line(info: dict[str, str]) -> str:
    return "machine: " + "; ".join(f"{k}={v}" for k, v in info.items())
