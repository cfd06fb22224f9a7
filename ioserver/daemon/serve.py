"""The standalone daemon: an IOServer whose clients are other processes, over msgpack-rpc.

``Daemon(config).run()`` starts the I/O thread, listens on a Unix socket
(created 0600; a stale file left by a dead daemon is replaced, a live daemon
is an error) and optionally on TCP (only with a token, or ``insecure = true``),
then waits in the main thread for SIGINT/SIGTERM. On a signal it stops
accepting, tells every client (a ``shutdown`` notification), closes every port
and exits 0. The daemon is the one place that installs signal handlers: the
embedded server never does. SIGHUP reloads the configuration (``reload.py``);
``[metrics] listen`` serves Prometheus metrics (``metrics.py``); the log's
format and its rate-limited lines are ``logs.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import Config
from ..server import IOServer
from . import logs
from .counters import Counters
from .metrics import MetricsError, MetricsServer
from .reload import ConfigSource, Reloader
from .session import Session

__all__ = ["Daemon", "StartError"]

log = logging.getLogger("ioserver.daemon")

#: Authentication failures logged per window (seconds); the rest are counted.
AUTH_LOG_BURST = 10
AUTH_LOG_WINDOW = 60.0
#: Limits hit logged per window (seconds); the rest are counted.
LIMIT_LOG_BURST = 10
LIMIT_LOG_WINDOW = 60.0


def _peer(peer: Any) -> str:
    """A peer address for the log: "host:port" for TCP."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return repr(peer)


class StartError(RuntimeError):
    """The daemon cannot start (socket in use, bad address...); the message says why."""


