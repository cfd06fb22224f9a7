#!/usr/bin/env python3
"""Benchmarks: ioserver against its peers, the same workload for every contender, in one process.

Usage (from the repository root)::

    .venv/bin/python scripts/bench.py channels             # 7 rounds, about 2 minutes
    .venv/bin/python scripts/bench.py channels --quick     # 3 rounds, N=100000, about 30 s
    .venv/bin/python scripts/bench.py channels --only spsc,round_trip --rounds 3
    .venv/bin/python scripts/bench.py channels --json results.json
    .venv/bin/python scripts/bench.py io                   # 7 rounds, about 4 minutes
    .venv/bin/python scripts/bench.py io --quick           # 3 rounds, about 1 minute
    .venv/bin/python scripts/bench.py daemon               # 7 rounds, about 2 minutes
    .venv/bin/python scripts/bench.py daemon --quick       # 3 rounds, about 30 s

What each workload does, with its sizes, is in docs/benchmarks.md.

How a workload is measured (``measure``): every contender first runs once, small and
untimed (a warm-up that also catches a broken contender early); then round r runs every
contender once, in an order rotated by r. Each run returns the seconds its timed part took.
Reported: the median over rounds of the metric (msgs/s, or µs per operation), the
contender/baseline ratio of each round, and the median of those ratios. Ratios are always
"contender metric / baseline metric": for msgs/s higher is better, for µs lower is better.
A workload may also name ``versus`` contenders: each row then gets the median of its
per-round ratios to those too (shown in its note; targets can check them). A run may return
``(seconds, extras)``: the extras (e.g. pipe writes per 100k requests) are kept per round
and their medians shown in the note. With ``direct=True`` a run returns the metric itself
(round trips/s over a fixed duration) instead of seconds.

Robustness: every loop is bounded by N; worker threads are daemons joined with a timeout;
a contender that raises or hangs is reported as "error: ..." or "timeout" in its cell and
is skipped for the remaining rounds, and the suite goes on.

Progress goes to stderr (one line per round of a workload), results to stdout: a machine
line first, then the table, then the targets block.

The ``daemon`` suite starts the real daemon (``python -m ioserver serve``) as a subprocess
on a socket in a temp dir, and always stops it with SIGTERM (try/finally).

Adding a suite: write ``def run_x(cfg: Config) ->
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
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import queue
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import repeat
from pathlib import Path
from select import select as select_fds
from time import perf_counter, sleep
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
    vs: dict[str, list[float]] = field(default_factory=dict)  # per-round ratios to others
    extras: dict[str, list[float]] = field(default_factory=dict)  # per-round side metrics

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def is_baseline(self) -> bool:
        return self.contender == self.baseline

    def ratio_to(self, other: str) -> float | None:
        got = self.vs.get(other)
        return statistics.median(got) if got else None

    def extra(self, name: str) -> float | None:
        got = self.extras.get(name)
        return statistics.median(got) if got else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median"] = self.median
        d["median_ratio"] = self.ratio
        return d


@dataclass(frozen=True)
class Target:
    """A goal: ``workload``/``contender`` ``metric`` ``op`` ``bound``.

    ``metric`` "ratio" is the median ratio to the baseline, or to ``versus`` if given;
    "value" is the median of the metric itself (in the row's unit); any other name is the
    median of that per-round extra (e.g. "pipe writes/100k"). ``op`` "report" only shows
    the figure (verdict "info"; ``bound`` is ignored).
    """

    workload: str
    contender: str
    op: str  # ">=" or "<=", or "report" (no bound: the figure is shown as "info")
    bound: float
    label: str
    versus: str | None = None
    metric: str = "ratio"

    def check(self, rows: Sequence[Row]) -> tuple[str, str]:
        """("PASS" | "MISS", what was measured)."""
        for row in rows:
            if row.workload == self.workload and row.contender == self.contender:
                if self.metric == "ratio":
                    r = row.ratio if self.versus is None else row.ratio_to(self.versus)
                    shown = "" if r is None else f"{r:.2f}x"
                elif self.metric == "value":
                    r = row.median
                    shown = "" if r is None else f"{fmt_value(r, row.unit)} {row.unit}"
                else:
                    r = row.extra(self.metric)
                    shown = "" if r is None else f"{r:.1f} {self.metric}"
                if self.op == "report":
                    return "info", shown or f"nothing measured ({row.status})"
                if r is None:
                    return "MISS", f"nothing measured ({row.status})"
                ok = r >= self.bound if self.op == ">=" else r <= self.bound
                return ("PASS" if ok else "MISS"), shown
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


#: What a run returns: the timed seconds (or, with ``measure(direct=True)``, the metric),
#: optionally with per-run side metrics (name -> value).
RunResult = float | tuple[float, dict[str, float]]


@dataclass
class Contender:
    """``run(n)`` performs the workload once with size ``n`` and returns the timed seconds
    (see RunResult)."""

    name: str
    run: Callable[[int], RunResult]
    note: str = ""


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit.endswith("/s"):
        return (
            f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v < 1e4 else f"{v / 1e3:.0f}k"
        )
    if unit.startswith("B/"):
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def measure(
    cfg: Config,
    workload: str,
    contenders: Sequence[Contender],
    *,
    n: int,
    unit: str,
    baseline: str,
    versus: Sequence[str] = (),
    direct: bool = False,
) -> list[Row]:
    """Warm up, then run every contender once per round in rotated order; return rows.

    ``unit`` "msgs/s" turns seconds into n / seconds; a "µs/..." unit into µs per op;
    with ``direct`` the run returns the metric itself. ``versus``: contenders every row
    is also compared with (per-round ratios, medians in the note).
    """
    if cfg.contender:
        keep = {baseline, *versus}
        contenders = [c for c in contenders if cfg.contender in c.name or c.name in keep]
    rows = {c.name: Row(workload, c.name, unit, baseline, note=c.note) for c in contenders}

    def one(c: Contender, size: int) -> tuple[float, dict[str, float]] | None:
        row = rows[c.name]
        if row.status != "ok":
            return None
        gc.collect()
        try:
            got = c.run(size)
        except RunTimeout:
            row.status = "timeout"
            return None
        except Exception as exc:
            row.status = f"error: {type(exc).__name__}: {exc}"[:60]
            return None
        seconds, extras = got if isinstance(got, tuple) else (got, {})
        if direct:
            return seconds, extras
        return (size / seconds if unit == "msgs/s" else seconds / size * 1e6), extras

    warm = max(n // 20, 50)
    for c in contenders:
        one(c, warm)
    for r in range(cfg.rounds):
        k = r % len(contenders)
        order = list(contenders[k:]) + list(contenders[:k])
        got: dict[str, float] = {}
        for c in order:
            res = one(c, n)
            if res is not None:
                got[c.name] = res[0]
                rows[c.name].values.append(res[0])
                for key, x in res[1].items():
                    rows[c.name].extras.setdefault(key, []).append(x)
        base = got.get(baseline)
        if base is not None:
            for name, v in got.items():
                rows[name].ratios.append(v / base)
        for other in versus:
            ref = got.get(other)
            if ref is not None:
                for name, v in got.items():
                    if name != other:
                        rows[name].vs.setdefault(other, []).append(v / ref)
        shown = ", ".join(
            f"{c.name} {fmt_value(got.get(c.name), unit) if c.name in got else rows[c.name].status}"
            for c in contenders
        )
        progress(f"  {workload} round {r + 1}/{cfg.rounds} ({unit}): {shown}")
    for row in rows.values():
        notes = [row.note] if row.note else []
        for key, xs in row.extras.items():
            notes.append(f"{key}: {statistics.median(xs):.1f} (max {max(xs):.0f})")
        for other in versus:
            ratio = row.ratio_to(other)
            if ratio is not None and not row.is_baseline:
                notes.append(f"{ratio:.2f}x {other}")
        row.note = "; ".join(notes)
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
    """A uvloop (else asyncio) event loop running forever in a daemon thread;
    ``kind="asyncio"``: plain asyncio's selector loop."""

    def __init__(self, kind: str = "uvloop") -> None:
        self.loop: asyncio.AbstractEventLoop
        if kind == "asyncio":
            self.loop = asyncio.SelectorEventLoop()
        else:
            try:
                import uvloop

                self.loop = uvloop.new_event_loop()
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
    Target("spsc", "Channel()", ">=", 1.0, "spsc: Channel() >= 1.0x SimpleQueue"),
    Target("mpsc", "Channel()", ">=", 1.0, "mpsc: Channel() >= 1.0x SimpleQueue"),
    Target("spsc", "Channel(1024)", ">=", 0.9, "spsc: Channel(1024) >= 0.9x SimpleQueue"),
    Target("mpsc", "Channel(1024)", ">=", 0.75, "mpsc: Channel(1024) >= 0.75x SimpleQueue"),
    Target("thread_to_coroutine", "Channel()", ">=", 50, "thread->coro: Channel() >= 50x janus"),
    Target(
        "thread_to_coroutine", "Channel(1024)", ">=", 50, "thread->coro: Channel(1024) >= 50x janus"
    ),
    Target("select_echo", "select(4)", "<=", 1.3, "select echo <= 1.3x recv echo"),
    Target("select_poll_ready", "select(4)", "<=", 3.0, "ready poll: select(4) <= 3x try_recv"),
    Target("round_trip", "Channel", "<=", 1.05, "round trip: Channel <= 1.05x Lock ping-pong"),
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
# io: submission from threads into the loop thread (submit_1t, submit_2t)


def _last_call_clock(total: int) -> tuple[Callable[[], None], threading.Event, list[float]]:
    """A no-op to run on the loop thread: the ``total``-th call records the time and sets
    the event. Only the loop thread calls it, so the count needs no lock."""
    left = total
    done = threading.Event()
    ends: list[float] = []

    def tick() -> None:
        nonlocal left
        left -= 1
        if not left:
            ends.append(perf_counter())
            done.set()

    return tick, done, ends


def submit_run(kind: str, producers: int, n: int, timeout: float) -> RunResult:
    """``producers`` threads submit n no-op requests in all into a loop thread; timed from
    the first producer past the barrier to the loop running the last request.

    ``kind``: "uvloop" or "asyncio" (``loop.call_soon_threadsafe(tick)``), "janus"
    (``sync_q.put(tick)``; a coroutine on uvloop awaits ``async_q.get()`` and calls it),
    "ioserver" (``io.call_soon(tick)``; also returns pipe writes per 100k requests).
    """
    per = max(n // producers, 1)
    total = per * producers
    tick, done, ends = _last_call_clock(total)
    cleanup: list[Callable[[], object]] = []
    stats0: dict[str, Any] = {}
    io: Any = None
    try:
        if kind in ("uvloop", "asyncio"):
            lt = LoopThread(kind)
            cleanup.append(lt.stop)
            submit: Callable[[Callable[[], None]], Any] = lt.loop.call_soon_threadsafe
        elif kind == "janus":
            import janus

            lt = LoopThread()
            cleanup.append(lt.stop)

            async def make() -> Any:
                return janus.Queue()

            q: Any = lt.call(make(), timeout)

            async def consume() -> None:
                get = q.async_q.get
                for _ in range(total):
                    (await get())()

            fut = lt.submit(consume())
            cleanup.insert(0, fut.cancel)
            submit = q.sync_q.put
        else:
            from ioserver.server import IOServer

            io = IOServer().start()
            cleanup.append(io.stop)
            stats0 = io.stats()
            submit = io.call_soon
        barrier = threading.Barrier(producers)
        starts: list[float] = []

        def producer() -> None:
            barrier.wait(timeout)
            starts.append(perf_counter())
            for _ in repeat(None, per):
                submit(tick)

        t0 = perf_counter()
        run_threads([producer] * producers, timeout)
        if not done.wait(max(0.0, timeout - (perf_counter() - t0))):
            raise RunTimeout
        seconds = (ends[0] - min(starts)) * n / total
        if io is None:
            return seconds
        writes = io.stats()["pipe_writes"] - stats0["pipe_writes"]
        return seconds, {"pipe writes/100k": writes * 1e5 / total}
    finally:
        for f in cleanup:
            f()


def submit_contenders(producers: int, timeout: float) -> list[Contender]:
    def c(name: str, kind: str, note: str) -> Contender:
        return Contender(name, partial(submit_run, kind, producers, timeout=timeout), note)

    return [
        c("uvloop call_soon_threadsafe", "uvloop", "loop.call_soon_threadsafe(noop)"),
        c("asyncio call_soon_threadsafe", "asyncio", "same, plain asyncio selector loop"),
        c("janus", "janus", "sync_q.put(noop) -> await async_q.get() on uvloop"),
        c("io.call_soon", "ioserver", "ioserver IOServer().call_soon(noop)"),
    ]


# ---------------------------------------------------------------------------------------
# io: round trip thread -> loop -> thread, one outstanding (call_rt)


def noop() -> None:
    pass


async def anoop() -> None:
    pass


def timed_in_thread(body: Callable[[], float], timeout: float) -> float:
    """Run ``body`` (which returns its own timed seconds) in a daemon thread."""
    elapsed: list[float] = []
    run_threads([lambda: elapsed.append(body())], timeout)
    return elapsed[0]


def rt_run(kind: str, n: int, timeout: float) -> float:
    """n round trips from a client thread through a loop thread and back."""
    if kind == "anyio":
        from anyio.from_thread import start_blocking_portal

        def portal_body() -> float:
            with start_blocking_portal("asyncio", {"use_uvloop": True}) as portal:
                call = portal.call
                t0 = perf_counter()
                for _ in range(n):
                    call(noop)
                return perf_counter() - t0

        return timed_in_thread(portal_body, timeout)
    if kind == "ioserver":
        from ioserver.server import IOServer

        io = IOServer().start()
        try:

            def io_body() -> float:
                call = io.call
                t0 = perf_counter()
                for _ in range(n):
                    call(noop)
                return perf_counter() - t0

            return timed_in_thread(io_body, timeout)
        finally:
            io.stop()
    lt = LoopThread()
    loop = lt.loop
    try:
        if kind == "cst+lock":

            def body() -> float:
                lock = threading.Lock()
                lock.acquire()
                cst, release, acquire = loop.call_soon_threadsafe, lock.release, lock.acquire
                t0 = perf_counter()
                for _ in range(n):
                    cst(release)
                    acquire()
                return perf_counter() - t0

        else:  # run_coroutine_threadsafe

            def body() -> float:
                rcts = asyncio.run_coroutine_threadsafe
                t0 = perf_counter()
                for _ in range(n):
                    rcts(anoop(), loop).result()
                return perf_counter() - t0

        return timed_in_thread(body, timeout)
    finally:
        lt.stop()


# ---------------------------------------------------------------------------------------
# io: TCP echo, 100 connections, 64-byte ping-pong (tcp_echo)

ECHO_CONNS = 100
ECHO_MSG = b"x" * 64
ECHO_HOST = "127.0.0.1"
ECHO_STALL = 5.0  # seconds without a reply before a client gives up (an error, not a hang)


class EchoServer:
    """A plain asyncio Protocol echo server on a uvloop loop in its own thread."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    def __init__(self, timeout: float) -> None:
        self.lt = LoopThread()

        async def start() -> Any:
            return await asyncio.get_running_loop().create_server(
                self.Echo, ECHO_HOST, 0, backlog=1024
            )

        self.server = self.lt.call(start(), timeout)
        self.port: int = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.lt.loop.call_soon_threadsafe(self.server.close)
        self.lt.stop()


def _echo_sockets(port: int, count: int = ECHO_CONNS) -> list[socket.socket]:
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection((ECHO_HOST, port), timeout=ECHO_STALL)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def echo_threads(port: int, ms: int, timeout: float) -> float:
    """100 threads, each a blocking socket doing sendall + recv until 64 bytes."""
    socks = _echo_sockets(port)
    duration = ms / 1000
    clock: list[float] = []
    barrier = threading.Barrier(ECHO_CONNS, action=lambda: clock.append(perf_counter()))
    counts = [0] * ECHO_CONNS
    ends: list[float] = []

    def client(i: int) -> None:
        s = socks[i]
        sendall, recv = s.sendall, s.recv
        barrier.wait(timeout)
        stop = clock[0] + duration
        k = 0
        while perf_counter() < stop:
            sendall(ECHO_MSG)
            got = 0
            while got < 64:
                chunk = recv(64 - got)  # bounded by the socket timeout
                if not chunk:
                    raise ConnectionError("echo server closed the connection")
                got += len(chunk)
            k += 1
        counts[i] = k
        ends.append(perf_counter())

    try:
        run_threads([partial(client, i) for i in range(ECHO_CONNS)], timeout)
    finally:
        for s in socks:
            s.close()
    return sum(counts) / (max(ends) - clock[0])


def echo_selectors(port: int, ms: int, timeout: float) -> float:
    """One thread, 100 non-blocking sockets in a ``selectors.DefaultSelector``."""
    socks = _echo_sockets(port)

    def body() -> float:
        sel = selectors.DefaultSelector()
        try:
            for s in socks:
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, [0])
            n = 0
            t0 = perf_counter()
            stop = t0 + ms / 1000
            for s in socks:
                s.send(ECHO_MSG)
            while perf_counter() < stop:
                events = sel.select(ECHO_STALL)
                if not events:
                    raise TimeoutError("no reply for 5 s")
                for key, _ in events:
                    s = key.fileobj  # type: ignore[assignment]
                    data = s.recv(4096)
                    if not data:
                        raise ConnectionError("echo server closed the connection")
                    got = key.data[0] + len(data)
                    while got >= 64:
                        got -= 64
                        n += 1
                        s.send(ECHO_MSG)
                    key.data[0] = got
            return n / (perf_counter() - t0)
        finally:
            sel.close()

    try:
        rate: list[float] = []
        run_threads([lambda: rate.append(body())], timeout)
        return rate[0]
    finally:
        for s in socks:
            s.close()


def echo_one_socket(port: int, n: int, timeout: float) -> float:
    """One blocking socket in one thread: sendall 64 B, recv until 64 B, n times."""
    (s,) = _echo_sockets(port, 1)

    def body() -> float:
        sendall, recv = s.sendall, s.recv
        t0 = perf_counter()
        for _ in range(n):
            sendall(ECHO_MSG)
            got = 0
            while got < 64:
                chunk = recv(64 - got)  # bounded by the socket timeout
                if not chunk:
                    raise ConnectionError("echo server closed the connection")
                got += len(chunk)
        return perf_counter() - t0

    try:
        return timed_in_thread(body, timeout)
    finally:
        s.close()


def echo_one_selectors(port: int, n: int, timeout: float) -> float:
    """One non-blocking socket, waiting for each reply in a ``selectors`` select."""
    (s,) = _echo_sockets(port, 1)

    def body() -> float:
        s.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(s, selectors.EVENT_READ)
            select, send, recv = sel.select, s.send, s.recv
            t0 = perf_counter()
            for _ in range(n):
                send(ECHO_MSG)
                got = 0
                while got < 64:
                    if not select(ECHO_STALL):
                        raise TimeoutError("no reply for 5 s")
                    chunk = recv(4096)
                    if not chunk:
                        raise ConnectionError("echo server closed the connection")
                    got += len(chunk)
            return perf_counter() - t0

    try:
        return timed_in_thread(body, timeout)
    finally:
        s.close()


def echo_one_port(port: int, n: int, timeout: float) -> float:
    """One ioserver TCP port: ``port.send`` then ``port.recv`` until 64 B, n times."""
    from ioserver.server import IOServer

    with IOServer() as io:
        conn = io.connect_tcp(ECHO_HOST, port, timeout=ECHO_STALL)

        def body() -> float:
            send, recv = conn.send, conn.recv
            t0 = perf_counter()
            for _ in range(n):
                send(ECHO_MSG)
                got = 0
                while got < 64:
                    got += len(recv(ECHO_STALL).data)  # Data; anything else raises here
            return perf_counter() - t0

        try:
            return timed_in_thread(body, timeout)
        finally:
            conn.close()


@contextlib.contextmanager
def served(daemon: str | None, timeout: float) -> Iterator[Any]:
    """A fresh embedded IOServer (``daemon`` None), or a RemoteIOServer connected to the
    daemon at the socket path ``daemon`` over a fresh local IOServer; both have the
    IOServer API for opening ports. Closed and stopped on exit."""
    from ioserver.server import IOServer

    io = IOServer().start()
    try:
        if daemon is None:
            yield io
        else:
            import client as ioclient

            remote = ioclient.connect(daemon, io=io, timeout=timeout)
            try:
                yield remote
            finally:
                remote.close()
    finally:
        io.stop()


def echo_ports(
    use_select: bool, port: int, ms: int, timeout: float, daemon: str | None = None
) -> float:
    """One thread and 100 ioserver TCP ports: all delivering into one shared
    ``inbox=Channel(1024)`` (``inbox.recv()``), or each into its own inbox with
    ``select(*ports)``. Sends are ``port.send`` (fire-and-forget write commands).
    With ``daemon`` (a socket path) the ports are remote: the daemon makes the
    connections and does their I/O; the client thread is the same."""
    from ioserver import Channel, select
    from ioserver.messages import Data

    to = ECHO_STALL  # bounds each connect (a remote one is a request to the daemon)
    with served(daemon, timeout) as io:
        inbox: Channel[Any] = Channel(1024)
        if use_select:
            ports = [io.connect_tcp(ECHO_HOST, port, timeout=to) for _ in range(ECHO_CONNS)]
        else:
            ports = [
                io.connect_tcp(ECHO_HOST, port, inbox=inbox, timeout=to) for _ in range(ECHO_CONNS)
            ]

        def body() -> float:
            pending = dict.fromkeys(ports, 0)
            recv = inbox.recv
            n = 0
            t0 = perf_counter()
            stop = t0 + ms / 1000
            for p in ports:
                p.send(ECHO_MSG)
            while True:
                if use_select:
                    _, msg = select(*ports, timeout=ECHO_STALL)
                else:
                    msg = recv(ECHO_STALL)
                if type(msg) is not Data:
                    raise ConnectionError(f"unexpected {msg!r}")
                p = msg.port
                got = pending[p] + len(msg.data)
                while got >= 64:
                    got -= 64
                    n += 1
                    p.send(ECHO_MSG)
                pending[p] = got
                if not n & 255 and perf_counter() > stop:
                    return n / (perf_counter() - t0)

        rate: list[float] = []
        run_threads([lambda: rate.append(body())], timeout)
        return rate[0]


def echo_uvloop(port: int, ms: int, timeout: float) -> float:
    """The bound: 100 asyncio Protocol clients on a uvloop loop in their own thread."""

    def body() -> float:
        import uvloop

        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(_echo_uvloop_main(port, ms / 1000))
        finally:
            loop.close()

    rate: list[float] = []
    run_threads([lambda: rate.append(body())], timeout)
    return rate[0]


async def _echo_uvloop_main(port: int, duration: float) -> float:
    loop = asyncio.get_running_loop()
    count = 0
    stop = float("inf")

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.got = 0

        def data_received(self, data: bytes) -> None:
            nonlocal count
            self.got += len(data)
            while self.got >= 64:
                self.got -= 64
                count += 1
                if perf_counter() < stop:
                    self.transport.write(ECHO_MSG)

    transports = []
    try:
        for _ in range(ECHO_CONNS):
            t, _ = await asyncio.wait_for(
                loop.create_connection(Client, ECHO_HOST, port), ECHO_STALL
            )
            transports.append(t)
        t0 = perf_counter()
        stop = t0 + duration
        for t in transports:
            t.write(ECHO_MSG)
        await asyncio.sleep(duration)
        return count / (perf_counter() - t0)
    finally:
        for t in transports:
            t.close()


# ---------------------------------------------------------------------------------------
# io: 10,000 idle TCP ports on one IOServer (idle_ports)

IDLE_PORTS = 10_000
IDLE_SECONDS = 3.0
IDLE_OPENERS = 4  # client threads opening ports concurrently (only to open them faster)
IDLE_CHUNK = 500  # connections the peer makes before waiting for them to be accepted

# The far ends of the idle connections live in a child process, so that neither their
# memory nor their file descriptors count in ours. Commands on stdin, one a line:
# "accept K" (accept K more on its listener, whose port it prints first) or "connect PORT K";
# it answers "ok TOTAL"; at EOF it exits, closing everything.
PEER_SCRIPT = r"""
import socket, sys
srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
srv.settimeout(30)
print(srv.getsockname()[1], flush=True)
socks = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "accept":
        for _ in range(int(cmd[1])):
            socks.append(srv.accept()[0])
    else:
        for _ in range(int(cmd[2])):
            socks.append(socket.create_connection(("127.0.0.1", int(cmd[1])), timeout=30))
    print("ok", len(socks), flush=True)
"""


class Peer:
    """The child process holding the far ends (see PEER_SCRIPT)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PEER_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.port = int(self.readline())

    def readline(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select_fds([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise RunTimeout
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer process exited ({self.proc.poll()})")
        return line.strip()

    def command(self, *words: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def raise_nofile(needed: int) -> str | None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; why we cannot have ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        return f"RLIMIT_NOFILE hard limit {hard} < {needed} fds needed (per process)"
    return None


def _traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def idle_ports_run(count: int, timeout: float) -> dict[str, float]:
    """One IOServer: open ``count`` client ports to the peer (4 opener threads), then
    ``count`` accepted ports from the peer; Python memory per port (tracemalloc) of each
    kind, and the process CPU over IDLE_SECONDS with the client ports open and idle.
    Ports have their own inboxes and default options."""
    from ioserver.server import IOServer

    io = IOServer().start()
    peer = Peer(timeout)
    try:
        # Client ports: io.connect_tcp to the peer's listener.
        peer.command("accept", count)
        per = count // IDLE_OPENERS
        opened: list[list[Any]] = [[] for _ in range(IDLE_OPENERS)]

        def opener(out: list[Any]) -> None:
            connect = io.connect_tcp
            for _ in range(per):
                out.append(connect("127.0.0.1", peer.port))

        tracemalloc.start()
        try:
            before = _traced_now()
            run_threads([partial(opener, out) for out in opened], timeout)
            client_bytes = (_traced_now() - before) / (per * IDLE_OPENERS)
        finally:
            tracemalloc.stop()
        peer.readline()
        # Idle CPU: every thread of the process, the I/O thread with its ports included.
        gc.collect()
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), perf_counter()
        sleep(IDLE_SECONDS)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), perf_counter()
        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        idle_cpu = 100 * cpu / (w1 - w0)
        if io.stats()["open_ports"] != count:
            raise RuntimeError(f"{io.stats()['open_ports']} ports open, not {count}")
        for out in opened:
            for p in out:
                p.close()
        opened.clear()
        peer.close()

        # Accepted ports: the peer connects to io.listen_tcp, in chunks below the backlog
        # (an overflowing accept queue stalls connections for seconds of SYN-ACK retries).
        peer = Peer(timeout)
        listener = io.listen_tcp("127.0.0.1", 0, backlog=1024)
        accepted: list[Any] = []
        tracemalloc.start()
        try:
            before = _traced_now()
            while len(accepted) < count:
                k = min(IDLE_CHUNK, count - len(accepted))
                peer.command("connect", listener.address[1], k)
                for _ in range(k):
                    msg: Any = listener.recv(timeout)
                    accepted.append(msg.conn)
                peer.readline()
            accepted_bytes = (_traced_now() - before) / count
        finally:
            tracemalloc.stop()
        return {
            "client ports": client_bytes,
            "accepted ports": accepted_bytes,
            "idle CPU": idle_cpu,
        }
    finally:
        peer.close()
        io.stop(timeout=10)


def absolute_rounds(
    workload: str,
    run: Callable[[], dict[str, float]],
    rows: dict[str, Row],
    units: dict[str, str],
    rounds: int,
) -> list[Row]:
    """Rounds of a workload measured in absolute numbers (no contenders): ``run()``
    returns one value per row; a timeout or error marks every row and stops."""
    for r in range(rounds):
        try:
            got = run()
        except RunTimeout:
            for row in rows.values():
                row.status = "timeout"
            break
        except Exception as exc:
            for row in rows.values():
                row.status = f"error: {type(exc).__name__}: {exc}"[:60]
            break
        for name, v in got.items():
            rows[name].values.append(v)
        shown = ", ".join(f"{k} {fmt_value(v, units[k])} {units[k]}" for k, v in got.items())
        progress(f"  {workload} round {r + 1}/{rounds}: {shown}")
    for row in rows.values():
        if len(row.values) > 1:
            row.note += "; per round: " + " ".join(fmt_value(v, row.unit) for v in row.values)
    return list(rows.values())


def run_idle_ports(cfg: Config) -> list[Row]:
    """Not a race between contenders: absolute numbers, checked against fixed bounds."""
    count = IDLE_PORTS
    units = {"client ports": "B/port", "accepted ports": "B/port", "idle CPU": "% core"}
    notes = {
        "client ports": f"{count} io.connect_tcp ports, own inboxes; peer in a child process",
        "accepted ports": f"{count} ports accepted by io.listen_tcp; peer in a child process",
        "idle CPU": f"process CPU / wall over {IDLE_SECONDS:.0f} s with {count} idle ports",
    }
    rows = {k: Row("idle_ports", k, u, baseline="", note=notes[k]) for k, u in units.items()}
    rounds = min(cfg.rounds, 1 if cfg.quick else 3)
    progress(
        f"idle_ports: {count} idle TCP ports on one IOServer (client, then accepted), "
        f"{rounds} round(s)"
    )
    why = raise_nofile(count + 256)
    if why is not None:
        progress(f"  idle_ports skipped: {why}")
        for row in rows.values():
            row.status = f"skipped: {why}"
        return list(rows.values())
    try:
        idle_ports_run(200, cfg.timeout)  # warm-up: imports, first-use allocations
    except Exception as exc:
        progress(f"  idle_ports warm-up failed: {type(exc).__name__}: {exc}")
    return absolute_rounds(
        "idle_ports", lambda: idle_ports_run(count, cfg.timeout * 2), rows, units, rounds
    )


# ---------------------------------------------------------------------------------------
# The io suite

SUBMIT_BASE = "uvloop call_soon_threadsafe"
PIPE = "pipe writes/100k"

IO_TARGETS = [
    Target("submit_1t", "io.call_soon", ">=", 3.0, "submit 1 thread: io >= 3x uvloop cst"),
    Target("submit_2t", "io.call_soon", ">=", 3.0, "submit 2 threads: io >= 3x uvloop cst"),
    Target("submit_1t", "io.call_soon", "<=", 2, "submit 1t: <= 2 pipe writes/100k", metric=PIPE),
    Target("submit_2t", "io.call_soon", "<=", 2, "submit 2t: <= 2 pipe writes/100k", metric=PIPE),
    Target("call_rt", "io.call", "<=", 1.1, "call_rt: io.call <= 1.1x Lock ping-pong"),
    Target(
        "call_rt",
        "io.call",
        "<=",
        0.5,
        "call_rt: io.call >= 2x faster than rcts",
        versus="run_coroutine_threadsafe",
    ),
    Target(
        "call_rt",
        "io.call",
        "<=",
        0.2,
        "call_rt: io.call >= 5x faster than anyio",
        versus="anyio portal.call",
    ),
    Target("tcp_echo", "io shared inbox", ">=", 2.0, "tcp_echo: shared inbox >= 2x 100 threads"),
    Target(
        "tcp_echo",
        "io shared inbox",
        ">=",
        1.0,
        "tcp_echo: shared inbox >= 1.0x selectors",
        versus="selectors",
    ),
    Target("echo_1", "io port", "<=", 1.5, "echo_1: io port <= 1.5x a blocking socket"),
    Target("idle_ports", "client ports", "<=", 4096, "idle: client port <= 4 KiB", metric="value"),
    Target(
        "idle_ports", "accepted ports", "<=", 4096, "idle: accepted port <= 4 KiB", metric="value"
    ),
    Target("idle_ports", "idle CPU", "<=", 1.0, "idle: CPU <= 1% of a core", metric="value"),
]


@suite(
    "io",
    "IOServer vs call_soon_threadsafe (uvloop, asyncio), janus, run_coroutine_threadsafe, "
    "anyio, blocking/selectors/uvloop TCP clients; idle ports",
    targets=IO_TARGETS,
)
def run_io(cfg: Config) -> list[Row]:
    rows: list[Row] = []
    n, trips, to = cfg.n, max(cfg.n // 10, 10), cfg.timeout

    for workload, producers in (("submit_1t", 1), ("submit_2t", 2)):
        if not cfg.wants(workload):
            continue
        progress(f"{workload}: {producers} producer thread(s) -> loop thread, N={n} no-ops")
        rows += measure(
            cfg,
            workload,
            submit_contenders(producers, to),
            n=n,
            unit="msgs/s",
            baseline=SUBMIT_BASE,
        )

    if cfg.wants("call_rt"):
        progress(f"call_rt: thread -> loop -> thread, one outstanding, {trips} round trips")
        contenders = [
            Contender("Lock", partial(lock_pingpong, timeout=to), "two threads, two Locks: floor"),
            Contender(
                "call_soon_threadsafe+Lock",
                partial(rt_run, "cst+lock", timeout=to),
                "uvloop; the callback releases a Lock",
            ),
            Contender(
                "run_coroutine_threadsafe",
                partial(rt_run, "rcts", timeout=to),
                "uvloop; .result()",
            ),
            Contender(
                "anyio portal.call",
                partial(rt_run, "anyio", timeout=to),
                "start_blocking_portal(use_uvloop)",
            ),
            Contender("io.call", partial(rt_run, "ioserver", timeout=to), "IOServer().call(noop)"),
        ]
        rows += measure(
            cfg,
            "call_rt",
            contenders,
            n=trips,
            unit="µs/rt",
            baseline="Lock",
            versus=("run_coroutine_threadsafe", "anyio portal.call"),
        )

    if cfg.wants("tcp_echo"):
        ms = 1000 if cfg.quick else 2000
        progress(
            f"tcp_echo: {ECHO_CONNS} connections, 64 B ping-pong to a uvloop echo thread, "
            f"{ms / 1000:.0f} s per run"
        )
        try:
            echo = EchoServer(to)
        except Exception as exc:
            rows.append(Row("tcp_echo", "(echo server)", "rt/s", "", status=f"error: {exc}"))
        else:
            try:
                port = echo.port
                contenders = [
                    Contender(
                        "100 threads",
                        partial(echo_threads, port, timeout=to),
                        "a blocking socket per thread",
                    ),
                    Contender(
                        "selectors",
                        partial(echo_selectors, port, timeout=to),
                        "one thread, selectors.DefaultSelector",
                    ),
                    Contender(
                        "io shared inbox",
                        partial(echo_ports, False, port, timeout=to),
                        "one thread, 100 ports, inbox=Channel(1024)",
                    ),
                    Contender(
                        "io select(ports)",
                        partial(echo_ports, True, port, timeout=to),
                        "one thread, select(*ports), own inboxes",
                    ),
                    Contender(
                        "uvloop client",
                        partial(echo_uvloop, port, timeout=to),
                        "the bound: Protocols on a uvloop loop",
                    ),
                ]
                rows += measure(
                    cfg,
                    "tcp_echo",
                    contenders,
                    n=ms,
                    unit="rt/s",
                    baseline="100 threads",
                    versus=("selectors", "uvloop client"),
                    direct=True,
                )
            finally:
                echo.stop()

    if cfg.wants("echo_1"):
        progress(f"echo_1: one connection, one 64 B message outstanding, {trips} round trips")
        try:
            echo = EchoServer(to)
        except Exception as exc:
            rows.append(Row("echo_1", "(echo server)", "µs/rt", "", status=f"error: {exc}"))
        else:
            try:
                port = echo.port
                contenders = [
                    Contender(
                        "blocking socket",
                        partial(echo_one_socket, port, timeout=to),
                        "sendall + recv in one thread",
                    ),
                    Contender(
                        "selectors",
                        partial(echo_one_selectors, port, timeout=to),
                        "non-blocking socket + selectors.DefaultSelector",
                    ),
                    Contender(
                        "io port",
                        partial(echo_one_port, port, timeout=to),
                        "port.send + port.recv",
                    ),
                ]
                rows += measure(
                    cfg,
                    "echo_1",
                    contenders,
                    n=trips,
                    unit="µs/rt",
                    baseline="blocking socket",
                    versus=("selectors",),
                )
            finally:
                echo.stop()

    if cfg.wants("idle_ports") and (
        not cfg.contender
        or any(cfg.contender in k for k in ("client ports", "accepted ports", "idle CPU"))
    ):
        rows += run_idle_ports(cfg)
    return rows


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
    of one core. The bench process also runs the echo / sink server thread."""

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
                "client.connect(socket).ping()",
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
