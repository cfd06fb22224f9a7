"""IOServer: a dedicated thread running a uvloop event loop that does all the I/O.

Theory of operation
-------------------
``start()`` runs a daemon thread that creates the loop (uvloop; plain
asyncio's selector loop where uvloop is missing or ``loop="asyncio"``), attaches
the request queue (requests.py) and runs forever. Client code never touches the
loop: it opens ports with the methods below, each of which submits a request
and, for the blocking ones (``connect_*``, ``listen_*``, ``spawn``...),
parks on a WakeupHandle until the loop has the answer.

States: NEW -> RUNNING -> STOPPING -> STOPPED (or DEAD after a crash).

Stop (deterministic: lesson 7, docs/architecture.md): ``stop(timeout)`` submits
the stop request, so it runs after every request submitted before it (FIFO):
writes queued before ``stop()`` reach their transports. The loop then closes
listeners, gives transports up to ``timeout`` to flush, aborts what is left, delivers
``Closed("server stopped")`` to every port (own inboxes are then closed, so
blocked receivers wake), rejects every request that raced with the stop
(their callers get ServerStopped), and ends the thread.

Crash: if the loop thread dies from a bug, the thread's last act is the same
clean-up without the flush: every port's inbox gets Closed and is closed, every
queued request is rejected; ``failure`` holds the exception, which is also
logged. Nobody stays blocked.

Embedded mode installs no signal handlers (lesson 11, docs/architecture.md). A
blocking call made on the I/O thread raises at once instead of deadlocking
(lesson 8, docs/architecture.md).

Fork: the child of ``os.fork`` has a copy of every server but not its I/O
thread, so at the fork (``os.register_at_fork``) the child's copies are
stopped: ``stop()`` and interpreter exit return at once, every method raises
ServerStopped("... inherited through fork ..."), ``default()`` makes a fresh
server. Each inherited port is closed in the child: ``send`` raises PortClosed,
and its next message is ``Closed(port, "forked")`` (what it had buffered is the
parent's and is dropped), after which its own inbox is closed. The child never
touches the loop, its transports or their fds (its copies of the wakeup pipe
are closed), so the parent's server and ports go on unaffected.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

from ._core import NATIVE, native
from .requests import DEFAULT_MAX_BATCH, DEFAULT_QUANTUM, RequestQueue, ServerStopped
from .sched import (
    AsyncWakeup,
    ThreadWakeup,
    WakeupHandle,
    foreign_async_task,
    green_task,
    run_blocking,
    thread_task,
)
from .sched._original import Flag, allocate_lock, get_ident, start_new_thread, threading_patched
from .watchdog import DEFAULT_SLOW_CALLBACK, Watchdog

if TYPE_CHECKING:
    from .channel import Channel
    from .drivers.base import Driver
    from .drivers.options import (
        ConnectOptions,
        FileOptions,
        ListenOptions,
        SpawnOptions,
        UDPOptions,
    )
    from .drivers.timer import Timer
    from .port import Port

__all__ = ["IOServer", "ServerStopped", "default"]

log = logging.getLogger("ioserver")

R = TypeVar("R")

NEW, RUNNING, STOPPING, STOPPED, DEAD = "new", "running", "stopping", "stopped", "dead"


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"loop must be 'auto', 'uvloop' or 'asyncio', not {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    # The selector loop, not Proactor: ports need add_reader (lesson 11, docs/architecture.md).
    return asyncio.SelectorEventLoop()


class IOServer:
    """A background I/O thread; every I/O resource it runs is a Port.

    Use as a context manager (``with IOServer() as io: ...``) or call
    ``start()``/``stop()``. Every method is safe from any thread; the blocking
    ones raise RuntimeError when called from the I/O thread itself.
    """

    def __init__(
        self,
        *,
        loop: str = "auto",
        name: str = "ioserver",
        max_batch: int = DEFAULT_MAX_BATCH,
        quantum: float = DEFAULT_QUANTUM,
        slow_callback: float | None = DEFAULT_SLOW_CALLBACK,
    ) -> None:
        self._loop_kind = loop
        self._name = name
        # Reports a loop callback (a call/call_soon function, a driver's event)
        # holding the I/O thread longer than slow_callback seconds, while it
        # does (watchdog.py); None: no watchdog.
        self._watchdog = None if slow_callback is None else Watchdog(slow_callback, name)
        self._requests = RequestQueue(max_batch=max_batch, quantum=quantum)
        # The hot path: call_soon (documented below) is the queue's own, so a
        # request costs no Python frame here (with the native core, none at all).
        self.call_soon = self._requests.call_soon  # type: ignore[method-assign]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._state = NEW
        self._state_lock = allocate_lock()
        self._started = Flag()
        self._stopped = Flag()
        # Loop thread only: every live driver, for stats and shutdown.
        self._drivers: set[Driver] = set()
        self._ports_opened = 0
        self._stop_deadline = 0.0
        #: The exception that killed the loop thread, if one did.
        self.failure: BaseException | None = None
        self.loop_type = ""
        self._inherited = False  # a forked child's copy (see _forked)
        _SERVERS.add(self)

    def __repr__(self) -> str:
        return f"<IOServer {self._name} {self._state}>"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> IOServer:
        """Start the I/O thread (idempotent) and return self once the loop runs."""
        with self._state_lock:
            if self._state != NEW:
                if self._inherited:
                    raise ServerStopped(self._requests._why)
                if self._state in (STOPPED, DEAD):
                    raise ServerStopped(f"{self!r} cannot be restarted; make a new IOServer")
                return self
            self._state = RUNNING
            if threading_patched():
                # gevent's patch_all() makes threading.Thread a greenlet: the loop
                # would block its hub for ever. The I/O thread is always an OS thread.
                start_new_thread(self._run, ())
            else:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._started.wait()
        if self.failure is not None:
            raise RuntimeError(f"{self!r} failed to start") from self.failure
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop: flush pending writes for up to ``timeout`` s, close every port, end
        the thread. Idempotent. Returns when the thread has ended (or after
        ``timeout`` + 5 s if the loop is wedged, with a warning). In a forked child
        the copy was stopped at the fork: returns at once."""
        if self._inherited:
            return
        with self._state_lock:
            state = self._state
            if state == NEW:
                self._state = STOPPED
                self._requests.close()
                return
            if state == RUNNING:
                self._state = STOPPING
        if state == RUNNING:
            with contextlib.suppress(ServerStopped):
                self._requests.submit(self._begin_stop, timeout)
        if get_ident() == self._ident:
            return  # called on the I/O thread: the stop proceeds after this callback
        if not self._stopped.wait(timeout + 5.0):
            warnings.warn(f"{self!r} did not stop within {timeout + 5.0} s", stacklevel=2)

    def __enter__(self) -> IOServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if self._state in (RUNNING, STOPPING):
            warnings.warn(f"unstopped {self!r}", ResourceWarning, stacklevel=1, source=self)

    @property
    def running(self) -> bool:
        """Whether the server accepts requests."""
        return self._state == RUNNING

    def _run(self) -> None:
        """The I/O thread."""
        self._ident = get_ident()
        try:
            loop = _new_loop(self._loop_kind)
        except BaseException as exc:
            self.failure = exc
            self._state = DEAD
            self._started.set()
            self._stopped.set()
            return
        self._loop = loop
        self.loop_type = f"{type(loop).__module__}.{type(loop).__qualname__}"
        asyncio.set_event_loop(loop)
        try:
            self._requests.attach(loop, None if self._watchdog is None else self._watchdog.guard)
            self._started.set()
            with thread_task(_LOOP_THREAD_TASK):  # blocking calls here raise
                loop.run_forever()
            self._state = STOPPED
        except BaseException as exc:
            self.failure = exc
            self._state = DEAD
            log.critical("ioserver: the I/O thread died; every port is closed", exc_info=exc)
            self._crash_cleanup(exc)
        finally:
            self._started.set()
            with contextlib.suppress(Exception):
                _cancel_all_tasks(loop)
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            if native is not None:
                # Threads woken by this loop's last batch of reads, whose wakeups
                # the native core held for its end (csrc/sched.c): wake them now.
                native._flush_unparks()
            loop.close()
            asyncio.set_event_loop(None)
            if self._watchdog is not None:
                self._watchdog.stop()
            self._stopped.set()

    def _begin_stop(self, timeout: float) -> None:
        """Loop thread: the stop request, run after everything submitted before it."""
        self._stop_deadline = monotonic() + timeout
        for driver in list(self._drivers):
            driver.begin_stop()  # listeners stop accepting; writers flush
        self._loop.call_soon(self._finish_stop)  # type: ignore[union-attr]

    def _finish_stop(self) -> None:
        """Loop thread: once writes are flushed (or the deadline passed), close all."""
        if monotonic() < self._stop_deadline and any(driver.flushing() for driver in self._drivers):
            self._loop.call_later(0.005, self._finish_stop)  # type: ignore[union-attr]
            return
        for driver in list(self._drivers):
            driver.stop("server stopped")
        self._requests.close(ServerStopped("the I/O server stopped before running this request"))
        self._loop.stop()  # type: ignore[union-attr]

    def _forked(self) -> None:
        """In a forked child (see the module docstring): this copy's I/O thread
        stayed in the parent. Stop the copy and close its ports without touching
        the loop, which is the parent's (its epoll and sockets are shared)."""
        self._inherited = True
        # Other threads of the parent may have held these at the fork.
        self._state_lock = threading.Lock()
        self._started = Flag()
        self._stopped = Flag()
        self._started.set()
        self._stopped.set()
        if self._state != DEAD:
            self._state = STOPPED  # a NEW one too: its pipe is the parent's
        for driver in list(self._drivers):
            try:
                driver._forked()
            except Exception:  # a child must not die of the parent's state
                log.exception("ioserver: closing %r in a forked child failed", driver)

    def _crash_cleanup(self, exc: BaseException) -> None:
        reason = ServerStopped(f"the I/O thread died: {exc!r}")
        for driver in list(self._drivers):
            try:
                driver.stop("server died")
            except Exception:
                port = driver._port()
                log.exception("ioserver: closing %r after the crash failed", port)
                if port is not None:
                    with contextlib.suppress(Exception):
                        port._on_closed()
                        if port._own_inbox:
                            port._inbox.close()
        self._drivers.clear()
        self._requests.close(reason)

    # -- calls into the loop -------------------------------------------------------------

    def _check_not_loop_thread(self, what: str) -> None:
        if get_ident() == self._ident:
            raise RuntimeError(
                f"{what} blocks until the I/O thread answers, so it cannot be called on the "
                "I/O thread itself; use call_soon() or do the work directly"
            )

    def call_soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the I/O thread soon (fire and forget; FIFO).

        Exceptions from ``fn`` are logged and the server goes on serving, even a
        BaseException (``sys.exit``, KeyboardInterrupt): fire and forget means no
        caller to hand it to. Raises ServerStopped once stopped.
        """
        self._requests.submit(fn, *args)

    def call(self, fn: Callable[..., R], *args: Any, timeout: float | None = None) -> R:
        """Run ``fn(*args)`` on the I/O thread and return its result (or raise its
        exception). Raises RuntimeError at once if called from the I/O thread,
        ServerStopped if the server stops first, TimeoutError after ``timeout``
        (``fn`` may still run)."""
        if get_ident() == self._ident:
            self._check_not_loop_thread("IOServer.call()")
        task = green_task()
        if task is not None:  # a greenlet (or a using_task scheduler) parks alone
            ok, value = self._call_in(task, _run_call, fn, args, timeout)
            if ok:
                return value  # type: ignore[no-any-return]
            raise value
        handle = ThreadWakeup()
        self._requests.submit(_run_call, fn, args, handle, reject=handle)
        if not handle.park(timeout):
            raise TimeoutError(f"{fn!r} did not finish on the I/O thread in {timeout} s")
        ok, value = handle.payload
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    async def acall(self, fn: Callable[..., R], *args: Any) -> R:
        """``call`` for a coroutine on another loop: awaits without blocking it."""
        self._check_not_loop_thread("IOServer.acall()")
        task = foreign_async_task()
        if task is not None:  # a trio task (or a using_task scheduler)
            ok, value = await self._acall_in(task, _run_call, fn, args, None)
            if ok:
                return value  # type: ignore[no-any-return]
            raise value
        handle = AsyncWakeup()
        self._requests.submit(_run_call, fn, args, handle, reject=handle)
        await handle.park()
        ok, value = handle.payload
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _run_coroutine(
        self, make: Callable[..., Coroutine[Any, Any, R]], *args: Any, timeout: float | None = None
    ) -> R:
        """Run the coroutine ``make(*args)`` on the loop and wait for its result."""
        self._check_not_loop_thread("this call")
        task = green_task()
        if task is not None:
            ok, value = self._call_in(task, _start_coroutine, make, args, timeout)
            if ok:
                return value  # type: ignore[no-any-return]
            raise value
        handle = ThreadWakeup()
        self._requests.submit(_start_coroutine, make, args, handle, reject=handle)
        if not handle.park(timeout):
            raise TimeoutError(f"{make.__name__} did not finish in {timeout} s")
        ok, value = handle.payload
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    # -- calls from tasks of any kind (greenlets, trio tasks, using_task plug-ins) -------
    #
    # The request carries the task's handle; the I/O thread's outcome wakes it
    # (claim, payload, unpark), and a rejected request (the server stopped) wakes
    # it with ServerStopped. A task that gives up (timeout, cancel, kill) holds the
    # claim, so the late outcome is dropped: the call may still run, as documented.

    def _call_in(
        self,
        task: Any,
        runner: Callable[..., None],
        fn: Any,
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> tuple[bool, Any]:
        """Submit ``runner(fn, args, handle)`` and park ``task`` for its outcome."""
        box: list[WakeupHandle] = []
        if not task.block_after(self._submitter(box, runner, fn, args), timeout):
            raise TimeoutError(f"{fn!r} did not finish on the I/O thread in {timeout} s")
        return box[0].payload  # type: ignore[no-any-return]

    async def _acall_in(
        self,
        task: Any,
        runner: Callable[..., None],
        fn: Any,
        args: tuple[Any, ...],
        timeout: float | None,
    ) -> tuple[bool, Any]:
        """``_call_in`` for an ``await`` task."""
        box: list[WakeupHandle] = []
        if not await task.block_after(self._submitter(box, runner, fn, args), timeout):
            raise TimeoutError(f"{fn!r} did not finish on the I/O thread in {timeout} s")
        return box[0].payload  # type: ignore[no-any-return]

    def _submitter(
        self, box: list[WakeupHandle], runner: Callable[..., None], fn: Any, args: tuple[Any, ...]
    ) -> Callable[[WakeupHandle], None]:
        """The ``f`` of ``block_after``: queue the request with the task's handle."""

        def submit(handle: WakeupHandle) -> None:
            box.append(handle)
            self._requests.submit(runner, fn, args, handle, reject=handle)

        return submit

    # -- loop-thread bookkeeping --------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (for drivers, on the I/O thread only)."""
        if self._loop is None:
            raise RuntimeError(f"{self!r} is not running")
        return self._loop

    def _register(self, driver: Driver) -> None:
        self._drivers.add(driver)
        self._ports_opened += 1

    def _unregister(self, driver: Driver) -> None:
        self._drivers.discard(driver)

    def stats(self) -> dict[str, Any]:
        """Counters of the loop (lesson 12, docs/architecture.md), from any thread.

        ``requests``: requests run; ``batches``: drains; ``pipe_writes``: bytes
        written to the self-pipe (wakeups paid for); ``empty_wakeups``: drains
        that found nothing; ``skipped_wakeups``: timer requests that needed no
        wakeup; ``max_batch``: the largest drain; ``longest_batch_ms``: the
        longest drain; ``pending``: requests queued now; ``ports``: open ports
        by kind; ``ports_opened``: ports ever opened; ``state``; ``loop``;
        ``core``: "native" (the compiled core) or "python"; ``stalls``: loop
        callbacks (drains of ``call``/``call_soon`` functions, driver callbacks)
        that held the I/O thread longer than ``slow_callback``,
        ``longest_stall_ms``: the longest of them;
        ``file_size``/``file_busy``/``file_queued``/``file_grown``: the file
        workers, those on a job, jobs waiting, workers added because all were stuck.
        """
        w = self._requests
        kinds: dict[str, int] = {}
        for driver in list(self._drivers):
            kinds[driver.kind] = kinds.get(driver.kind, 0) + 1
        return {
            "state": self._state,
            "loop": self.loop_type,
            "core": "native" if NATIVE else "python",
            "requests": w.requests,
            "batches": w.batches,
            "pipe_writes": w.pipe_writes,
            "empty_wakeups": w.empty_wakeups,
            "skipped_wakeups": w.skipped_wakeups,
            "max_batch": w.max_batch_seen,
            "longest_batch_ms": round(w.longest_batch * 1000, 3),
            "pending": w.pending(),
            "ports": kinds,
            "open_ports": sum(kinds.values()),
            "ports_opened": self._ports_opened,
            **_file_pool_stats(self),
            "stalls": 0 if self._watchdog is None else self._watchdog.stalls,
            "longest_stall_ms": (
                0.0 if self._watchdog is None else round(self._watchdog.longest_stall * 1000, 3)
            ),
        }

    # -- ports -----------------------------------------------------------------------------

    def connect_tcp(self, host: str, port: int, **options: Unpack[ConnectOptions]) -> Port:
        """Connect to ``host:port``; blocks until connected (raises the OSError on
        failure: ConnectionRefusedError, ...; a name is resolved in the calling thread,
        its addresses tried in order). Options: ``inbox``, ``packet``,
        ``active``, ``timeout``, ``high_water``, ``max_frame_bytes``, and for
        ``packet="msgpack"`` ``max_elements``/``max_depth`` (what one frame may
        decode to; 100,000 values, 64 deep by default)."""
        from .drivers import tcp

        return tcp.connect(self, host, port, options)

    def listen_tcp(self, host: str, port: int, **options: Unpack[ListenOptions]) -> Port:
        """Listen on ``host:port`` (0: any free port; see ``.address``); delivers
        ``Accepted(port, conn)``. Accepted ports take ``packet``, ``active``,
        ``high_water`` and ``max_frame_bytes`` from the listen call, and deliver into
        ``conn_inbox`` if given, else into the listener's inbox if it was shared
        (``inbox=``), else into their own. ``backlog`` (default 128)."""
        from .drivers import tcp

        return tcp.listen(self, host, port, options)

    def connect_unix(self, path: str, **options: Unpack[ConnectOptions]) -> Port:
        """Connect to the Unix socket at ``path`` (as ``connect_tcp``)."""
        from .drivers import unix

        return unix.connect(self, path, options)

    def listen_unix(self, path: str, **options: Unpack[ListenOptions]) -> Port:
        """Listen on a Unix socket at ``path`` (as ``listen_tcp``)."""
        from .drivers import unix

        return unix.listen(self, path, options)

    def open_udp(
        self, local_addr: tuple[str, int] | None = None, **options: Unpack[UDPOptions]
    ) -> Port:
        """A UDP port bound to ``local_addr``; delivers ``Datagram(port, data, addr)``;
        ``port.send((data, addr))`` or ``remote_addr=`` + ``port.send(data)``."""
        from .drivers import udp

        return udp.open_udp(self, local_addr, options)

    def spawn(self, argv: list[str], **options: Unpack[SpawnOptions]) -> Port:
        """Run a program (argv list, no shell): ``send`` writes its stdin, stdout
        arrives as ``Data``, stderr as ``Stderr`` (``stderr="merge"`` into Data, or
        ``"discard"``), then ``Exited(returncode)`` and ``Closed``. Options: ``cwd``,
        ``env`` (the child's whole environment), ``stderr``, ``kill_timeout``, plus
        the port options. The child runs in its own process group; closing the port
        (or stopping the server) sends SIGTERM, then SIGKILL, to that group, so the
        child's own children (a shell's commands) end with it."""
        from .drivers import process

        return process.spawn(self, argv, options)

    def send_after(self, delay: float, channel: Channel[Any] | Port, message: Any) -> Timer:
        """Send ``message`` to ``channel`` (any channel or port inbox) after ``delay``
        seconds; returns the Timer (``.cancel()``)."""
        from .drivers import timer

        return timer.send_after(self, delay, channel, message)

    def interval(self, period: float, **options: Unpack[ConnectOptions]) -> Port:
        """A port that delivers ``Tick(port, count)`` every ``period`` seconds."""
        from .drivers import timer

        return timer.interval(self, period, options)

    def watch(
        self,
        fileobj: Any,
        *,
        readable: bool = True,
        writable: bool = False,
        **options: Unpack[ConnectOptions],
    ) -> Port:
        """Readiness interest on a caller's fd or socket: ``Readable(port, fd)`` /
        ``Writable(port, fd)`` (see drivers/watch.py for the triggering rule)."""
        from .drivers import watch

        return watch.watch(self, fileobj, readable, writable, options)

    def open_file(self, path: str, mode: str = "rb", **options: Unpack[FileOptions]) -> Port:
        """A regular file, read/written by a worker thread so the loop never waits
        on the disk; reads arrive as ``Data`` then ``Closed`` at EOF."""
        from .drivers import file

        return file.open_file(self, path, mode, options)

    # -- awaitable openers ------------------------------------------------------------
    #
    # The same opens for an ``await`` task (asyncio or trio): the blocking form runs in
    # a helper thread (name resolution included), so the caller's loop never waits;
    # a cancelled open closes the port it made (sched/_blocking.py).

    async def aconnect_tcp(self, host: str, port: int, **options: Any) -> Port:
        """``connect_tcp`` for coroutines and trio tasks; never blocks the caller's loop."""
        return await run_blocking(lambda: self.connect_tcp(host, port, **options), _close_port)

    async def alisten_tcp(self, host: str, port: int, **options: Any) -> Port:
        """``listen_tcp`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.listen_tcp(host, port, **options), _close_port)

    async def aconnect_unix(self, path: str, **options: Any) -> Port:
        """``connect_unix`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.connect_unix(path, **options), _close_port)

    async def alisten_unix(self, path: str, **options: Any) -> Port:
        """``listen_unix`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.listen_unix(path, **options), _close_port)

    async def aopen_udp(self, local_addr: tuple[str, int] | None = None, **options: Any) -> Port:
        """``open_udp`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.open_udp(local_addr, **options), _close_port)

    async def aspawn(self, argv: list[str], **options: Any) -> Port:
        """``spawn`` for coroutines and trio tasks."""
        return await run_blocking(lambda: self.spawn(argv, **options), _close_port)

    async def aopen_file(self, path: str, mode: str = "rb", **options: Any) -> Port:
        """``open_file`` for coroutines and trio tasks (a FIFO's open may wait for
        its other end: the caller's loop runs meanwhile)."""
        return await run_blocking(lambda: self.open_file(path, mode, **options), _close_port)


class _LoopThreadTask:
    """The blocking task of the I/O thread: it refuses to block. The loop never
    waits on user code (docs/architecture.md), so a ``recv``/``select`` that
    would wait, a ``send`` that would wait, or a busy port's ``send``, made in a
    callback on the I/O thread, raises at once instead of stalling every port."""

    __slots__ = ()

    def yield_now(self) -> None:
        pass

    def block_after(
        self, f: Callable[[WakeupHandle], object], timeout: float | None = None
    ) -> bool:
        raise RuntimeError(
            "a blocking call (recv, select, a send that must wait) on the ioserver I/O "
            "thread would stall every port: use try_recv/try_send, or await "
            "arecv/asend/aselect in a coroutine on the loop"
        )


_LOOP_THREAD_TASK = _LoopThreadTask()


def _file_pool_stats(server: IOServer) -> dict[str, int]:
    """The file workers (drivers/file.py): threads, busy ones, jobs waiting, growths."""
    pool = getattr(server, "_file_pool", None)  # made by the first open_file
    got = pool.stats() if pool is not None else {"size": 0, "busy": 0, "queued": 0, "grown": 0}
    return {f"file_{key}": value for key, value in got.items()}


def _close_port(port: Port) -> None:
    """An awaitable open whose caller gave up: close the port nobody will own."""
    with contextlib.suppress(Exception):
        port.close()


def _run_call(fn: Callable[..., Any], args: tuple[Any, ...], handle: Any) -> None:
    """Loop thread: run a ``call`` and hand the outcome to the waiting caller."""
    try:
        outcome = (True, fn(*args))
    except BaseException as exc:  # handed to the caller, who re-raises it
        outcome = (False, exc)
    if handle.claim():
        handle.payload = outcome
        handle.unpark()


def _start_coroutine(make: Callable[..., Any], args: tuple[Any, ...], handle: Any) -> None:
    """Loop thread: start ``make(*args)`` as a task; its outcome wakes ``handle``."""
    task = asyncio.ensure_future(make(*args))

    def done(task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            outcome: tuple[bool, Any] = (False, ServerStopped("cancelled by the server's stop"))
        elif task.exception() is not None:
            outcome = (False, task.exception())
        else:
            outcome = (True, task.result())
        if handle.claim():
            handle.payload = outcome
            handle.unpark()

    task.add_done_callback(done)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


_default: IOServer | None = None
_default_lock = threading.Lock()

#: Every IOServer of the process, for the fork handler.
_SERVERS: weakref.WeakSet[IOServer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()  # another thread may have held it at the fork
    for server in list(_SERVERS):
        server._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default() -> IOServer:
    """The process-wide IOServer: started on first use, stopped at interpreter exit."""
    global _default
    with _default_lock:
        if _default is None or not _default.running:
            _default = IOServer(name="ioserver-default").start()
            atexit.register(_default.stop)
        return _default
