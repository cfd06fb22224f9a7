"""The msgpack-rpc codec: :class:`Connection` turns bytes into events and events
into bytes (sans-I/O; the package docstring has the theory of operation:
states, what is fatal, cost per byte)."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeAlias

import msgpack  # type: ignore[import-untyped]  # msgpack ships no stubs

from .._core import fast_constructor
from ..framing import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ELEMENTS,
    DecodeBudget,
    DecodeLimitError,
    declared_size,
    head_of_partial,
)
from .errors import INVALID_REQUEST, LIMIT, ProtocolError, describe, error_value

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

# One event per message decoded: built by fast_constructor (ioserver/_core.py).
_request = fast_constructor(Request)
_notification = fast_constructor(Notification)
_response = fast_constructor(Response)


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
        return _request(msgid, method, params)
    if kind == NOTIFICATION:
        if n != 3:
            raise _bad(f"a notification [2, method, params] has 3 elements, got {n}", None, kind)
        method = _method_name(obj[1])
        if method is None:
            raise _bad(f"method name must be a str or bin, got {describe(obj[1])}", None, kind)
        params = obj[2]
        if type(params) is not list:
            raise _bad(f"params of {method!r} must be an array, got {describe(params)}", None, kind)
        return _notification(method, params)
    if kind == RESPONSE:
        msgid = obj[1] if n > 1 and _is_uint32(obj[1]) else None
        if n != 4:
            raise _bad(f"a response [1, msgid, error, result] has 4 elements, got {n}", msgid, kind)
        if msgid is None:
            raise _bad(f"response msgid must be a uint32, got {describe(obj[1])}", None, kind)
        return _response(msgid, obj[2], obj[3])
    msgid = obj[1] if n > 1 and _is_uint32(obj[1]) else None
    raise _bad(f"unknown message type {kind} (expected 0, 1 or 2)", msgid, kind)


def _bad(message: str, msgid: int | None, kind: int) -> ProtocolError:
    return ProtocolError(INVALID_REQUEST, message, msgid=msgid, type=kind)
