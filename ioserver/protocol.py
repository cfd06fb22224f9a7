"""The standalone daemon's wire protocol: msgpack-rpc, sans-I/O.

Theory of operation
-------------------
The daemon (``daemon/session.py``) and the Python client (``client/``) speak
msgpack-rpc over a byte stream. This module turns bytes into events and
events into bytes, and nothing else: it opens no socket, starts no thread and
keeps no clock (h11's rule), so both ends share it and tests drive it by
feeding bytes. The caller's loop is::

    conn.receive_data(data)                    # b"" at EOF
    while (event := conn.next_event()) is not NEED_DATA:
        if event is CLOSED: ...
        handle(event)                          # Request | Notification | Response

and it sends what ``conn.request(...)``, ``conn.response(...)``,
``conn.notification(...)`` and ``conn.error_response(...)`` return.

Messages (msgpack-rpc): a request ``[0, msgid, method, params]``, a response
``[1, msgid, error, result]``, a notification ``[2, method, params]``. There is
no framing: msgpack values are self-delimiting, so one streaming
``msgpack.Unpacker`` cuts the stream. A :class:`Connection` serves either role
(msgpack-rpc is symmetric: either side may send any message); what to do with
a message the role does not expect is the caller's choice.

States of the receiving side (``Connection.state``), in one table (h11's
``_state.py``)::

    OPEN   --receive_data(b"")----------------------> EOF
    EOF    --next_event(): buffer drained ----------> CLOSED  (returns CLOSED, again and again)
    OPEN, EOF --next_event(): fatal ProtocolError --> ERROR   (every later next_event raises)

The sending side has no state: the methods that make bytes work in every
state, so a session can still send its final error after ERROR.

What is recoverable and what is fatal (``ProtocolError.fatal``):

- A well-formed msgpack value that is not a valid message (not an array, the
  wrong arity, an unknown type code, a msgid that is not a uint32, a method
  name that is neither str nor bin, params that are not an array) raises a
  non-fatal :class:`ProtocolError`. The value has been consumed and the stream
  is still in sync, so ``next_event`` goes on with the next message. The error
  carries ``msgid`` when one could be read, so a server can answer
  ``[1, msgid, [code, message], nil]``.
- Bytes that are not msgpack, a message over ``max_message_bytes`` (or one
  that decodes to more than ``max_elements`` values or nests deeper than
  ``max_depth``, when those are set), or a stream that ends inside a message
  raise a fatal ProtocolError: the stream
  can't be re-synced (the decoder's position is lost), so the state becomes
  ERROR. A server sends a final ``error`` notification and closes.
- Invalid UTF-8 inside a str never raises: it decodes with
  ``surrogateescape``, and the packer encodes such strings back to the same
  bytes, so an error message that quotes a bad method name can still be sent.
- Misuse by the local caller (a msgid out of range given to ``request``,
  data after EOF) raises ``ValueError``/``TypeError``/``RuntimeError``: a bug
  in the caller, never the peer's fault. ``next_event`` raises nothing but
  ProtocolError; any other exception from it is a bug here.

Cost per byte: ``receive_data`` keeps a reference to the chunk (a copy only
for a non-``bytes`` buffer, which the caller may reuse). ``next_event`` feeds
the chunks to the C unpacker, which copies each byte into its buffer once and
resumes a partial message where it stopped, never rescanning: O(bytes
received). A chunk is fed whole unless it would take the unparsed bytes past
``max_message_bytes``; then it is fed in slices (memoryviews, no copy), so
the unpacker never holds more than the limit and a message over the limit is
refused after exactly that many of its bytes, or at its header when it starts
with a str/bin/ext header that declares more. Validation is O(1) per message.
The one exception is the unpacker's preallocation: a 5-byte array header
preallocates its declared length (bounded by the limit, and by
``max_elements``), lazily mapped pages. The decode budget adds a hook call
per array or map and a C-level pass over its items (framing.DecodeBudget).

Above the codec sit the shared tables: the method table (:data:`METHODS`,
:data:`NOTIFICATIONS`, :data:`EVENTS`: names, parameter types, results, used
by :func:`check_params` and :func:`api_info`), the error codes
(:data:`ERROR_CODES`) and the mapping between exceptions and wire errors
(:func:`exception_to_wire`, :func:`wire_to_exception`) and between port
messages and event notifications (:func:`event_to_wire`,
:func:`wire_to_event`), so the daemon and the client cannot drift.
``docs/protocol.md`` is the same contract written for other languages.

Neither a Connection nor its Packer is thread-safe: one per stream, used from
one thread (or loop) at a time.
"""

from __future__ import annotations

import enum
import errno as _errno
import math
import socket
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeAlias

import msgpack  # type: ignore[import-untyped]  # msgpack ships no stubs

