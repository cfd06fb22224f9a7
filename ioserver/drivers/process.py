"""Child processes as ports: stdin <- ``send``, stdout -> ``Data``, then ``Exited``, ``Closed``.

Theory of operation
-------------------
``spawn(server, argv, options)`` (client side) validates its arguments, then
runs a coroutine on the loop that starts the child and blocks the caller until
it runs (or re-raises the ``OSError``: FileNotFoundError, PermissionError...).
The port's driver, :class:`ProcessDriver`, is an ``asyncio.SubprocessProtocol``:

* stdout bytes go through the base's ``feed()`` (so ``packet=`` frames them)
  and arrive as ``Data``; stderr bytes arrive unframed as ``Stderr`` (the
  default ``stderr="separate"``), or share stdout's pipe (``"merge"``), or go
  to /dev/null (``"discard"``);
* ``send`` writes stdin; the stdin pipe transport's water marks are the
  port's, and its ``pause_writing``/``resume_writing`` (both asyncio and
  uvloop forward them from the pipe to the subprocess protocol) make the port
  busy and idle, so a writer blocks while the child does not read;
* ``close_stdin()`` (``write_eof``) closes stdin once its buffer is flushed;
  a later ``send`` fails the port (Error + Closed), as a write after
  ``write_eof`` does on a socket. If the *child* closes its stdin (or exits),
  later writes are dropped: the ``Exited`` that follows tells the story;
* a full inbox (or a passive port) pauses the stdout and stderr pipe
  transports, so the child blocks on a full pipe: real backpressure;
* ``Exited(port, returncode)`` (negative: killed by that signal) is delivered
  when *both* the child was reaped *and* every pipe we read reached EOF,
  whatever order the loop reports them in, so it follows all of the output;
  ``Closed`` follows it. (A grandchild that inherited stdout keeps the pipe
  open, and so delays both, as with any pipe reader.) ``Stderr`` and
  ``Exited`` count like ``Data`` against an ``active=N`` budget.

Killing (lesson 10, docs/architecture.md). ``port.close()`` delivers ``Closed`` at once, sends the
child SIGTERM and, if it has not exited ``kill_timeout`` seconds later
(default 1.0; 0 means SIGKILL at once), SIGKILL. Its stdout/stderr are still
drained (and dropped) meanwhile, so a child that handles SIGTERM by writing
does not block. A failure of the port (``Error``) or a dead inbox sends
SIGKILL at once. Either way the driver stays known to the server (its
``kind`` becomes ``"process-exiting"`` in ``stats()``) until the child is
reaped: server stop sends SIGTERM to every child still running, escalates to
SIGKILL after ``kill_timeout`` or half the stop budget, whichever is shorter,
and waits (``flushing()``, bounded by the stop timeout) until each child is
reaped. No zombies: every child is reaped while the loop runs.

Process groups. Each child runs in its own process group (its pgid is its
pid), and every signal above goes to the whole group: a shell's children
(``sh -c "sleep 999; :"``) are terminated and killed with it, instead of
living on with ppid 1. When the child is gone but its group is not (a
grandchild ignored SIGTERM, or the child exited and left a descendant that
holds its output pipes), closing or stopping the port sends the rest of the
group SIGKILL. A descendant that made its own group or session (a daemon)
has left ours and is not signalled. The group id is used while the child is
unreaped, or while a member of the group still lives (which keeps the id
from being reused).

Signals and child watchers (embedded mode installs no signal handlers: lesson 11,
docs/architecture.md)
-------------------------------------------------------------------------------
What we found (CPython 3.11, uvloop 0.23, Linux):

* uvloop's ``subprocess_exec`` runs libuv's ``uv_spawn``, which installs a
  process-wide C-level SIGCHLD handler (``sigaction``) the first time any
  loop spawns, from any thread (no main thread needed). Python's
  ``signal.getsignal`` does not see it. A SIGCHLD handler the host installed
  with ``signal.signal`` stops being called while it is installed, and when
  the loop closes libuv resets SIGCHLD to SIG_DFL: the host's handler is lost
  for good. (Checked with /proc/self/status SigCgt and a Python handler.)
* asyncio's selector loop in 3.11 uses the policy's child watcher, by default
  ``ThreadedChildWatcher``: one thread per child blocked in ``waitpid(pid)``,
  no signal handler, works from a non-main thread (no DeprecationWarning in
  3.11). It breaks if the host set another watcher (e.g. ``SafeChildWatcher``
  attached to the main thread's loop). Its ``close()``/``send_signal()`` call
  ``Popen.poll()``, which can reap the child before the watcher thread does
  (the watcher then logs "Unknown child process pid" and reports 255).
* Both forward the stdin pipe's ``pause_writing``/``resume_writing`` to the
  subprocess protocol, so write backpressure needs no polling.
* uvloop's ``subprocess_exec`` hands the child its stdio through inheritable
  dups that libuv never closes in the child (libuv has no ``close_fds``): the
  child holds its stdin, stdout and stderr twice (e.g. as fds 13, 17, 19), so
  a child that closes fd 0 does not close its stdin, contrary to lesson 11 (docs/architecture.md).

So neither loop's ``subprocess_exec`` fits an embedded library. Where the
kernel has pidfds (Linux >= 5.3: ``os.pidfd_open``), which we probe once, we
start the child ourselves with ``subprocess.Popen`` (argv, no shell,
``close_fds``, signals restored in the child), connect its pipes with
``connect_read_pipe``/``connect_write_pipe`` and watch a pidfd with
``add_reader``: it becomes readable when the child exits, then
``Popen.poll()`` reaps exactly that child. Signals go through
``signal.pidfd_send_signal`` (never to a recycled pid). No signal handler, no
thread, the same code on uvloop and asyncio. :class:`_PidfdTransport` is a
small ``SubprocessTransport`` that drives the same protocol callbacks as
asyncio's, so the driver does not know which one it has. Without pidfds
(other systems, seccomp-filtered containers) we fall back to
``loop.subprocess_exec``, with the caveats above, and signal with
``os.kill``. ``Popen`` runs on the loop thread: the loop waits for the
fork/exec (as it does inside either loop's ``subprocess_exec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..messages import Exited, Stderr
from ..port import Port
from ..watchdog import loop_callback
from .base import Driver, DriverHost
from .options import take_options

__all__ = ["DEFAULT_KILL_TIMEOUT", "ProcessDriver", "spawn"]

log = logging.getLogger("ioserver")

#: Seconds between SIGTERM and SIGKILL when a process port is closed.
DEFAULT_KILL_TIMEOUT = 1.0

_STDERR_MODES = ("separate", "merge", "discard")
_STDERR_TARGET = {"separate": subprocess.PIPE, "merge": subprocess.STDOUT}

_pidfd_ok: bool | None = None


def _pidfd_supported() -> bool:
    """Whether this kernel and Python have pidfds (probed once)."""
    global _pidfd_ok
    if _pidfd_ok is None:
        ok = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
        if ok:
            try:
                os.close(os.pidfd_open(os.getpid()))
            except OSError:
                ok = False
        _pidfd_ok = ok
    return _pidfd_ok


class ProcessDriver(Driver, asyncio.SubprocessProtocol):
    """One child process: its pipes are the port's input and output."""

    kind = "process"

    def __init__(
        self,
        server: DriverHost,
        port: Port,
        *,
        stderr: str = "separate",
        kill_timeout: float = DEFAULT_KILL_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(server, port, **kwargs)
        self.transport: Any = None
        self.stderr_mode = stderr
        self.kill_timeout = kill_timeout
        self.returncode: int | None = None
        self.bytes_err = 0
        # The read pipes not yet at EOF: Exited waits for them and the reaping.
        self._open_readers = {1, 2} if stderr == "separate" else {1}
        self._stdin_state = "open"  # "eof": we closed it; "lost": the child did
        self._reaped = False
        self._kill_handle: asyncio.TimerHandle | None = None
        self._sigkill_sent = False
        self._end_reason: str | None = None  # Closed's reason after Exited
        self._stopping = False  # the server's stop began
        if self._active <= 0:
            # Passive from the start: read nothing until asked (the base
            # resumes reading through _resume_reading when a read comes).
            self._reading = False

    # -- asyncio.SubprocessProtocol callbacks (loop thread; watchdog sections) --------

    @loop_callback
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        try:
            self.port.info_extra["pid"] = transport.get_pid()
            stdin = self._pipe(0)
            if stdin is not None:
                with contextlib.suppress(RuntimeError):  # uvloop: the child closed it already
                    stdin.set_write_buffer_limits(
                        high=self.port.high_water, low=self.port.low_water
                    )
            if not self._reading:
                self._pause_reading()
            if self._stopping:  # the stop began while the child was starting
                self._stop_terminate()
        except Exception as exc:
            self.fail(exc)

    @loop_callback
    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)  # str only with universal_newlines, never here
        try:
            if fd == 1:
                self.feed(data)
            elif fd == 2 and not self._closed_queued:
                self.bytes_err += len(data)
                self.deliver(Stderr(self.port, data))
        except Exception as exc:
            self.fail(exc)

    @loop_callback
    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 0:
            if self._stdin_state == "open":
                self._stdin_state = "lost"
            port = self._port()
            if port is not None:  # None: collected (drivers/base.py, "Lifetime")
                port._set_transport_busy(False)  # no resume_writing will come now
            return
        self._open_readers.discard(fd)
        try:
            if exc is not None:
                self.fail(exc)
            elif fd == 1:
                self.feed_eof()
        except Exception as err:
            self.fail(err)
        self._maybe_exited()

    @loop_callback
    def process_exited(self) -> None:
        self._reaped = True
        if self._closed_queued and (self._kill_handle is not None or self._sigkill_sent):
            # We were ending the port and the child is gone: what is left of its
            # group (grandchildren that outlived the SIGTERM) is killed now,
            # before our pipes close and the driver forgets it.
            self._signal_group(signal.SIGKILL)
        if self._kill_handle is not None:
            self._kill_handle.cancel()
            self._kill_handle = None
        if self.transport is not None:
            self.returncode = self.transport.get_returncode()
        port = self._port()
        if port is not None:
            port.info_extra["returncode"] = self.returncode
        if self._closed_queued:
            self._release()  # no Exited: the port already ended (closed, failed)
        else:
            self._maybe_exited()

    def connection_lost(self, exc: Exception | None) -> None:
        """Everything ended (asyncio's own transports); _maybe_exited did the work."""

    def _maybe_exited(self) -> None:
        """Deliver Exited then Closed once the child is reaped and its output read."""
        if not self._reaped or self._open_readers or self._closed_queued:
            return
        self.deliver(Exited(self.port, self.returncode if self.returncode is not None else -1))
        self.finish(self._end_reason)
        self._release()

    def _release(self) -> None:
        """The child is reaped: close the transport; a lingering driver leaves the server."""
        transport = self.transport
        if transport is not None:
            try:
                transport.close()
            except Exception:
                log.exception("ioserver: closing the transport of %r failed", self.port)
        if self._finished:
            self.server._unregister(self)

    def _after_closed(self) -> None:
        super()._after_closed()
        if self.transport is not None and not self._reaped:
            # Stay known to the server until the child is reaped, so that the
            # server's stop waits for it (flushing) and nothing is left a zombie.
            self.kind = "process-exiting"
            self.server._drivers.add(self)

    # -- signals ----------------------------------------------------------------------

    def _signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (module docstring)."""
        if self.transport is None:
            return
        if self._reaped:
            if self._open_readers:  # a descendant still holds the child's pipes
                self._signal_group(signal.SIGKILL)
            return
        if sig == signal.SIGKILL:
            self._sigkill_sent = True
        if self._signal_group(sig):
            return
        try:  # the child left its group: at least the child itself
            if isinstance(self.transport, _PidfdTransport):
                self.transport.send_signal(sig)
            else:
                # Not transport.send_signal: asyncio's polls (and may reap) first.
                os.kill(self.transport.get_pid(), sig)
        except ProcessLookupError:
            pass

    def _signal_group(self, sig: int) -> bool:
        """``killpg`` the child's group; False if there is no such group (any more)."""
        try:
            os.killpg(self.transport.get_pid(), sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _terminate(self, grace: float) -> None:
        """SIGTERM now and SIGKILL after ``grace`` seconds (SIGKILL now if grace <= 0)."""
        if self.transport is None or self._sigkill_sent:
            return
        if self._reaped:
            self._signal(signal.SIGKILL)  # only what is left of its group, if anything
            return
        if grace <= 0:
            self._kill_now()
            return
        loop = self.server.loop
        handle = self._kill_handle
        if handle is not None:
            if handle.when() <= loop.time() + grace:
                return  # SIGTERM was sent and SIGKILL comes soon enough
            handle.cancel()
        else:
            self._signal(signal.SIGTERM)
        self._kill_handle = loop.call_later(grace, self._kill_now)

    @loop_callback
    def _kill_now(self) -> None:
        if self._kill_handle is not None:
            self._kill_handle.cancel()
            self._kill_handle = None
        self._signal(signal.SIGKILL)

    def _pipe(self, fd: int) -> Any:
        """The pipe transport for the child's ``fd``, or None if there is none or it
        is closing (uvloop raises RuntimeError on most calls to a closed handle)."""
        if self.transport is None:
            return None
        pipe = self.transport.get_pipe_transport(fd)
        if pipe is None or pipe.is_closing():
            return None
        return pipe

    def _set_pipes_reading(self, reading: bool) -> None:
        for fd in (1, 2):
            pipe = self._pipe(fd)
            if pipe is None:
                continue
            with contextlib.suppress(RuntimeError):
                if reading and not pipe.is_reading():
                    pipe.resume_reading()
                elif not reading and pipe.is_reading():
                    pipe.pause_reading()

    def _drain_output(self) -> None:
        """Our side ended the port: keep reading (and dropping) the child's output,
        so a child that writes while it exits never blocks on a full pipe."""
        self._set_pipes_reading(True)

    def _close_stdin(self) -> None:
        stdin = self._pipe(0)
        if stdin is not None:
            with contextlib.suppress(RuntimeError):
                stdin.close()  # flushes what is buffered, then closes

    # -- Driver hooks -----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._stdin_state == "eof":
            raise BrokenPipeError("the process's stdin was closed with close_stdin()")
        stdin = self._pipe(0) if self._stdin_state == "open" else None
        if stdin is not None:
            try:
                stdin.write(data)
                return
            except RuntimeError:  # uvloop: the handle closed under us (EPIPE)
                pass
        log.debug("ioserver: %r: stdin is gone, %d bytes dropped", self.port, len(data))

    def _pause_reading(self) -> None:
        self._set_pipes_reading(False)

    def _resume_reading(self) -> None:
        self._set_pipes_reading(True)

    def _close_transport(self) -> None:
        """``port.close()``: SIGTERM, then SIGKILL after ``kill_timeout``."""
        self._close_stdin()
        self._drain_output()
        self._terminate(self.kill_timeout)

    def _abort(self) -> None:
        """A failure or a dead inbox: SIGKILL at once."""
        self._drain_output()
        self._kill_now()
        stdin = self._pipe(0)
        if stdin is not None:
            with contextlib.suppress(RuntimeError):
                stdin.abort()

    def _write_eof(self) -> None:
        if self._stdin_state == "open":
            self._stdin_state = "eof"
        self._close_stdin()

    def begin_stop(self) -> None:
        """Server stop: SIGTERM, SIGKILL after kill_timeout or half the stop budget."""
        self._end_reason = "server stopped"
        self._stopping = True
        self._stop_terminate()

    def _stop_terminate(self) -> None:
        budget = getattr(self.server, "_stop_deadline", 0.0) - time.monotonic()
        self._terminate(min(self.kill_timeout, budget / 2))

    def flushing(self) -> bool:
        """The stop waits until the child is reaped (its stdin data is moot), and
        for a spawn still in progress (then kills that child too)."""
        if self._reaped:
            return False
        return self.transport is not None or not self._closed_queued

    def stop(self, reason: str = "server stopped") -> None:
        # The stop's deadline passed (or everything was reaped): SIGKILL what is left.
        self._kill_now()
        super().stop(reason)

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["stderr"] = self.stderr_mode
        info["bytes_err"] = self.bytes_err
        info["returncode"] = self.returncode
        info["reaped"] = self._reaped
        info["stdin"] = self._stdin_state
        info["backend"] = "pidfd" if isinstance(self.transport, _PidfdTransport) else "asyncio"
        stdin = self._pipe(0)
        if stdin is not None:
            with contextlib.suppress(RuntimeError):
                info["transport_buffer"] = stdin.get_write_buffer_size()
        return info


# -- the pidfd transport: Popen + pipe transports + a pidfd in the selector -----------


class _PipeProtocol(asyncio.Protocol):
    """One of the child's pipes; forwards to the subprocess protocol as fd ``fd``."""

    def __init__(self, owner: _PidfdTransport, fd: int) -> None:
        self.owner = owner
        self.fd = fd

    def connection_made(self, transport: Any) -> None:
        self.owner._pipes[self.fd] = transport

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        owner._call(owner._protocol.pipe_data_received, self.fd, data)

    def eof_received(self) -> bool:
        return False  # connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        owner._call(owner._protocol.pipe_connection_lost, self.fd, exc)

    def pause_writing(self) -> None:
        owner = self.owner
        owner._call(owner._protocol.pause_writing)

    def resume_writing(self) -> None:
        owner = self.owner
        owner._call(owner._protocol.resume_writing)


class _PidfdTransport(asyncio.SubprocessTransport):
    """A ``SubprocessTransport`` over ``subprocess.Popen`` and a pidfd (module docstring).

    Protocol callbacks that happen before ``connection_made`` (data may arrive
    while the other pipes are still being connected) are held and replayed in
    order, as asyncio's own transport does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.SubprocessProtocol,
        popen: subprocess.Popen[bytes],
        pidfd: int,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._popen = popen
        self._pidfd: int | None = pidfd
        self._pipes: dict[int, Any] = {}
        self._held: list[tuple[Callable[..., object], tuple[Any, ...]]] | None = []
        self._returncode: int | None = None
        self._closed = False
        loop.add_reader(pidfd, self._on_pidfd)

    async def _connect(self) -> None:
        """Connect the pipes, then tell the protocol (and replay what was held)."""
        loop = self._loop
        popen = self._popen
        if popen.stdin is not None:
            await loop.connect_write_pipe(lambda: _PipeProtocol(self, 0), popen.stdin)
        if popen.stdout is not None:
            await loop.connect_read_pipe(lambda: _PipeProtocol(self, 1), popen.stdout)
        if popen.stderr is not None:
            await loop.connect_read_pipe(lambda: _PipeProtocol(self, 2), popen.stderr)
        self._protocol.connection_made(self)
        held, self._held = self._held, None
        for fn, args in held or ():
            fn(*args)

    def _call(self, fn: Callable[..., object], *args: Any) -> None:
        if self._held is not None:
            self._held.append((fn, args))
        else:
            fn(*args)

    def _on_pidfd(self) -> None:
        """The pidfd is readable: the child has exited; reap exactly it."""
        returncode = self._popen.poll()
        if returncode is None:  # not expected: a readable pidfd means exited
            return
        self._returncode = returncode
        self._close_pidfd()
        self._call(self._protocol.process_exited)

    def _close_pidfd(self) -> None:
        pidfd = self._pidfd
        if pidfd is not None:
            self._pidfd = None
            self._loop.remove_reader(pidfd)
            os.close(pidfd)

    # asyncio.SubprocessTransport

    def get_pid(self) -> int:
        return self._popen.pid

    def get_returncode(self) -> int | None:
        return self._returncode

    def get_pipe_transport(self, fd: int) -> Any:
        return self._pipes.get(fd)

    def send_signal(self, signal_: int) -> None:
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signal_)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the pipes; a child still running is killed (and reaped when it exits)."""
        if self._closed:
            return
        self._closed = True
        for pipe in self._pipes.values():
            pipe.close()
        if self._returncode is None:
            try:
                self.kill()
            except ProcessLookupError:
                pass


async def _spawn_pidfd(
    loop: asyncio.AbstractEventLoop,
    driver: ProcessDriver,
    argv: list[str | bytes],
    cwd: Any,
    env: Any,
    stderr: str,
) -> None:
    popen = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=_STDERR_TARGET.get(stderr, subprocess.DEVNULL),
        cwd=cwd,
        env=env,
        bufsize=0,
        close_fds=True,
        process_group=0,  # its own group: signals reach its children too
    )
    try:
        pidfd = os.pidfd_open(popen.pid)
    except BaseException:
        popen.kill()
        popen.wait()  # SIGKILLed a moment ago: returns at once
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                pipe.close()
        raise
    transport = _PidfdTransport(loop, driver, popen, pidfd)
    try:
        await transport._connect()
    except BaseException:
        transport.close()  # kills; the pidfd reader still reaps it
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        raise


