"""systemd integration without libsystemd: socket activation and readiness notification.

Socket activation (``sd_listen_fds``): when systemd (or ``systemd-socket-activate``)
starts the daemon for a ``.socket`` unit, it passes the listening sockets as
file descriptors 3, 4, ... and sets ``LISTEN_PID`` (the pid they are meant
for), ``LISTEN_FDS`` (how many) and, when known, ``LISTEN_FDNAMES``
(colon-separated names, ``FileDescriptorName=``). The variables count only when
``LISTEN_PID`` is our pid (a parent's leftovers are not ours); either way they
are removed from the environment, so spawned programs don't inherit them. The
daemon then serves on exactly those sockets, by family: a Unix socket is the
owner's socket (no token, like ``server.socket``), a TCP one is the TCP
listener (token required unless ``insecure``; TLS if ``tls_cert`` is set). It
binds nothing itself and, since it created no socket file, removes none at exit.

Readiness (``sd_notify``): with ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace), the daemon sends ``READY=1`` once it serves,
``STOPPING=1`` when it begins to stop, and, when ``WATCHDOG_USEC`` is set (and
``WATCHDOG_PID``, if set, is ours), ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``
from the I/O thread's loop: if the loop hangs, the pings stop and systemd
restarts the service. Sends are non-blocking datagrams; one that would block
is dropped (systemd reads them promptly; the loop must never wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Final

from ..config import ConfigError, ServerConfig

__all__ = ["Activation", "ActivationError", "InheritedSocket", "Notifier", "listen_fds"]

log = logging.getLogger("ioserver.daemon")

SD_LISTEN_FDS_START: Final = 3
"""The first file descriptor systemd passes (after stdin, stdout, stderr)."""
MAX_LISTEN_FDS: Final = 64
"""More than this many is not a plausible socket unit for this daemon."""
ACTIVATION_VARS: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
NOTIFY_VARS: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class ActivationError(ConfigError):
    """The sockets or variables systemd passed can't be served (the unit's mistake)."""


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """One listening socket systemd passed: its fd, name and socket object."""

    fd: int
    name: str
    sock: socket.socket

    @property
    def family(self) -> int:
        return int(self.sock.family)

    def address(self) -> str:
        """Where it listens, as ``ioserver ping`` takes it (a path or tcp://host:port)."""
        name = self.sock.getsockname()
        if self.family == socket.AF_UNIX:
            return name if isinstance(name, str) and name else f"fd {self.fd}"
        host, port = name[0], name[1]
        return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _inherit(fd: int, name: str) -> InheritedSocket:
    """Check that ``fd`` is a listening stream socket of a family we serve."""
    where = f"socket activation: fd {fd} ({name})"
    try:
        os.set_inheritable(fd, False)  # ours alone: spawned programs must not get it
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"{where} is not a socket ({exc.strerror})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ActivationError(
            f"{where} is not a listening stream socket: use ListenStream= in the .socket "
            "unit (and Accept=no)"
        )
    if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        sock.detach()
        raise ActivationError(f"{where} is of family {sock.family!r}: expected Unix or TCP")
    return InheritedSocket(fd, name, sock)


def _check_owner_only(inherited: InheritedSocket) -> None:
    """A Unix socket gives full access without a token: only its owner may connect."""
    path = inherited.sock.getsockname()
    where = f"socket activation: fd {inherited.fd} ({inherited.name})"
    if not isinstance(path, str) or not path or path.startswith("\0"):
        raise ActivationError(
            f"{where} is an abstract or unnamed Unix socket, which any local user may "
            "connect to: use a path (ListenStream=%t/ioserver.sock with SocketMode=0600)"
        )
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise ActivationError(f"{where}: cannot check {path!r}: {exc.strerror}") from None
    if mode & 0o022:
        raise ActivationError(
            f"{where}: {path!r} has mode {mode:04o}: other users could connect and use "
            "the daemon; set SocketMode=0600 in the .socket unit"
        )


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[InheritedSocket]:
    """The sockets passed to this process by socket activation ([] if none).

    Removes ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` from
    ``environ`` (default ``os.environ``) whether or not they were for us.
    ActivationError for variables that are set for us but malformed, or a
    descriptor that is not a listening stream socket.
    """
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(key, None) for key in ACTIVATION_VARS)
    if pid is None or count is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []  # meant for another process (a parent that did not clear them)
    if not count.isdigit() or not 0 < int(count) <= MAX_LISTEN_FDS:
        raise ActivationError(
            f"socket activation: LISTEN_FDS={count!r}, expected 1 to {MAX_LISTEN_FDS}"
        )
    n = int(count)
    labels = names.split(":") if names else []
    if len(labels) != n:
        labels = ["unknown"] * n  # systemd's own default name
    return [_inherit(SD_LISTEN_FDS_START + i, labels[i]) for i in range(n)]


