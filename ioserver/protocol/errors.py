"""Error codes, the protocol's exceptions, and exceptions on the wire.

An error on the wire is ``[code, message]`` or ``[code, message, details]``
(Neovim-style; details: a map). :func:`exception_to_wire` and
:func:`wire_to_exception` map Python exceptions to and from that shape, so the
daemon and the client agree on what an OSError or a FrameError looks like.
"""

from __future__ import annotations

import errno as _errno
import socket
from collections.abc import Mapping
from typing import Any, Final

# --- errors -------------------------------------------------------------------------------
#
# Error codes, Neovim-style: an error on the wire is ``[code, message]`` or
# ``[code, message, details]`` (details: a map; see exception_to_wire).

INVALID_REQUEST: Final = 1
"""The message is not a valid msgpack-rpc message (shape, msgid, method, params
type), or the stream is not msgpack at all."""
UNKNOWN_METHOD: Final = 2
"""No method of that name."""
INVALID_PARAMS: Final = 3
"""Wrong number or types of params, an unknown or bad option, or a value the
operation refuses (``details.type`` is then "ValueError" or "TypeError")."""
NO_SUCH_PORT: Final = 4
"""The port or timer id is not open in this session (closed, or never was)."""
LIMIT: Final = 5
"""A configured limit was hit; the message names it ("limit ports_per_session=1000")."""
NOT_ALLOWED: Final = 6
"""Refused by policy: authentication required or failed, spawn not allowed."""
OS_ERROR: Final = 7
"""The operating system refused (connection refused, no such file, ...);
details carry ``type``, ``errno``, ``errno_name``, ``strerror``, ``filename``."""
SERVER_ERROR: Final = 8
"""A bug or failure inside the server."""
PROTOCOL_VERSION_ERROR: Final = 9
"""``hello`` asked for a protocol version this server does not speak."""
PORT_ERROR: Final = 10
"""A port failed other than by an OSError (a frame over ``max_frame_bytes``, a
malformed frame); ``details.type`` names the exception ("FrameError")."""

ERROR_CODES: Final[Mapping[str, int]] = {
    "INVALID_REQUEST": INVALID_REQUEST,
    "UNKNOWN_METHOD": UNKNOWN_METHOD,
    "INVALID_PARAMS": INVALID_PARAMS,
    "NO_SUCH_PORT": NO_SUCH_PORT,
    "LIMIT": LIMIT,
    "NOT_ALLOWED": NOT_ALLOWED,
    "OS_ERROR": OS_ERROR,
    "SERVER_ERROR": SERVER_ERROR,
    "PROTOCOL_VERSION": PROTOCOL_VERSION_ERROR,
    "PORT_ERROR": PORT_ERROR,
}
"""Every error code by name: the table ``get_api_info`` publishes."""


class RpcError(Exception):
    """An rpc error ``[code, message, details]``: raised by :func:`check_params` for a
    call with a bad method or params, returned by :func:`wire_to_exception` for a
    remote error with no closer Python type, and raised by a session's handlers
    (NO_SUCH_PORT, LIMIT, NOT_ALLOWED, ...) for it to send back."""

    def __init__(self, code: int, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details) if details else {}

    def to_wire(self) -> list[Any]:
        """This error as sent: ``[code, message]``, plus ``details`` if any."""
        if self.details:
            return [self.code, self.message, self.details]
        return [self.code, self.message]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r})"


