"""The ``daemon`` suite: the standalone daemon (``python -m ioserver serve``) as a
real subprocess, against the same workloads run embedded.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from functools import partial
from itertools import repeat
from pathlib import Path
from time import perf_counter, sleep
from typing import Any

from .channels import LoopThread
from .harness import (
    ROOT,
    Config,
    Contender,
    Row,
    RunResult,
    RunTimeout,
    Target,
    measure,
    progress,
    run_threads,
    suite,
)
from .io import (
    ECHO_CONNS,
    ECHO_HOST,
    ECHO_MSG,
    ECHO_STALL,
    IDLE_SECONDS,
    EchoServer,
    absolute_rounds,
    echo_ports,
    raise_nofile,
    rt_run,
    served,
    timed_in_thread,
)

# ---------------------------------------------------------------------------------------
# daemon: the standalone daemon (``python -m ioserver serve``) as a real subprocess

DAEMON_SESSIONS = 1100  # the bench daemon's limits.sessions: room for idle_sessions' 1000
DAEMON_START = 30.0  # seconds the daemon may take to say where it listens, or to exit
DAEMON_CONFIG = """\
[server]
log_level = "warning"

[limits]
sessions = {sessions}
"""
IDLE_SESSIONS = 1000
IDLE_WARM_SESSIONS = 10  # sessions opened (and kept) before the "before" RSS reading
PIPE_WRITES = 300_000  # small writes per pipelined_writes run (--quick: 100,000)
PIPE_MSG = b"w" * 64


class DaemonProc:
    """``python -m ioserver serve --config C --socket S`` in a fresh temp dir, with a config
    that admits DAEMON_SESSIONS sessions and logs warnings only; stderr goes to a file there.

    ``start()`` waits (bounded) for the line where the daemon says it listens; ``stop()``
    sends SIGTERM (SIGKILL if it has not exited after DAEMON_START s) and removes the dir.
    As a context manager it is always stopped, also when ``start()`` fails.
    """

    def __init__(self, sessions: int = DAEMON_SESSIONS) -> None:
        self.dir = tempfile.mkdtemp(prefix="iosbench-", dir="/tmp")  # short: sun_path <= 108
        self.socket_path = os.path.join(self.dir, "ioserver.sock")
        self.config_path = os.path.join(self.dir, "ioserver.toml")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        Path(self.config_path).write_text(DAEMON_CONFIG.format(sessions=sessions))
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> DaemonProc:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stderr(self) -> str:
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = DAEMON_START) -> DaemonProc:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        argv = [sys.executable, "-m", "ioserver", "serve", "--config", self.config_path]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*argv, "--socket", self.socket_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
        deadline = perf_counter() + timeout
        while "listening on" not in self.stderr():
            if self.proc.poll() is not None:
                tail = self.stderr().strip()[-200:]
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}: {tail}")
            if perf_counter() > deadline:
                raise RunTimeout
            sleep(0.02)
        return self

    def stop(self, timeout: float = DAEMON_START) -> int | None:
        """SIGTERM and wait; the exit code (None if it never started). Idempotent."""
        try:
            if self.proc is not None and self.returncode is None:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                try:
                    self.returncode = self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    progress(f"  daemon pid {self.pid} ignored SIGTERM for {timeout} s: killed")
                    self.proc.kill()
                    self.returncode = self.proc.wait(timeout)
                said = [ln for ln in self.stderr().splitlines() if "listening on" not in ln]
                if self.returncode != 0 or said:
                    last = said[-1][:160] if said else ""
                    progress(
                        f"  daemon pid {self.pid} exited with {self.returncode}; "
                        f"{len(said)} stderr line(s) {last}"
                    )
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.returncode

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon process (all its threads), from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """VmRSS of the daemon process, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")


def with_cpu(
    run: Callable[[int], RunResult], daemon: DaemonProc | None
) -> Callable[[int], RunResult]:
    """Add side metrics to a contender's run: the CPU this process ("bench %core") and,
    if given, the daemon ("daemon %core") used over the whole run (setup included), in %
    of one core. The bench process also runs the sink server thread (the echo server is
    a child process)."""

    def wrapped(n: int) -> RunResult:
        own0, w0 = sum(os.times()[:2]), perf_counter()
        d0 = None if daemon is None else daemon.cpu_seconds()
        got = run(n)
        wall = perf_counter() - w0
        value, extras = got if isinstance(got, tuple) else (got, {})
        extras = {**extras, "bench %core": 100 * (sum(os.times()[:2]) - own0) / wall}
        if daemon is not None and d0 is not None:
            extras["daemon %core"] = 100 * (daemon.cpu_seconds() - d0) / wall
        return value, extras

    return wrapped