class Daemon:
    """Listeners and sessions around one IOServer."""

    def __init__(self, config: Config, source: ConfigSource | None = None) -> None:
        """``source``: where ``config`` was read from, to read again on SIGHUP (None:
        a reload is refused)."""
        self.config = config
        slow = config.server.slow_callback_ms
        self.io = IOServer(
            loop=config.server.loop,
            name="ioserver-daemon",
            slow_callback=slow / 1000 if slow else None,
        )
        # Opening ports blocks (connect, bind, spawn): done here, off the loop.
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ioserver-open")
        self.sessions: set[Session] = set()  # loop thread only
        # TCP sessions without a successful hello yet: limits.unauthenticated, apart
        # from limits.sessions, so they can't lock the owner's Unix sessions out.
        self.unauthenticated: set[Session] = set()
        self.sessions_total = 0
        self.counters = Counters()  # loop thread only; what /metrics adds to stats
        self._auth_log = logs.RateLimitedLog(
            log, logging.WARNING, "authentication failures", AUTH_LOG_BURST, AUTH_LOG_WINDOW
        )
        self._limit_log = logs.RateLimitedLog(
            log, logging.INFO, "limit hits", LIMIT_LOG_BURST, LIMIT_LOG_WINDOW
        )
        self.reloader = Reloader(self, source)
        self.metrics: MetricsServer | None = None
        self._ids = itertools.count(1)
        self._servers: list[Any] = []
        self.socket_path = config.server.socket_path()
        self.tcp_address: tuple[str, int] | None = None
        self._stop = threading.Event()

    # -- sessions (loop thread) --------------------------------------------------------

    def next_session_id(self) -> int:
        return next(self._ids)

    def add_session(self, session: Session) -> str | None:
        """Admit a new session; None, or why not (the limit it would pass).

        A session that must still authenticate (TCP) counts against
        ``limits.unauthenticated`` until :meth:`authenticate`; the others
        against ``limits.sessions``.
        """
        limits = self.config.limits
        if not session.authenticated:
            if len(self.unauthenticated) >= limits.unauthenticated:
                return (
                    "too many connections waiting to authenticate: "
                    f"limit unauthenticated={limits.unauthenticated}"
                )
            self.unauthenticated.add(session)
        elif len(self.sessions) - len(self.unauthenticated) >= limits.sessions:
            return f"too many sessions: limit sessions={limits.sessions}"
        self.sessions.add(session)
        self.sessions_total += 1
        opened = self.counters.sessions_opened
        opened[session.kind] = opened.get(session.kind, 0) + 1
        return None

    def authenticate(self, session: Session) -> str | None:
        """``session`` passed hello: count it as a session; None, or why not."""
        if session not in self.unauthenticated:
            return None
        limit = self.config.limits.sessions
        if len(self.sessions) - len(self.unauthenticated) >= limit:
            return f"too many sessions: limit sessions={limit}"
        self.unauthenticated.discard(session)
        return None

    def remove_session(self, session: Session) -> None:
        if session in self.sessions:  # its totals go on in the counters (once)
            self.counters.session_closed(session.events, session.bytes_in, session.bytes_out)
        self.sessions.discard(session)
        self.unauthenticated.discard(session)

    def auth_failed(self, peer: Any, why: str) -> None:
        """Log a failed authentication with the peer's address, at warning level:
        at most AUTH_LOG_BURST lines per AUTH_LOG_WINDOW seconds, then a count of
        those not logged (a flood must not flood the log too)."""
        self.counters.auth_failures += 1
        self._auth_log(
            "ioserver: authentication failed from %s: %s",
            _peer(peer),
            why,
            extra=logs.fields("auth_failed", peer=_peer(peer), reason=why),
        )

    def limit_hit(self, session: Session, why: str) -> None:
        """Log that ``session`` hit a configured limit (``why`` names it), at info
        level, at most LIMIT_LOG_BURST lines per LIMIT_LOG_WINDOW seconds."""
        named = re.search(r"limit (\w+)=", why)
        self._limit_log(
            "ioserver: limit hit by session %d (%s%s): %s",
            session.id,
            session.kind,
            f" from {_peer(session.peer)}" if session.kind == "tcp" else "",
            why,
            extra=logs.fields(
                "limit_hit",
                session=session.id,
                kind=session.kind,
                peer=_peer(session.peer) if session.kind == "tcp" else None,
                limit=named[1] if named else None,
                reason=why,
            ),
        )

    def reload(self, reason: str) -> asyncio.Future[dict[str, Any]]:
        """Reload the configuration (loop thread): ``{"changed", "restart_needed"}``,
        or ConfigError for a bad file (logged; the running configuration stays)."""
        return self.reloader.submit(reason)

    def stats_on_loop(self) -> dict[str, Any]:
        """The ``stats`` method's answer: the loop's counters plus sessions and ports."""
        stats = self.io.stats()
        stats["sessions"] = len(self.sessions)
        stats["unauthenticated"] = len(self.unauthenticated)
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
        metrics = self.config.metrics.address()
        if metrics is not None:
            try:
                self.metrics = MetricsServer(self, *metrics)
            except MetricsError as exc:
                self.stop()
                raise StartError(str(exc)) from exc

    def addresses(self) -> list[str]:
        """Where the daemon listens, as ``ioserver ping`` takes them: the socket path,
        then ``tcp://host:port`` (the bound port, if the config asked for port 0)."""
        found = [self.socket_path]
        if self.tcp_address is not None:
            host, port = self.tcp_address
            found.append(f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}")
        return found

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
        # Once, every address: what a user pastes into ``ioserver ping``.
        logs.announce(
            f"ioserver: listening on {' and '.join(self.addresses())}", addresses=self.addresses()
        )
        if self.metrics is not None:
            logs.announce(f"ioserver: metrics on {self.metrics.url}", metrics=self.metrics.url)
        try:
            while not self._stop.wait(0.5):
                if not self.io.running:
                    log.error("ioserver: the I/O thread died: %r", self.io.failure)
                    return 1
        finally:
            self.stop()
        return 0

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM end ``run()`` cleanly; SIGHUP reloads the configuration
        (main thread only)."""

        def handler(signum: int, frame: object) -> None:
            log.info("ioserver: %s received, stopping", signal.Signals(signum).name)
            self._stop.set()

        def hangup(signum: int, frame: object) -> None:
            # Only schedule: the reload runs on the loop (see reload.py).
            try:
                self.io.loop.call_soon_threadsafe(self.reloader.start, "SIGHUP")
            except RuntimeError:  # not started yet, or stopping: nothing to reload
                log.info("ioserver: SIGHUP received while not serving: ignored")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, hangup)

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Tell clients, close sessions and ports, stop the I/O thread, remove the socket."""
        if self.metrics is not None:  # first: no scrape waits for a stopping loop
            self.metrics.close(timeout)
            self.metrics = None
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
