"""Port: the handle client code holds on an I/O resource (a socket, a process, a timer...).

Its receive side *is* its inbox channel: ``recv``, ``try_recv``, ``arecv``,
iteration and ``select`` work on a port exactly as on a Channel, with no
special case anywhere. Its send side is a write command submitted to the loop
thread (``requests.submit``); sends are fire-and-forget, so many writes cost one
wakeup.

Write backpressure (lesson 6 of docs/architecture.md, Erlang's busy port): a
port is *busy* while the bytes submitted but not yet handed to the transport,
plus the transport's own buffer, exceed ``high_water``. ``send`` blocks while the port is busy (or
raises TimeoutError given a timeout; ``nowait=True`` returns False instead,
Erlang's ``nosuspend``), and resumes when the loop has drained it below
``low_water`` (half of high by default: ZeroMQ's ``(hwm+1)/2``, which avoids
lock-step wakeups).

Who writes what, without a lock shared with the loop thread:
  * ``_submitted`` (bytes): clients only, in ``_queue_write`` (under ``_send_lock``;
    the native core's is one C call under the GIL);
  * ``_processed`` (bytes handed to the transport) and ``_transport_busy``:
    the loop thread only;
  * ``_writers``: parked writers' handles; a writer appends itself, then
    re-checks ``busy`` (and aborts its own handle if no longer busy); the loop
    updates ``_processed`` then wakes every parked writer. Either the writer's
    re-check sees the progress or the loop sees the writer ([1] deque
    operations and attribute reads/writes are atomic).

Fork: a port inherited by a child of ``os.fork`` is closed in the child (its
I/O stays the parent's; see server.py): ``send`` raises PortClosed, the next
message is ``Closed(port, "forked")`` (messages it had buffered belong to the
parent and are dropped), then its own inbox is closed.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

from ._core import native
from .channel import NO_ONE, Channel, ChannelClosed, Closing
from .requests import ServerStopped
from .sched import (
    AsyncTaskLike,
    AsyncWakeup,
    TaskLike,
    ThreadWakeup,
    WakeupHandle,
    foreign_async_task,
    green_task,
)

if TYPE_CHECKING:
    from .messages import Message

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_INBOX_CAPACITY",
    "READ_ONLY_KINDS",
    "Port",
    "PortClosed",
    "ReadOnlyPort",
    "describe",
    "encode_for_send",
    "not_writable",
]

#: Messages a port's own inbox holds before the port stops reading (and the
#: peer feels TCP backpressure). Reading resumes below half of it.
DEFAULT_INBOX_CAPACITY = 64
#: Unsent bytes above which ``send`` blocks (Erlang's busy limit is 8 KiB;
#: larger batches make more of each wakeup on a 2-core machine).
DEFAULT_HIGH_WATER = 64 * 1024

_ids = itertools.count(1)


class PortClosed(ConnectionError):
    """Raised by ``send`` on a port that was closed (by us, the peer, or the server)."""


class Port(Closing):
    """An I/O resource whose events arrive as messages on its inbox channel.

    Receive with ``recv``/``arecv``/``for msg in port``/``select``; write with
    ``send``; end with ``close()``, which leads to exactly one ``Closed``
    message, the last one. A port dropped unclosed is closed when it is
    garbage-collected, with a ResourceWarning (as an unclosed file); its inbox,
    own or shared, keeps it alive, so it lives while its messages can be received.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_driver",
        "_idle_callbacks",
        "_inbox",
        "_io",
        "_own_inbox",
        "_pending",
        "_processed",
        "_requests",
        "_send_lock",
        "_submitted",
        "_transport_busy",
        "_writers",
        "high_water",
        "id",
        "info_extra",
        "kind",
        "low_water",
    )

    def __init__(
        self,
        io: Any,
        kind: str,
        inbox: Channel[Any] | None = None,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int | None = None,
    ) -> None:
        if inbox is not None and inbox.capacity == 0:
            raise ValueError("a port's inbox cannot be a rendezvous channel (capacity=0)")
        self._io = io
        self._requests = io._requests
        self.kind = kind
        #: A number unique within this process, for logs and ``info()``.
        self.id = next(_ids)
        self._own_inbox = inbox is None
        self._inbox: Channel[Any] = Channel(DEFAULT_INBOX_CAPACITY) if inbox is None else inbox
        self._inbox._fed_by_loop = True  # its receivers yield once before parking
        # Whoever holds the inbox can receive our messages: it keeps us alive.
        if inbox is None:
            self._inbox._anchor = self
        else:
            anchor(inbox, self)
        # The driver's undelivered messages (drivers/base.py): kept here, not on the
        # loop side, because they carry ``.port``. NO_ONE until the first one.
        self._pending: deque[Message] = NO_ONE
        self._driver: Any = None  # set on the loop thread when the resource opens
        self._closed = False  # set by close() (client side) or when Closed is delivered
        self.high_water = high_water
        self.low_water = high_water // 2 if low_water is None else low_water
        self._send_lock = threading.Lock()
        self._submitted = 0
        self._processed = 0
        self._transport_busy = False
        # Parked writers; NO_ONE until a send first blocks (created under
        # _send_lock, so two senders can't each make one).
        self._writers: deque[WakeupHandle] = NO_ONE
        # Loop thread only: called once when the transport stops being busy
        # (the daemon resumes reading a client that wrote into this port).
        self._idle_callbacks: list[Callable[[], object]] | None = None
        #: Extra fields for ``info()`` (address, pid, ...), set by the driver.
        self.info_extra: dict[str, Any] = {}

    def __repr__(self) -> str:
        """``<Port 3 tcp 127.0.0.1:5000 -> 127.0.0.1:41822>``: id, kind, then what
        the port is on (addresses, path, pid...), and `` closed`` once closed."""
        return f"<Port {self.id} {self.kind}{describe(self.info_extra)}{self._closed_text()}>"

    def _closed_text(self) -> str:
        return " closed" if self._closed else ""

    def __del__(self) -> None:
        """Collected unclosed: nobody can receive our messages any more (the loop
        holds us only weakly, our inbox keeps us alive). Warn, as an unclosed file
        does, and have the loop free the resource. Any thread, maybe inside the
        GC: it only submits (never blocks)."""
        # getattr: __init__ may have raised before setting the fields.
        driver = getattr(self, "_driver", None)
        if getattr(self, "_closed", True) or driver is None:
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)
        try:
            self._requests.submit(driver._port_collected)
        except ServerStopped:
            pass  # the stop closed (or will close) everything
        except Exception:  # at interpreter exit modules may be half torn down
            pass

    # -- receive side: the inbox -----------------------------------------------------

    @property
    def address(self) -> Any:
        """The local address (host, port) or path, once open (None for other kinds)."""
        return self.info_extra.get("address")

    @property
    def peer(self) -> Any:
        """The remote address of a connection (None for other kinds)."""
        return self.info_extra.get("peer")

    @property
    def inbox(self) -> Channel[Any]:
        """The channel this port delivers into (its own, or the shared one given)."""
        return self._inbox

    # ChannelClosed names the port, as select does: the inbox is an implementation
    # detail the user never touched (try costs nothing until it raises).

    def recv(self, timeout: float | None = None) -> Message:
        """Receive the next message from the inbox (see ``Channel.recv``); raises
        ChannelClosed (naming this port) once the inbox is closed and drained."""
        try:
            return self._inbox.recv(timeout)  # type: ignore[no-any-return]
        except ChannelClosed:
            raise ChannelClosed(self) from None

    def try_recv(self) -> Message:
        """Receive without blocking (see ``Channel.try_recv``)."""
        try:
            return self._inbox.try_recv()  # type: ignore[no-any-return]
        except ChannelClosed:
            raise ChannelClosed(self) from None

    async def arecv(self, timeout: float | None = None) -> Message:
        """Receive from a coroutine (see ``Channel.arecv``)."""
        try:
            return await self._inbox.arecv(timeout)  # type: ignore[no-any-return]
        except ChannelClosed:
            raise ChannelClosed(self) from None

    def __iter__(self) -> Iterator[Message]:
        """Messages until the inbox is closed; a port's own inbox closes after ``Closed``."""
        return iter(self._inbox)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._inbox.__aiter__()

    def __len__(self) -> int:
        return len(self._inbox)

    # The select protocol (select.py): a port is its inbox.
    def _sel_try_recv(self) -> Any:
        return self._inbox._sel_try_recv()

    def _sel_register_recv(self, handle: WakeupHandle, index: int) -> bool:
        return self._inbox._sel_register_recv(handle, index)

    def _sel_unregister(self, handle: WakeupHandle) -> None:
        self._inbox._sel_unregister(handle)

    def _sel_unrecv(self, value: Any) -> None:
        self._inbox._sel_unrecv(value)

    def _sel_release_slot(self) -> None:
        self._inbox._sel_release_slot()

    # -- send side: commands to the loop ---------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether ``send`` would block now (more than ``high_water`` bytes unsent)."""
        return self._transport_busy or self._submitted - self._processed > self.high_water

    @property
    def closed(self) -> bool:
        """Whether the port was closed (a hint; the ``Closed`` message is the truth)."""
        return self._closed

    def send(self, data: Any, *, timeout: float | None = None, nowait: bool = False) -> bool:
        """Write ``data``: bytes-like (bytes, bytearray, memoryview); with
        ``packet="msgpack"`` any object msgpack encodes; on a UDP port also a
        ``(data, addr)`` tuple. Anything else raises TypeError at once, naming
        what the port takes; a refused send changes nothing.

        Fire-and-forget: it returns once the write is queued for the loop;
        I/O failures arrive later as ``Error`` then ``Closed``. While the port is
        busy it blocks (TimeoutError after ``timeout``; nothing was sent), or
        with ``nowait=True`` returns False at once. Returns True when queued.
        Raises PortClosed on a closed port and ServerStopped after the server
        stopped.
        """
        if self._closed:
            raise PortClosed(f"{self!r} is closed")
        write: Callable[[Any, int], None]
        if type(data) is bytes:  # the fast path; anything else is checked here, now
            n = len(data)
            write = self._write_on_loop
        else:
            write, data, n = self._check_send(data)
        if self._transport_busy or self._submitted - self._processed > self.high_water:
            if nowait:
                return False
            self._wait_not_busy(timeout)
        self._queue_write(write, data, n)
        return True

    async def asend(self, data: Any, *, timeout: float | None = None) -> bool:
        """``send`` for coroutines: waits (without blocking the loop) while busy.
        In a trio task it is a checkpoint (sched/trio.py): cancelled before it
        starts, nothing is written; after the write it yields, shielded."""
        trio_task: Any = foreign_async_task()
        if trio_task is not None and not getattr(trio_task, "checkpoints", False):
            trio_task = None  # a using_task scheduler: no checkpoints
        if trio_task is not None:
            await trio_task.checkpoint_if_cancelled()
        if self._closed:
            raise PortClosed(f"{self!r} is closed")
        write: Callable[[Any, int], None]
        if type(data) is bytes:
            n = len(data)
            write = self._write_on_loop
        else:
            write, data, n = self._check_send(data)
        if self.busy:
            await self._await_not_busy(timeout)
        self._queue_write(write, data, n)
        if trio_task is not None:
            await trio_task.cancel_shielded_checkpoint()
        return True

    def _queue_write(self, write: Callable[[Any, int], None], data: Any, n: int) -> None:
        """Count ``n`` bytes as submitted and queue ``write(data, n)`` for the loop:
        one step for every sender of this port (the native core's is one C call
        under the GIL, without the lock)."""
        with self._send_lock:
            self._submitted += n
            self._requests.submit(write, data, n)

    def _check_send(self, data: Any) -> tuple[Callable[[Any, int], None], Any, int]:
        """``send``'s slow path, on the caller's thread: check ``data`` against
        what the port's ``packet`` mode accepts, so a wrong type raises TypeError
        here, before anything is counted or queued (rather than killing the port
        later on the loop). Returns the loop-side write, what it writes, and the
        byte count for the busy accounting.

        A ``packet="msgpack"`` port's object is encoded here (the encoder is
        stateless): an object msgpack can't pack raises now, an oversized one
        raises FrameError now, and the loop writes the bytes as they are."""
        driver = self._driver
        packet = getattr(driver, "packet", None)
        if packet == "msgpack":
            payload = encode_for_send(self, driver.encoder.encode, data)
            return self._write_encoded_on_loop, payload, len(payload)
        if isinstance(data, _BYTES_LIKE):
            return self._write_on_loop, data, _nbytes(data)
        if self.kind == "udp":
            if type(data) is tuple and len(data) == 2 and isinstance(data[0], _BYTES_LIKE):
                return self._write_on_loop, data, _nbytes(data[0])
            accepts = "bytes-like data (bytes, bytearray, memoryview) or a (data, addr) tuple"
        else:
            accepts = "bytes-like data (bytes, bytearray, memoryview)"
        got = type(data).__name__
        if self.kind == "udp" and type(data) is tuple and len(data) == 2:
            got = f"a ({type(data[0]).__name__}, addr) tuple"
            data = data[0]
        hint = "; encode a str first (text.encode())" if isinstance(data, str) else ""
        raise TypeError(f"send on {self!r} (packet={packet!r}) takes {accepts}, not {got}{hint}")

    def _wait_not_busy(self, timeout: float | None) -> None:
        from time import monotonic

        task = green_task()
        if task is not None:  # a greenlet (or a using_task scheduler) parks alone
            _wait_not_busy_in(self, task, timeout)
            return
        deadline = None if timeout is None else monotonic() + timeout
        while self.busy:
            if self._closed:
                raise PortClosed(f"{self!r} is closed")
            handle = ThreadWakeup()
            self._add_writer(handle)
            if not self.busy or self._closed:  # re-check after registering ([1])
                handle.abort()
                continue
            left = None if deadline is None else deadline - monotonic()
            try:
                woken = handle.park(left)  # park(<= 0) polls; False: we hold the claim
            except BaseException:
                handle.abort()
                self._forget_writer(handle)
                raise
            if not woken:
                self._forget_writer(handle)  # or retries against a stuck peer pile up
                raise TimeoutError(f"{self!r} stayed busy past the timeout")

    async def _await_not_busy(self, timeout: float | None) -> None:
        from time import monotonic

        atask = foreign_async_task()
        if atask is not None:  # a trio task (or a using_task scheduler)
            await _await_not_busy_in(self, atask, timeout)
            return
        deadline = None if timeout is None else monotonic() + timeout
        while self.busy:
            if self._closed:
                raise PortClosed(f"{self!r} is closed")
            handle = AsyncWakeup()
            self._add_writer(handle)
            if not self.busy or self._closed:
                if not handle.claim():
                    await handle.park()  # a waker got there first: take its wakeup
                continue
            left = None if deadline is None else deadline - monotonic()
            try:
                woken = await handle.park(left)  # park(<= 0) polls, as park(None) waits
            except BaseException:
                self._forget_writer(handle)
                raise
            if not woken:
                self._forget_writer(handle)
                raise TimeoutError(f"{self!r} stayed busy past the timeout")

    def _add_writer(self, handle: WakeupHandle) -> None:
        writers = self._writers
        if writers is NO_ONE:
            with self._send_lock:
                if self._writers is NO_ONE:
                    self._writers = deque()
            writers = self._writers
        writers.append(handle)

    def _forget_writer(self, handle: WakeupHandle) -> None:
        """Take a writer that gave up out of ``_writers`` (one atomic deque.remove;
        handles compare by identity, so no Python code runs inside it)."""
        try:
            self._writers.remove(handle)
        except ValueError:
            pass  # the loop popped it meanwhile

    def _write_on_loop(self, data: Any, n: int) -> None:
        """Loop thread: hand a write to the driver, then update the accounting."""
        driver = self._driver
        if driver is not None:
            driver.write(data)
        self._processed += n
        if self._writers:
            self._wake_writers()

    def _write_encoded_on_loop(self, payload: bytes, n: int) -> None:
        """Loop thread: write bytes ``_check_send`` already encoded for the port's mode."""
        driver = self._driver
        if driver is not None:
            driver.write_encoded(payload)
        self._processed += n
        if self._writers:
            self._wake_writers()

    def _wake_writers(self) -> None:
        """Loop thread: wake parked writers if the port is no longer busy."""
        if self._transport_busy or self._submitted - self._processed > self.low_water:
            return
        writers = self._writers
        while writers:
            writers.popleft().wake()

    def _set_transport_busy(self, busy: bool) -> None:
        """Loop thread: the transport paused or resumed writing."""
        self._transport_busy = busy
        if not busy:
            if self._writers:
                self._wake_writers()
            if self._idle_callbacks:
                callbacks, self._idle_callbacks = self._idle_callbacks, None
                for callback in callbacks:
                    callback()

    def _on_closed(self) -> None:
        """Loop thread: the port is closed; no writer may stay parked."""
        self._closed = True
        writers = self._writers
        while writers:
            writers.popleft().wake()

    # -- control -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the port. Idempotent, never blocks; ``Closed`` is delivered after
        everything already queued (pending writes are flushed first)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._requests.submit(self._close_on_loop)
        except ServerStopped:
            pass  # the server closed every port when it stopped

    def _close_on_loop(self) -> None:
        driver = self._driver
        if driver is not None:
            driver.close()

    def setopts(self, *, active: bool | int | str | None = None) -> None:
        """Change options on the loop (``active``: True, False, "once" or N, Erlang's
        semantics: an int N is *added* to the counter; at 0 a ``Passive`` arrives)."""
        if active is not None:
            _check_active(active)
            self._command("setopts", active)

    def read(self, timeout: float | None = None) -> Message:
        """In passive mode: ask for one more message, then receive it from the inbox."""
        self._command("read_one")
        return self.recv(timeout)

    async def aread(self, timeout: float | None = None) -> Message:
        """``read`` for coroutines."""
        self._command("read_one")
        return await self.arecv(timeout)

    def close_stdin(self) -> None:
        """Half-close the write side (a process's stdin; a socket's write side)."""
        self._command("write_eof")

    write_eof = close_stdin

    def transfer(self, inbox: Channel[Any]) -> None:
        """Deliver from now on into ``inbox``, moving this port's messages already
        queued in the old inbox over first, in order (Erlang's
        ``controlling_process``, done atomically on the loop thread)."""
        if inbox.capacity == 0:
            raise ValueError("a port's inbox cannot be a rendezvous channel (capacity=0)")
        self._io.call(self._transfer_on_loop, inbox)

    def _transfer_on_loop(self, inbox: Channel[Any]) -> None:
        driver = self._driver
        if driver is None:
            raise PortClosed(f"{self!r} is closed")
        driver.transfer(inbox)

    def info(self) -> dict[str, Any]:
        """Observability: kind, owner inbox, active mode, queued bytes, busy..."""
        return self._io.call(self._info_on_loop)  # type: ignore[no-any-return]

    def _info_on_loop(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "closed": self._closed,
            "busy": self.busy,
            "unsent_bytes": self._submitted - self._processed,
            "inbox": self._inbox.statistics(),
            "own_inbox": self._own_inbox,
        }
        base.update(self.info_extra)
        if self._driver is not None:
            base.update(self._driver.info())
        return base

    def _command(self, name: str, *args: Any) -> None:
        # setopts and read stay allowed once the peer has ended the port: a
        # passive port gets its Closed only when it asks for more.
        if self._closed and name == "write_eof":
            raise PortClosed(f"{self!r} is closed")
        self._requests.submit(self._command_on_loop, name, args)

    def _command_on_loop(self, name: str, args: tuple[Any, ...]) -> None:
        driver = self._driver
        if driver is not None:
            method: Callable[..., object] = getattr(driver, name)
            method(*args)