def ping_run(daemon: str, n: int, timeout: float) -> float:
    """n ``remote.ping()`` round trips to the daemon from a client thread."""
    with served(daemon, timeout) as remote:

        def body() -> float:
            ping = remote.ping
            t0 = perf_counter()
            for _ in range(n):
                ping()
            return perf_counter() - t0

        return timed_in_thread(body, timeout)


def echo_rt_run(daemon: str | None, port: int, n: int, timeout: float) -> float:
    """One TCP port to the echo server (embedded, or opened by the daemon): n times, send
    64 bytes and receive until the 64 bytes are back; one message outstanding."""
    from ioserver.messages import Data

    with served(daemon, timeout) as io:
        conn = io.connect_tcp(ECHO_HOST, port, timeout=ECHO_STALL)

        def body() -> float:
            send, recv = conn.send, conn.recv
            t0 = perf_counter()
            for _ in range(n):
                send(ECHO_MSG)
                got = 0
                while got < 64:
                    msg = recv(ECHO_STALL)
                    if type(msg) is not Data:
                        raise ConnectionError(f"unexpected {msg!r}")
                    got += len(msg.data)
            return perf_counter() - t0

        try:
            return timed_in_thread(body, timeout)
        finally:
            conn.close()


class SinkServer:
    """A uvloop TCP server in its own thread whose connections only count bytes.

    ``arm(total)`` before connecting: the next connection records the time it has
    received ``total`` bytes and sets the returned event (both on the loop thread).
    """

    class Sink(asyncio.Protocol):
        def __init__(self, owner: SinkServer) -> None:
            self.want, self.done, self.ends = owner.armed
            self.got = 0

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= self.want and not self.ends:
                self.ends.append(perf_counter())
                self.done.set()

    def __init__(self, timeout: float) -> None:
        self.lt = LoopThread()
        self.armed: tuple[int, threading.Event, list[float]] = (0, threading.Event(), [])

        async def start() -> Any:
            return await asyncio.get_running_loop().create_server(
                lambda: self.Sink(self), ECHO_HOST, 0
            )

        self.server = self.lt.call(start(), timeout)
        self.port: int = self.server.sockets[0].getsockname()[1]

    def arm(self, total: int) -> tuple[threading.Event, list[float]]:
        done, ends = threading.Event(), list[float]()
        self.armed = (total, done, ends)
        return done, ends

    def stop(self) -> None:
        self.lt.loop.call_soon_threadsafe(self.server.close)
        self.lt.stop()


def pipelined_run(daemon: str | None, sink: SinkServer, n: int, timeout: float) -> RunResult:
    """One client thread: n ``port.send(64 bytes)`` as fast as it can to the sink; timed
    from the first send to the sink having received all n * 64 bytes. Writes/s; side
    metric: the rate of the send loop itself (k/s)."""
    done, ends = sink.arm(n * len(PIPE_MSG))
    with served(daemon, timeout) as io:
        conn = io.connect_tcp(ECHO_HOST, sink.port, timeout=ECHO_STALL)
        marks: list[float] = []

        def body() -> None:
            send, msg = conn.send, PIPE_MSG
            marks.append(perf_counter())
            for _ in repeat(None, n):
                send(msg)
            marks.append(perf_counter())

        try:
            t0 = perf_counter()
            run_threads([body], timeout)
            if not done.wait(max(0.0, timeout - (perf_counter() - t0))):
                raise RunTimeout
        finally:
            conn.close()
        return n / (ends[0] - marks[0]), {"send loop k/s": n / (marks[1] - marks[0]) / 1e3}


def _rpc(sock: socket.socket, method: str, *params: Any) -> Any:
    """One msgpack-rpc request on a raw blocking socket; its result (errors raised)."""
    from ioserver import protocol

    conn = protocol.Connection()
    sock.sendall(conn.request(1, method, list(params)))
    while True:
        event = conn.next_event()
        if event is protocol.NEED_DATA:
            data = sock.recv(65536)  # bounded by the socket's timeout
            if not data:
                raise ConnectionError("the daemon closed the connection")
            conn.receive_data(data)
        elif isinstance(event, protocol.Response):
            if event.error is not None:
                raise protocol.wire_to_exception(event.error)
            return event.result
        elif isinstance(event, protocol.Notification):
            raise ConnectionError(f"daemon: {event.method} {event.params!r}"[:120])
        else:
            raise ConnectionError("the daemon closed the connection")