class Notifier:
    """Sends ``sd_notify`` datagrams to ``$NOTIFY_SOCKET``, never blocking."""

    def __init__(self, address: str) -> None:
        # "@name" is the abstract namespace: a leading NUL byte on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.warned = False

    def send(self, state: str) -> bool:
        """Send ``state`` (``"READY=1"``, ...); False if it could not go (logged once)."""
        try:
            self.sock.sendto(state.encode(), self.address)
            return True
        except OSError as exc:
            if not self.warned:
                self.warned = True
                log.warning("ioserver: cannot notify systemd (%s): %s", state.split("\n")[0], exc)
            return False

    def close(self) -> None:
        self.sock.close()


def _watchdog_interval(usec: str | None, pid: str | None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None for no watchdog."""
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


@dataclass
class Activation:
    """What systemd gave this process: sockets to serve, a socket to notify."""

    sockets: list[InheritedSocket] = field(default_factory=list)
    notifier: Notifier | None = None
    watchdog: float | None = None
    """Seconds between ``WATCHDOG=1`` pings, or None."""
    _watchdog_timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Activation:
        """Read (and remove) the activation and notification variables."""
        env = os.environ if environ is None else environ
        sockets = listen_fds(env)
        address, usec, pid = (env.pop(key, None) for key in NOTIFY_VARS)
        notifier = Notifier(address) if address else None
        watchdog = _watchdog_interval(usec, pid) if notifier is not None else None
        return cls(sockets, notifier, watchdog)

    def check(self, server: ServerConfig) -> None:
        """ActivationError if the sockets passed can't be served safely with ``server``."""
        for inherited in self.sockets:
            if inherited.family == socket.AF_UNIX:
                _check_owner_only(inherited)
            elif not server.token and not server.insecure:
                raise ActivationError(
                    f"socket activation: fd {inherited.fd} ({inherited.name}) is a TCP socket, "
                    "which every local user can reach: set server.token_file (or "
                    "server.token), or server.insecure = true to accept clients without one"
                )

    def unix(self) -> list[InheritedSocket]:
        return [s for s in self.sockets if s.family == socket.AF_UNIX]

    def tcp(self) -> list[InheritedSocket]:
        return [s for s in self.sockets if s.family != socket.AF_UNIX]

    def ready(self, loop: asyncio.AbstractEventLoop, status: str) -> None:
        """Loop thread: tell systemd we serve (``READY=1``) and start the watchdog pings."""
        if self.notifier is None:
            return
        self.notifier.send(f"READY=1\nSTATUS={status}")
        if self.watchdog is not None:
            self._watchdog_timer = loop.call_later(self.watchdog, self._ping, loop)

    def _ping(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.notifier is None or self.watchdog is None:
            return
        self.notifier.send("WATCHDOG=1")
        self._watchdog_timer = loop.call_later(self.watchdog, self._ping, loop)

    def stopping(self) -> None:
        """Tell systemd we are stopping (any thread; a non-blocking send). The
        watchdog pings go on while the loop runs: it is still alive."""
        if self.notifier is not None:
            self.notifier.send("STOPPING=1\nSTATUS=stopping")

    def close(self) -> None:
        """Release the notification socket (after the loop stopped)."""
        if self.notifier is not None:
            with contextlib.suppress(OSError):
                self.notifier.close()
            self.notifier = None
