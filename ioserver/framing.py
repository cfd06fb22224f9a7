"""Packet framing, sans-I/O: bytes in, frames out; frames in, bytes back.

Theory of operation
-------------------
A port reads a byte stream; ``packet=`` says how that stream is cut into the
``Data`` messages its inbox receives (Erlang's ``{packet, ...}`` socket option).
This module does the cutting and nothing else: it never touches a socket, a
loop or a channel (h11's rule), so it is tested by feeding it bytes.

Each mode has a :class:`Decoder` with one interface:

- ``feed(data)`` returns the frames completed by ``data``, in stream order, and
  keeps any partial frame for the next call. ``feed(b"")`` is a no-op: the end
  of the stream is said explicitly with ``eof()``, never with empty data, so a
  zero-length read can't be mistaken for a hang-up.
- ``eof()`` returns what the leftover bytes make at the end of the stream: a
  final unterminated line in ``"line"`` mode; in the length-prefixed and
  msgpack modes leftover bytes are a truncated frame, and raise
  :class:`FrameError`.
- A decoder that raised :class:`FrameError` is failed for good (h11's ERROR
  state): the stream can't be re-synced, so every later call raises again.
  The error carries ``.frames``, the frames this call completed before the
  bad one, so a driver can deliver them and then the error. After ``eof()``
  the decoder is finished and further calls are bugs (``RuntimeError``).

The modes (``PACKET_MODES``):

``None`` or ``"raw"``
    Every chunk is a frame, as read. No buffering, no copy: one type check
    per read. ``max_frame_bytes`` does not apply (a chunk is one read).
``"line"``
    A frame is a line *including* its ``b"\\n"`` (as Erlang's
    ``{packet, line}`` delivers it), at most ``max_frame_bytes`` long with the
    newline. A longer line raises as soon as the buffered part alone is over
    the limit: never a silent truncation (Erlang truncates; we don't).
``1``, ``2``, ``4``
    A big-endian unsigned length header of that many bytes, then the payload
    (Erlang's ``{packet, N}``). The frame is the payload without its header.
    A declared length over ``max_frame_bytes`` raises as soon as the header
    is read, before any of the payload is buffered.
``"msgpack"``
    A stream of msgpack objects; each decoded object is a frame. Strings are
    decoded (``raw=False``), map keys may be of any type
    (``strict_map_key=False``). An object whose encoding is over
    ``max_frame_bytes``, or a malformed stream, raises.

Cost per byte (the decoders run on the I/O thread, for every read):

- A frame that lies within one read is sliced out of it: one copy per byte.
- A frame that spans reads is accumulated in a ``bytearray`` (amortized O(1)
  per appended byte) and copied out once when complete: two copies per byte.
  A bytearray, not a list of chunks: memory stays at about the bytes buffered
  even when a peer trickles its data one byte per read.
- ``"line"`` scans each byte for newlines once (the first line of a read
  twice, when it picks the split path). The partial line it buffers never
  holds a newline (each feed delivers every complete line), so a feed
  searches its new bytes only: the buffer is never rescanned.
- ``1``, ``2``, ``4`` never scan: one header parse per frame.
- msgpack: the C unpacker resumes a partial object where it stopped. What an
  object may *decode to* is bounded apart from its size (:class:`DecodeBudget`):
  at most ``max_elements`` values in all (100k by default; an empty array is one
  byte on the wire but some 60 bytes of Python object) nested at most
  ``max_depth`` deep (64). A container header preallocates its declared length
  (8 bytes per element), so it is refused at the header past ``max_elements``;
  so is a str/bin/ext header that declares more than ``max_frame_bytes``. The
  budget costs one hook call per array or map and one C-level pass over its items.

Encoders (:class:`Encoder`) are the inverse: ``encode(frame) -> bytes``. They
keep no state between calls, so one encoder may be shared between threads.
The ``"line"`` encoder passes bytes through as they are: the caller supplies
the ``b"\\n"`` (one ``send`` may carry several lines, as Erlang's does).

``DEFAULT_MAX_FRAME_BYTES`` is 16 MiB: large enough for any sane message,
small enough that a peer can't make one connection buffer without bound.
"""

from __future__ import annotations