class ProtocolError(RpcError):
    """Raised by :meth:`Connection.next_event` when the peer's bytes break the protocol
    (the remote side's fault).

    ``fatal`` is False when the bad message was consumed and the stream is
    still in sync (carry on), True when it can't be re-synced (state ERROR:
    send a final error, close). ``msgid`` is the bad message's msgid when one
    could be read, else None; ``type`` is its type code (0, 1, 2 or another
    int) when it had one, else None. Answer with an error response only when
    ``type`` is REQUEST (or unknown) and ``msgid`` is not None.
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        msgid: int | None = None,
        type: int | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(code, message)
        self.msgid = msgid
        self.type = type
        self.fatal = fatal


def describe(value: object) -> str:
    """A short description of a decoded value for error messages, in msgpack's
    terms: ``str 'abc'``, ``int 5``, ``nil``, ``array of 3``... (at most ~60 chars)."""
    if value is None:
        return "nil"
    if value is True or value is False:
        return f"bool {'true' if value else 'false'}"
    if isinstance(value, list | tuple):
        return f"array of {len(value)}"
    if isinstance(value, dict):
        return f"map of {len(value)}"
    kind = {int: "int", float: "float", str: "str", bytes: "bin"}.get(type(value))
    if kind is None:
        kind = type(value).__name__
    text = repr(value)
    if len(text) > 50:
        text = text[:47] + "..."
    return f"{kind} {text}"


# --- exceptions on the wire ---------------------------------------------------------------

_BUILTIN_ERRORS: Final[Mapping[str, type[BaseException]]] = {
    cls.__name__: cls
    for cls in (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        RuntimeError,
        EOFError,
        NotImplementedError,
        OSError,
        BlockingIOError,
        ChildProcessError,
        ConnectionError,
        BrokenPipeError,
        ConnectionAbortedError,
        ConnectionRefusedError,
        ConnectionResetError,
        FileExistsError,
        FileNotFoundError,
        InterruptedError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        ProcessLookupError,
        TimeoutError,
        socket.gaierror,
        socket.herror,
    )
}
"""The exception types :func:`wire_to_exception` re-creates by name (a fixed list:
a name from the wire never reaches ``getattr``)."""


def exception_to_wire(exc: BaseException, code: int | None = None) -> list[Any]:
    """``exc`` as a wire error ``[code, message, details]``.

    ``message`` is ``"TypeName: str(exc)"`` (for example
    ``"ConnectionRefusedError: [Errno 111] Connection refused"``), readable by any
    client that shows ``err[1]``. ``details`` always has ``type`` (the class
    name); an OSError adds ``errno`` (this host's number), ``errno_name``
    ("ECONNREFUSED": portable across hosts), ``strerror`` and ``filename``
    (each only when set). An :class:`RpcError` is sent as it is.

    ``code`` defaults to the RpcError's own, OS_ERROR for an OSError, and
    SERVER_ERROR for anything else (a session passes INVALID_PARAMS for a
    ValueError/TypeError from bad arguments; an ``error`` event uses PORT_ERROR).
    """
    if isinstance(exc, RpcError) and code is None:
        return exc.to_wire()
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, OSError):
        details = os_error_details(exc)
        if code is None:
            code = OS_ERROR
    else:
        details = {"type": name}
        if code is None:
            code = SERVER_ERROR
    return [code, f"{name}: {text}" if text else name, details]


def os_error_details(exc: OSError) -> dict[str, Any]:
    """The ``details`` map of an OS_ERROR: ``type``, and ``errno``, ``errno_name``,
    ``strerror``, ``filename`` when set (see :func:`exception_to_wire`)."""
    details: dict[str, Any] = {"type": type(exc).__name__}
    if exc.errno is not None:
        details["errno"] = exc.errno
        errno_name = _errno.errorcode.get(exc.errno)
        if errno_name is not None:
            details["errno_name"] = errno_name
    if exc.strerror is not None:
        details["strerror"] = exc.strerror
    if exc.filename is not None:
        details["filename"] = _plain(exc.filename)
    return details


def error_value(code: int, message: str, details: Mapping[str, Any] | None = None) -> list[Any]:
    """The wire error ``[code, message]``, or ``[code, message, details]`` when
    details are given: what a response's ``error`` or an ``error`` event carries."""
    return RpcError(code, message, details).to_wire()


def _plain(value: Any) -> Any:
    """A filename msgpack can carry (str/bytes as they are, anything else as str)."""
    return value if isinstance(value, str | bytes) else str(value)


def wire_to_exception(
    error: Any, types: Mapping[str, type[BaseException]] | None = None
) -> BaseException:
    """The exception a wire error stands for (the client side of :func:`exception_to_wire`).

    - ``details.type`` names an OSError type, or the error has an errno: an
      OSError built from ``(errno, strerror[, filename])``, so Python picks the
      same subclass (ConnectionRefusedError, ...); ``errno_name`` is preferred
      to the number, which may differ between the two hosts.
    - ``details.type`` in ``types`` (the caller's own, e.g. ``{"FrameError":
      FrameError, "PortClosed": PortClosed}``) or in a fixed list of builtins
      (ValueError, TypeError, TimeoutError, ...): that type, with the message
      minus its ``"TypeName: "`` prefix.
    - Anything else, or an error not shaped ``[code, message, ...]``: an
      :class:`RpcError` with the code (SERVER_ERROR if unreadable), message and
      details.
    """
    if not (isinstance(error, list) and len(error) >= 2 and type(error[0]) is int):
        return RpcError(SERVER_ERROR, f"unreadable error from the server: {describe(error)}")
    code: int = error[0]
    message = error[1] if isinstance(error[1], str) else describe(error[1])
    raw_details = error[2] if len(error) > 2 else None
    details: dict[str, Any] = dict(raw_details) if isinstance(raw_details, dict) else {}
    type_name = details.get("type")
    if not isinstance(type_name, str):
        return RpcError(code, message, details)
    cls = (types or {}).get(type_name) or _BUILTIN_ERRORS.get(type_name)
    text = message[len(type_name) + 2 :] if message.startswith(type_name + ": ") else message
    if cls is None:
        return RpcError(code, message, details)
    if issubclass(cls, OSError):
        return _make_os_error(cls, details, text)
    try:
        return cls(text)
    except Exception:  # a caller's type with another signature
        return RpcError(code, message, details)


def _make_os_error(cls: type[OSError], details: Mapping[str, Any], text: str) -> BaseException:
    number = details.get("errno")
    name = details.get("errno_name")
    if isinstance(name, str) and isinstance(getattr(_errno, name, None), int):
        number = getattr(_errno, name)
    strerror = details.get("strerror")
    filename = details.get("filename")
    if type(number) is not int:
        return cls(text)
    args: tuple[Any, ...] = (number, strerror if isinstance(strerror, str) else text)
    if filename is not None:
        args += (filename,)
    exc = OSError(*args)  # picks the subclass the errno maps to, as the server's did
    if not isinstance(exc, cls):
        exc = cls(*args)
    return exc
