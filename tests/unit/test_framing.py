"""Tests for ioserver.framing: every decoder fed the h11 way (whole, byte by byte,
random splits, with trailing bytes), limits at and over the edge, EOF, encoders,
and hypothesis round trips and fuzzing."""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Iterable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioserver.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    PACKET_MODES,
    Decoder,
    FrameError,
    LengthPrefixDecoder,
    LineDecoder,
    MsgpackDecoder,
    make_decoder,
    make_encoder,
)

BYTE_MODES: list[Any] = [None, "line", 1, 2, 4]
ALL_MODES: list[Any] = [*BYTE_MODES, "msgpack"]


# --- helpers --------------------------------------------------------------------------


def splits(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut ``data`` at random points (empty pieces included)."""
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 8)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def feed_all(decoder: Decoder[Any], chunks: Iterable[bytes]) -> list[Any]:
    frames: list[Any] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
    return frames


def tr(packet: Any, data: bytes, expected: list[Any], trailing: bytes = b"", **kw: Any) -> None:
    """h11's tr(): ``data`` decodes to ``expected`` fed whole, byte by byte and in
    random splits; with ``trailing`` (the start of the next frame) appended, the
    same frames come out and the trailing bytes stay buffered."""
    rng = random.Random(repr((packet, data)))
    ways = [
        [data],
        [data[i : i + 1] for i in range(len(data))],
        *(splits(data, rng) for _ in range(10)),
    ]
    for chunks in ways:
        dec = make_decoder(packet, **kw)
        assert feed_all(dec, chunks) == expected, chunks
        assert dec.buffered == 0
        assert dec.eof() == []
    if packet is None:
        return  # raw: there is no "next frame"
    for chunks in ([data + trailing], [*splits(data + trailing, rng)]):
        dec = make_decoder(packet, **kw)
        assert feed_all(dec, chunks) == expected
        assert dec.buffered == len(trailing)


def encode_all(packet: Any, frames: list[Any]) -> bytes:
    enc = make_encoder(packet)
    return b"".join(enc.encode(f) for f in frames)


# --- the h11 way ----------------------------------------------------------------------

LINE_CASES = [
    (b"hello\n", [b"hello\n"]),
    (b"\n", [b"\n"]),
    (b"a\nbb\n\nccc\n", [b"a\n", b"bb\n", b"\n", b"ccc\n"]),
    (b"crlf\r\nkept\r\n", [b"crlf\r\n", b"kept\r\n"]),
    (b"x" * 1000 + b"\ny\n", [b"x" * 1000 + b"\n", b"y\n"]),  # find() path
    (b"y\n" + b"x" * 1000 + b"\n", [b"y\n", b"x" * 1000 + b"\n"]),  # split() path
    (b"\x00\xff\v\x0c\x1c\x85\n", [b"\x00\xff\v\x0c\x1c\x85\n"]),  # not splitlines()
]


@pytest.mark.parametrize(("data", "expected"), LINE_CASES)
def test_line_tr(data: bytes, expected: list[bytes]) -> None:
    tr("line", data, expected, trailing=b"next")


PAYLOADS = [b"", b"a", b"hello", bytes(range(256)) * 3, b"\n\x00\xff" * 50]


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("payload", PAYLOADS, ids=len)
def test_length_prefix_tr(size: int, payload: bytes) -> None:
    if len(payload) >= 255 and size == 1:
        payload = payload[:254]
    header = len(payload).to_bytes(size, "big")
    one_short = (len(payload) + 1).to_bytes(size, "big") + payload
    tr(size, header + payload, [payload], trailing=header[:-1] or one_short)
    tr(size, (header + payload) * 3, [payload] * 3, trailing=one_short)


MSGPACK_OBJECTS: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    1.5,
    "",
    "héllo",
    b"",
    b"\x00" * 300,
    [],
    [1, [2, [3]]],
    {"a": 1, 2: [b"b"], b"k": None},
    "x" * 70000,
]


@pytest.mark.parametrize("obj", MSGPACK_OBJECTS, ids=lambda o: repr(o)[:20])
def test_msgpack_tr(obj: Any) -> None:
    data = msgpack.packb(obj)
    tr("msgpack", data, [obj], trailing=b"\x92\x01")
    tr("msgpack", data * 3, [obj] * 3, trailing=data[:-1] if len(data) > 1 else b"\x91")


def test_raw_tr_and_no_copy() -> None:
    """Raw mode delivers each non-empty read as is, the same object when it is bytes."""
    data = b"any\nbytes\x00"
    dec = make_decoder(None)
    assert dec.feed(data)[0] is data
    assert dec.feed(b"") == []
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        dec = make_decoder("raw")
        assert b"".join(feed_all(dec, chunks)) == data
        assert all(chunks) and len(feed_all(make_decoder(None), chunks)) == len(chunks)


def test_line_single_line_read_is_not_copied() -> None:
    data = b"one line\n"
    assert make_decoder("line").feed(data)[0] is data


@pytest.mark.parametrize("packet", BYTE_MODES)
def test_bytearray_and_memoryview_inputs_are_copied(packet: Any) -> None:
    """A caller may reuse its read buffer: frames never alias it."""
    payload = b"payload\n"
    wire = make_encoder(packet).encode(payload)
    buf = bytearray(wire)
    dec = make_decoder(packet)
    frames = dec.feed(memoryview(buf)) if packet in (1, 2) else dec.feed(buf)
    buf[:] = b"\xee" * len(buf)
    assert frames == [payload]
    assert all(type(f) is bytes for f in frames)


# --- many frames, frames across feeds -------------------------------------------------


@pytest.mark.parametrize("packet", ["line", 1, 2, 4, "msgpack"])
def test_many_frames_in_one_feed(packet: Any) -> None:
    frames = [b"frame %d" % i for i in range(5000)]
    if packet == "line":
        frames = [f + b"\n" for f in frames]
    data = encode_all(packet, frames)
    dec = make_decoder(packet)
    assert dec.feed(data) == frames
    assert dec.buffered == 0


@pytest.mark.parametrize("packet", ["line", 1, 2, 4, "msgpack"])
def test_large_frame_across_feeds(packet: Any) -> None:
    """A frame spanning reads comes out only once whole; the rest stays buffered."""
    big = (bytes(range(256)) * 200).replace(b"\n", b"")
    big = big[:255] if packet == 1 else big + b"\n" if packet == "line" else big
    first = len(encode_all(packet, [big]))
    data = encode_all(packet, [big, big])
    dec = make_decoder(packet)
    assert dec.feed(data[:100]) == []
    assert dec.feed(data[100 : first - 1]) == []
    assert dec.buffered == first - 1
    assert dec.feed(data[first - 1 :]) == [big, big]
    assert dec.buffered == 0


def test_line_trickled_bytes_are_buffered_compactly() -> None:
    dec = LineDecoder(max_frame_bytes=100)
    for _ in range(99):
        assert dec.feed(b"z") == []
    assert dec.buffered == 99
    assert dec.feed(b"\nrest") == [b"z" * 99 + b"\n"]
    assert dec.buffered == 4
    assert dec.eof() == [b"rest"]


# --- limits ---------------------------------------------------------------------------

LIMIT = 1000


def test_line_limit_exact_passes_one_over_raises() -> None:
    ok = b"x" * (LIMIT - 1) + b"\n"
    tr("line", ok, [ok], max_frame_bytes=LIMIT)
    tr("line", b"a\n" + ok + b"b\n", [b"a\n", ok, b"b\n"], max_frame_bytes=LIMIT)
    over = b"x" * LIMIT + b"\n"
    for chunks in ([over], [over[:10], over[10:]], [b"a\n" + over], [b"a\n" * 300 + over]):
        dec = make_decoder("line", max_frame_bytes=LIMIT)
        with pytest.raises(
            FrameError, match=rf"line of {LIMIT + 1} bytes .*max_frame_bytes={LIMIT}"
        ):
            feed_all(dec, chunks)


@pytest.mark.parametrize("prefix", [b"", b"a\n", b"a\n" * 300])
def test_line_limit_fails_early_frames_before_error_are_kept(prefix: bytes) -> None:
    """An unterminated line over the limit raises without waiting for its newline;
    FrameError.frames holds the lines the same read completed before it."""
    dec = make_decoder("line", max_frame_bytes=LIMIT)
    assert dec.feed(b"y" * LIMIT) == []  # exactly the limit: may still be a final line
    with pytest.raises(FrameError, match=rf"{LIMIT + 1} bytes exceeds max_frame_bytes={LIMIT}"):
        dec.feed(b"y")
    dec = make_decoder("line", max_frame_bytes=LIMIT)
    with pytest.raises(FrameError, match=f"max_frame_bytes={LIMIT}") as info:
        dec.feed(prefix + b"y" * (LIMIT + 1))
    assert info.value.frames == prefix.splitlines(keepends=True)
    assert "packet='line'" in str(info.value)
    dec = make_decoder("line", max_frame_bytes=LIMIT)
    with pytest.raises(FrameError) as info:
        dec.feed(prefix + b"y" * (LIMIT * 2) + b"\n")
    assert info.value.frames == prefix.splitlines(keepends=True)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_length_prefix_limit(size: int) -> None:
    limit = 200
    ok = b"p" * limit
    tr(size, len(ok).to_bytes(size, "big") + ok, [ok], max_frame_bytes=limit)
    # One over: raises on the header alone, before any payload arrives.
    dec = make_decoder(size, max_frame_bytes=limit)
    header = (limit + 1).to_bytes(size, "big")
    assert dec.feed(header[:-1]) == []
    with pytest.raises(FrameError) as info:
        dec.feed(header[-1:])
    assert str(info.value) == (
        f"frame of {limit + 1} bytes exceeds max_frame_bytes={limit} (packet={size})"
    )
    dec = make_decoder(size, max_frame_bytes=limit)
    with pytest.raises(FrameError, match=f"max_frame_bytes={limit}") as info:
        dec.feed(b"\x00" * size * 3 + header)
    assert info.value.frames == [b"", b"", b""]


def test_length_prefix_largest_header_value() -> None:
    dec = make_decoder(4, max_frame_bytes=10)
    with pytest.raises(FrameError, match="frame of 4294967295 bytes"):
        dec.feed(b"\xff\xff\xff\xff")


def test_msgpack_limit_exact_passes_one_over_raises() -> None:
    ok = msgpack.packb(b"b" * (LIMIT - 3))  # bin16: 3-byte header
    assert len(ok) == LIMIT
    tr("msgpack", ok, [b"b" * (LIMIT - 3)], max_frame_bytes=LIMIT)
    over = msgpack.packb(b"b" * (LIMIT - 2))
    with pytest.raises(FrameError, match=f"max_frame_bytes={LIMIT}"):
        make_decoder("msgpack", max_frame_bytes=LIMIT).feed(over)


def test_msgpack_limit_counts_the_whole_object() -> None:
    """An array of small items over the limit raises once the limit is reached
    (msgpack's max_buffer_size alone would let it grow: msgpack-python#503)."""
    items = [200] * 600  # 2 bytes each
    data = msgpack.packb(items)
    assert len(data) == 1203
    ok = msgpack.packb(items[: (LIMIT - 3) // 2])
    assert len(ok) == LIMIT - 1
    tr("msgpack", ok, [items[: (LIMIT - 3) // 2]], max_frame_bytes=LIMIT - 1)
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        dec = make_decoder("msgpack", max_frame_bytes=LIMIT)
        with pytest.raises(FrameError, match=f"more than {LIMIT} bytes .*max_frame_bytes={LIMIT}"):
            feed_all(dec, chunks)
        assert dec.buffered <= LIMIT


def test_msgpack_oversized_bin_raises_at_the_limit() -> None:
    """A bin nested in an array is checked once ``limit`` of its bytes have arrived."""
    dec = make_decoder("msgpack", max_frame_bytes=LIMIT)
    assert dec.feed(b"\x91\xc6" + struct.pack(">I", 10**6)) == []  # [bin32 ...
    assert dec.feed(b"b" * (LIMIT - 7)) == []
    with pytest.raises(FrameError, match=f"more than {LIMIT} bytes .*max_frame_bytes={LIMIT}"):
        dec.feed(b"b" * 10**5)
    assert dec.buffered == LIMIT


@pytest.mark.parametrize(
    "header",
    [
        b"\xc6" + struct.pack(">I", 10**6),  # bin32
        b"\xdb" + struct.pack(">I", 10**6),  # str32
        b"\xc9" + struct.pack(">I", 10**6) + b"\x01",  # ext32
        b"\xc5" + struct.pack(">H", LIMIT),  # bin16: LIMIT + 3 bytes in all
    ],
)
def test_msgpack_oversized_str_bin_ext_refused_at_the_header(header: bytes) -> None:
    """A frame that starts with a str/bin/ext header declaring more than the limit is
    refused at the header, however its bytes are split, before its payload arrives."""
    for split in range(1, len(header) + 1):
        dec = make_decoder("msgpack", max_frame_bytes=LIMIT)
        assert dec.feed(b"\x01\x02") == [1, 2]
        with pytest.raises(FrameError, match=f"exceeds max_frame_bytes={LIMIT}"):
            for i in range(0, len(header), split):
                dec.feed(header[i : i + split])
        assert dec.buffered <= len(header)  # nothing of the payload


def test_msgpack_str_within_the_limit_still_decodes_in_pieces() -> None:
    frame = msgpack.packb("x" * (LIMIT - 10))
    dec = make_decoder("msgpack", max_frame_bytes=LIMIT)
    got = [obj for i in range(0, len(frame), 7) for obj in dec.feed(frame[i : i + 7])]
    assert got == ["x" * (LIMIT - 10)]


def test_msgpack_decoded_size_is_bounded() -> None:
    """Empty arrays are one byte each: a frame of them is bounded by max_elements
    (in total, however nested) and max_depth, not only by its size."""
    dec = MsgpackDecoder(1 << 20, max_elements=1000)
    assert dec.feed(msgpack.packb([[]] * 500)) == [[[]] * 500]  # the budget is per object
    assert dec.feed(msgpack.packb([[]] * 500)) == [[[]] * 500]
    with pytest.raises(FrameError, match="limit max_elements=1000"):
        dec.feed(msgpack.packb([[[]] * 600, [[]] * 600]))
    dec = MsgpackDecoder(1 << 20, max_elements=1000)
    with pytest.raises(FrameError, match="max_array_len"):  # refused at the header
        dec.feed(b"\xdc" + struct.pack(">H", 1001))
    dec = MsgpackDecoder(1 << 20, max_depth=5)
    nested: Any = [1]
    for _ in range(2):  # each round nests two deeper: a map in an array
        nested = [nested, {"k": nested}]
    assert dec.feed(msgpack.packb(nested)) == [nested]
    with pytest.raises(FrameError, match="limit max_depth=5"):
        dec.feed(msgpack.packb([nested]))


def test_msgpack_array_header_over_limit_raises_on_header() -> None:
    """More declared elements than bytes allowed raises before any is read (and
    before msgpack preallocates the list)."""
    dec = make_decoder("msgpack", max_frame_bytes=LIMIT)
    with pytest.raises(FrameError, match=f"exceeds max_array_len.*max_frame_bytes={LIMIT}"):
        dec.feed(b"\xdd" + struct.pack(">I", 10**8))


def test_msgpack_read_larger_than_limit_of_small_objects() -> None:
    """A read holding more than the limit in small objects is fine: fed in slices."""
    objs = [{"i": i, "s": "x" * 20} for i in range(500)]
    data = encode_all("msgpack", objs)
    assert len(data) > 10 * 100
    dec = make_decoder("msgpack", max_frame_bytes=100)
    assert dec.feed(data) == objs
    with pytest.raises(FrameError, match="max_frame_bytes=100") as info:
        dec.feed(encode_all("msgpack", objs[:2]) + msgpack.packb("y" * 200))
    assert info.value.frames == objs[:2]


# --- EOF and the states after it ------------------------------------------------------


def test_eof_behaviour() -> None:
    assert make_decoder(None).eof() == []
    dec = make_decoder("line")
    assert dec.feed(b"a\nlast") == [b"a\n"]
    assert dec.eof() == [b"last"]
    for packet, partial, what in [
        (1, b"\x05ab", "stream ended inside a frame: 2 of 5 bytes"),
        (2, b"\x00", "stream ended inside a frame header: 1 of 2 bytes"),
        (4, b"\x00\x00\x00\x03", "stream ended inside a frame: 0 of 3 bytes"),
        ("msgpack", b"\x92\x01", "stream ended inside a msgpack object after 2 bytes"),
    ]:
        dec = make_decoder(packet)
        assert dec.feed(partial) == []
        with pytest.raises(FrameError, match=what):
            dec.eof()


@pytest.mark.parametrize("packet", PACKET_MODES)
def test_calls_after_eof_are_bugs(packet: Any) -> None:
    dec = make_decoder(packet)
    assert dec.eof() == []
    with pytest.raises(RuntimeError, match="after eof"):
        dec.feed(b"x")
    with pytest.raises(RuntimeError, match="after eof"):
        dec.eof()


@pytest.mark.parametrize("packet", ["line", 1, "msgpack"])
def test_decoder_stays_failed(packet: Any) -> None:
    """After a FrameError the stream can't be re-synced: every later call raises."""
    dec = make_decoder(packet, max_frame_bytes=4)
    bad = {"line": b"toolong\n", 1: b"\x09", "msgpack": b"\xc1"}[packet]
    with pytest.raises(FrameError):
        dec.feed(bad)
    with pytest.raises(FrameError, match="failed earlier"):
        dec.feed(b"\x00\n")
    with pytest.raises(FrameError, match="failed earlier"):
        dec.eof()


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc1",  # never-used byte
        b"\x81\x91\x01\x02",  # map with an array key: unhashable
        b"\xa1\xff",  # invalid UTF-8 str
        b"\xd4\xff\x00",  # timestamp of the wrong length
        b"\x91" * 2000 + b"\x01",  # nested too deep
    ],
)
def test_msgpack_malformed_stream(bad: bytes) -> None:
    dec = make_decoder("msgpack")
    with pytest.raises(FrameError, match="malformed msgpack stream at byte 1") as info:
        dec.feed(b"\x07" + bad)
    assert info.value.frames == [7]


def test_msgpack_unicode_errors_option() -> None:
    dec = MsgpackDecoder(unicode_errors="surrogateescape")
    assert dec.feed(b"\xa1\xff\x01") == ["\udcff", 1]


# --- encoders -------------------------------------------------------------------------


def test_encoders() -> None:
    assert make_encoder(None).encode(b"as is") == b"as is"
    assert make_encoder("line").encode(bytearray(b"two\nlines\n")) == b"two\nlines\n"
    assert make_encoder(1).encode(b"ab") == b"\x02ab"
    assert make_encoder(2).encode(memoryview(b"ab")) == b"\x00\x02ab"
    assert make_encoder(4).encode(b"") == b"\x00\x00\x00\x00"
    assert make_encoder("msgpack").encode({"a": b"b"}) == msgpack.packb({"a": b"b"})


def test_encoder_limits() -> None:
    assert make_encoder(1).encode(b"x" * 255)[0] == 255
    with pytest.raises(FrameError, match=r"256 bytes does not fit a 1-byte length header \(at"):
        make_encoder(1).encode(b"x" * 256)
    with pytest.raises(FrameError, match="65536 bytes does not fit a 2-byte"):
        make_encoder(2).encode(b"x" * 65536)
    enc = make_encoder(4, max_frame_bytes=LIMIT)
    assert len(enc.encode(b"x" * LIMIT)) == LIMIT + 4
    with pytest.raises(FrameError) as info:
        enc.encode(b"x" * (LIMIT + 1))
    assert (
        str(info.value) == f"frame of {LIMIT + 1} bytes exceeds max_frame_bytes={LIMIT} (packet=4)"
    )
    enc = make_encoder("msgpack", max_frame_bytes=LIMIT)
    assert len(enc.encode(b"b" * (LIMIT - 3))) == LIMIT
    with pytest.raises(FrameError, match=f"{LIMIT + 1} bytes exceeds max_frame_bytes={LIMIT}"):
        enc.encode(b"b" * (LIMIT - 2))


# --- factories ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 3, 8, True, 1.0, "1", "lines", b"line", "RAW"])
def test_unknown_packet_is_refused(bad: Any) -> None:
    for factory in (make_decoder, make_encoder):
        with pytest.raises(ValueError, match="valid choices: None, 'raw', 'line', 1, 2, 4"):
            factory(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.5, None, True])
def test_bad_max_frame_bytes_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        make_decoder("line", max_frame_bytes=bad)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        make_encoder(2, max_frame_bytes=bad)


def test_factories() -> None:
    assert make_decoder("raw").packet is None
    assert make_encoder("raw").packet is None
    assert make_decoder("line").max_frame_bytes == DEFAULT_MAX_FRAME_BYTES == 16 * 1024 * 1024
    assert isinstance(make_decoder(2), LengthPrefixDecoder)
    with pytest.raises(ValueError, match="header_size"):
        LengthPrefixDecoder(3)  # type: ignore[arg-type]


# --- properties -----------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(max_size=5) | st.integers(-5, 5) | st.binary(max_size=5), inner, max_size=4
        )
    ),
    max_leaves=10,
)

cut_points = st.lists(st.integers(min_value=0, max_value=10**6), max_size=10)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def payload_strategy(packet: Any) -> st.SearchStrategy[list[Any]]:
    if packet == "msgpack":
        return st.lists(msgpack_values, max_size=10)
    if packet == "line":
        return st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"))
    return st.lists(st.binary(max_size=300 if packet != 1 else 255), max_size=10)


@pytest.mark.parametrize("packet", ALL_MODES)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), points=cut_points)
def test_round_trip(packet: Any, data: st.DataObject, points: list[int]) -> None:
    """encode all, concatenate, split anywhere, decode: the same list of frames."""
    payloads = data.draw(payload_strategy(packet))
    wire = encode_all(packet, payloads)
    dec = make_decoder(packet)
    frames = feed_all(dec, cut(wire, points))
    frames += dec.eof()
    if packet is None:
        assert b"".join(frames) == b"".join(payloads)
    else:
        assert frames == payloads


