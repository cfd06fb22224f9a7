"""TLS on the daemon's TCP listener: ``[server] tls_cert``, ``tls_key``, ``tls_client_ca``.

Theory of operation
-------------------
With ``tls_cert`` and ``tls_key`` set, every TCP listener of the daemon (the
one ``server.tcp`` binds, or one systemd passes) is a :class:`TlsListener`
instead of a plain asyncio server. It accepts on the I/O thread itself
(non-blocking ``accept`` from a reader callback) so that a connection is
accounted for from its first moment, before any TLS:

1. Admission: connections still in the handshake count with the sessions that
   have not completed ``hello`` against ``limits.unauthenticated``; one over
   the limit is closed at once (nothing useful can be said to it before TLS).
2. The first byte (peeked, not read): a TLS ClientHello starts with 0x16.
   Anything else is a plain-TCP client on the TLS port; it gets a msgpack-rpc
   error in clear text (code 6, ``details.tls = "required"``, the message:
   connect with ``tls://``), as the answer to its ``hello`` when that is what
   it sent, and is closed. ``ioserver_client.connect`` raises that as a TLSError.
3. The handshake: ``loop.connect_accepted_socket(ssl=context)``, asyncio's or
   uvloop's non-blocking TLS, with ``ssl_handshake_timeout`` = what is left of
   ``limits.hello_timeout`` since the accept. The session (a
   :class:`TlsSession`) exists only once the handshake succeeded, and its
   ``hello`` deadline is the same one: handshake plus ``hello`` fit in
   ``hello_timeout``, whatever the client does (stalls before its first byte,
   in the handshake, or before ``hello``).

Failed handshakes (a wrong or expired client certificate with
``tls_client_ca``, a plain client, a stall) are logged like failed
authentications (warning, rate-limited, with the peer's address) and touch
nothing else: the daemon keeps serving every other client.

Reload (``SIGHUP``) of the certificate files, in two steps so that the loop
never reads a file: :func:`load_server_context` builds a new context from the
new config in any thread (ConfigError naming the key, as at start: then keep
the old one), and :func:`set_contexts`, on the loop thread, swaps it into every
TlsListener among the daemon's servers, for the handshakes that start after
it; established sessions keep theirs. Turning TLS on or off needs a restart
(the listener changes kind), as a new listener address does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import stat
from collections.abc import Collection, Iterable
from typing import Any, Final, Protocol

from .. import protocol
from ..config import ConfigError, ServerConfig
from ..server import IOServer
from ..tlsclient import TLS_REQUIRED
from .session import PRE_AUTH_MESSAGE_BYTES, DaemonServices, Session

__all__ = [
    "TlsListener",
    "TlsSession",
    "load_server_context",
    "open_tls_listener",
    "set_contexts",
]

log = logging.getLogger("ioserver.daemon")

TLS_HANDSHAKE_RECORD: Final = 0x16
"""The first byte of every TLS connection (a handshake record: the ClientHello).
As msgpack it would be the integer 22, which no msgpack-rpc client sends first."""
ACCEPT_BATCH: Final = 32
"""Connections accepted per readiness callback, so one busy listener can't hog the loop."""
ACCEPT_RETRY: Final = 1.0
"""Seconds to stop accepting after the process ran out of file descriptors."""
BACKLOG: Final = 128
_CLIENT_REFUSED: Final = " (the client refused this daemon's certificate)"
#: What a failed handshake's OpenSSL reason means, for the log.
_HANDSHAKE_HINTS: Final[dict[str, str]] = {
    "TLSV1_ALERT_UNKNOWN_CA": _CLIENT_REFUSED,
    "SSLV3_ALERT_BAD_CERTIFICATE": _CLIENT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": _CLIENT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": _CLIENT_REFUSED,
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": " (no client certificate: server.tls_client_ca "
    "requires one)",
    "CERTIFICATE_VERIFY_FAILED": " (the client's certificate is expired or not signed by "
    "server.tls_client_ca)",
}


class TlsDaemon(DaemonServices, Protocol):
    """What the TLS listener needs from its daemon beyond what sessions need."""

    @property
    def unauthenticated(self) -> Collection[Any]:
        """Sessions that have not completed ``hello`` yet."""
        ...


def _no_password() -> str:
    raise ConfigError(
        "server.tls_key is encrypted: the daemon can't ask for a passphrase; give it an "
        "unencrypted key file of mode 0600 (openssl pkey -in KEY -out KEY.plain)"
    )


def _check_key_file(path: str) -> None:
    """The private key, like ``token_file``, must not be readable by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"server.tls_key: cannot read {path!r}: {exc.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"server.tls_key: {path!r} is accessible by group or others (mode "
            f"{stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )


def load_server_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server-side TLS context ``server``'s keys describe, or None without ``tls_cert``.

    Reads the PEM files now (paths as given, ``~`` expanded) and raises
    ConfigError naming the key for a missing or unreadable file, a key of mode
    looser than 0600, an encrypted key, a certificate and key that don't match,
    or a CA file with no certificate. TLS 1.2 at least; with ``tls_client_ca``,
    clients must present a certificate that CA signed. Safe to call again on
    reload: it builds a new context and changes nothing until it is swapped in.
    """
    if not server.tls_cert:
        return None
    cert = os.path.expanduser(server.tls_cert)
    key = os.path.expanduser(server.tls_key)
    _check_key_file(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"server.tls_cert / server.tls_key: {cert!r} and {key!r} are not a PEM "
            f"certificate and its private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"server.tls_cert / server.tls_key: cannot read {exc.filename or cert!r}: "
            f"{exc.strerror}"
        ) from None
    if server.tls_client_ca:
        ca = os.path.expanduser(server.tls_client_ca)
        try:
            ctx.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"server.tls_client_ca: {ca!r} holds no PEM CA certificate ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"server.tls_client_ca: cannot read {ca!r}: {exc.strerror}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def set_contexts(servers: Iterable[object], context: ssl.SSLContext) -> int:
    """Loop thread: use ``context`` for new handshakes on every TlsListener in
    ``servers`` (the daemon's list); how many there were (0: TLS is off, and
    turning it on needs a restart)."""
    count = 0
    for server in servers:
        if isinstance(server, TlsListener):
            server.set_context(context)
            count += 1
    return count


class TlsSession(Session):
    """A TCP session whose ``hello`` deadline started at the accept, before TLS."""

    def __init__(self, daemon: DaemonServices, deadline: float) -> None:
        super().__init__(daemon, "tcp")
        self.deadline = deadline  # loop.time() by which hello must have succeeded

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.hello_timer is not None:  # restarted by Session: the deadline stays
            self.hello_timer.cancel()
            self.hello_timer = self.io.loop.call_at(self.deadline, self._hello_expired)


class _Pending:
    """An accepted connection before its session exists (first byte, handshake)."""

    __slots__ = ("deadline", "handed_over", "peer", "sock", "timer")

    def __init__(self, sock: socket.socket, peer: Any, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.handed_over = False  # the loop's TLS transport owns the socket now


class TlsListener:
    """Accepts TCP connections and makes TLS sessions of them (I/O thread only).

    Has the ``close()`` and ``sockets`` of an asyncio server, so the daemon keeps
    it in its list of servers. ``context`` is the current server context.
    """

    def __init__(
        self, daemon: TlsDaemon, sockets: list[socket.socket], context: ssl.SSLContext
    ) -> None:
        self.daemon = daemon
        self.io: IOServer = daemon.io
        self.sockets = sockets
        self.context = context
        self.pending: set[_Pending] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def start(self) -> None:
        """Start accepting (loop thread)."""
        for sock in self.sockets:
            sock.setblocking(False)
            self.io.loop.add_reader(sock.fileno(), self._accept, sock)

    def set_context(self, context: ssl.SSLContext) -> None:
        """Use ``context`` for the handshakes that start from now on (reload)."""
        self.context = context

    def close(self) -> None:
        """Stop accepting; drop the connections not yet sessions (loop thread)."""
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets:
            self.io.loop.remove_reader(sock.fileno())
            sock.close()
        for pending in list(self.pending):
            self._drop(pending)
        for task in list(self.tasks):
            task.cancel()

    # -- accepting ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: pause rather than spin on a ready listener.
                    log.warning("ioserver: cannot accept (%s); retrying in %g s", exc, ACCEPT_RETRY)
                    self.io.loop.remove_reader(listener.fileno())
                    self.io.loop.call_later(ACCEPT_RETRY, self._resume, listener)
                    return
                continue  # ECONNABORTED and the like: that client is gone, not us
            self._admit(sock, peer)

    def _resume(self, listener: socket.socket) -> None:
        if not self.closed:
            self.io.loop.add_reader(listener.fileno(), self._accept, listener)

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        limits = self.daemon.config.limits
        if len(self.daemon.unauthenticated) + len(self.pending) >= limits.unauthenticated:
            log.debug(
                "ioserver: TLS connection from %s refused: limit unauthenticated=%d",
                _peer(peer),
                limits.unauthenticated,
            )
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = self.io.loop
        pending = _Pending(sock, peer, loop.time() + limits.hello_timeout)
        self.pending.add(pending)
        pending.timer = loop.call_at(pending.deadline, self._expired, pending)
        loop.add_reader(sock.fileno(), self._first_byte, pending)

    def _first_byte(self, pending: _Pending) -> None:
        """The client sent something: TLS goes on to the handshake, else a clear error."""
        try:
            head = pending.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        self.io.loop.remove_reader(pending.sock.fileno())
        if not head:  # gone before saying anything
            self._drop(pending)
        elif head[0] != TLS_HANDSHAKE_RECORD:
            self._refuse_plain(pending)
        else:
            task = self.io.loop.create_task(self._handshake(pending))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handshake(self, pending: _Pending) -> None:
        loop = self.io.loop
        if pending not in self.pending:  # expired or dropped before this task ran
            return
        if pending.timer is not None:
            pending.timer.cancel()  # from here ssl_handshake_timeout enforces the deadline
        remaining = pending.deadline - loop.time()
        if remaining <= 0:
            self._expired(pending)
            return
        daemon = self.daemon
        pending.handed_over = True
        try:
            await loop.connect_accepted_socket(
                lambda: TlsSession(daemon, pending.deadline),
                pending.sock,
                ssl=self.context,
                ssl_handshake_timeout=remaining,
            )
        except ssl.SSLError as exc:
            reason = exc.reason or type(exc).__name__
            why = _HANDSHAKE_HINTS.get(reason, "")
            daemon.auth_failed(pending.peer, f"TLS handshake failed: {reason}{why}")
        except OSError as exc:  # TimeoutError included
            if "handshake is taking longer" in str(exc) or isinstance(exc, TimeoutError):
                timeout = daemon.config.limits.hello_timeout
                daemon.auth_failed(
                    pending.peer, f"no TLS handshake within hello_timeout={timeout:g} s"
                )
            else:
                log.debug("ioserver: TLS connection from %s lost: %r", _peer(pending.peer), exc)
        finally:
            self.pending.discard(pending)

    def _expired(self, pending: _Pending) -> None:
        """``hello_timeout`` passed before the handshake began."""
        if pending in self.pending:
            timeout = self.daemon.config.limits.hello_timeout
            self.daemon.auth_failed(
                pending.peer, f"no TLS handshake within hello_timeout={timeout:g} s"
            )
            self._drop(pending)

    def _drop(self, pending: _Pending) -> None:
        self.pending.discard(pending)
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.handed_over:  # else the TLS transport closes it (the task is cancelled)
            if pending.sock.fileno() >= 0:
                self.io.loop.remove_reader(pending.sock.fileno())
            pending.sock.close()

    def _refuse_plain(self, pending: _Pending) -> None:
        """A plain msgpack-rpc client on the TLS port: answer in clear text, then close.

        What it sent is read (at most a hello's worth) so that its ``hello`` gets
        the error as its answer. The socket is fresh, so the small reply fits its
        send buffer: a non-blocking send, never a wait.
        """
        sock = pending.sock
        try:
            data = sock.recv(PRE_AUTH_MESSAGE_BYTES)
        except OSError:
            data = b""
        host, port = sock.getsockname()[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        error = protocol.error_value(
            protocol.NOT_ALLOWED,
            f"this daemon's TCP port speaks TLS: connect with tls://{where} "
            "(and the daemon's CA certificate)",
            {"tls": TLS_REQUIRED},
        )
        conn = protocol.Connection()
        conn.receive_data(data)
        try:
            event = conn.next_event()
        except protocol.ProtocolError:
            event = None
        if isinstance(event, protocol.Request):
            reply = conn.response(event.msgid, error, None)
        else:
            reply = conn.notification("error", [None, error])
        try:
            sock.send(reply)
        except OSError:
            pass
        self.daemon.auth_failed(pending.peer, "plain TCP on the TLS port (connect with tls://)")
        self._drop(pending)


async def open_tls_listener(
    daemon: TlsDaemon,
    context: ssl.SSLContext,
    host: str | None = None,
    port: int | None = None,
    sockets: list[socket.socket] | None = None,
) -> TlsListener:
    """A started TlsListener on ``sockets`` (already listening: systemd's), or bound
    to ``host``:``port`` (every address the name resolves to, as asyncio's
    ``create_server`` does). OSError if an address can't be bound."""
    if sockets is None:
        sockets = []
        infos = await daemon.io.loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
    listener = TlsListener(daemon, sockets, context)
    listener.start()
    return listener


def _peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return repr(peer)