def describe(extra: dict[str, Any]) -> str:
    """What a port is on, for its repr, from its ``info_extra``: `` local -> peer``
    for a connection, `` local`` for a listener or UDP port, the path of a file,
    ``pid=``, ``fd=``, ``every=``; "" while not (or never) known."""
    where = _show_address(extra.get("address")) or str(extra.get("path") or "")
    peer = _show_address(extra.get("peer"))
    if peer:
        where = f"{where} -> {peer}" if where else f"-> {peer}"
    for key in ("pid", "fd"):
        if extra.get(key) is not None:
            where = f"{where} {key}={extra[key]}".strip()
    if extra.get("period") is not None:
        where = f"every={extra['period']}s"
    return f" {where}" if where else ""


def _show_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for an IP address, the path for a Unix one."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    if isinstance(address, str | bytes) and address:
        return address if isinstance(address, str) else address.decode(errors="replace")
    return ""


_BYTES_LIKE = (bytes, bytearray, memoryview)


def encode_for_send(port: Port, encode: Callable[[Any], bytes], data: Any) -> bytes:
    """``encode(data)`` for a send on a ``packet="msgpack"`` port, msgpack's
    TypeError (an object it has no encoding for) reworded to name the port and
    what it takes."""
    try:
        return encode(data)
    except TypeError as exc:
        raise TypeError(
            f"send on {port!r} (packet='msgpack') takes an object msgpack can encode "
            f"(None, bool, int, float, str, bytes, list, tuple, dict), "
            f"not {type(data).__name__}: {exc}"
        ) from None