@pytest.mark.parametrize("packet", ALL_MODES)
@settings(max_examples=200, deadline=None)
@given(
    junk=st.binary(max_size=200),
    points=cut_points,
    limit=st.sampled_from([1, 2, 7, 64, DEFAULT_MAX_FRAME_BYTES]),
)
def test_fuzz_gives_frames_or_frame_error(
    packet: Any, junk: bytes, points: list[int], limit: int
) -> None:
    """Garbage in: frames or FrameError, never another exception, and nothing over the limit."""
    dec = make_decoder(packet, max_frame_bytes=limit)
    frames: list[Any] = []
    try:
        frames = feed_all(dec, cut(junk, points))
        frames += dec.eof()
    except FrameError:
        return
    if packet in ("line", 1, 2, 4):
        assert all(len(f) <= limit for f in frames)
    if packet in (None, "line"):
        assert b"".join(frames) == junk


def check_same_everywhere(packet: Any, wire: bytes, limit: int) -> None:
    """Outcome (frames, or the error) does not depend on how the bytes are cut."""

    def run(chunks: list[bytes]) -> Any:
        dec = make_decoder(packet, max_frame_bytes=limit)
        try:
            return feed_all(dec, chunks) + dec.eof()
        except FrameError:
            return FrameError

    expected = run([wire])
    assert run([wire[i : i + 1] for i in range(len(wire))]) == expected


@pytest.mark.parametrize("packet", ["line", 1, 2, 4, "msgpack"])
@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=100), limit=st.integers(min_value=1, max_value=20))
def test_fuzz_split_independent(packet: Any, junk: bytes, limit: int) -> None:
    check_same_everywhere(packet, junk, limit)
