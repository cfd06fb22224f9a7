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

Layout
------
The package is one layer (it imports ``framing`` and ``messages`` above it, and
nothing below); this module re-exports every name, so importers write
``from ioserver import protocol`` and never name a submodule:

- ``connection``: the codec (:class:`Connection`, the events and sentinels,
  the message type codes and size defaults);
- ``errors``: the error codes, :class:`RpcError`/:class:`ProtocolError`, and
  exceptions on the wire;
- ``schema``: the parameter types and the method table;
- ``events``: port messages <-> event notifications.
"""

from __future__ import annotations

from .connection import (
    CLOSED,
    DEFAULT_MAX_MESSAGE_BYTES,
    EVENT_OVERHEAD,
    NEED_DATA,
    NOTIFICATION,
    REQUEST,
    RESPONSE,
    Connection,
    Event,
    Notification,
    Request,
    Response,
    Sentinel,
    State,
)
from .errors import (
    ERROR_CODES,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LIMIT,
    NO_SUCH_PORT,
    NOT_ALLOWED,
    OS_ERROR,
    PORT_ERROR,
    PROTOCOL_VERSION_ERROR,
    SERVER_ERROR,
    UNKNOWN_METHOD,
    ProtocolError,
    RpcError,
    describe,
    error_value,
    exception_to_wire,
    os_error_details,
    wire_to_exception,
)
from .events import (
    TimerFired,
    event_to_wire,
    wire_to_event,
)
from .schema import (
    EVENTS,
    METHODS,
    NOTIFICATIONS,
    PROTOCOL_VERSION,
    MethodSpec,
    Param,
    WireType,
    api_info,
    check_params,
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
