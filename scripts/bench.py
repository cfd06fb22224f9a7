#!/usr/bin/env python3
"""Benchmarks: ioserver against its peers, the same workload for every contender, in one process.

Usage (from the repository root)::

    .venv/bin/python scripts/bench.py channels             # 7 rounds, about 2 minutes
    .venv/bin/python scripts/bench.py channels --quick     # 3 rounds, N=100000, about 30 s
    .venv/bin/python scripts/bench.py channels --only spsc,round_trip --rounds 3
    .venv/bin/python scripts/bench.py channels --json results.json

What each workload does, with its sizes, is in docs/benchmarks.md.

How a workload is measured (``measure``): every contender first runs once, small and
untimed (a warm-up that also catches a broken contender early); then round r runs every
contender once, in an order rotated by r. Each run returns the seconds its timed part took.
Reported: the median over rounds of the metric (msgs/s, or µs per operation), the
contender/baseline ratio of each round, and the median of those ratios. Ratios are always
"contender metric / baseline metric": for msgs/s higher is better, for µs lower is better.

Robustness: every loop is bounded by N; worker threads are daemons joined with a timeout;
a contender that raises or hangs is reported as "error: ..." or "timeout" in its cell and
is skipped for the remaining rounds, and the suite goes on.

Progress goes to stderr (one line per round of a workload), results to stdout: a machine
line first, then the table, then the targets block.

Adding a suite (``io`` and ``daemon`` are to come): write ``def run_x(cfg: Config) ->
list[Row]`` (usually a few ``measure(...)`` calls), decorate it with ``@suite("x", "help",
targets=[...])``, and it becomes the subcommand ``x``. Honour ``cfg.only`` (workload names)
and ``cfg.contender`` (a substring filter) so a profiler can run one loop alone, e.g.::

    py-spy record -o spsc.svg -- .venv/bin/python scripts/bench.py channels \\
        --only spsc --contender 'Channel()' --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import importlib.metadata
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import repeat
from pathlib import Path
from time import perf_counter
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# ---------------------------------------------------------------------------------------
# Harness: configuration, rows, the suite registry


@dataclass
class Config:
    """Options shared by every suite."""

    rounds: int
    n: int  # messages for streaming workloads; round trips are n // 10
    quick: bool
    timeout: float  # seconds one run of one contender may take before it is "timeout"
    only: set[str] | None = None  # workload names to run (None: all)
    contender: str | None = None  # run only contenders whose name contains this

    def wants(self, workload: str) -> bool:
        return self.only is None or workload in self.only


@dataclass
class Row:
    """One contender in one workload: per-round values, ratios to the baseline, status."""

    workload: str
    contender: str
    unit: str  # "msgs/s" (higher is better) or "µs/rt", "µs/call" (lower is better)
    baseline: str  # name of the baseline contender of this workload
    values: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    status: str = "ok"  # "ok", "timeout", "error: ...", "skipped"
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def is_baseline(self) -> bool:
        return self.contender == self.baseline

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median"] = self.median
        d["median_ratio"] = self.ratio
        return d


@dataclass(frozen=True)
class Target:
    """A goal on a median ratio: ``workload``/``contender`` ratio ``op`` ``bound``."""

    workload: str
    contender: str
    op: str  # ">=" or "<="
    bound: float
    label: str

    def check(self, rows: Sequence[Row]) -> tuple[str, str]:
        """("PASS" | "MISS", what was measured)."""
        for row in rows:
            if row.workload == self.workload and row.contender == self.contender:
                r = row.ratio
                if r is None:
                    return "MISS", f"no ratio ({row.status})"
                ok = r >= self.bound if self.op == ">=" else r <= self.bound
                return ("PASS" if ok else "MISS"), f"{r:.2f}x"
        return "n/a ", "not run"


@dataclass
class Suite:
    name: str
    help: str
    run: Callable[[Config], list[Row]]
    targets: list[Target]


SUITES: dict[str, Suite] = {}


def suite(
    name: str, help: str, targets: Sequence[Target] = ()
) -> Callable[[Callable[[Config], list[Row]]], Callable[[Config], list[Row]]]:
    """Register ``fn(cfg) -> rows`` as the subcommand ``name``."""

    def register(fn: Callable[[Config], list[Row]]) -> Callable[[Config], list[Row]]:
        SUITES[name] = Suite(name, help, fn, list(targets))
        return fn

    return register


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Harness: running threads with a deadline, measuring contenders in rotated rounds


class RunTimeout(Exception):
    """A run did not finish within ``Config.timeout``."""


def run_threads(funcs: Sequence[Callable[[], object]], timeout: float) -> None:
    """Run each function in a daemon thread (started in order); wait at most ``timeout``.

    Raises the first exception a thread raised, or RunTimeout if one is still running at
    the deadline (it is left behind: it is a daemon, and blocked rather than spinning).
    """
    errors: list[BaseException] = []

    def guarded(f: Callable[[], object]) -> None:
        try:
            f()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(f,), daemon=True, name=f"bench-{i}")
        for i, f in enumerate(funcs)
    ]
    for t in threads:
        t.start()
    deadline = perf_counter() + timeout
    for t in threads:
        while t.is_alive() and not errors:
            left = deadline - perf_counter()
            if left <= 0:
                raise RunTimeout
            t.join(min(left, 0.1))
        if errors:
            raise errors[0]


@dataclass
class Contender:
    """``run(n)`` performs the workload once with size ``n`` and returns the timed seconds."""

    name: str
    run: Callable[[int], float]
    note: str = ""


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "msgs/s":
        return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def measure(
    cfg: Config,
    workload: str,
    contenders: Sequence[Contender],
    *,
    n: int,
    unit: str,
    baseline: str,
) -> list[Row]:
    """Warm up, then run every contender once per round in rotated order; return rows.

    ``unit`` "msgs/s" turns seconds into n / seconds; a "µs/..." unit into µs per op.
    """
    if cfg.contender:
        contenders = [c for c in contenders if cfg.contender in c.name or c.name == baseline]
    rows = {c.name: Row(workload, c.name, unit, baseline, note=c.note) for c in contenders}

    def one(c: Contender, size: int) -> float | None:
        row = rows[c.name]
        if row.status != "ok":
            return None
        gc.collect()
        try:
            seconds = c.run(size)
        except RunTimeout:
            row.status = "timeout"
            return None
        except Exception as exc:
            row.status = f"error: {type(exc).__name__}: {exc}"[:60]
            return None
        return size / seconds if unit == "msgs/s" else seconds / size * 1e6

    warm = max(n // 20, 50)
    for c in contenders:
        one(c, warm)
    for r in range(cfg.rounds):
        k = r % len(contenders)
        order = list(contenders[k:]) + list(contenders[:k])
        got: dict[str, float] = {}
        for c in order:
            v = one(c, n)
            if v is not None:
                got[c.name] = v
                rows[c.name].values.append(v)
        base = got.get(baseline)
        if base is not None:
            for name, v in got.items():
                rows[name].ratios.append(v / base)
        shown = ", ".join(
            f"{c.name} {fmt_value(got.get(c.name), unit) if c.name in got else rows[c.name].status}"
            for c in contenders
        )
        progress(f"  {workload} round {r + 1}/{cfg.rounds} ({unit}): {shown}")
    return list(rows.values())


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


# ---------------------------------------------------------------------------------------
# channels: contenders shared by spsc and mpsc


class DequeCondition:
    """Reference queue: deque, lock-free fast paths, Condition slow path.

    ``put`` appends, then notifies only if a waiter flag is set; ``get`` pops, and only
    when the deque is empty takes the Condition, sets the flag, *then* re-checks the
    deque before waiting. A producer appends before it reads the flag, so either the
    re-check sees the item or the producer sees the flag and notifies (under the lock,
    which the getter holds until ``wait`` releases it): no lost wakeup. One consumer.
    """

    def __init__(self) -> None:
        self._buf: deque[Any] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0

    def put(self, item: Any) -> None:
        self._buf.append(item)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def get(self) -> Any:
        try:
            return self._buf.popleft()
        except IndexError:
            pass
        with self._cond:
            self._waiting += 1
            try:
                while True:
                    try:
                        return self._buf.popleft()
                    except IndexError:
                        self._cond.wait()
            finally:
                self._waiting -= 1


class LoopThread:
    """A uvloop (else asyncio) event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        try:
            import uvloop

            self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, daemon=True, name="bench-loop")
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Awaitable[Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def call(self, coro: Awaitable[Any], timeout: float) -> Any:
        try:
            return self.submit(coro).result(timeout)
        except concurrent.futures.TimeoutError:
            raise RunTimeout from None

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class Pipe:
    """A stream under test: a send callable per producer, one recv callable."""

    make_sender: Callable[[], Callable[[Any], Any]]
    recv: Callable[[], Any]
    close: Callable[[], None] = lambda: None
    items: Callable[[int], Iterable[Any]] = range  # what a producer sends, count -> iterable


SMALL_BYTES = b"12345678"


def _pipe_of(put: Callable[[Any], Any], get: Callable[[], Any]) -> Pipe:
    return Pipe(make_sender=lambda: put, recv=get)


def _janus_pipe(producers: int) -> Pipe:
    import janus

    lt = LoopThread()

    async def make() -> Any:
        return janus.Queue()

    q = lt.call(make(), 10.0)

    def close() -> None:
        q.close()
        lt.stop()

    return Pipe(make_sender=lambda: q.sync_q.put, recv=q.sync_q.get, close=close)


def _culsans_pipe(producers: int) -> Pipe:
    import culsans

    q: Any = culsans.Queue()
    return _pipe_of(q.sync_q.put, q.sync_q.get)


def _aiologic_pipe(producers: int) -> Pipe:
    import aiologic

    q: Any = aiologic.SimpleQueue()
    return _pipe_of(q.green_put, q.green_get)


def _zmq_pipe(producers: int) -> Pipe:
    """PAIR for one producer; PUSH/PULL for several (a PAIR is strictly one-to-one)."""
    import zmq

    ctx = zmq.Context()
    addr = f"inproc://bench-{id(ctx)}"
    sockets: list[Any] = []
    if producers == 1:
        rx = ctx.socket(zmq.PAIR)
        rx.bind(addr)
        tx = ctx.socket(zmq.PAIR)
        tx.connect(addr)
        sockets += [rx, tx]

        def make_sender() -> Callable[[Any], Any]:
            return tx.send  # type: ignore[no-any-return]

    else:
        rx = ctx.socket(zmq.PULL)
        rx.bind(addr)
        sockets.append(rx)

        def make_sender() -> Callable[[Any], Any]:
            s = ctx.socket(zmq.PUSH)
            s.connect(addr)
            sockets.append(s)
            return s.send  # type: ignore[no-any-return]

    def close() -> None:
        for s in sockets:
            s.close(linger=0)
        ctx.term()

    return Pipe(make_sender, rx.recv, close, items=lambda count: repeat(SMALL_BYTES, count))


def stream_contenders(producers: int) -> list[tuple[str, Callable[[int], Pipe], str]]:
    """(name, factory(producers) -> Pipe, note) for spsc and mpsc."""
    from ioserver import Channel

    def simple(p: int) -> Pipe:
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        return _pipe_of(q.put, q.get)

    def unbounded(p: int) -> Pipe:
        ch: Channel[Any] = Channel()
        return _pipe_of(ch.send, ch.recv)

    def bounded(p: int) -> Pipe:
        ch: Channel[Any] = Channel(capacity=1024)
        return _pipe_of(ch.send, ch.recv)

    def deque_cond(p: int) -> Pipe:
        q = DequeCondition()
        return _pipe_of(q.put, q.get)

    def std_queue(p: int) -> Pipe:
        q: queue.Queue[Any] = queue.Queue()
        return _pipe_of(q.put, q.get)

    if producers == 1:
        zmq_name, zmq_note = "zmq PAIR inproc", "8-byte bytes via send/recv (send_pyobj too slow)"
    else:
        zmq_name, zmq_note = "zmq PUSH/PULL inproc", "PUSH per producer -> PULL; 8-byte bytes"
    return [
        ("SimpleQueue", simple, "queue.SimpleQueue (C): the ceiling"),
        ("Channel()", unbounded, "ioserver, unbounded"),
        ("Channel(1024)", bounded, "ioserver, bounded"),
        ("deque+Condition", deque_cond, "reference in bench.py: lock-free fast path"),
        ("aiologic.SimpleQueue", _aiologic_pipe, "green_put / green_get"),
        (zmq_name, _zmq_pipe, zmq_note),
        ("janus", _janus_pipe, "sync_q put/get; made on a helper loop thread"),
        ("culsans", _culsans_pipe, "sync_q put/get"),
        ("queue.Queue", std_queue, ""),
    ]


def stream_run(factory: Callable[[int], Pipe], producers: int, n: int, timeout: float) -> float:
    """``producers`` threads send n messages in all to one consumer thread."""
    pipe = factory(producers)
    per = max(n // producers, 1)
    total = per * producers
    starts: list[float] = []
    ends: list[float] = []
    barrier = threading.Barrier(producers + 1)

    def consumer() -> None:
        recv = pipe.recv
        barrier.wait(timeout)
        starts.append(perf_counter())
        for _ in range(total):
            recv()
        ends.append(perf_counter())

    def producer(send: Callable[[Any], Any], items: Iterable[Any]) -> None:
        barrier.wait(timeout)
        starts.append(perf_counter())
        for x in items:
            send(x)

    workers: list[Callable[[], object]] = [consumer]
    for _ in range(producers):
        workers.append(partial(producer, pipe.make_sender(), pipe.items(per)))
    run_threads(workers, timeout)  # on failure the pipe is left as it is (threads may hold it)
    pipe.close()
    return (ends[0] - min(starts)) * n / total


# ---------------------------------------------------------------------------------------
# channels: thread -> coroutine


@dataclass
class AsyncPipe:
    send: Callable[[Any], Any]  # sync, called from a plain thread
    arecv: Callable[[], Awaitable[Any]]  # awaited on the loop


def t2c_contenders() -> list[tuple[str, Callable[[], Awaitable[AsyncPipe]], str]]:
    from ioserver import Channel

    async def unbounded() -> AsyncPipe:
        ch: Channel[Any] = Channel()
        return AsyncPipe(ch.send, ch.arecv)

    async def bounded() -> AsyncPipe:
        ch: Channel[Any] = Channel(capacity=1024)
        return AsyncPipe(ch.send, ch.arecv)

    async def janus_q() -> AsyncPipe:
        import janus

        q: Any = janus.Queue()
        return AsyncPipe(q.sync_q.put, q.async_q.get)

    async def culsans_q() -> AsyncPipe:
        import culsans

        q: Any = culsans.Queue()
        return AsyncPipe(q.sync_q.put, q.async_q.get)

    async def aiologic_q() -> AsyncPipe:
        import aiologic

        q: Any = aiologic.SimpleQueue()
        return AsyncPipe(q.green_put, q.async_get)

    async def call_soon() -> AsyncPipe:
        q: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        return AsyncPipe(partial(loop.call_soon_threadsafe, q.put_nowait), q.get)

    return [
        ("janus", janus_q, "sync_q.put -> await async_q.get()"),
        ("Channel()", unbounded, "ioserver: send -> await arecv()"),
        ("Channel(1024)", bounded, "ioserver, bounded"),
        ("culsans", culsans_q, "sync_q.put -> await async_q.get()"),
        ("aiologic.SimpleQueue", aiologic_q, "green_put -> await async_get()"),
        ("call_soon_threadsafe", call_soon, "reference: asyncio.Queue.put_nowait via the loop"),
    ]


def t2c_run(factory: Callable[[], Awaitable[AsyncPipe]], n: int, timeout: float) -> float:
    """One thread sends n messages to a coroutine on a uvloop loop in another thread."""
    lt = LoopThread()
    fut: concurrent.futures.Future[Any] | None = None
    try:
        pipe: AsyncPipe = lt.call(factory(), timeout)
        ready = threading.Event()
        ends: list[float] = []

        async def consumer() -> None:
            arecv = pipe.arecv
            ready.set()
            for _ in range(n):
                await arecv()
            ends.append(perf_counter())

        fut = lt.submit(consumer())
        if not ready.wait(timeout):
            raise RunTimeout
        starts: list[float] = []

        def producer() -> None:
            send = pipe.send
            starts.append(perf_counter())
            for i in range(n):
                send(i)

        t0 = perf_counter()
        run_threads([producer], timeout)
        try:
            fut.result(max(0.0, timeout - (perf_counter() - t0)))
        except concurrent.futures.TimeoutError:
            raise RunTimeout from None
        return ends[0] - starts[0]
    finally:
        if fut is not None and not fut.done():
            fut.cancel()
        lt.stop()


# ---------------------------------------------------------------------------------------
# channels: round trips (ping-pong, select echo) and select polling


def pair_run(
    client: Callable[[int], float], server: Callable[[int], None], n: int, t: float
) -> float:
    """Start ``server(n)``, then ``client(n)``; the client returns its own elapsed time."""
    elapsed: list[float] = []
    run_threads([partial(server, n), lambda: elapsed.append(client(n))], t)
    return elapsed[0]


def queue_pingpong(
    make: Callable[[], tuple[Any, Any]], put: str, get: str
) -> Callable[[int, float], float]:
    """Ping-pong over two queue-like objects with methods ``put``/``get``."""

    def run(n: int, timeout: float) -> float:
        ping, pong = make()

        def client(n: int) -> float:
            send, recv = getattr(ping, put), getattr(pong, get)
            t0 = perf_counter()
            for i in range(n):
                send(i)
                recv()
            return perf_counter() - t0

        def server(n: int) -> None:
            send, recv = getattr(pong, put), getattr(ping, get)
            for _ in range(n):
                send(recv())

        return pair_run(client, server, n, timeout)

    return run


def lock_pingpong(n: int, timeout: float) -> float:
    """Two locks, both held at first; each side releases the other's and acquires its own."""
    ping = threading.Lock()
    pong = threading.Lock()
    ping.acquire()
    pong.acquire()

    def client(n: int) -> float:
        release, acquire = ping.release, pong.acquire
        t0 = perf_counter()
        for _ in range(n):
            release()
            acquire()
        return perf_counter() - t0

    def server(n: int) -> None:
        acquire, release = ping.acquire, pong.release
        for _ in range(n):
            acquire()
            release()

    return pair_run(client, server, n, timeout)


def select_echo(use_select: bool) -> Callable[[int, float], float]:
    """A client sends a request and waits for the echo: recv() on the reply channel, or
    select over it and three channels that never get a message."""
    from ioserver import Channel, select

    def run(n: int, timeout: float) -> float:
        req: Channel[Any] = Channel()
        reply: Channel[Any] = Channel()
        idle: list[Channel[Any]] = [Channel(), Channel(), Channel()]
        c2, c3, c4 = idle

        def client(n: int) -> float:
            send, recv = req.send, reply.recv
            t0 = perf_counter()
            if use_select:
                for i in range(n):
                    send(i)
                    select(reply, c2, c3, c4)
            else:
                for i in range(n):
                    send(i)
                    recv()
            return perf_counter() - t0

        def server(n: int) -> None:
            send, recv = reply.send, req.recv
            for _ in range(n):
                send(recv())

        return pair_run(client, server, n, timeout)

    return run


def poll_run(kind: str) -> Callable[[int, float], float]:
    """Non-blocking calls in one thread: select(..., timeout=0) on empty channels, select on
    four channels of which one is ready, and try_recv on one channel as the baselines."""
    from ioserver import Channel, Empty, select

    def run(n: int, timeout: float) -> float:
        a: Channel[Any] = Channel()
        b: Channel[Any] = Channel()
        c: Channel[Any] = Channel()
        d: Channel[Any] = Channel()
        if kind.endswith("ready"):
            for i in range(n):
                a.send(i)
        elapsed: list[float] = []

        def body() -> None:
            t0 = perf_counter()
            if kind == "select_empty":
                for _ in range(n):
                    try:
                        select(a, b, c, d, timeout=0)
                    except TimeoutError:
                        pass
            elif kind == "try_recv_empty":
                try_recv = a.try_recv
                for _ in range(n):
                    try:
                        try_recv()
                    except Empty:
                        pass
            elif kind == "select_ready":
                for _ in range(n):
                    select(a, b, c, d)
            else:  # try_recv_ready
                try_recv = a.try_recv
                for _ in range(n):
                    try_recv()
            elapsed.append(perf_counter() - t0)

        run_threads([body], timeout)
        return elapsed[0]

    return run


# ---------------------------------------------------------------------------------------
# The channels suite


CHANNEL_TARGETS = [
    Target("spsc", "Channel()", ">=", 0.5, "spsc: Channel() >= 0.5x SimpleQueue"),
    Target("mpsc", "Channel()", ">=", 0.5, "mpsc: Channel() >= 0.5x SimpleQueue"),
    Target("spsc", "Channel(1024)", ">=", 0.4, "spsc: Channel(1024) >= 0.4x SimpleQueue"),
    Target("mpsc", "Channel(1024)", ">=", 0.4, "mpsc: Channel(1024) >= 0.4x SimpleQueue"),
    Target("thread_to_coroutine", "Channel()", ">=", 20, "thread->coro: Channel() >= 20x janus"),
    Target(
        "thread_to_coroutine", "Channel(1024)", ">=", 20, "thread->coro: Channel(1024) >= 20x janus"
    ),
    Target("select_echo", "select(4)", "<=", 2.0, "select echo <= 2x recv echo"),
    Target("round_trip", "Channel", "<=", 1.2, "round trip: Channel <= 1.2x Lock ping-pong"),
]


@suite(
    "channels",
    "Channel vs queue.SimpleQueue, janus, culsans, aiologic, zmq, Lock ping-pong",
    targets=CHANNEL_TARGETS,
)
def run_channels(cfg: Config) -> list[Row]:
    rows: list[Row] = []
    n, trips, polls, to = cfg.n, max(cfg.n // 10, 10), max(cfg.n // 4, 10), cfg.timeout

    for workload, producers in (("spsc", 1), ("mpsc", 4)):
        if not cfg.wants(workload):
            continue
        progress(f"{workload}: {producers} producer thread(s) -> 1 consumer thread, N={n}")
        contenders = [
            Contender(name, partial(stream_run, factory, producers, timeout=to), note)
            for name, factory, note in stream_contenders(producers)
        ]
        rows += measure(cfg, workload, contenders, n=n, unit="msgs/s", baseline="SimpleQueue")

    if cfg.wants("thread_to_coroutine"):
        progress(f"thread_to_coroutine: 1 thread -> 1 coroutine on uvloop (own thread), N={n}")
        contenders = [
            Contender(name, partial(t2c_run, factory, timeout=to), note)
            for name, factory, note in t2c_contenders()
        ]
        rows += measure(
            cfg, "thread_to_coroutine", contenders, n=n, unit="msgs/s", baseline="janus"
        )

    if cfg.wants("select_echo"):
        progress(f"select_echo: client thread <-> echo thread, {trips} round trips")
        contenders = [
            Contender("recv", partial(select_echo(False), timeout=to), "blocking reply.recv()"),
            Contender(
                "select(4)",
                partial(select_echo(True), timeout=to),
                "select(reply, c2, c3, c4); only reply gets messages",
            ),
        ]
        rows += measure(cfg, "select_echo", contenders, n=trips, unit="µs/rt", baseline="recv")
        for state in ("empty", "ready"):
            name = f"select_poll_{state}"
            progress(f"{name}: one thread, {polls} non-blocking calls")
            what = "4 empty channels, timeout=0" if state == "empty" else "4 channels, 1 ready"
            base = "empty: catches Empty" if state == "empty" else "ready"
            contenders = [
                Contender(
                    "try_recv",
                    partial(poll_run(f"try_recv_{state}"), timeout=to),
                    f"1 channel, {base}",
                ),
                Contender("select(4)", partial(poll_run(f"select_{state}"), timeout=to), what),
            ]
            rows += measure(cfg, name, contenders, n=polls, unit="µs/call", baseline="try_recv")

    if cfg.wants("round_trip"):
        progress(f"round_trip: thread <-> thread ping-pong, {trips} round trips")

        def channels() -> tuple[Any, Any]:
            from ioserver import Channel

            return Channel(), Channel()

        contenders = [
            Contender("Lock", partial(lock_pingpong, timeout=to), "two threading.Lock"),
            Contender(
                "Channel",
                partial(queue_pingpong(channels, "send", "recv"), timeout=to),
                "two Channel()",
            ),
            Contender(
                "SimpleQueue",
                partial(
                    queue_pingpong(
                        lambda: (queue.SimpleQueue(), queue.SimpleQueue()), "put", "get"
                    ),
                    timeout=to,
                ),
                "two queue.SimpleQueue",
            ),
            Contender(
                "queue.Queue",
                partial(
                    queue_pingpong(lambda: (queue.Queue(), queue.Queue()), "put", "get"),
                    timeout=to,
                ),
                "two queue.Queue",
            ),
        ]
        rows += measure(cfg, "round_trip", contenders, n=trips, unit="µs/rt", baseline="Lock")
    return rows


# ---------------------------------------------------------------------------------------
# Output


def render_table(rows: Sequence[Row]) -> str:
    header = ["workload", "contender", "median", "unit", "x base", "per-round ratio", "note"]
    lines: list[list[str]] = []
    for row in rows:
        if row.status != "ok" and not row.values:
            median = row.status
        else:
            median = fmt_value(row.median, row.unit)
            if row.status != "ok":
                median += f" ({row.status})"
        if row.is_baseline:
            ratio, rounds = "1 (base)", ""
        else:
            ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
            rounds = " ".join(f"{r:.2f}" for r in row.ratios)
        lines.append([row.workload, row.contender, median, row.unit, ratio, rounds, row.note])
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(header)]
    out = []
    for cells in [header, ["-" * w for w in widths], *lines]:
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def render_targets(name: str, targets: Sequence[Target], rows: Sequence[Row]) -> str:
    out = [f"targets ({name}, median ratios):"]
    for t in targets:
        verdict, got = t.check(rows)
        out.append(f"  {verdict}  {t.label:<46} measured {got}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rounds", type=int, help="rounds per workload (default 7; --quick 3)")
    common.add_argument(
        "--n",
        type=int,
        help="messages per streaming run (default 200000; --quick 100000); "
        "round trips are N/10, polls N/4",
    )
    common.add_argument("--quick", action="store_true", help="3 rounds, N=100000 (about 30 s)")
    common.add_argument("--json", metavar="FILE", help="also write machine, rows and targets here")
    common.add_argument("--only", metavar="W[,W]", help="run only these workloads")
    common.add_argument("--contender", metavar="SUBSTR", help="run only matching contenders")
    common.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per run before 'timeout' (30)"
    )
    parser = argparse.ArgumentParser(
        description="ioserver benchmarks: every contender in one process, rotated rounds. "
        "Options go after the suite: bench.py channels --quick (see bench.py SUITE --help).",
    )
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for s in SUITES.values():
        sub.add_parser(s.name, help=s.help, description=s.help, parents=[common])
    args = parser.parse_args(argv)

    cfg = Config(
        rounds=args.rounds or (3 if args.quick else 7),
        n=args.n or (100_000 if args.quick else 200_000),
        quick=args.quick,
        timeout=args.timeout,
        only=set(args.only.split(",")) if args.only else None,
        contender=args.contender,
    )
    chosen = SUITES[args.suite]
    info = machine_info()
    print(machine_line(info), flush=True)
    progress(f"suite {chosen.name}: rounds={cfg.rounds} N={cfg.n}")
    t0 = perf_counter()
    meter = BusyMeter()
    rows = chosen.run(cfg)
    others = meter.others()
    elapsed = perf_counter() - t0
    progress(f"suite {chosen.name}: done in {elapsed:.0f} s")
    print(render_table(rows))
    print()
    print(render_targets(chosen.name, chosen.targets, rows))
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    busy = "unknown" if others is None else f"{others:.2f} of {os.cpu_count()} cores"
    print(
        f"\nrun took {elapsed:.0f} s; other processes kept busy {busy} on average; "
        f"load average at start {info['load']}, at end {load_end}"
    )
    if args.json:
        payload = {
            "machine": info,
            "load_end": load_end,
            "other_processes_busy_cores": others,
            "seconds": round(elapsed, 1),
            "suite": chosen.name,
            "rounds": cfg.rounds,
            "n": cfg.n,
            "rows": [r.as_dict() for r in rows],
            "targets": [
                {**asdict(t), "verdict": t.check(rows)[0], "measured": t.check(rows)[1]}
                for t in chosen.targets
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
