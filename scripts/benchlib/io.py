"""The ``io`` suite: submission into the loop thread, call round trips, TCP echo
against blocking sockets, selectors and uvloop, and 10,000 idle ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import selectors
import socket
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from itertools import repeat
from select import select as select_fds
from time import perf_counter, sleep
from typing import Any

from .channels import LoopThread, lock_pingpong
from .harness import (
    Config,
    Contender,
    Row,
    RunResult,
    RunTimeout,
    Target,
    fmt_value,
    measure,
    progress,
    run_threads,
    suite,
)

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
    "ioserver" (``io.call_soon(tick)``; also returns pipe writes per 100k requests),
    "ioserver-nowd" (the same with ``slow_callback=None``: no watchdog).
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

            io = (IOServer(slow_callback=None) if kind == "ioserver-nowd" else IOServer()).start()
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


# The echo server runs in a child process: a peer on another host would not share our
# GIL, and an echo thread in this process would take the GIL from every client design in
# proportion to how many thread hand-offs it makes, which is what the suite compares.
# (Before 2026-12-04 it was a thread here; docs/benchmarks.md says which runs used which.)
ECHO_SCRIPT = r"""
import asyncio, sys
try:
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = asyncio.new_event_loop()

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

server = loop.run_until_complete(loop.create_server(Echo, sys.argv[1], 0, backlog=1024))
print(server.sockets[0].getsockname()[1], flush=True)
loop.add_reader(sys.stdin.fileno(), loop.stop)  # EOF on stdin: the parent is done
loop.run_forever()
"""


class EchoServer:
    """A plain asyncio Protocol echo server on a uvloop loop, in a child process
    (``in_thread=True``: in a thread of this process, as the suite had it before)."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    def __init__(self, timeout: float, in_thread: bool = False) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lt: LoopThread | None = None
        if in_thread:
            lt = self.lt = LoopThread()

            async def start() -> Any:
                return await asyncio.get_running_loop().create_server(
                    self.Echo, ECHO_HOST, 0, backlog=1024
                )

            self.server = lt.call(start(), timeout)
            self.port: int = self.server.sockets[0].getsockname()[1]
            return
        proc = self.proc = subprocess.Popen(
            [sys.executable, "-c", ECHO_SCRIPT, ECHO_HOST],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        ready, _, _ = select_fds([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError("the echo server process did not start")
        self.port = int(line)

    def stop(self) -> None:
        if self.lt is not None:
            self.lt.loop.call_soon_threadsafe(self.server.close)
            self.lt.stop()
        if self.proc is not None:
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
            import ioserver_client as ioclient

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
def watchdog_contenders(timeout: float) -> list[Contender]:
    """``submit_wd``: ``io.call_soon`` submission without and with the watchdog."""

    def c(name: str, kind: str, note: str) -> Contender:
        return Contender(name, partial(submit_run, kind, 1, timeout=timeout), note)

    return [
        c("no watchdog", "ioserver-nowd", "IOServer(slow_callback=None).call_soon(noop)"),
        c("watchdog", "ioserver", "IOServer().call_soon(noop): slow_callback=0.1, the default"),
    ]


# The io suite

SUBMIT_BASE = "uvloop call_soon_threadsafe"
PIPE = "pipe writes/100k"

IO_TARGETS = [
    Target("submit_1t", "io.call_soon", ">=", 3.0, "submit 1 thread: io >= 3x uvloop cst"),
    Target("submit_2t", "io.call_soon", ">=", 3.0, "submit 2 threads: io >= 3x uvloop cst"),
    Target("submit_1t", "io.call_soon", "<=", 2, "submit 1t: <= 2 pipe writes/100k", metric=PIPE),
    Target("submit_2t", "io.call_soon", "<=", 2, "submit 2t: <= 2 pipe writes/100k", metric=PIPE),
    Target("submit_wd", "watchdog", ">=", 0.98, "watchdog: submission cost <= 2%"),
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

    if cfg.wants("submit_wd"):
        # 10 N: a run of N takes ~20 ms here, too short to resolve 2% (per-round
        # ratios spread 0.84-1.29); 10 N takes ~0.2 s.
        wd_n = n * 10
        progress(f"submit_wd: io.call_soon from 1 thread, no watchdog vs watchdog, N={wd_n}")
        rows += measure(
            cfg,
            "submit_wd",
            watchdog_contenders(to),
            n=wd_n,
            unit="msgs/s",
            baseline="no watchdog",
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
