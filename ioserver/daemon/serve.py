"""The standalone daemon: an IOServer whose clients are other processes, over msgpack-rpc.

``Daemon(config).run()`` starts the I/O thread, listens on a Unix socket
(created 0600; a stale file left by a dead daemon is replaced, a live daemon
is an error) and optionally on TCP (only with a token, or ``insecure = true``),
then waits in the main thread for SIGINT/SIGTERM. On a signal it stops
accepting, tells every client (a ``shutdown`` notification), closes every port
and exits 0. The daemon is the one place that installs signal handlers: the
embedded server never does.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import stat
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import Config
from ..server import IOServer
from .session import Session

__all__ = ["Daemon", "StartError"]

log = logging.getLogger("ioserver.daemon")


class StartError(RuntimeError):
    """The daemon cannot start (socket in use, bad address...); the message says why."""


class Daemon:
    """Listeners and sessions around one IOServer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.io = IOServer(loop=config.server.loop, name="ioserver-daemon")
        # Opening ports blocks (connect, bind, spawn): done here, off the loop.
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ioserver-open")
        self.sessions: set[Session] = set()  # loop thread only
        self.sessions_total = 0
        self._ids = itertools.count(1)
        self._servers: list[Any] = []
        self.socket_path = config.server.socket_path()
        self.tcp_address: tuple[str, int] | None = None
        self._stop = threading.Event()

    # -- sessions (loop thread) --------------------------------------------------------

    def next_session_id(self) -> int:
        return next(self._ids)

    def add_session(self, session: Session) -> bool:
        """Admit a new session unless the sessions limit is reached."""
        if len(self.sessions) >= self.config.limits.sessions:
            return False
        self.sessions.add(session)
        self.sessions_total += 1
        return True

    def remove_session(self, session: Session) -> None:
        self.sessions.discard(session)

    def stats_on_loop(self) -> dict[str, Any]:
        """The ``stats`` method's answer: the loop's counters plus sessions and ports."""
        stats = self.io.stats()
        stats["sessions"] = len(self.sessions)
        stats["sessions_total"] = self.sessions_total
        stats["session_list"] = [
            {
                "id": s.id,
                "kind": s.kind,
                "ports": len(s.ports),
                "timers": len(s.timers),
                "requests": s.requests,
                "events": s.events,
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
            }
            for s in sorted(self.sessions, key=lambda s: s.id)
        ]
        stats["pid"] = os.getpid()
        return stats

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread and the listeners; StartError if they can't be had."""
        self._prepare_socket_path()
        self.io.start()
        try:
            self.io._run_coroutine(self._listen_async)
        except OSError as exc:
            self.io.stop()
            raise StartError(f"cannot listen: {exc}") from exc
        log.info("ioserver: listening on unix:%s", self.socket_path)
        if self.tcp_address is not None:
            host, port = self.tcp_address
            log.info("ioserver: listening on tcp://%s:%d", host, port)

    def _prepare_socket_path(self) -> None:
        path = self.socket_path
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise StartError(f"{path} exists and is not a socket; remove it or pick another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: its daemon is gone
            log.info("ioserver: replaced the stale socket %s", path)
        except OSError as exc:
            raise StartError(f"cannot check the existing socket {path}: {exc}") from exc
        else:
            raise StartError(
                f"another ioserver is already listening on {path}; stop it or use --socket"
            )
        finally:
            probe.close()

    async def _listen_async(self) -> None:
        """Loop thread: start the Unix listener (and the TCP one if configured)."""
        loop = self.io.loop
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            unix = await loop.create_unix_server(lambda: Session(self, "unix"), self.socket_path)
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        self._servers.append(unix)
        tcp = self.config.server.tcp_address()
        if tcp is not None:
            host, port = tcp
            server = await loop.create_server(
                lambda: Session(self, "tcp"), host, port, reuse_address=True
            )
            self._servers.append(server)
            name = server.sockets[0].getsockname()
            self.tcp_address = (name[0], name[1])

    def run(self) -> int:
        """Start, serve until SIGINT/SIGTERM, stop; the process exit code."""
        self.install_signal_handlers()
        self.start()
        print(f"ioserver: listening on {self.socket_path}", file=sys.stderr, flush=True)
        try:
            while not self._stop.wait(0.5):
                if not self.io.running:
                    log.error("ioserver: the I/O thread died: %r", self.io.failure)
                    return 1
        finally:
            self.stop()
        return 0

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM end ``run()`` cleanly (main thread only)."""

        def handler(signum: int, frame: object) -> None:
            log.info("ioserver: %s received, stopping", signal.Signals(signum).name)
            self._stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Tell clients, close sessions and ports, stop the I/O thread, remove the socket."""
        if self.io.running:
            with contextlib.suppress(Exception):
                self.io.call(self._stop_on_loop, timeout=timeout)
        self.io.stop(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def _stop_on_loop(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.notify("shutdown", ["server stopping"])
            session._flush()
            if session.transport is not None:
                session.transport.close()
            session.close_all()