import itertools
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    Literal,
    NoReturn,
    TypeAlias,
    TypeVar,
    overload,
)

import msgpack  # type: ignore[import-untyped]  # msgpack ships no stubs

from ._core import native

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_MAX_FRAME_BYTES",
    "PACKET_MODES",
    "BytesLike",
    "DecodeBudget",
    "DecodeLimitError",
    "Decoder",
    "Encoder",
    "FrameError",
    "LengthPrefixDecoder",
    "LengthPrefixEncoder",
    "LineDecoder",
    "LineEncoder",
    "MsgpackDecoder",
    "MsgpackEncoder",
    "PacketMode",
    "PyDecodeBudget",
    "RawDecoder",
    "RawEncoder",
    "declared_size",
    "head_of_partial",
    "make_decoder",
    "make_encoder",
]


class FrameError(ValueError):
    """Raised by ``Decoder.feed``/``eof`` when the remote stream breaks its framing
    (a frame over the limit, a malformed or truncated frame), and by
    ``Encoder.encode`` when a local frame can't be framed (too long).

    ``frames`` holds the frames the failing ``feed`` completed before the bad
    one, in order (always empty from ``eof`` and ``encode``).
    """

    def __init__(self, message: str, frames: list[Any] | None = None) -> None:
        super().__init__(message)
        self.frames: list[Any] = frames if frames is not None else []


PacketMode: TypeAlias = Literal[None, "raw", "line", 1, 2, 4, "msgpack"]
"""The ``packet=`` values: None or "raw", "line", 1, 2, 4, "msgpack"."""

BytePacketMode: TypeAlias = Literal[None, "raw", "line", 1, 2, 4]
"""The modes whose frames are bytes (all but "msgpack")."""

BytesLike: TypeAlias = bytes | bytearray | memoryview
"""What the byte-mode encoders and every decoder accept (copied to bytes if needed)."""

PACKET_MODES: Final[tuple[PacketMode, ...]] = (None, "raw", "line", 1, 2, 4, "msgpack")

