"""Files as ports: a worker thread does the disk I/O, so the loop never waits on a disk.

Theory of operation
-------------------
Regular files have no readiness (epoll refuses them; a read may block on
the disk or NFS for as long as it likes), so a file port's I/O runs in a
worker thread and only the *completions* come back to the loop, through
``server._requests.submit`` like any other request. Each server has one small
pool (:class:`_FilePool`, two threads), created on the first ``open_file``.
It counts the files that are open (or opening) and shuts its executor down
(``wait=False``: queued jobs still run) when the last one is closed; the next
``open_file`` starts a new one. Server stop closes every file port, so the
pool's threads end with the server.

A port owns one file object and runs one *job* on it at a time: open, a
read, a write, close (never two concurrent operations on the same file
object). The loop-side state machine, :meth:`FileDriver._advance`, starts the
next job when the previous one's completion arrives:

* ``"rb"``: read ``chunk_size`` bytes (default 64 KiB) per job, deliver them
  through the framing decoder (``feed``) as ``Data``; at EOF, ``Closed``. The
  next read is started only while the driver is *reading*: the base turns
  that off when the inbox is full or the active budget is spent (passive
  ports read nothing until ``port.read()``), so memory stays bounded by the
  inbox plus one chunk.
* ``"wb"`` / ``"ab"``: ``send`` queues bytes; one job writes everything queued
  (up to 1 MiB) in order. More than ``high_water`` bytes queued make the port
  busy (``send`` blocks) until the queue is below ``low_water``.
  ``port.close()`` (or ``close_stdin()``) writes what is queued, closes the
  file, and *then* delivers ``Closed``; a failed write or close delivers
  ``Error`` then ``Closed`` instead, so the writer learns whether its data
  reached the file.

Opening happens in the worker too (``open`` can block on NFS); its error
(FileNotFoundError, PermissionError, IsADirectoryError...) is raised to the
caller of ``open_file``, who stays blocked until the file is open.

Nothing leaks when the loop stops under a job: a completion that cannot be
delivered (the server stopped) closes the file in the worker instead.

Limits: a job stuck in the kernel (a hung NFS server; a FIFO opened with no
writer, which is not a regular file) holds its worker until it returns; once
every worker has been stuck for ``POOL_GROW_AFTER`` with jobs waiting, the
pool grows by one worker, up to ``POOL_MAX_WORKERS`` (``IOServer.stats()``:
``file_size``, ``file_busy``, ``file_queued``). Workers are daemon
threads: the server's stop (also at exit) closes the files first.
``timeout=`` bounds the caller's wait for the open, not the worker's.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping
from time import monotonic
from typing import Any

from ..port import Port
from ..requests import ServerStopped
from ..sched._original import allocate_lock, start_new_thread, threading_patched
from ..watchdog import Watchdog, loop_callback
from .base import Driver, DriverHost
from .options import take_options

__all__ = ["DEFAULT_CHUNK_SIZE", "FileDriver", "open_file"]

log = logging.getLogger("ioserver")

#: Bytes per read job (and so per ``Data`` with ``packet=None``).
DEFAULT_CHUNK_SIZE = 64 * 1024
#: Worker threads per server (while files are open).
POOL_WORKERS = 2
#: The most worker threads a server's pool grows to while its workers are stuck.
POOL_MAX_WORKERS = 8
#: Seconds every worker must have been on its job, with jobs waiting, to grow.
POOL_GROW_AFTER = 0.2
#: Most bytes one write job takes from the queue.
_WRITE_BATCH = 1 << 20
_MODES = ("rb", "wb", "ab")


class _FilePool:
    """One server's file workers: threads that live while files are open, and grow
    while every one of them is stuck.

    Jobs wait in a FIFO; an idle worker waits on a lock of its own, which
    ``submit`` releases (original locks and OS threads, so the pool works the
    same under gevent's monkey-patching). ``acquire`` (loop
    thread, before a file's open job) and ``release`` (any thread, once that
    file is closed or failed to open) count the open files; at zero the idle
    workers end: jobs already queued still run, then their threads end.

    Growth (as Java's executors compensate for blocked workers): a job
    submitted while every worker is busy arms a check ``grow_after`` seconds
    later on the loop thread. If then jobs are still waiting and every worker
    has been on its current job for at least ``grow_after`` (a FIFO with no
    writer, a hung NFS server), one more worker starts, up to
    ``max_workers``; the check repeats while that holds. Extra workers stay
    until the pool goes idle.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        workers: int = POOL_WORKERS,
        max_workers: int = POOL_MAX_WORKERS,
        grow_after: float = POOL_GROW_AFTER,
        watchdog: Watchdog | None = None,
    ) -> None:
        self._lock = allocate_lock()
        #: The server's watchdog: the growth check is a loop callback (a section).
        self._watchdog = watchdog
        self._loop = loop
        self._workers = workers
        self._max = max(workers, max_workers)
        self._grow_after = grow_after
        self._jobs: deque[tuple[Any, tuple[Any, ...]]] = deque()
        self._size = 0  # live workers
        self._idle: list[Any] = []  # the park locks of workers waiting for a job
        self._busy: dict[int, float] = {}  # worker number -> when its job started
        self._users = 0
        self._armed = False  # a growth check is scheduled
        self._numbers = itertools.count(1)
        #: Times the pool started from no workers (observability, tests).
        self.started = 0
        #: Workers started beyond ``workers`` because every worker was stuck.
        self.grown = 0

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                while self._idle:  # idle workers end
                    self._idle.pop().release()

    def submit(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` in a worker (starting one if none is idle)."""
        with self._lock:
            self._jobs.append((fn, args))
            if self._idle:
                self._idle.pop().release()
            elif self._size < self._workers:
                if self._size == 0:
                    self.started += 1
                self._start_worker()
            elif not self._armed and self._size < self._max and self._loop is not None:
                self._armed = True
                self._loop.call_soon_threadsafe(
                    self._loop.call_later, self._grow_after, self._check
                )

    def _start_worker(self) -> None:
        """Lock held: one more worker thread."""
        self._size += 1
        number = next(self._numbers)
        if threading_patched():  # patched threading.Thread is a greenlet: an OS thread
            start_new_thread(self._work, (number,))
            return
        name = f"ioserver-file-{number}"
        threading.Thread(target=self._work, args=(number,), name=name, daemon=True).start()

    @loop_callback
    def _check(self) -> None:
        """Loop thread: grow if every worker has been stuck since the check was armed."""
        with self._lock:
            self._armed = False
            if not self._jobs or self._idle or self._size >= self._max:
                return
            now = monotonic()
            stuck = len(self._busy) == self._size and all(
                now - since >= self._grow_after for since in self._busy.values()
            )
            if stuck:
                self.grown += 1
                self._start_worker()
            if self._jobs and self._size < self._max and self._loop is not None:
                self._armed = True
                self._loop.call_later(self._grow_after, self._check)

    def _work(self, number: int) -> None:
        """A worker thread: run jobs until the pool has no open file and no job."""
        lock, jobs, busy = self._lock, self._jobs, self._busy
        park = allocate_lock()
        park.acquire()  # held: released by a submit (or the last release) for us
        while True:
            with lock:
                if not jobs:
                    if self._users <= 0:
                        self._size -= 1
                        return
                    self._idle.append(park)
                    job = None
                else:
                    job = jobs.popleft()
                    busy[number] = monotonic()
            if job is None:
                park.acquire()
                continue
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # a job reports its own outcome; this is a bug's
                log.exception("ioserver: a file job failed")
            finally:
                with lock:
                    del busy[number]

    def stats(self) -> dict[str, int]:
        """``size`` (workers), ``busy`` (on a job), ``queued`` (jobs waiting), ``grown``."""
        with self._lock:
            return {
                "size": self._size,
                "busy": len(self._busy),
                "queued": len(self._jobs),
                "grown": self.grown,
            }

    @property
    def open_files(self) -> int:
        return self._users

    @property
    def running(self) -> bool:
        return self._size > 0


def _pool_of(server: DriverHost) -> _FilePool:
    """Loop thread: the server's file pool, made on first use."""
    pool: _FilePool | None = getattr(server, "_file_pool", None)
    if pool is None:
        pool = _FilePool(server.loop, watchdog=getattr(server, "_watchdog", None))
        # A lazy slot the server does not declare (DriverHost's docstring).
        setattr(server, "_file_pool", pool)  # noqa: B010
    return pool


class FileDriver(Driver):
    """One open file; every operation on it is a job in the server's file pool."""

    kind = "file"

    def __init__(
        self,
        server: DriverHost,
        port: Port,
        path: str | bytes,
        mode: str,
        chunk_size: int,
        pool: _FilePool,
        **kwargs: Any,
    ) -> None:
        super().__init__(server, port, **kwargs)
        self.path = path
        self.mode = mode
        self.chunk_size = chunk_size
        self.position = 0  # bytes read or written so far
        self._pool = pool
        self._writer = mode != "rb"
        # The file object: used by worker jobs only, one at a time.
        self._file: io.FileIO | None = None
        # Guards _file_closed: the worker's last-resort close vs a close job.
        self._lock = threading.Lock()
        self._file_closed = False
        # Loop thread only.
        self._op: str | None = None  # the job in flight
        self._opened = False
        self._file_gone = False  # closed, or never opened
        self._close_sent = False
        self._eof = False
        self._want_close = False  # close after the queued writes (orderly)
        self._aborting = False  # close as soon as no job runs; drop queued writes
        self._close_reason: str | None = None
        self._wq: deque[bytes] = deque()
        self._wq_bytes = 0  # queued + being written
        self._open_waiter: asyncio.Future[None] | None = None
        if self._writer or self._active <= 0:
            self._reading = False  # nothing to read yet: read_one/setopts resume it

    # -- jobs: the worker side -------------------------------------------------------

    def _submit(self, op: str, fn: Any, *args: Any) -> None:
        """Loop thread: run ``fn(*args)`` in a worker as the port's one job."""
        self._op = op
        self._pool.submit(self._job, op, fn, args)

    def _job(self, op: str, fn: Any, args: tuple[Any, ...]) -> None:
        """Worker thread: do the operation, hand the outcome to the loop."""
        try:
            outcome: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:
            outcome = (False, exc)
        try:
            self.server._requests.submit(self._done, op, outcome, reject=self._rejected)
        except ServerStopped:
            self._close_file()  # nobody will run the completion: don't leak the file

    def _rejected(self, exc: BaseException) -> None:
        """Loop thread, at the server's last moment: the completion won't run."""
        with self._lock:
            closed = self._file_closed
        if not closed:
            self._pool.submit(self._close_file)

    def _open(self) -> None:
        try:
            self._file = io.FileIO(self.path, self.mode[0])
        except BaseException:
            with self._lock:
                self._file_closed = True
            self._pool.release()
            raise

    def _read(self, size: int) -> bytes:
        assert self._file is not None
        return self._file.read(size) or b""

    def _write_all(self, data: bytes) -> int:
        assert self._file is not None
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            if n is None:  # non-blocking file with nothing written: not for regular files
                raise BlockingIOError("the file is non-blocking")
            view = view[n:]
        return len(data)

    def _close_file(self) -> None:
        """Worker thread: close the file once (a close job or the last resort)."""
        with self._lock:
            if self._file_closed:
                return
            self._file_closed = True
            file = self._file
        try:
            if file is not None:
                file.close()
        finally:
            self._pool.release()

    # -- completions: the loop side --------------------------------------------------

    def _start_open(self) -> None:
        self._pool.acquire()
        self._submit("open", self._open)

    def _done(self, op: str, outcome: tuple[bool, Any]) -> None:
        """Loop thread: job ``op`` finished with ``outcome`` (ok, value or exception)."""
        self._op = None
        ok, value = outcome
        try:
            if op == "open":
                self._opened_done(ok, value)
            elif op == "read":
                self._read_done(ok, value)
            elif op == "write":
                self._write_done(ok, value)
            elif op == "close":
                self._closed_done(ok, value)
        except Exception as exc:
            self._aborting = True
            self.fail(exc)
        self._advance()

    def _opened_done(self, ok: bool, value: Any) -> None:
        waiter = self._open_waiter
        self._open_waiter = None
        if not ok:
            self._file_gone = True
            if waiter is not None and not waiter.done():
                waiter.set_exception(value)
            return
        self._opened = True
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        else:
            self._aborting = True  # the opener gave up (timeout): just close it

    def _read_done(self, ok: bool, value: Any) -> None:
        if self._aborting or self._closed_queued:
            return
        if not ok:
            self._aborting = True
            self.fail(value)
            return
        if value:
            self.position += len(value)
            self.feed(value)
        else:
            self._eof = True
            self._want_close = True
            self.feed_eof()
            self.finish()

    def _write_done(self, ok: bool, value: Any) -> None:
        if not ok:
            self._wq.clear()
            self._wq_bytes = 0
            self._aborting = True
            self.fail(value)
            return
        self.position += value
        self._wq_bytes -= value
        self._update_busy()

    def _closed_done(self, ok: bool, value: Any) -> None:
        self._file_gone = True
        if not ok:
            self.fail(value)  # nothing if Closed is already queued
        elif self._want_close and not self._aborting:
            self.finish(self._close_reason)

    def _advance(self) -> None:
        """Loop thread: start the next job, if none runs and one is due."""
        if self._op is not None or not self._opened or self._close_sent:
            return
        if self._aborting:
            self._wq.clear()
            self._wq_bytes = 0
            self._update_busy()
            self._close_sent = True
            self._submit("close", self._close_file)
        elif self._wq:
            self._submit("write", self._write_all, self._take_batch())
        elif self._want_close:
            self._close_sent = True
            self._submit("close", self._close_file)
        elif not self._writer and self._reading and not self._eof and not self._closed_queued:
            self._submit("read", self._read, self.chunk_size)

    def _take_batch(self) -> bytes:
        queue = self._wq
        if len(queue) == 1:
            return queue.popleft()
        parts = []
        size = 0
        while queue and size < _WRITE_BATCH:
            chunk = queue.popleft()
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def _update_busy(self) -> None:
        """Writers: busy above high water, idle again at low water (lesson 6,
        docs/architecture.md)."""
        port = self._port()
        if port is None:  # collected (drivers/base.py, "Lifetime"): nobody to tell
            return
        if port._transport_busy:
            if self._wq_bytes <= port.low_water:
                port._set_transport_busy(False)
        elif self._wq_bytes > port.high_water:
            port._set_transport_busy(True)

    def _abandon(self) -> None:
        """Loop thread: the open failed or its caller gave up; end the port quietly."""
        self._aborting = True
        if not self._closed_queued:
            self._closed_queued = True
            self.port._on_closed()
            self._after_closed()
        self._advance()

    # -- Driver hooks -----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._writer:
            raise io.UnsupportedOperation(f"{self.path!r} was opened for reading")
        if self._aborting or self._close_sent:
            raise ValueError("write to a file that is being closed")
        if data:
            self._wq.append(bytes(data))
            self._wq_bytes += len(data)
            self._update_busy()
            self._advance()

    def _pause_reading(self) -> None:
        """Nothing to do: ``_advance`` starts no read while not reading."""

    def _resume_reading(self) -> None:
        self._advance()

    def _close_transport(self) -> None:
        """A reader's ``close()``: stop reading, close the file after the current job."""
        self._aborting = True
        self._advance()

    def _abort(self) -> None:
        self._aborting = True
        self._advance()

    def _write_eof(self) -> None:
        """``close_stdin()`` on a writer: the same as ``close()``."""
        if not self._writer:
            raise io.UnsupportedOperation(f"{self.path!r} was opened for reading")
        self.close()

    def close(self, reason: str | None = None) -> None:
        """A writer's close is orderly: write the queue, close the file, then Closed
        (or Error + Closed if that fails). A reader's closes at once (base)."""
        if not self._writer:
            super().close(reason)
            return
        if self._closed_queued or self._want_close:
            return
        self._want_close = True
        self._close_reason = reason
        self.port._on_closed()  # no more sends; parked writers wake and get PortClosed
        self._advance()

    def begin_stop(self) -> None:
        """Server stop: writers flush and close, readers close; the stop waits (flushing)."""
        self._close_reason = "server stopped"
        if self._writer:
            self._want_close = True
        else:
            self._aborting = True
        self._advance()

    def flushing(self) -> bool:
        return self._op is not None or (self._opened and not self._file_gone)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(
            path=self.path,
            mode=self.mode,
            position=self.position,
            job=self._op,
            queued_bytes=self._wq_bytes,
            eof=self._eof,
            file_open=self._opened and not self._file_gone,
        )
        return info


def open_file(server: DriverHost, path: Any, mode: str, options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.open_file``: open ``path`` in a worker, return its port.

    ``mode``: "rb" (reads arrive as ``Data`` then ``Closed`` at EOF), "wb" or
    "ab" (``send`` writes; ``close()`` flushes, closes, then ``Closed``).
    Options: ``chunk_size`` (bytes per read, default 64 KiB), and the common
    port options (``timeout`` bounds the open). Blocks until the file is open;
    raises its OSError (FileNotFoundError, PermissionError, ...).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be 'rb', 'wb' or 'ab', not {mode!r}")
    fspath = os.fspath(path)
    opts, extra = take_options(dict(options), "chunk_size")
    chunk_size = extra.get("chunk_size", DEFAULT_CHUNK_SIZE)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, not {chunk_size!r}")
    port = Port(server, "file", opts.inbox, high_water=opts.high_water)
    port.info_extra["path"] = fspath

    async def open_on_loop() -> None:
        driver = FileDriver(
            server, port, fspath, mode, chunk_size, _pool_of(server), **opts.driver_kwargs()
        )
        waiter: asyncio.Future[None] = server.loop.create_future()
        driver._open_waiter = waiter
        driver._start_open()
        try:
            await asyncio.wait_for(waiter, opts.timeout)
        except BaseException:
            driver._abandon()
            raise

    server._run_coroutine(open_on_loop)
    return port