from .framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ELEMENTS,
    DecodeBudget,
    DecodeLimitError,
    declared_size,
    head_of_partial,
)
from .messages import (
    Accepted,
    Closed,
    Data,
    Datagram,
    Error,
    Exited,
    Message,
    Passive,
    Stderr,
    Tick,
)

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ERROR_CODES",
    "EVENTS",
    "EVENT_OVERHEAD",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LIMIT",
    "METHODS",
    "NEED_DATA",
    "NOTIFICATION",
    "NOTIFICATIONS",
    "NOT_ALLOWED",
    "NO_SUCH_PORT",
    "OS_ERROR",
    "PORT_ERROR",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSION_ERROR",
    "REQUEST",
    "RESPONSE",
    "SERVER_ERROR",
    "UNKNOWN_METHOD",
    "Connection",
    "Event",
    "MethodSpec",
    "Notification",
    "Param",
    "ProtocolError",
    "Request",
    "Response",
    "RpcError",
    "Sentinel",
    "State",
    "TimerFired",
    "WireType",
    "api_info",
    "check_params",
    "describe",
    "error_value",
    "event_to_wire",
    "exception_to_wire",
    "os_error_details",
    "wire_to_event",
    "wire_to_exception",
]

PROTOCOL_VERSION: Final = 1
"""The version ``hello`` negotiates; bumped only for an incompatible change
(additions — methods, events, options, result keys — keep the version)."""