DEFAULT_MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""16 MiB: the largest frame a decoder accepts or an encoder produces by default."""

FrameT = TypeVar("FrameT")

# The struct format of each header size: big-endian unsigned, as Erlang's {packet, N}.
_HEADER_FORMATS: Final = {1: ">B", 2: ">H", 4: ">I"}


def _check_packet(packet: object) -> Literal[None, "line", 1, 2, 4, "msgpack"]:
    """Return the canonical mode for ``packet`` ("raw" becomes None), or raise ValueError."""
    if packet is None or packet == "raw":
        return None
    if packet == "line":
        return "line"
    if packet == "msgpack":
        return "msgpack"
    # type(...) is int: refuse True (== 1) and 1.0, as "1" is refused.
    if type(packet) is int:
        if packet == 1:
            return 1
        if packet == 2:
            return 2
        if packet == 4:
            return 4
    raise ValueError(
        f"packet={packet!r} is not a packet mode; valid choices: "
        f"{', '.join(repr(p) for p in PACKET_MODES)}"
    )


def _check_max(max_frame_bytes: object) -> int:
    """Return ``max_frame_bytes`` if it is an int >= 1, or raise ValueError."""
    if type(max_frame_bytes) is not int or max_frame_bytes < 1:
        raise ValueError(f"max_frame_bytes={max_frame_bytes!r} must be an int >= 1")
    return max_frame_bytes


# --- decoders -------------------------------------------------------------------------


class Decoder(ABC, Generic[FrameT]):
    """Cuts one byte stream into frames; owns the bookkeeping shared by every mode.

    Loop-thread only: a decoder belongs to one stream and is not thread-safe.
    """

    __slots__ = ("_stopped", "max_frame_bytes", "packet")

    def __init__(self, packet: PacketMode, max_frame_bytes: int) -> None:
        #: The canonical packet mode (None for raw).
        self.packet: PacketMode = packet
        #: The largest frame accepted, in bytes (header excluded, newline included).
        self.max_frame_bytes: int = _check_max(max_frame_bytes)
        # None while the stream is open. Set once, by _fail (the FrameError) or by
        # eof() (a RuntimeError); every later feed()/eof() raises from it.
        self._stopped: Exception | None = None

    @abstractmethod
    def feed(self, data: BytesLike) -> list[FrameT]:
        """Take the next bytes of the stream; return the frames they complete, in order.

        A partial frame is kept for the next call. ``b""`` is a no-op (EOF is
        :meth:`eof`). Raises :class:`FrameError` if the stream breaks the framing;
        the decoder then stays failed. Any other exception is a bug.
        """

    @abstractmethod
    def eof(self) -> list[FrameT]:
        """End the stream: return the frames the leftover bytes make.

        Raises :class:`FrameError` if the leftover bytes are a truncated frame.
        The decoder is finished afterwards.
        """

    @property
    @abstractmethod
    def buffered(self) -> int:
        """Bytes of the partial frame received so far, waiting for the rest (for statistics)."""

    def _fail(self, message: str, frames: list[Any] | None = None) -> NoReturn:
        """Enter the failed state and raise FrameError(message) with ``frames``."""
        err = FrameError(f"{message} (packet={self.packet!r})", frames)
        self._stopped = err
        raise err

    def _raise_stopped(self) -> NoReturn:
        """Raise for a call made after a FrameError or after eof()."""
        stopped = self._stopped
        if isinstance(stopped, FrameError):
            raise FrameError(f"decoder failed earlier: {stopped}") from stopped
        raise RuntimeError(str(stopped))

    def _finish(self) -> None:
        """Enter the finished state (called by eof())."""
        self._stopped = RuntimeError(f"feed() or eof() after eof() (packet={self.packet!r})")


class RawDecoder(Decoder[bytes]):
    """``packet=None``: every non-empty chunk is a frame, delivered as read."""

    __slots__ = ()

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__(None, max_frame_bytes)

    def feed(self, data: BytesLike) -> list[bytes]:
        # Cost: O(1) for bytes (no copy); a bytearray/memoryview is copied once,
        # so the caller may reuse its buffer.
        if self._stopped is not None:
            self._raise_stopped()
        if not data:
            return []
        return [data if type(data) is bytes else bytes(data)]

    def eof(self) -> list[bytes]:
        if self._stopped is not None:
            self._raise_stopped()
        self._finish()
        return []

    @property
    def buffered(self) -> int:
        return 0


# Below this length of the first line of a read, LineDecoder splits the read in C
# rather than find()ing line by line. Measured on the 2-core dev box (CPython
# 3.11): split + concat costs ~0.12 us/line for 30-byte lines and ~0.25 us for
# 300-byte lines, against ~0.30 us for the find() loop; for 4 KB lines split
# costs 1.7 us against 0.47 us (it copies each line twice). Either is O(bytes).
_SPLIT_MAX_LINE: Final = 256


class LineDecoder(Decoder[bytes]):
    """``packet="line"``: a frame is one line, ending with (and including) ``b"\\n"``.

    A line of more than ``max_frame_bytes`` bytes (newline included) raises
    FrameError as soon as that many bytes have arrived without a newline. At
    EOF a final unterminated line is delivered as it is.
    """

    __slots__ = ("_buf",)

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__("line", max_frame_bytes)
        # The start of the current line: never holds a b"\n" (each feed delivers
        # every complete line), so a feed scans only its new bytes.
        self._buf: bytearray = bytearray()

    def feed(self, data: BytesLike) -> list[bytes]:
        if self._stopped is not None:
            self._raise_stopped()
        if type(data) is not bytes:
            data = bytes(data)
        limit = self.max_frame_bytes
        buf = self._buf
        start = 0
        frames: list[bytes] = []
        if buf:
            # Slow path: the line began in an earlier read. Scan only ``data``.
            nl = data.find(b"\n")
            if nl < 0:
                size = len(buf) + len(data)
                if size > limit:
                    self._fail(f"unterminated line of {size} bytes exceeds max_frame_bytes={limit}")
                buf += data
                return frames
            start = nl + 1
            size = len(buf) + start
            if size > limit:
                self._fail(f"line of {size} bytes exceeds max_frame_bytes={limit}")
            buf += memoryview(data)[:start]
            frames.append(bytes(buf))
            buf.clear()
        # Fast path: lines within this read are sliced out of it (one copy each).
        n = len(data)
        nl = data.find(b"\n", start)
        if nl < 0:
            pass
        elif nl + 1 == n:
            # The common case at low load: the read is one whole line. No copy.
            if n - start > limit:
                self._fail(f"line of {n - start} bytes exceeds max_frame_bytes={limit}", frames)
            frames.append(data[start:] if start else data)
            return frames
        elif nl < start + _SPLIT_MAX_LINE:
            # Short lines, likely many: split in C, then put the newlines back.
            lines = (data[start:] if start else data).split(b"\n")
            rest = lines.pop()
            if max(map(len, lines)) >= limit:
                self._fail_long_line(lines, frames)
            frames += [line + b"\n" for line in lines]
            start = n - len(rest)
        else:
            find = data.find
            while nl >= 0:
                end = nl + 1
                if end - start > limit:
                    self._fail(
                        f"line of {end - start} bytes exceeds max_frame_bytes={limit}", frames
                    )
                frames.append(data[start:end])
                start = end
                nl = find(b"\n", start)
        rest_size = n - start
        if rest_size:
            if rest_size > limit:
                self._fail(
                    f"unterminated line of {rest_size} bytes exceeds max_frame_bytes={limit}",
                    frames,
                )
            buf += memoryview(data)[start:] if start else data
        return frames

    def _fail_long_line(self, lines: list[bytes], frames: list[bytes]) -> NoReturn:
        """Fail on the first line (newline not included in ``lines``) over the limit."""
        limit = self.max_frame_bytes
        for line in lines:
            if len(line) >= limit:
                self._fail(f"line of {len(line) + 1} bytes exceeds max_frame_bytes={limit}", frames)
            frames.append(line + b"\n")
        raise AssertionError("no line over the limit")

    def eof(self) -> list[bytes]:
        if self._stopped is not None:
            self._raise_stopped()
        self._finish()
        if not self._buf:
            return []
        line = bytes(self._buf)
        self._buf.clear()
        return [line]

    @property
    def buffered(self) -> int:
        return len(self._buf)


class LengthPrefixDecoder(Decoder[bytes]):
    """``packet=1, 2 or 4``: a big-endian unsigned length of that many bytes, then
    the payload; the frame is the payload. A declared length over
    ``max_frame_bytes`` raises FrameError as soon as the header is read.
    """

    __slots__ = ("_buf", "_header_size", "_need", "_unpack_from")

    def __init__(
        self, header_size: Literal[1, 2, 4], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        if type(header_size) is not int or header_size not in _HEADER_FORMATS:
            raise ValueError(f"header_size={header_size!r} must be 1, 2 or 4")
        super().__init__(header_size, max_frame_bytes)
        self._header_size: int = header_size
        self._unpack_from: Callable[[bytes | bytearray, int], tuple[int]] = struct.Struct(
            _HEADER_FORMATS[header_size]
        ).unpack_from
        # The partial frame: while _need < 0, the first bytes of a header (fewer
        # than _header_size); otherwise the payload received so far, whose
        # declared length is _need (already checked against the limit).
        self._buf: bytearray = bytearray()
        self._need: int = -1

    def feed(self, data: BytesLike) -> list[bytes]:
        if self._stopped is not None:
            self._raise_stopped()
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[bytes] = []
        pos = 0
        n = len(data)
        buf = self._buf
        if buf or self._need >= 0:
            # Slow path: finish the frame begun in an earlier read.
            if self._need < 0:
                take = self._header_size - len(buf)
                buf += data[:take]
                if len(buf) < self._header_size:
                    return frames
                pos = take
                (self._need,) = self._unpack_from(buf, 0)
                buf.clear()
                if self._need > self.max_frame_bytes:
                    self._fail(self._too_long(self._need))
            missing = self._need - len(buf)
            if n - pos < missing:
                buf += memoryview(data)[pos:]
                return frames
            buf += memoryview(data)[pos : pos + missing]
            frames.append(bytes(buf))
            buf.clear()
            self._need = -1
            pos += missing
        # Fast path: frames within this read are sliced out of it (one copy each;
        # one header parse per frame, no scan).
        header_size = self._header_size
        unpack_from = self._unpack_from
        limit = self.max_frame_bytes
        while n - pos >= header_size:
            (length,) = unpack_from(data, pos)
            if length > limit:
                self._fail(self._too_long(length), frames)
            start = pos + header_size
            pos = start + length
            if pos > n:
                self._need = length
                buf += memoryview(data)[start:]
                return frames
            frames.append(data[start:pos])
        if pos < n:
            buf += data[pos:]
        return frames

    def _too_long(self, length: int) -> str:
        return f"frame of {length} bytes exceeds max_frame_bytes={self.max_frame_bytes}"

    def eof(self) -> list[bytes]:
        if self._stopped is not None:
            self._raise_stopped()
        if self._need >= 0:
            self._fail(f"stream ended inside a frame: {len(self._buf)} of {self._need} bytes")
        if self._buf:
            self._fail(
                f"stream ended inside a frame header: {len(self._buf)} of {self._header_size} bytes"
            )
        self._finish()
        return []

    @property
    def buffered(self) -> int:
        # The header counts too, though only the payload is kept once it is parsed.
        return len(self._buf) + self._header_size if self._need >= 0 else len(self._buf)


# --- what a msgpack object may decode to -----------------------------------------------

DEFAULT_MAX_ELEMENTS: Final = 100_000
"""Values one msgpack object may decode to by default (array items, map keys and values)."""
DEFAULT_MAX_DEPTH: Final = 64
"""How deep arrays and maps may nest in one msgpack object by default."""


class DecodeLimitError(ValueError):
    """A msgpack object decodes to more values, or nests deeper, than its budget allows."""


class PyDecodeBudget:
    """What one msgpack object may decode to: ``max_elements`` values, ``max_depth`` deep.

    The size of an encoding says little about its decoded size: 16 MiB of empty
    arrays (one byte each) are 16 million Python lists, some 1 GiB. msgpack's
    ``Unpacker`` bounds each container's declared length (``max_array_len``,
    ``max_map_len``: :meth:`unpacker_options`), not the total nor the nesting.
    This does the rest from its ``list_hook``/``object_hook``, which the C
    unpacker calls as each array or map completes (children before parents):
    each adds its number of values to the total, and its depth is one more
    than its deepest child's (kept by ``id`` for the object being decoded).
    Past either bound the hook raises :class:`DecodeLimitError` and decoding
    stops, so an object never gets much past twice the budget. Call
    :meth:`reset` after each whole object.
    """

    __slots__ = ("_depths", "elements", "max_depth", "max_elements")

    def __init__(
        self, max_elements: int = DEFAULT_MAX_ELEMENTS, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> None:
        if type(max_elements) is not int or max_elements < 1:
            raise ValueError(f"max_elements={max_elements!r} must be an int >= 1")
        if type(max_depth) is not int or max_depth < 1:
            raise ValueError(f"max_depth={max_depth!r} must be an int >= 1")
        self.max_elements = max_elements
        self.max_depth = max_depth
        self.elements = 0
        self._depths: dict[int, int] = {}

    def reset(self) -> None:
        """Start counting the next object."""
        self.elements = 0
        self._depths.clear()

    def unpacker_options(self, max_bytes: int) -> dict[str, Any]:
        """The keyword arguments of ``msgpack.Unpacker`` that apply this budget to
        objects of at most ``max_bytes`` (each element takes a byte at least, so a
        container can't declare more; msgpack checks both at the header)."""
        most = min(self.max_elements, max_bytes)
        return {
            "list_hook": self._array,
            "object_hook": self._map,
            "max_array_len": most,
            "max_map_len": most,
            "max_str_len": max_bytes,
            "max_bin_len": max_bytes,
            "max_ext_len": max_bytes,
        }

    def _array(self, value: list[Any]) -> list[Any]:
        self._count(len(value), value, value)
        return value

    def _map(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self._count(2 * len(value), value, value.values())  # keys can't be containers
        return value

    def _count(self, n: int, container: object, children: Iterable[Any]) -> None:
        self.elements += n
        if self.elements > self.max_elements:
            raise DecodeLimitError(
                f"object decodes to more than {self.max_elements} values: "
                f"limit max_elements={self.max_elements}"
            )
        depths = self._depths
        depth = 1
        if n:  # in C: the deepest child container (0 for scalars), one item at a time
            depth += max(map(depths.get, map(id, children), itertools.repeat(0, n)))
        if depth > self.max_depth:
            raise DecodeLimitError(
                f"object nests deeper than {self.max_depth}: limit max_depth={self.max_depth}"
            )
        depths[id(container)] = depth


# The native core counts in C (csrc/budget.c): the same rules and messages, the
# depths in a table keyed by address instead of a dict keyed by id().
if TYPE_CHECKING or native is None:
    DecodeBudget = PyDecodeBudget
else:
    native._set_decode_limit_error(DecodeLimitError)

    class DecodeBudget(native.DecodeBudget):
        __doc__ = PyDecodeBudget.__doc__
        __slots__ = ()
        unpacker_options = PyDecodeBudget.unpacker_options


# First byte of a str, bin or ext header -> (header size, bytes of its length field).
_SIZED_HEADERS: Final[dict[int, tuple[int, int]]] = {
    0xC4: (2, 1),  # bin 8
    0xC5: (3, 2),  # bin 16
    0xC6: (5, 4),  # bin 32
    0xD9: (2, 1),  # str 8
    0xDA: (3, 2),  # str 16
    0xDB: (5, 4),  # str 32
    0xC7: (3, 1),  # ext 8 (then the type byte)
    0xC8: (4, 2),  # ext 16
    0xC9: (6, 4),  # ext 32
}
_HEAD_BYTES: Final = 6


def declared_size(head: bytes) -> int | None:
    """The encoded size (header included) that a str, bin or ext header declares, from
    ``head``, the first bytes of an object; None if it is another type or ``head``
    does not hold the length yet.

    msgpack checks the declared length of an array or map at its header, but
    waits for a str/bin/ext payload to arrive whole: this lets a decoder refuse
    an object that could never fit before buffering its bytes.
    """
    sized = _SIZED_HEADERS.get(head[0]) if head else None
    if sized is None:
        return None
    header, width = sized
    if len(head) < 1 + width:
        return None
    return header + int.from_bytes(head[1 : 1 + width], "big")


def head_of_partial(head: bytes, chunk: BytesLike, chunk_start: int, boundary: int) -> bytes:
    """The first bytes (up to 6: the longest str/bin/ext header) of the partial object
    starting at stream offset ``boundary``, after ``chunk`` (fed at stream offset
    ``chunk_start``) left it incomplete; ``head`` is what the previous call returned.

    Called after every feed that ends inside an object, so an object that began
    in an earlier chunk has its head so far in ``head``, continued by this chunk.
    """
    if boundary >= chunk_start:  # it began in this chunk
        i = boundary - chunk_start
        return bytes(chunk[i : i + _HEAD_BYTES])
    if len(head) >= _HEAD_BYTES:
        return head
    return head + bytes(chunk[: _HEAD_BYTES - len(head)])


# What msgpack's unpacker raises on a bad stream: ValueError covers FormatError,
# StackError (nesting too deep), UnicodeDecodeError (raw=False), bad timestamps
# and its own length limits ("... exceeds max_bin_len"); TypeError is an
# unhashable map key (a map or array used as a key); UnpackException the rest.
_MSGPACK_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


class MsgpackDecoder(Decoder[Any]):
    """``packet="msgpack"``: each msgpack object in the stream is a frame.

    The limit is exact: an object whose encoding is longer than
    ``max_frame_bytes`` raises FrameError once that many of its bytes have
    arrived (or as soon as an array/map header declares more elements than
    that many bytes can hold: msgpack checks those at the header), never later
    and never by truncating it (msgpack-python#503). The unpacker's own
    ``max_buffer_size`` is not exact on its own: it counts from where the parser
    stopped, not from the object's first byte. So this decoder counts the bytes
    since the end of the last whole object itself, feeds the unpacker no more
    than the limit allows, and sets ``max_buffer_size`` to the same limit,
    which then can't trigger.

    ``unicode_errors`` is passed to msgpack: "strict" (the default) makes an
    invalid UTF-8 str a FrameError; "surrogateescape" keeps the session alive.
    """

    __slots__ = ("_boundary", "_budget", "_fed", "_head", "_unpacker")

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        unicode_errors: str = "strict",
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__("msgpack", max_frame_bytes)
        self._budget = DecodeBudget(max_elements, max_depth)
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            max_buffer_size=self.max_frame_bytes,
            unicode_errors=unicode_errors,
            **self._budget.unpacker_options(self.max_frame_bytes),
        )
        # Bytes fed to the unpacker so far, and the stream offset just after the
        # last whole object it returned: _fed - _boundary is the partial object,
        # and _head its first bytes (see head_of_partial).
        self._fed = 0
        self._boundary = 0
        self._head = b""

    def feed(self, data: BytesLike) -> list[Any]:
        if self._stopped is not None:
            self._raise_stopped()
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[Any] = []
        append = frames.append
        unpacker = self._unpacker
        reset = self._budget.reset
        tell = unpacker.tell
        limit = self.max_frame_bytes
        fed = self._fed
        boundary = self._boundary
        n = len(data)
        pos = 0
        # Usually one round. More only when this read holds more than the limit:
        # then it is fed in slices, so the partial object never exceeds the limit.
        while pos < n:
            # room > 0: the check at the end of the previous round guarantees it.
            room = limit - (fed - boundary)
            take = n - pos if n - pos <= room else room
            chunk = data if take == n else memoryview(data)[pos : pos + take]
            unpacker.feed(chunk)
            chunk_start = fed
            fed += take
            pos += take
            try:
                for obj in unpacker:
                    append(obj)
                    reset()
                    # Right after an object: tell() is its end. After OutOfData it
                    # may point inside the partial object (a parsed header).
                    boundary = tell()
            except DecodeLimitError as exc:
                self._fed, self._boundary = fed, boundary
                self._fail(f"msgpack object at byte {boundary}: {exc}", frames)
            except _MSGPACK_ERRORS as exc:
                self._fed, self._boundary = fed, boundary
                self._fail(
                    f"malformed msgpack stream at byte {boundary}: {exc!r} "
                    f"(max_frame_bytes={limit}, max_elements={self._budget.max_elements})",
                    frames,
                )
            if fed > boundary:
                self._head = head = head_of_partial(self._head, chunk, chunk_start, boundary)
                size = declared_size(head)
                if size is not None and size > limit:
                    self._fed, self._boundary = fed, boundary
                    self._fail(
                        f"msgpack object of {size} bytes exceeds max_frame_bytes={limit}", frames
                    )
            if fed - boundary >= limit:
                # The partial object already has ``limit`` bytes and needs more.
                self._fed, self._boundary = fed, boundary
                self._fail(
                    f"msgpack object of more than {limit} bytes exceeds max_frame_bytes={limit}",
                    frames,
                )
        self._fed = fed
        self._boundary = boundary
        return frames

    def eof(self) -> list[Any]:
        if self._stopped is not None:
            self._raise_stopped()
        if self._fed > self._boundary:
            self._fail(
                f"stream ended inside a msgpack object after {self._fed - self._boundary} bytes"
            )
        self._finish()
        return []

    @property
    def buffered(self) -> int:
        return self._fed - self._boundary


# --- encoders -------------------------------------------------------------------------


class Encoder(ABC, Generic[FrameT]):
    """Turns one frame into the bytes that carry it. Stateless: safe to share between threads."""

    __slots__ = ("max_frame_bytes", "packet")

    def __init__(self, packet: PacketMode, max_frame_bytes: int) -> None:
        #: The canonical packet mode (None for raw).
        self.packet: PacketMode = packet
        #: The largest frame produced, where the mode has a frame size.
        self.max_frame_bytes: int = _check_max(max_frame_bytes)

    @abstractmethod
    def encode(self, frame: FrameT) -> bytes:
        """Return the bytes that carry ``frame``; FrameError if it can't be framed."""


class RawEncoder(Encoder[BytesLike]):
    """``packet=None``: the bytes as they are (no limit: a write is not a frame)."""

    __slots__ = ()

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__(None, max_frame_bytes)

    def encode(self, frame: BytesLike) -> bytes:
        return frame if type(frame) is bytes else bytes(frame)


class LineEncoder(Encoder[BytesLike]):
    """``packet="line"``: the bytes as they are; the caller supplies each ``b"\\n"``.

    No check: one write may carry several lines (or part of one), as Erlang's
    ``gen_tcp:send`` in line mode does; the peer's decoder enforces its limit.
    """

    __slots__ = ()

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__("line", max_frame_bytes)

    def encode(self, frame: BytesLike) -> bytes:
        return frame if type(frame) is bytes else bytes(frame)


class LengthPrefixEncoder(Encoder[BytesLike]):
    """``packet=1, 2 or 4``: the length header, then the payload.

    FrameError if the payload is over ``max_frame_bytes`` or too long for the
    header (255, 65535, 4294967295 bytes).
    """

    __slots__ = ("_limit", "_pack")

    def __init__(
        self, header_size: Literal[1, 2, 4], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        if type(header_size) is not int or header_size not in _HEADER_FORMATS:
            raise ValueError(f"header_size={header_size!r} must be 1, 2 or 4")
        super().__init__(header_size, max_frame_bytes)
        self._pack: Callable[[int], bytes] = struct.Struct(_HEADER_FORMATS[header_size]).pack
        self._limit: int = min(self.max_frame_bytes, (1 << (8 * header_size)) - 1)

    def encode(self, frame: BytesLike) -> bytes:
        if type(frame) is not bytes:
            frame = bytes(frame)
        n = len(frame)
        if n > self._limit:
            if n > self.max_frame_bytes:
                why = f"exceeds max_frame_bytes={self.max_frame_bytes}"
            else:
                why = f"does not fit a {self.packet}-byte length header (at most {self._limit})"
            raise FrameError(f"frame of {n} bytes {why} (packet={self.packet!r})")
        return self._pack(n) + frame


class MsgpackEncoder(Encoder[Any]):
    """``packet="msgpack"``: ``msgpack.packb(obj)`` (bin type for bytes).

    FrameError if the encoding is over ``max_frame_bytes``; msgpack's own
    TypeError/ValueError for an object it can't pack (a local bug).
    """

    __slots__ = ()

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__("msgpack", max_frame_bytes)

    def encode(self, frame: Any) -> bytes:
        # packb builds a fresh Packer per call: a shared Packer is not thread-safe.
        data: bytes = msgpack.packb(frame, use_bin_type=True)
        if len(data) > self.max_frame_bytes:
            raise FrameError(
                f"msgpack object of {len(data)} bytes exceeds "
                f"max_frame_bytes={self.max_frame_bytes} (packet='msgpack')"
            )
        return data


# --- factories ------------------------------------------------------------------------


@overload
def make_decoder(
    packet: Literal["msgpack"],
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Decoder[Any]: ...
@overload
def make_decoder(
    packet: BytePacketMode,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Decoder[bytes]: ...
@overload
def make_decoder(
    packet: PacketMode,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Decoder[Any]: ...
def make_decoder(
    packet: PacketMode,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Decoder[Any]:
    """Return a fresh decoder for ``packet`` (one per stream). ``max_elements`` and
    ``max_depth`` bound what one msgpack frame may decode to (see DecodeBudget).

    ValueError, naming the valid choices, for an unknown ``packet``; ValueError
    for a ``max_frame_bytes`` that is not an int >= 1.
    """
    mode = _check_packet(packet)
    if mode is None:
        return RawDecoder(max_frame_bytes)
    if mode == "line":
        return LineDecoder(max_frame_bytes)
    if mode == "msgpack":
        return MsgpackDecoder(max_frame_bytes, max_elements=max_elements, max_depth=max_depth)
    return LengthPrefixDecoder(mode, max_frame_bytes)


@overload
def make_encoder(
    packet: Literal["msgpack"], *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Encoder[Any]: ...
@overload
def make_encoder(
    packet: BytePacketMode, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Encoder[BytesLike]: ...
@overload
def make_encoder(
    packet: PacketMode, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Encoder[Any]: ...
def make_encoder(
    packet: PacketMode, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> Encoder[Any]:
    """Return an encoder for ``packet`` (stateless; may be shared).

    ValueError, naming the valid choices, for an unknown ``packet``; ValueError
    for a ``max_frame_bytes`` that is not an int >= 1.
    """
    mode = _check_packet(packet)
    if mode is None:
        return RawEncoder(max_frame_bytes)
    if mode == "line":
        return LineEncoder(max_frame_bytes)
    if mode == "msgpack":
        return MsgpackEncoder(max_frame_bytes)
    return LengthPrefixEncoder(mode, max_frame_bytes)