def _nbytes(data: bytes | bytearray | memoryview) -> int:
    """The size in bytes of a bytes-like object (a memoryview's len counts items)."""
    return data.nbytes if type(data) is memoryview else len(data)


_anchor_lock = threading.Lock()


def anchor(inbox: Channel[Any], port: Port) -> None:
    """Keep ``port`` alive as long as ``inbox``, a shared inbox it delivers into.
    Any thread: the set is made under a lock, then add/discard are atomic."""
    ports = inbox._anchor
    if not isinstance(ports, set):
        with _anchor_lock:
            ports = inbox._anchor
            if not isinstance(ports, set):
                ports = inbox._anchor = set()
    ports.add(port)


def _unanchor(inbox: Channel[Any], port: Port) -> None:
    """``port`` ended: ``inbox`` need not keep it alive any more (loop thread)."""
    ports = inbox._anchor
    if isinstance(ports, set):
        ports.discard(port)


def _check_active(active: bool | int | str) -> None:
    if active is True or active is False or active == "once":
        return
    if isinstance(active, int) and not isinstance(active, bool) and -32768 <= active <= 32767:
        return
    raise ValueError(
        f"active must be True, False, 'once' or an int in -32768..32767, not {active!r}"
    )


# -- a busy port's writers of any task kind (greenlets, trio tasks, plug-ins) ---------


