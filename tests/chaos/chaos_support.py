"""Helpers for the chaos suite: the daemon seen from /proc, an RSS sampler, a ping
prober on its own session, a one-thread echo server (TCP and Unix), a checksummed
byte stream, and the kill-wave client script.

Imported as ``from chaos_support import ...`` (pytest puts this directory on
``sys.path``; there is no ``__init__.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import selectors
import signal
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon_support import DaemonProcess, RawClient

MIB = 1024 * 1024
POOL_WORKERS = 8
"""``ThreadPoolExecutor(max_workers=8)`` in ioserver/daemon/serve.py: threads it may add."""
RESOLVER_THREADS = 4
"""libuv's own thread pool (getaddrinfo under uvloop; UV_THREADPOOL_SIZE, default 4)."""
PING_BOUND = 2.0
"""Seconds another session's ``ping`` may take while a scenario runs (a shared,
busy 2-core machine; the measured figures are reported)."""


# -- the daemon from the outside -------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status (``VmRSS``, ``VmHWM`` in bytes; ``Threads``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                parts = line.split()
                value = int(parts[1])
                return value * 1024 if len(parts) > 2 and parts[2] == "kB" else value
    raise AssertionError(f"no {key}: line in /proc/{pid}/status")


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    return proc_status(pid, "VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def snapshot(d: DaemonProcess) -> dict[str, int]:
    """fds, threads, RSS, sessions and open ports of the daemon now (``stats`` counts
    the session that asks: 1 session means nobody else)."""
    assert d.pid is not None
    stats = d.stats()
    return {
        "fds": fd_count(d.pid),
        "threads": thread_count(d.pid),
        "rss": rss(d.pid),
        "sessions": int(stats["sessions"]),
        "open_ports": int(stats["open_ports"]),
    }


def limit_keys() -> set[str]:
    """The ``[limits]`` keys this checkout's daemon knows (newer ones are used in a
    config only once they exist)."""
    from dataclasses import fields

    from ioserver.config import LimitsConfig

    return {f.name for f in fields(LimitsConfig)}


def mib(n: float) -> float:
    return round(n / MIB, 1)


class RssSampler:
    """Samples the daemon's VmRSS every ``interval`` s in a thread; ``peak`` is the
    highest seen. Past ``kill_above`` bytes it SIGKILLs the daemon (a runaway must not
    take a shared machine down) and sets ``killed``."""

    def __init__(self, pid: int, interval: float = 0.02, kill_above: int | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.kill_above = kill_above
        self.start_rss = rss(pid)
        self.peak = self.start_rss
        self.samples = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                value = rss(self.pid)
            except (OSError, AssertionError):
                return  # the daemon is gone
            self.samples += 1
            self.peak = max(self.peak, value)
            if self.kill_above is not None and value > self.kill_above and not self.killed:
                self.killed = True
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self) -> int:
        """Peak RSS over the RSS at the start."""
        return self.peak - self.start_rss


def latency_summary(latencies: list[float]) -> dict[str, Any]:
    """count, p50, p99 and max in milliseconds."""
    if not latencies:
        return {"count": 0}
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


class PingProber:
    """Another session, pinging every ``interval`` s in a thread: its latencies.

    A ping unanswered in ``timeout`` s is recorded as ``failures`` (and as a latency of
    ``timeout``), so a stalled daemon shows up as a failure, not a hang."""

    def __init__(
        self, address: str | tuple[str, int], interval: float = 0.05, timeout: float = 5.0
    ) -> None:
        self.client = RawClient(address, timeout=timeout)
        self.interval = interval
        self.timeout = timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ping-prober")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            t0 = time.monotonic()
            try:
                result = self.client.call("ping", timeout=self.timeout)
            except Exception as exc:
                self.failures.append(repr(exc))
                self.latencies.append(self.timeout)
                return
            self.latencies.append(time.monotonic() - t0)
            if result != "pong":
                self.failures.append(f"ping answered {result!r}")

    def stop(self) -> dict[str, Any]:
        """Stop, close the session; the latency summary."""
        self._stop.set()
        self._thread.join(self.timeout + 5)
        self.client.close()
        return latency_summary(self.latencies)

    def check(self, bound: float = PING_BOUND) -> None:
        """Every ping was answered, each within ``bound`` seconds."""
        assert not self.failures, f"the other session's ping failed: {self.failures[:3]}"
        assert self.latencies, "the prober sent no ping"
        worst = max(self.latencies)
        assert worst <= bound, f"the other session's ping took {worst:.3f} s (> {bound} s)"


# -- a checksummed stream --------------------------------------------------------------


class Stream:
    """A deterministic pseudo-random byte stream and its running sha256 (``chunk(n)``)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sha = hashlib.sha256()
        self.count = 0

    def chunk(self, n: int) -> bytes:
        data = self.rng.randbytes(n)
        self.sha.update(data)
        self.count += n
        return data


class Tally:
    """What a receiver got: the byte count and the running sha256 of it, in order."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.count = 0

    def add(self, data: bytes) -> None:
        self.sha.update(data)
        self.count += len(data)


# -- a one-thread echo server ------------------------------------------------------------


class SelectorEcho:
    """An echo server on 127.0.0.1 TCP and a Unix path, in one selector thread.

    Non-blocking, so one slow reader never stalls the others; a connection whose
    unsent echo passes ``cap`` bytes is no longer read until it drains (backpressure
    to its writer, as a real peer would). ``open_count()`` is the connections open now.
    """

    def __init__(self, unix_path: str, cap: int = MIB) -> None:
        self.cap = cap
        self.unix_path = unix_path
        self.tcp = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.address: tuple[str, int] = self.tcp.getsockname()[:2]
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(unix_path)
        self.unix.listen(512)
        self.sel = selectors.DefaultSelector()
        for listener in (self.tcp, self.unix):
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, None)
        self.out: dict[socket.socket, bytearray] = {}
        self.accepted = 0
        self.bytes = 0
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="selector-echo")
        self._thread.start()

    def open_count(self) -> int:
        with self._lock:
            return len(self.out)

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            self.out.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def _events(self, conn: socket.socket) -> int:
        buf = self.out[conn]
        mask = selectors.EVENT_WRITE if buf else 0
        if len(buf) < self.cap:
            mask |= selectors.EVENT_READ
        return mask

    def _run(self) -> None:
        while not self._stop:
            for key, mask in self.sel.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self.tcp or sock is self.unix:
                    with contextlib.suppress(BlockingIOError, OSError):
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        with self._lock:
                            self.out[conn] = bytearray()
                        self.accepted += 1
                        self.sel.register(conn, selectors.EVENT_READ, None)
                    continue
                try:
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(1 << 16)
                        if not data:
                            self._drop(sock)
                            continue
                        self.bytes += len(data)
                        self.out[sock] += data
                    buf = self.out[sock]
                    if buf:
                        sent = sock.send(buf)
                        del buf[:sent]
                    self.sel.modify(sock, self._events(sock) or selectors.EVENT_READ)
                except BlockingIOError:
                    continue
                except OSError:
                    self._drop(sock)
        for key in list(self.sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_path)


