"""The ``channels`` suite: channels and queues between threads and coroutines
(spsc, mpsc, thread -> coroutine, round trips, select echo, select polling).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from time import perf_counter
from typing import Any

from .harness import (
    Config,
    Contender,
    Row,
    RunTimeout,
    Target,
    measure,
    progress,
    run_threads,
    suite,
)

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
    Target("thread_to_trio", "Channel()", ">=", 3.0, "thread->trio: Channel() >= 3x aiologic"),
    Target(
        "thread_to_greenlet", "Channel()", ">=", 3.0, "thread->greenlet: Channel() >= 3x aiologic"
    ),
    Target(
        "trio_to_trio", "Channel(1024)", ">=", 1.0, "trio<->trio: Channel >= 1.0x memory channel"
    ),
    Target(
        "greenlet_to_greenlet",
        "Channel(1024)",
        ">=",
        1.0,
        "greenlet<->greenlet: Channel >= 1.0x gevent Queue",
    ),
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
    rows += _green_rows(cfg)
    return rows


def _green_rows(cfg: Config) -> list[Row]:
    """Trio tasks and gevent greenlets (benchlib/green.py)."""
    from . import green

    rows: list[Row] = []
    n, to = cfg.n, cfg.timeout
    workloads = [
        (
            "thread_to_trio",
            "1 thread -> 1 trio task (trio.run in its own thread)",
            green.thread_to_trio,
            [
                ("aiologic.SimpleQueue", "green_put -> await async_get()"),
                ("Channel()", "ioserver: send -> await arecv()"),
            ],
            "aiologic.SimpleQueue",
        ),
        (
            "thread_to_greenlet",
            "1 thread -> 1 greenlet (on another thread's hub)",
            green.thread_to_greenlet,
            [
                ("aiologic.SimpleQueue", "green_put -> green_get()"),
                ("Channel()", "ioserver: send -> recv() in the greenlet"),
            ],
            "aiologic.SimpleQueue",
        ),
        (
            "trio_to_trio",
            f"trio task -> trio task, one run, buffer {green.BUFFER}",
            green.trio_to_trio,
            [
                ("trio.open_memory_channel", "await send -> await receive"),
                ("Channel(1024)", "ioserver: await asend -> await arecv"),
            ],
            "trio.open_memory_channel",
        ),
        (
            "greenlet_to_greenlet",
            f"greenlet -> greenlet, one hub, buffer {green.BUFFER}",
            green.greenlet_to_greenlet,
            [
                ("gevent.queue.Queue", "put -> get"),
                ("Channel(1024)", "ioserver: send -> recv"),
            ],
            "gevent.queue.Queue",
        ),
    ]
    for workload, what, make, names, baseline in workloads:
        if not cfg.wants(workload):
            continue
        progress(f"{workload}: {what}, N={n}")
        contenders = [
            Contender(name, partial(make(name), timeout=to), note) for name, note in names
        ]
        rows += measure(cfg, workload, contenders, n=n, unit="msgs/s", baseline=baseline)
    return rows