def open_sessions(path: str, count: int, timeout: float) -> list[socket.socket]:
    """``count`` raw Unix-socket connections to the daemon, each answered one ``ping``
    (so its session exists), left open and idle."""
    socks: list[socket.socket] = []
    deadline = perf_counter() + timeout
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(s)
            s.settimeout(ECHO_STALL)
            s.connect(path)
            if _rpc(s, "ping") != "pong":
                raise RuntimeError("ping did not answer pong")
            if perf_counter() > deadline:
                raise RunTimeout
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def idle_sessions_run(count: int, timeout: float) -> dict[str, float]:
    """A fresh daemon: IDLE_WARM_SESSIONS sessions first (first-use allocations), then its
    RSS; ``count`` more idle sessions, RSS again; then its CPU over IDLE_SECONDS."""
    with DaemonProc() as daemon:
        socks = open_sessions(daemon.socket_path, IDLE_WARM_SESSIONS, timeout)
        try:
            gc.collect()
            sleep(0.2)
            rss0 = daemon.rss_bytes()
            socks += open_sessions(daemon.socket_path, count, timeout)
            sleep(0.2)
            rss1 = daemon.rss_bytes()
            c0, w0 = daemon.cpu_seconds(), perf_counter()
            sleep(IDLE_SECONDS)
            c1, w1 = daemon.cpu_seconds(), perf_counter()
            sessions = _rpc(socks[0], "stats")["sessions"]
            if sessions != len(socks):
                raise RuntimeError(f"the daemon has {sessions} sessions, not {len(socks)}")
        finally:
            for s in socks:
                s.close()
        return {"RSS per session": (rss1 - rss0) / count, "idle CPU": 100 * (c1 - c0) / (w1 - w0)}


def run_idle_sessions(cfg: Config) -> list[Row]:
    """Absolute numbers, as idle_ports: a fresh daemon per round (so that memory freed by
    an earlier round is not reused), checked against nothing (report only)."""
    count = IDLE_SESSIONS
    units = {"RSS per session": "B/session", "idle CPU": "% core"}
    notes = {
        "RSS per session": f"daemon VmRSS growth / {count} raw Unix-socket sessions (1 ping each)",
        "idle CPU": f"daemon utime+stime / wall over {IDLE_SECONDS:.0f} s, {count} idle sessions",
    }
    rows = {k: Row("idle_sessions", k, u, baseline="", note=notes[k]) for k, u in units.items()}
    rounds = min(cfg.rounds, 1 if cfg.quick else 3)
    progress(f"idle_sessions: {count} idle sessions on a fresh daemon per round, {rounds} round(s)")
    return absolute_rounds(
        "idle_sessions", lambda: idle_sessions_run(count, cfg.timeout), rows, units, rounds
    )


# ---------------------------------------------------------------------------------------
# The daemon suite

DAEMON_TARGETS = [
    Target(
        "pipelined_writes",
        "remote port",
        ">=",
        100_000,
        "pipelined: remote >= 100k writes/s",
        metric="value",
    ),
    Target(
        "tcp_echo_100",
        "remote shared inbox",
        ">=",
        1.2,
        "tcp_echo_100: remote >= 1.2x embedded",
    ),
    Target("ping_rt", "remote.ping()", "<=", 3.0, "ping_rt: remote.ping <= 3x io.call"),
    Target("echo_rt", "remote port", "report", 0, "echo_rt: remote / embedded port"),
    Target("pipelined_writes", "remote port", "report", 0, "pipelined: remote / embedded"),
    Target("pipelined_writes", "embedded port", "report", 0, "pipelined: embedded", metric="value"),
    Target(
        "idle_sessions",
        "RSS per session",
        "report",
        0,
        "idle: daemon RSS per session",
        metric="value",
    ),
    Target(
        "idle_sessions", "idle CPU", "report", 0, "idle: daemon CPU, 1000 sessions", metric="value"
    ),
]

DAEMON_SHARED = ("ping_rt", "echo_rt", "pipelined_writes", "tcp_echo_100")


@suite(
    "daemon",
    "the ioserver daemon in a subprocess through client vs the same work embedded: "
    "ping, echo round trip, pipelined writes, 100-connection echo, idle sessions",
    targets=DAEMON_TARGETS,
)
def run_daemon(cfg: Config) -> list[Row]:
    rows: list[Row] = []
    why = raise_nofile(IDLE_SESSIONS + IDLE_WARM_SESSIONS + 256)  # before any daemon starts
    wanted = [w for w in DAEMON_SHARED if cfg.wants(w)]
    if wanted:
        daemon = DaemonProc()
        try:
            daemon.start()
            progress(f"daemon: pid {daemon.pid} on {daemon.socket_path}")
            rows += _daemon_workloads(cfg, daemon)
        except Exception as exc:
            status = f"error: {type(exc).__name__}: {exc}"[:60]
            rows += [Row(w, "(daemon)", "", "", status=status) for w in wanted]
        finally:
            daemon.stop()
    if cfg.wants("idle_sessions") and (
        not cfg.contender or any(cfg.contender in k for k in ("RSS per session", "idle CPU"))
    ):
        if why is None:
            rows += run_idle_sessions(cfg)
        else:
            progress(f"  idle_sessions skipped: {why}")
            rows.append(Row("idle_sessions", "(all)", "", "", status=f"skipped: {why}"))
    return rows