def _writer_registrar(port: Port) -> tuple[list[WakeupHandle], Callable[[WakeupHandle], None]]:
    """The ``f`` of ``block_after`` for a writer of a busy port: join ``_writers``,
    then re-check; no longer busy, end the block at once (our own claim)."""
    box: list[WakeupHandle] = []

    def register(handle: WakeupHandle) -> None:
        box.append(handle)
        port._add_writer(handle)
        if (not port.busy or port._closed) and handle.claim():
            handle.unpark()

    return box, register


def _wait_not_busy_in(port: Port, task: TaskLike, timeout: float | None) -> None:
    """``Port._wait_not_busy`` parking through ``task.block_after``."""
    deadline = None if timeout is None else _monotonic() + timeout
    while port.busy:
        if port._closed:
            raise PortClosed(f"{port!r} is closed")
        box, register = _writer_registrar(port)
        left = None if deadline is None else max(0.0, deadline - _monotonic())
        try:
            woken = task.block_after(register, left)
        except BaseException:
            port._forget_writer(box[0])
            raise
        if not woken:
            port._forget_writer(box[0])
            raise TimeoutError(f"{port!r} stayed busy past the timeout")


async def _await_not_busy_in(port: Port, task: AsyncTaskLike, timeout: float | None) -> None:
    """``Port._await_not_busy`` parking through ``task.block_after``."""
    deadline = None if timeout is None else _monotonic() + timeout
    while port.busy:
        if port._closed:
            raise PortClosed(f"{port!r} is closed")
        box, register = _writer_registrar(port)
        left = None if deadline is None else max(0.0, deadline - _monotonic())
        try:
            woken = await task.block_after(register, left)
        except BaseException:
            port._forget_writer(box[0])
            raise
        if not woken:
            port._forget_writer(box[0])
            raise TimeoutError(f"{port!r} stayed busy past the timeout")