# -- processes -----------------------------------------------------------------------------


def pids_with(marker: str) -> list[int]:
    """Pids of live processes whose command line or environment holds ``marker``
    (a unique string of this test: only our own processes match)."""
    found = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                with open(f"/proc/{name}/{part}", "rb") as f:
                    if needle in f.read():
                        found.append(int(name))
                        break
            except OSError:
                continue
    return [pid for pid in found if pid != os.getpid()]


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each of these pids (ours, found by our marker); gone ones are fine."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def wait_true(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is true (returned) or ``timeout`` passes (the last
    value returned, false): for figures that may legitimately never settle."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- the kill-wave client ---------------------------------------------------------------------

KILL_WAVE_CLIENT = r'''
"""A chaos client: opens ports of every kind in the daemon, then streams until killed."""
import json, os, socket, sys, time
import msgpack

cfg = json.loads(sys.argv[1])
deadline = time.monotonic() + cfg["lifetime"]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(cfg["daemon"])
unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
pack = msgpack.Packer(use_bin_type=True).pack
msgid = 0

def call(method, *params):
    global msgid
    msgid += 1
    sock.sendall(pack([0, msgid, method, list(params)]))
    while True:
        for m in unpacker:
            if m[0] == 1 and m[1] == msgid:
                if m[2] is not None:
                    raise SystemExit(f"{method}: {m[2]}")
                return m[3]
        data = sock.recv(1 << 16)
        if not data:
            raise SystemExit("daemon closed")
        unpacker.feed(data)

tcp = call("connect_tcp", "127.0.0.1", cfg["echo_port"])
unix = call("connect_unix", cfg["echo_unix"])
ltcp, (host, lport) = call("listen_tcp", "127.0.0.1", 0)
lunix = call("listen_unix", cfg["listen_unix"])
call("send_after", 300.0, "never")
call("interval", 0.02)
peers = [socket.create_connection(("127.0.0.1", lport))]
p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
p.connect(cfg["listen_unix"])
peers.append(p)
for p in peers:
    p.setblocking(False)
payload = os.urandom(cfg["chunk"])
sends = pack([2, "send", [tcp, payload]]) + pack([2, "send", [unix, payload]])
out = bytearray()
sock.setblocking(False)
print("ready", flush=True)
while time.monotonic() < deadline:
    if len(out) < (1 << 18):
        out += sends
    try:
        del out[: sock.send(out)]
    except BlockingIOError:
        pass
    for p in peers:
        try:
            p.send(payload)
        except BlockingIOError:
            pass
    if cfg["reads"]:
        try:
            while sock.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
    time.sleep(0.005)
'''
"""Run as ``python -c KILL_WAVE_CLIENT <json>``; prints ``ready`` once every port is
open. ``reads`` false: it never reads its daemon socket, so its session's buffer
fills (the sink is full when it dies)."""