async def _spawn_asyncio(
    loop: asyncio.AbstractEventLoop,
    driver: ProcessDriver,
    argv: list[str | bytes],
    cwd: Any,
    env: Any,
    stderr: str,
) -> None:
    await loop.subprocess_exec(
        lambda: driver,
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=_STDERR_TARGET.get(stderr, subprocess.DEVNULL),
        cwd=cwd,
        env=env,
        start_new_session=True,  # its own group (uvloop has no process_group)
    )


def _check_argv(argv: object) -> list[str | bytes]:
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a list of arguments, not a string (there is no shell)")
    if not isinstance(argv, Sequence):
        raise TypeError(f"argv must be a list of arguments, not {type(argv).__name__}")
    args: list[str | bytes] = []
    for arg in argv:
        if isinstance(arg, os.PathLike):
            arg = os.fspath(arg)
        if not isinstance(arg, str | bytes):
            raise TypeError(f"each argument must be str, bytes or a path, not {arg!r}")
        args.append(arg)
    if not args:
        raise ValueError("argv is empty")
    return args


def spawn(server: DriverHost, argv: Sequence[str], options: Mapping[str, Any]) -> Port:
    """Client side of ``IOServer.spawn``: start ``argv`` (no shell) and return its port.

    Options: ``cwd``, ``env`` (a mapping that *replaces* the environment, as in
    ``subprocess``), ``stderr`` ("separate", "merge" or "discard"),
    ``kill_timeout`` (seconds from SIGTERM to SIGKILL on close; 0: SIGKILL at
    once; both go to the child's process group), and the common port options
    (``packet`` applies to stdout; the encoder to what ``send`` writes). Blocks
    until the child runs; raises its OSError (FileNotFoundError,
    PermissionError, ...) if it cannot start.
    """
    args = _check_argv(argv)
    opts, extra = take_options(dict(options), "cwd", "env", "stderr", "kill_timeout")
    stderr = extra.get("stderr", "separate")
    if stderr not in _STDERR_MODES:
        raise ValueError(f"stderr must be 'separate', 'merge' or 'discard', not {stderr!r}")
    kill_timeout = float(extra.get("kill_timeout", DEFAULT_KILL_TIMEOUT))
    env = extra.get("env")
    if env is not None:
        if not isinstance(env, Mapping):
            raise TypeError(f"env must be a mapping, not {type(env).__name__}")
        env = dict(env)
    cwd = extra.get("cwd")
    port = Port(server, "process", opts.inbox, high_water=opts.high_water)

    async def open_process() -> None:
        driver = ProcessDriver(
            server, port, stderr=stderr, kill_timeout=kill_timeout, **opts.driver_kwargs()
        )
        start = _spawn_pidfd if _pidfd_supported() else _spawn_asyncio
        try:
            await asyncio.wait_for(start(server.loop, driver, args, cwd, env, stderr), opts.timeout)
        except BaseException:
            driver.discard(abort=driver.transport is not None)
            raise

    server._run_coroutine(open_process)
    return port