DEFAULT_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""The largest message a Connection accepts by default (16 MiB)."""

EVENT_OVERHEAD: Final = 1024
"""Bytes an event's envelope may add around a frame: a client that receives
``data`` events of up to ``max_frame_bytes`` should accept messages of
``max_frame_bytes + EVENT_OVERHEAD``."""

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

_UINT32_LIMIT: Final = 1 << 32


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


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """``[0, msgid, method, params]``: a call the peer wants answered with ``msgid``."""

    msgid: int
    """A uint32, echoed in the response as given (it need not start at 0 or grow)."""
    method: str
    """The method name (a bin name is decoded as UTF-8, surrogateescape)."""
    params: list[Any]
    """The positional params, not yet checked against the method table."""


@dataclass(frozen=True, slots=True)
class Notification:
    """``[2, method, params]``: a message that gets no response."""

    method: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class Response:
    """``[1, msgid, error, result]``: the answer to our request ``msgid``.

    ``error`` is None on success (then ``result`` is the result), else the
    error object, usually ``[code, message]`` or ``[code, message, details]``.
    Responses may arrive in any order.
    """

    msgid: int
    error: Any
    result: Any


Event: TypeAlias = Request | Notification | Response
"""What ``next_event`` returns besides the sentinels."""


class Sentinel(enum.Enum):
    """The two non-event values ``next_event`` returns."""

    NEED_DATA = "NEED_DATA"
    """No whole message is buffered: call ``receive_data`` with more bytes."""
    CLOSED = "CLOSED"
    """The peer ended the stream (``receive_data(b"")``) and every message was read."""

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Sentinel.NEED_DATA
CLOSED: Final = Sentinel.CLOSED


class State(enum.Enum):
    """The receiving side's state (see the module docstring's table)."""

    OPEN = "OPEN"
    EOF = "EOF"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


# --- the connection -----------------------------------------------------------------------

_MSGPACK_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


#: The first buffer of a connection's unpacker and packer (each grows as needed).
READ_SIZE = 64 * 1024


class Connection:
    """One end of a msgpack-rpc stream: bytes in, events out; events in, bytes out.

    ``max_message_bytes`` bounds one incoming message (and so the bytes buffered
    for it); a message that starts with a str/bin/ext header declaring more is
    refused at the header. ``max_elements`` and ``max_depth``, when given, bound
    what one message may decode to (:class:`~ioserver.framing.DecodeBudget`: a
    server must set them, since 16 MiB of empty arrays decode to 1 GiB of
    lists); None trusts the peer, as a client trusts its server. Past any of
    them: a fatal ProtocolError with code LIMIT naming the limit. Outgoing
    messages are not limited here. The sending methods raise
    what msgpack raises for a value it can't encode (TypeError, OverflowError
    for an int outside int64/uint64): the caller's bug, the connection is unharmed.
    """

    __slots__ = (
        "_boundary",
        "_budget",
        "_error",
        "_fed",
        "_head",
        "_last_chunk",
        "_next_msgid",
        "_packer",
        "_pending",
        "_pending_bytes",
        "_state",
        "_unpacker",
        "max_message_bytes",
    )

    def __init__(
        self,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        *,
        max_elements: int | None = None,
        max_depth: int | None = None,
    ) -> None:
        if type(max_message_bytes) is not int or max_message_bytes < 1:
            raise ValueError(f"max_message_bytes={max_message_bytes!r} must be an int >= 1")
        self.max_message_bytes = max_message_bytes
        budget = None
        if max_elements is not None or max_depth is not None:
            budget = DecodeBudget(
                DEFAULT_MAX_ELEMENTS if max_elements is None else max_elements,
                DEFAULT_MAX_DEPTH if max_depth is None else max_depth,
            )
        self._budget = budget
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            unicode_errors="surrogateescape",
            strict_map_key=False,
            max_buffer_size=max_message_bytes,
            # msgpack's first buffer is min(max_buffer_size, 1 MiB), allocated for
            # every connection; start at READ_SIZE and let big messages grow it.
            read_size=min(max_message_bytes, READ_SIZE),
            **({} if budget is None else budget.unpacker_options(max_message_bytes)),
        )
        self._packer = msgpack.Packer(
            use_bin_type=True,
            unicode_errors="surrogateescape",
            autoreset=True,
            buf_size=READ_SIZE,  # not 256 KiB per connection; grows on demand
        )
        # Chunks received and not yet fed to the unpacker, and their total size.
        self._pending: deque[bytes | memoryview] = deque()
        self._pending_bytes = 0
        # Bytes fed to the unpacker so far, and the stream offset just after the
        # last whole message it returned: _fed - _boundary is the unparsed part.
        self._fed = 0
        self._boundary = 0
        # The first bytes of the partial message (see framing.head_of_partial), and
        # the last chunk fed with its stream offset, to find them.
        self._head = b""
        self._last_chunk: tuple[bytes | memoryview, int] = (b"", 0)
        self._state = State.OPEN
        self._error: ProtocolError | None = None
        self._next_msgid = 0

    def __repr__(self) -> str:
        return f"<Connection {self._state.value} buffered={self.buffered}>"

    @property
    def state(self) -> State:
        """The receiving side's state: OPEN, EOF, CLOSED or ERROR."""
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events (0 after a fatal error)."""
        if self._state is State.ERROR:
            return 0
        return self._pending_bytes + self._fed - self._boundary

    # -- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the stream; ``b""`` means the peer closed it (EOF).

        EOF is said with empty data, as a socket's ``recv`` says it, so the caller
        passes what it read without a special case. Data after EOF is a bug of the
        caller (RuntimeError); data after a fatal error is dropped (the stream is
        dead and its bytes meaningless).
        """
        if self._state is State.ERROR:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer
        if not data:
            if self._state is State.OPEN:
                self._state = State.EOF
            return
        if self._state is not State.OPEN:
            raise RuntimeError(f"receive_data() after EOF ({len(data)} bytes)")
        self._pending.append(data)
        self._pending_bytes += len(data)

    def next_event(self) -> Event | Sentinel:
        """The next message as an event, or NEED_DATA, or CLOSED after EOF.

        Raises :class:`ProtocolError` for a bad message (``fatal`` says whether
        the stream can go on; after a fatal one every call raises again).
        """
        if self._state is State.ERROR:
            assert self._error is not None
            raise ProtocolError(
                self._error.code,
                f"connection failed earlier: {self._error.message}",
                fatal=True,
            )
        if self._state is State.CLOSED:
            return CLOSED
        unpacker = self._unpacker
        limit = self.max_message_bytes
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                pass
            except DecodeLimitError as exc:
                self._fail(LIMIT, f"message at byte {self._boundary}: {exc}")
            except _MSGPACK_ERRORS as exc:
                self._fail(*self._undecodable(exc))
            else:
                self._boundary = unpacker.tell()
                if self._budget is not None:
                    self._budget.reset()
                return _to_event(obj)
            # The unpacker needs more bytes than it has.
            partial = self._fed - self._boundary
            if partial:
                self._check_head(limit)
            if partial >= limit:
                self._fail(
                    LIMIT,
                    f"message of more than {limit} bytes at byte {self._boundary}: "
                    f"limit max_message_bytes={limit}",
                )
            if self._pending:
                self._feed(limit - partial)
                continue
            if self._state is State.EOF:
                if partial:
                    self._fail(
                        INVALID_REQUEST,
                        f"stream ended inside a message ({partial} bytes of it received)",
                    )
                self._state = State.CLOSED
                return CLOSED
            return NEED_DATA

    def _check_head(self, limit: int) -> None:
        """Refuse a partial message whose str/bin/ext header declares more than ``limit``."""
        chunk, start = self._last_chunk
        self._head = head = head_of_partial(self._head, chunk, start, self._boundary)
        size = declared_size(head)
        if size is not None and size > limit:
            self._fail(
                LIMIT,
                f"message of {size} bytes at byte {self._boundary}: "
                f"limit max_message_bytes={limit}",
            )

    def _undecodable(self, exc: BaseException) -> tuple[int, str]:
        """The code and message of a fatal decoding error: LIMIT for a bound of the
        budget (a container header over max_elements, msgpack's own nesting limit),
        else INVALID_REQUEST."""
        at, why, budget = self._boundary, _why(exc), self._budget
        if budget is not None:
            if isinstance(exc, msgpack.StackError):
                return (
                    LIMIT,
                    f"message at byte {at} nests too deep: limit max_depth={budget.max_depth}",
                )
            if "exceeds max_" in why:
                return (
                    LIMIT,
                    f"message at byte {at}: {why}: limit max_elements={budget.max_elements}",
                )
        return INVALID_REQUEST, f"not msgpack at byte {at}: {why}"

    def _feed(self, room: int) -> None:
        """Feed the unpacker at most ``room`` (> 0) bytes of the pending chunks."""
        chunk = self._pending.popleft()
        n = len(chunk)
        if n > room:
            view = memoryview(chunk)
            self._pending.appendleft(view[room:])
            chunk = view[:room]
            n = room
        try:
            self._unpacker.feed(chunk)
        except msgpack.BufferFull:  # can't happen: we never feed past the limit
            self._fail(LIMIT, f"limit max_message_bytes={self.max_message_bytes}")
        self._pending_bytes -= n
        self._last_chunk = (chunk, self._fed)
        self._fed += n

    def _fail(self, code: int, message: str) -> NoReturn:
        """Enter ERROR and raise the fatal ProtocolError."""
        self._state = State.ERROR
        self._pending.clear()
        self._pending_bytes = 0
        self._error = ProtocolError(code, message, fatal=True)
        raise self._error

    # -- sending ---------------------------------------------------------------------------

    def new_msgid(self) -> int:
        """A fresh msgid for ``request``: counts from 1, wraps at 2**32 (a uint32)."""
        self._next_msgid = (self._next_msgid + 1) & 0xFFFFFFFF
        return self._next_msgid

    def request(self, msgid: int, method: str, params: Sequence[Any]) -> bytes:
        """The bytes of ``[0, msgid, method, params]``."""
        _check_msgid(msgid)
        if not isinstance(method, str):
            raise TypeError(f"method must be a str, not {type(method).__name__}")
        _check_params_arg(params)
        return self._packer.pack([REQUEST, msgid, method, params])  # type: ignore[no-any-return]

    def response(self, msgid: int, error: Any, result: Any) -> bytes:
        """The bytes of ``[1, msgid, error, result]`` (error None on success)."""
        _check_msgid(msgid)
        return self._packer.pack([RESPONSE, msgid, error, result])  # type: ignore[no-any-return]

    def error_response(
        self, msgid: int, code: int, message: str, details: Mapping[str, Any] | None = None
    ) -> bytes:
        """The bytes of ``[1, msgid, [code, message(, details)], nil]``."""
        return self.response(msgid, error_value(code, message, details), None)

    def notification(self, method: str, params: Sequence[Any]) -> bytes:
        """The bytes of ``[2, method, params]``."""
        if not isinstance(method, str):
            raise TypeError(f"method must be a str, not {type(method).__name__}")
        _check_params_arg(params)
        return self._packer.pack([NOTIFICATION, method, params])  # type: ignore[no-any-return]