def _daemon_workloads(cfg: Config, daemon: DaemonProc) -> list[Row]:
    """The workloads that share the suite's one daemon and the in-process echo server."""
    rows: list[Row] = []
    trips, to, path = max(cfg.n // 10, 10), cfg.timeout, daemon.socket_path

    def remote(run: Callable[[int], RunResult]) -> Callable[[int], RunResult]:
        return with_cpu(run, daemon)

    def local(run: Callable[[int], RunResult]) -> Callable[[int], RunResult]:
        return with_cpu(run, None)

    if cfg.wants("ping_rt"):
        progress(f"ping_rt: client thread -> daemon -> back, one outstanding, {trips} trips")
        contenders = [
            Contender(
                "io.call(noop)",
                local(partial(rt_run, "ioserver", timeout=to)),
                "embedded IOServer().call(noop)",
            ),
            Contender(
                "remote.ping()",
                remote(partial(ping_run, path, timeout=to)),
                "ioserver_client.connect(socket).ping()",
            ),
        ]
        rows += measure(cfg, "ping_rt", contenders, n=trips, unit="µs/rt", baseline="io.call(noop)")

    echo_wanted = cfg.wants("echo_rt") or cfg.wants("tcp_echo_100")
    echo: EchoServer | None = None
    if echo_wanted:
        try:
            echo = EchoServer(to)
        except Exception as exc:
            rows.append(Row("echo_rt", "(echo server)", "rt/s", "", status=f"error: {exc}"))
    try:
        if echo is not None and cfg.wants("echo_rt"):
            progress(f"echo_rt: one TCP port, 64 B echo, one outstanding, {trips} round trips")
            contenders = [
                Contender(
                    "embedded port",
                    local(partial(echo_rt_run, None, echo.port, timeout=to)),
                    "io.connect_tcp; send, recv",
                ),
                Contender(
                    "remote port",
                    remote(partial(echo_rt_run, path, echo.port, timeout=to)),
                    "remote.connect_tcp (the daemon connects)",
                ),
            ]
            rows += measure(
                cfg, "echo_rt", contenders, n=trips, unit="µs/rt", baseline="embedded port"
            )

        if cfg.wants("pipelined_writes"):
            writes = 100_000 if cfg.quick else PIPE_WRITES
            progress(f"pipelined_writes: {writes} x port.send(64 B) from one thread to a sink")
            try:
                sink = SinkServer(to)
            except Exception as exc:
                rows.append(Row("pipelined_writes", "(sink)", "", "", status=f"error: {exc}"))
            else:
                try:
                    contenders = [
                        Contender(
                            "embedded port",
                            local(partial(pipelined_run, None, sink, timeout=to)),
                            "io.connect_tcp to the sink",
                        ),
                        Contender(
                            "remote port",
                            remote(partial(pipelined_run, path, sink, timeout=to)),
                            "remote.connect_tcp to the sink",
                        ),
                    ]
                    rows += measure(
                        cfg,
                        "pipelined_writes",
                        contenders,
                        n=writes,
                        unit="writes/s",
                        baseline="embedded port",
                        direct=True,
                    )
                finally:
                    sink.stop()

        if echo is not None and cfg.wants("tcp_echo_100"):
            ms = 1000 if cfg.quick else 2000
            progress(
                f"tcp_echo_100: {ECHO_CONNS} connections, 64 B ping-pong, one client thread, "
                f"{ms / 1000:.0f} s per run"
            )
            contenders = [
                Contender(
                    "io shared inbox",
                    local(partial(echo_ports, False, echo.port, timeout=to)),
                    "embedded: 100 ports, inbox=Channel(1024)",
                ),
                Contender(
                    "remote shared inbox",
                    remote(partial(echo_ports, False, echo.port, timeout=to, daemon=path)),
                    "100 remote ports, inbox=Channel(1024)",
                ),
            ]
            rows += measure(
                cfg,
                "tcp_echo_100",
                contenders,
                n=ms,
                unit="rt/s",
                baseline="io shared inbox",
                direct=True,
            )
    finally:
        if echo is not None:
            echo.stop()
    return rows