#: Kinds of port that only deliver: a send has nowhere to go.
READ_ONLY_KINDS = frozenset({"tcp-listener", "unix-listener", "interval", "watch"})


def not_writable(port: Port) -> TypeError:
    """The error of a send on a port of :data:`READ_ONLY_KINDS`: raised in the
    caller, so the port goes on (written to on the loop it would fail and close)."""
    if port.kind.endswith("-listener"):
        what = "a listener delivers Accepted(port, conn): send on conn"
    elif port.kind == "interval":
        what = "an interval port delivers Tick messages"
    else:
        what = "a watch port delivers Readable/Writable: write to the fd itself"
    return TypeError(f"{port!r} cannot be written to ({what})")


class ReadOnlyPort(Port):
    """A port of :data:`READ_ONLY_KINDS` (what the listeners, ``interval`` and
    ``watch`` return): ``send``/``asend`` raise TypeError at once and change
    nothing. Everything else is Port's; ``type(port).__name__`` is "Port"."""

    __slots__ = ()

    def send(self, data: Any, *, timeout: float | None = None, nowait: bool = False) -> bool:
        raise not_writable(self)

    async def asend(self, data: Any, *, timeout: float | None = None) -> bool:
        raise not_writable(self)


ReadOnlyPort.__name__ = ReadOnlyPort.__qualname__ = "Port"


# The native core's send path (csrc/port.c): send's common case (bytes, an open port
# that is not busy) and _queue_write in C; the Python send above stays the reference
# and runs every other case, as _py_send.
if native is not None:
    Port._py_send = Port.send  # type: ignore[attr-defined]
    _native_send = native.setup_port(Port)
    Port.send = _native_send["send"]  # type: ignore[method-assign]
    Port._queue_write = _native_send["_queue_write"]  # type: ignore[method-assign]