def _check_msgid(msgid: object) -> None:
    if type(msgid) is not int or not 0 <= msgid < _UINT32_LIMIT:
        raise ValueError(f"msgid must be an int in 0..2**32-1, not {msgid!r}")


def _check_params_arg(params: object) -> None:
    if not isinstance(params, list | tuple):
        raise TypeError(f"params must be a list or tuple, not {type(params).__name__}")


def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_uint32(value: object) -> bool:
    return type(value) is int and 0 <= value < _UINT32_LIMIT


def _method_name(value: object) -> str | None:
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    return None


def _to_event(obj: Any) -> Event:
    """Check one decoded value's envelope and make its event (a non-fatal
    ProtocolError if it is not a valid message)."""
    if type(obj) is not list:
        raise ProtocolError(
            INVALID_REQUEST, f"a message must be an array, got {describe(obj)}", fatal=False
        )
    n = len(obj)
    kind = obj[0] if n else None
    if n == 0 or type(kind) is not int:
        got = describe(kind) if n else "an empty array"
        raise ProtocolError(
            INVALID_REQUEST, f"a message must start with its type 0, 1 or 2, got {got}"
        )
    if kind == REQUEST:
        msgid = obj[1] if n > 1 and _is_uint32(obj[1]) else None
        if n != 4:
            raise _bad(f"a request [0, msgid, method, params] has 4 elements, got {n}", msgid, kind)
        if msgid is None:
            raise _bad(f"request msgid must be a uint32, got {describe(obj[1])}", None, kind)
        method = _method_name(obj[2])
        if method is None:
            raise _bad(f"method name must be a str or bin, got {describe(obj[2])}", msgid, kind)
        params = obj[3]
        if type(params) is not list:
            raise _bad(
                f"params of {method!r} must be an array, got {describe(params)}", msgid, kind
            )
        return Request(msgid, method, params)
    if kind == NOTIFICATION:
        if n != 3:
            raise _bad(f"a notification [2, method, params] has 3 elements, got {n}", None, kind)
        method = _method_name(obj[1])
        if method is None:
            raise _bad(f"method name must be a str or bin, got {describe(obj[1])}", None, kind)
        params = obj[2]
        if type(params) is not list:
            raise _bad(f"params of {method!r} must be an array, got {describe(params)}", None, kind)
        return Notification(method, params)
    if kind == RESPONSE:
        msgid = obj[1] if n > 1 and _is_uint32(obj[1]) else None
        if n != 4:
            raise _bad(f"a response [1, msgid, error, result] has 4 elements, got {n}", msgid, kind)
        if msgid is None:
            raise _bad(f"response msgid must be a uint32, got {describe(obj[1])}", None, kind)
        return Response(msgid, obj[2], obj[3])
    msgid = obj[1] if n > 1 and _is_uint32(obj[1]) else None
    raise _bad(f"unknown message type {kind} (expected 0, 1 or 2)", msgid, kind)


def _bad(message: str, msgid: int | None, kind: int) -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, message, msgid=msgid, type=kind)


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


# --- parameter types ---------------------------------------------------------------------


class _Invalid(Exception):
    """Internal: a value failed its WireType; the text follows the param's name."""


@dataclass(frozen=True, slots=True)
class WireType:
    """The type of a param on the wire.

    ``name`` is how docs and ``get_api_info`` spell it ("str", "uint32",
    "[str, int]", "str|nil"); ``convert`` checks a decoded value and returns it
    normalized (a bin where a str is expected is decoded, a str where bytes are
    expected is encoded, an address becomes a tuple) or raises.
    """

    name: str
    convert: Callable[[Any], Any]
    options: Mapping[str, WireType] | None = None
    """For an options map: the keys it accepts and their types."""


def _must(expected: str, value: Any) -> _Invalid:
    return _Invalid(f" must be {expected}, got {describe(value)}")


def _int(value: Any) -> int:
    if type(value) is not int:
        raise _must("an int", value)
    return value


def _uint32(value: Any) -> int:
    if not _is_uint32(value):
        raise _must("a uint32", value)
    return int(value)


def _port_number(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= 65535:
        raise _must("an int in 0..65535", value)
    return value


def _int_min(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if type(value) is not int or value < minimum:
            raise _must(f"an int >= {minimum}", value)
        return value

    return convert


def _int_range(minimum: int, maximum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if type(value) is not int or not minimum <= value <= maximum:
            raise _must(f"an int in {minimum}..{maximum}", value)
        return value

    return convert


MAX_BACKLOG: Final = 65535
"""The largest ``backlog`` a listener takes (the kernel caps it lower anyway)."""
BACKLOG: Final = WireType("int", _int_range(1, MAX_BACKLOG))


def _seconds(*, positive: bool) -> Callable[[Any], float]:
    bound = "> 0" if positive else ">= 0"

    def convert(value: Any) -> float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise _must(f"a number {bound}", value)
        if value < 0 or (positive and value == 0):
            raise _must(f"a number {bound}", value)
        return float(value)

    return convert


def _str(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is bytes:
        return value.decode("utf-8", "surrogateescape")
    raise _must("a str", value)


def _data(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is str:
        return value.encode("utf-8", "surrogateescape")
    raise _must("bin (or str, sent as UTF-8)", value)


def _any(value: Any) -> Any:
    return value


def _addr(value: Any) -> tuple[str, int]:
    if type(value) is not list or len(value) != 2:
        raise _must("an array [host, port]", value)
    try:
        return (_str(value[0]), _port_number(value[1]))
    except _Invalid:
        raise _must("an array [host: str, port: int in 0..65535]", value) from None


def _argv(value: Any) -> list[str]:
    if type(value) is not list or not value:
        raise _must("a non-empty array of str", value)
    try:
        return [_str(arg) for arg in value]
    except _Invalid:
        raise _must("a non-empty array of str", value) from None


def _env(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise _must("a map of str to str, or nil", value)
    try:
        return {_str(k): _str(v) for k, v in value.items()}
    except _Invalid:
        raise _must("a map of str to str, or nil", value) from None


def _one_of(*choices: Any) -> Callable[[Any], Any]:
    spelled = ", ".join("nil" if c is None else repr(c) for c in choices)

    def convert(value: Any) -> Any:
        given = _method_name(value) if type(value) is bytes else value  # a bin name
        for choice in choices:
            if type(given) is type(choice) and given == choice:
                return given
        raise _must(f"one of {spelled}", value)

    return convert


def _active(value: Any) -> bool | int | str:
    if value == b"once":
        return "once"
    if value is True or value is False or value == "once":
        return value  # type: ignore[no-any-return]
    if type(value) is int and -32768 <= value <= 32767:
        return value
    raise _must("true, false, 'once' or an int in -32768..32767", value)


def _nullable(t: WireType) -> WireType:
    def convert(value: Any) -> Any:
        return None if value is None else t.convert(value)

    return WireType(f"{t.name}|nil", convert)


INT = WireType("int", _int)
ID = WireType("id", _uint32)
"""A port or timer id (a uint32, unique within the session)."""
PORT_NUMBER = WireType("int", _port_number)
FLOAT = WireType("float", _seconds(positive=False))
POSITIVE_FLOAT = WireType("float", _seconds(positive=True))
STR = WireType("str", _str)
DATA = WireType("bin", _data)
ANY = WireType("any", _any)
ADDR = WireType("[str, int]", _addr)
ARGV = WireType("[str, ...]", _argv)

_PORT_OPTIONS: Final[Mapping[str, WireType]] = {
    "packet": WireType(
        "nil|'raw'|'line'|1|2|4|'msgpack'", _one_of(None, "raw", "line", 1, 2, 4, "msgpack")
    ),
    "active": WireType("bool|'once'|int", _active),
    "high_water": WireType("int", _int_min(1)),
    "max_frame_bytes": WireType("int", _int_min(1)),
}


def _options(**extra: WireType) -> WireType:
    """An options map: the port options plus ``extra``; missing or nil means ``{}``."""
    allowed: dict[str, WireType] = {**_PORT_OPTIONS, **extra}
    return _options_of(allowed)


def _options_of(allowed: Mapping[str, WireType]) -> WireType:
    names = ", ".join(sorted(allowed))

    def convert(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if type(value) is not dict:
            raise _must("a map of options", value)
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _method_name(key)
            t = allowed.get(name) if name is not None else None
            if t is None or name is None:
                what = repr(name) if name is not None else describe(key)
                raise _Invalid(f": unknown option {what} (the options here: {names})")
            try:
                out[name] = t.convert(item)
            except _Invalid as exc:
                raise _Invalid(f".{name}{exc}") from None
        return out

    return WireType("map", convert, allowed)


# --- the method table --------------------------------------------------------------------

_REQUIRED: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class Param:
    """One positional param: its name, type, and default (when it may be left out)."""

    name: str
    type: WireType
    default: Any = _REQUIRED
    """The value used when the param is missing; ``{}`` defaults are copied per call."""

    @property
    def optional(self) -> bool:
        """Whether the param may be left out (then ``default`` is used)."""
        return self.default is not _REQUIRED


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A method, client notification or event: its params, result and meaning."""

    name: str
    params: tuple[Param, ...]
    result: str = "nil"
    """The result's type, as docs spell it (meaningless for notifications and events)."""
    doc: str = ""
    errors: tuple[str, ...] = field(default=())
    """Names of the error codes a call may get besides INVALID_PARAMS."""

    def check(self, params: list[Any]) -> list[Any]:
        """``params`` checked and normalized, missing optional ones filled in; raises
        :class:`RpcError` INVALID_PARAMS naming the param and what was expected."""
        n = len(params)
        specs = self.params
        if n > len(specs) or n < sum(1 for p in specs if not p.optional):
            required = sum(1 for p in specs if not p.optional)
            count = str(len(specs)) if required == len(specs) else f"{required} to {len(specs)}"
            names = ", ".join(p.name for p in specs)
            raise RpcError(
                INVALID_PARAMS,
                f"{self.name} takes {count} params ({names}), got {n}",
                {"type": "TypeError"},
            )
        out: list[Any] = []
        for i, p in enumerate(specs):
            if i < n:
                try:
                    out.append(p.type.convert(params[i]))
                except _Invalid as exc:
                    raise RpcError(
                        INVALID_PARAMS, f"{self.name}: {p.name}{exc}", {"type": "ValueError"}
                    ) from None
            elif type(p.default) is dict:
                out.append({})
            else:
                out.append(p.default)
        return out

    def describe(self) -> dict[str, Any]:
        """This spec as ``get_api_info`` publishes it (msgpack-able)."""
        entry: dict[str, Any] = {
            "params": [
                {"name": p.name, "type": p.type.name, "optional": p.optional} for p in self.params
            ],
            "result": self.result,
            "doc": self.doc,
        }
        options = {
            p.name: {k: t.name for k, t in p.type.options.items()}
            for p in self.params
            if p.type.options is not None
        }
        if options:
            entry["options"] = options
        if self.errors:
            entry["errors"] = list(self.errors)
        return entry


def _spec(
    name: str, *params: Param, result: str = "nil", doc: str = "", errors: tuple[str, ...] = ()
) -> tuple[str, MethodSpec]:
    return name, MethodSpec(name, params, result, doc, errors)


_OPEN_ERRORS: Final = ("LIMIT", "OS_ERROR")
_PORT_ERRORS: Final = ("NO_SUCH_PORT",)

METHODS: Final[Mapping[str, MethodSpec]] = dict(
    [
        _spec(
            "hello",
            Param("version", INT),
            Param("token", _nullable(STR), None),
            result="{version: int, server: str, session_id: int}",
            doc="Handshake: optional first call over the Unix socket, required first over "
            "TCP (with the token). Answers the version spoken.",
            errors=("PROTOCOL_VERSION", "NOT_ALLOWED"),
        ),
        _spec("ping", result="'pong'", doc="Liveness check."),
        _spec("stats", result="map", doc="Counters of the server and of this session."),
        _spec(
            "get_api_info",
            result="{version, methods, notifications, events, error_codes}",
            doc="This table: methods, client notifications, events and error codes.",
        ),
        _spec(
            "connect_tcp",
            Param("host", STR),
            Param("port", PORT_NUMBER),
            Param("opts", _options(timeout=_nullable(POSITIVE_FLOAT)), {}),
            result="id",
            doc="Connect to host:port; answers once connected.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "listen_tcp",
            Param("host", STR),
            Param("port", PORT_NUMBER),
            Param("opts", _options(backlog=BACKLOG), {}),
            result="[id, [host, port]]",
            doc="Listen on host:port (0: any free port); answers the bound address. "
            "Connections arrive as 'accepted' events.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "connect_unix",
            Param("path", STR),
            Param("opts", _options(timeout=_nullable(POSITIVE_FLOAT)), {}),
            result="id",
            doc="Connect to the Unix socket at path.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "listen_unix",
            Param("path", STR),
            Param("opts", _options(backlog=BACKLOG), {}),
            result="id",
            doc="Listen on a Unix socket at path.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "open_udp",
            Param("host", STR),
            Param("port", PORT_NUMBER),
            Param("opts", _options(remote_addr=_nullable(ADDR)), {}),
            result="[id, [host, port]]",
            doc="A UDP socket bound to host:port; answers the bound address. Datagrams "
            "arrive as 'datagram' events; send with send_to (or send with remote_addr).",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "spawn",
            Param("argv", ARGV),
            Param(
                "opts",
                _options(
                    cwd=_nullable(STR),
                    env=WireType("map|nil", _env),
                    env_add=WireType("map|nil", _env),
                    stderr=WireType("nil|'merge'|'discard'", _one_of(None, "merge", "discard")),
                ),
                {},
            ),
            result="[id, pid]",
            doc="Run a program from the server's allow-list (no shell). 'send' writes its "
            "stdin; stdout arrives as 'data', stderr as 'stderr', then 'exited', 'closed'.",
            errors=("NOT_ALLOWED", *_OPEN_ERRORS),
        ),
        _spec(
            "send_after",
            Param("delay", FLOAT),
            Param("message", ANY),
            result="id",
            doc="After delay seconds, the event 'timer' [id, message].",
            errors=("LIMIT",),
        ),
        _spec(
            "cancel_timer",
            Param("timer_id", ID),
            result="bool",
            doc="Cancel a send_after timer: true if it had not fired yet.",
        ),
        _spec(
            "interval",
            Param("period", POSITIVE_FLOAT),
            Param("opts", _options(), {}),
            result="id",
            doc="A port that sends 'tick' [id, count] every period seconds.",
            errors=("LIMIT",),
        ),
        _spec(
            "open_file",
            Param("path", STR),
            Param("mode", STR, "rb"),
            Param("opts", _options(), {}),
            result="id",
            doc="A regular file: reads arrive as 'data' then 'closed' at EOF; 'send' writes.",
            errors=_OPEN_ERRORS,
        ),
        _spec(
            "setopts",
            Param("port_id", ID),
            Param("opts", _options_of({"active": _PORT_OPTIONS["active"]})),
            doc="Change a port's active mode (an int is added to its counter).",
            errors=_PORT_ERRORS,
        ),
        _spec(
            "read",
            Param("port_id", ID),
            doc="In passive mode: ask for one more message; it arrives as an event.",
            errors=_PORT_ERRORS,
        ),
        _spec(
            "close",
            Param("port_id", ID),
            doc="Close a port; its 'closed' event follows, after any data.",
            errors=_PORT_ERRORS,
        ),
        _spec(
            "close_stdin",
            Param("port_id", ID),
            doc="Half-close the write side (a process's stdin, a socket's write side).",
            errors=_PORT_ERRORS,
        ),
    ]
)
"""Requests the server answers: name -> spec."""

NOTIFICATIONS: Final[Mapping[str, MethodSpec]] = dict(
    [
        _spec(
            "send",
            Param("port_id", ID),
            Param("data", DATA),
            doc="Write data to a port (no reply; a failure comes back as an 'error' event).",
        ),
        _spec(
            "send_to",
            Param("port_id", ID),
            Param("data", DATA),
            Param("addr", ADDR),
            doc="Send one datagram to addr from a UDP port.",
        ),
    ]
)
"""Notifications the server acts on (client -> server); others are ignored."""

_ERR = WireType("[code, message, details?]", _any)

EVENTS: Final[Mapping[str, MethodSpec]] = dict(
    [
        _spec("data", Param("port_id", ID), Param("data", ANY), doc="Bytes (a frame) read."),
        _spec("stderr", Param("port_id", ID), Param("data", DATA), doc="A process's stderr."),
        _spec(
            "closed",
            Param("port_id", ID),
            Param("reason", _nullable(STR), None),
            doc="The port is closed: exactly once, last.",
        ),
        _spec(
            "error",
            Param("port_id", _nullable(ID)),
            Param("error", _ERR),
            doc="The port failed ('closed' follows); port_id nil: a session-level error.",
        ),
        _spec(
            "accepted",
            Param("port_id", ID),
            Param("new_port_id", ID),
            Param("peer", ANY, None),
            doc="A listener accepted a connection: a new port, and its peer address.",
        ),
        _spec(
            "datagram",
            Param("port_id", ID),
            Param("data", DATA),
            Param("addr", ADDR),
            doc="One UDP datagram and its sender.",
        ),
        _spec("exited", Param("port_id", ID), Param("returncode", INT), doc="A process ended."),
        _spec("tick", Param("port_id", ID), Param("count", INT), doc="An interval fired."),
        _spec("passive", Param("port_id", ID), doc="The active count ran out; reading is paused."),
        _spec("timer", Param("timer_id", ID), Param("message", ANY), doc="A send_after fired."),
    ]
)
"""Notifications the server sends (server -> client), port (or timer) id first."""


def check_params(method: str, params: list[Any]) -> list[Any]:
    """Check a request against :data:`METHODS`: the params normalized, optional
    ones filled in. Raises :class:`RpcError` UNKNOWN_METHOD or INVALID_PARAMS."""
    spec = METHODS.get(method)
    if spec is None:
        raise RpcError(UNKNOWN_METHOD, f"unknown method {method!r}")
    return spec.check(params)


def api_info() -> dict[str, Any]:
    """The result of ``get_api_info``: version, methods, notifications, events, error codes."""
    return {
        "version": PROTOCOL_VERSION,
        "methods": {name: spec.describe() for name, spec in METHODS.items()},
        "notifications": {name: spec.describe() for name, spec in NOTIFICATIONS.items()},
        "events": {name: spec.describe() for name, spec in EVENTS.items()},
        "error_codes": dict(ERROR_CODES),
    }


# --- port messages <-> events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimerFired(Message):
    """A ``send_after`` timer fired: ``port`` is the timer (as the session or client
    names it), ``message`` the value given to ``send_after``. The wire event ``timer``."""

    message: Any


def _wire_addr(addr: Any) -> Any:
    """An address as sent: [host, port] for an IP address (IPv6's flow info and
    scope dropped), a str for a Unix socket path, nil if unknown."""
    if isinstance(addr, list | tuple) and len(addr) >= 2:
        return [addr[0], addr[1]]
    if isinstance(addr, bytes):
        return addr.decode("utf-8", "surrogateescape")
    return addr


IdOf: TypeAlias = Callable[[Any], int]

_TO_WIRE: Final[dict[type, Callable[[Any, IdOf], tuple[str, list[Any]]]]] = {
    Data: lambda m, id_of: ("data", [id_of(m.port), m.data]),
    Stderr: lambda m, id_of: ("stderr", [id_of(m.port), m.data]),
    Closed: lambda m, id_of: ("closed", [id_of(m.port), m.reason]),
    Error: lambda m, id_of: (
        "error",
        [
            None if m.port is None else id_of(m.port),
            exception_to_wire(
                m.error, None if isinstance(m.error, OSError | RpcError) else PORT_ERROR
            ),
        ],
    ),
    Accepted: lambda m, id_of: (
        "accepted",
        [id_of(m.port), id_of(m.conn), _wire_addr(getattr(m.conn, "peer", None))],
    ),
    Datagram: lambda m, id_of: ("datagram", [id_of(m.port), m.data, _wire_addr(m.addr)]),
    Exited: lambda m, id_of: ("exited", [id_of(m.port), m.returncode]),
    Tick: lambda m, id_of: ("tick", [id_of(m.port), m.count]),
    Passive: lambda m, id_of: ("passive", [id_of(m.port)]),
    TimerFired: lambda m, id_of: ("timer", [id_of(m.port), m.message]),
}


def event_to_wire(message: Message, port_id_of: IdOf) -> tuple[str, list[Any]]:
    """A port message as an event notification ``(name, params)``.

    ``port_id_of`` maps a port (or timer) object to its session id; it is also
    applied to an ``Accepted``'s new port (``conn``, whose ``.peer`` is sent).
    An ``Error`` with ``port`` None is a session-level error (port id nil). A
    message with no wire form (``Readable``/``Writable``: watch is local-only)
    raises ValueError.
    """
    to_wire = _TO_WIRE.get(type(message))
    if to_wire is None:
        raise ValueError(f"{type(message).__name__} has no wire event")
    return to_wire(message, port_id_of)


def wire_to_event(
    name: str,
    params: list[Any],
    port_of: Callable[[int], Any],
    *,
    accept: Callable[[Any, int, Any], Any] | None = None,
    error_types: Mapping[str, type[BaseException]] | None = None,
) -> Message | None:
    """An event notification as the port message it stands for (the client side of
    :func:`event_to_wire`); None for a name that is not an event (ignore it:
    a newer server may send more).

    ``port_of(id)`` gives the object for a port or timer id. ``accept(listener,
    new_id, peer)`` makes the new port of an ``accepted`` event (default:
    ``port_of(new_id)``). ``error_types`` goes to :func:`wire_to_exception`. A
    known event with bad params raises a non-fatal :class:`ProtocolError`.
    """
    spec = EVENTS.get(name)
    if spec is None:
        return None
    try:
        p = spec.check(params)
    except RpcError as exc:
        raise ProtocolError(INVALID_PARAMS, f"bad event: {exc.message}") from None
    if name == "error":
        port = None if p[0] is None else port_of(p[0])
        return Error(port, wire_to_exception(p[1], error_types))
    port = port_of(p[0])
    if name == "data":
        return Data(port, p[1])
    if name == "stderr":
        return Stderr(port, p[1])
    if name == "closed":
        return Closed(port, p[1])
    if name == "accepted":
        peer = tuple(p[2]) if isinstance(p[2], list) else p[2]
        conn = accept(port, p[1], peer) if accept is not None else port_of(p[1])
        return Accepted(port, conn)
    if name == "datagram":
        return Datagram(port, p[1], p[2])
    if name == "exited":
        return Exited(port, p[1])
    if name == "tick":
        return Tick(port, p[1])
    if name == "passive":
        return Passive(port)
    assert name == "timer", name
    return TimerFired(port, p[1])
