"""Channel: a multi-producer, multi-consumer message channel for threads and coroutines.

Theory of operation
-------------------
Three flavours behind one class (crossbeam's ``flavors``): unbounded, bounded
(``capacity=N``) and rendezvous (``capacity=0``). ``Channel(capacity=...)``
returns the flavour; all are ``Channel`` instances.

State. ``_buf`` (a deque) holds buffered messages. ``_lock`` guards everything
else: the queues of parked receivers and senders, ``_closed``, ``_drained`` and
every move of a message that is not a plain fast-path append or popleft.
Parked parties are :class:`~ioserver.sched.WakeupHandle` entries in FIFO
queues, so blocked senders and receivers are served in arrival order.

Fast paths take no lock. They rest on four premises:
  [1] ``deque.append``/``popleft``/``pop`` are atomic (CPython documents deque
      operations as thread-safe; under the GIL each is one C call);
  [2] a fast-path sender appends *then* reads ``_rwake``; a receiver that is
      about to park sets ``_rwake`` under ``_lock`` *then* re-checks ``_buf``
      (and the same for bounded senders: ``_room`` then ``_swake``);
  [3] reads and writes of one attribute are atomic and, under the GIL,
      sequentially consistent;
  [4] a parked party is ended by whoever wins its handle's claim (sched.py).
From [1]-[3]: either the parking receiver's re-check sees the new message, or
the sender sees ``_rwake`` and hands the message over under the lock. A wakeup
can't be lost. The interleaving that [2] closes: "sender checks for sleepers,
receiver registers and finds the buffer empty, sender appends", the classic
lost wakeup.

A woken waiter is removed from the queue by its waker (the claim), so the next
send sees ``_rwake`` false and is back on the fast path: a receiver waiting for
the GIL does not make every later send take the lock.

Handoff. A parked receiver is given its message by the party that wakes it:
``payload = (index, message)``. If a faster receiver took the message first,
the payload is ``_RETRY`` and the receiver tries again; nothing is consumed
twice or lost. A parked thread sender of a bounded channel has its message
stored by its waker (``_SENT``), so parked senders keep their arrival order; a
parked coroutine sender is handed a free slot (``_SLOT``) and stores its
message itself when it runs (a cancelled one stores nothing); a parked thread sender
of a rendezvous channel hands its message straight to the receiver that claims
it (``_SENT``); a parked coroutine sender of a rendezvous channel is asked to
come and hand it over (``_WANT``), so that a coroutine cancelled at that moment
has delivered nothing.

Close. ``close()`` sets ``_closed`` and wakes everyone. Receivers take what is
buffered, then the first receiver to find the buffer empty marks the channel
*drained* and swaps ``_buf`` for a deque with ``maxlen=0`` (appends to it are
discarded). A fast-path send that overlaps ``close()`` sees ``_rwake`` after
its append and resolves under the lock: if its message landed in the live
buffer before the drain it is delivered and ``send`` returns; otherwise the
message is taken back (or was discarded) and ``send`` raises ChannelClosed,
unless a receiver already took it, in which case ``send`` returns. So a send
that returns was delivered, and a send that raises was not.

Cancellation (coroutines). A cancelled ``arecv``/``asend`` did not happen: a
receiver that was handed a message and is cancelled before it runs puts the
message back at the head of the channel (into a free slot it still holds, for a
bounded channel); a sender never has its message taken while it can still be
cancelled (see ``_SLOT``/``_WANT``).

Interrupts (threads). The main thread is the one a signal handler can
interrupt (Ctrl-C: KeyboardInterrupt), and it is treated like a coroutine:
parked as a sender it has a :class:`~ioserver.sched.MainThreadWakeup`, which
wakers never store or take a message for (``_SLOT``/``_WANT`` instead of
``_SENT``); so its message may land after those of senders that parked later.
An exception raised while a thread is parked ends the call at once: the
undo (``_undo_recv``/``_undo_send``) runs through
:func:`~ioserver.sched.shielded`, withdraws the parked entry, or puts a message
it was handed back at the head (into the slot it still holds), or gives back
the slot or the "come and hand it over" it was woken with, and then the
exception propagates. See docs/architecture.md ("Guarantees").

Native core. ``Channel`` is :class:`NativeChannel` when ``ioserver._native`` is
in use: the same contract in C, the GIL its only mutex (no ``_lock``, no
premises: each check-and-act is one uninterrupted step). The classes of this
module stay importable as :class:`PyChannel` (and its flavours) in both modes.
Its ``arecv``/``asend`` finish at once in C when they can, else run
:func:`_arecv_sel`/:func:`_asend_sel`, written over the select protocol. See
docs/architecture.md ("Native core").
"""

from __future__ import annotations

import asyncio
import queue
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from time import monotonic as _now
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._core import native
from .sched import (
    AsyncWakeup,
    ThreadWakeup,
    WakeupHandle,
    WokenThenCancelled,
    foreign_async_task,
    green_task,
    shielded,
    thread_wakeup,
)
from .sched import _current as _sched_state
from .sched._original import allocate_lock as Lock  # native even under gevent's patching
from .sched._original import sleep as _sleep

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "Empty",
    "Full",
    "NativeChannel",
    "PyChannel",
]

T = TypeVar("T")


class ChannelClosed(Exception):
    """Raised by send operations on a closed channel, and by receive operations
    (``recv``, ``try_recv``, ``select``...) once the channel is closed *and* drained.

    ``channel`` is the closed source (as passed to ``select``); ``value`` is the
    message a failed send hands back (None for a receive).
    """

    def __init__(self, channel: object = None, value: Any = None) -> None:
        super().__init__(channel, value)
        self.channel = channel
        self.value = value

    def __str__(self) -> str:
        if hasattr(self.channel, "inbox"):  # a port (port.py), named as the user holds it
            return f"no more messages from {self.channel!r}: its inbox is closed"
        return f"channel {self.channel!r} is closed"


class Empty(queue.Empty):
    """Raised by ``try_recv`` when no message is ready."""


class Full(queue.Full):
    """Raised by ``try_send`` when the channel has no room; ``value`` is the message."""

    def __init__(self, value: Any = None) -> None:
        super().__init__(value)
        self.value = value


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a channel's state (each field may change at once under concurrency)."""

    #: messages in the buffer (0 for a rendezvous channel, bar a put-back)
    buffered: int
    #: ``None`` for unbounded, else the capacity given (0 for rendezvous)
    capacity: int | None
    #: senders parked in ``send``/``asend``/``select``
    waiting_senders: int
    #: receivers parked in ``recv``/``arecv``/``select``
    waiting_receivers: int
    #: whether ``close()`` was called
    closed: bool


# Payload values a waker leaves in a handle, beside real messages.
class _Mark:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_modules = sys.modules  # "trio" in it: a trio task may be awaiting (else asyncio)
_RETRY = _Mark("RETRY")  # nothing was handed over: try the operation again
_SLOT = _Mark("SLOT")  # bounded: a free slot is reserved for the parked sender
_WANT = _Mark("WANT")  # rendezvous: a receiver is waiting for the parked coroutine sender
_SENT = _Mark("SENT")  # rendezvous: a receiver took the parked thread sender's message
_CLOSED = _Mark("CLOSED")  # the channel closed while the sender was parked
_NOTHING = _Mark("NOTHING")  # select protocol: the operation is not ready


class Closing:
    """``with x:`` / ``async with x:`` close ``x`` on the way out (channels and ports)."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


_C = TypeVar("_C", bound=Closing)


def _iterate(ch: Any) -> Iterator[Any]:
    """A channel's ``__iter__`` (both cores): receive until it is closed and drained."""
    recv = ch.recv
    try:
        while True:
            yield recv()
    except ChannelClosed:
        return


async def _aiterate(ch: Any) -> AsyncIterator[Any]:
    """A channel's ``__aiter__`` (both cores): receive until it is closed and drained."""
    try:
        while True:
            yield await ch.arecv()
    except ChannelClosed:
        return


class _NoOne(deque[Any]):
    """The shared empty queue of a channel nobody is parked on. An empty deque
    costs 760 bytes, four per channel, and most channels (every idle port's
    inbox) never park anyone; every mutator raises, so a forgotten
    ``_park_*`` call fails loudly instead of sharing state between channels."""

    __slots__ = ()

    def _refuse(self, *args: object) -> None:
        raise RuntimeError("internal error: the shared empty waiter queue was mutated")

    append = appendleft = extend = extendleft = insert = _refuse


NO_ONE: deque[Any] = _NoOne()

_Receiver = tuple[WakeupHandle, int]  # (handle, index of the op in its select)
_Sender = tuple[WakeupHandle, int, Any]  # (handle, index, message)


class PyChannel(Closing, Generic[T]):
    """A FIFO channel between any number of threads and coroutines, on any loops.

    ``Channel()`` is unbounded, ``Channel(capacity=N)`` holds at most N
    messages, ``Channel(capacity=0)`` is a rendezvous: a send completes only
    when a receiver takes the message.

    Timeouts, everywhere: ``None`` blocks, ``0`` polls, ``> 0`` waits at most
    that long; nothing ready in time raises :class:`TimeoutError`, and a
    TimeoutError means the operation did not happen.
    """

    __slots__ = (
        "__weakref__",
        "_anchor",
        "_buf",
        "_capacity",
        "_closed",
        "_dead",
        "_drained",
        "_fed_by_loop",
        "_lock",
        "_receivers",
        "_room",
        "_rwake",
        "_senders",
        "_swake",
        "_watchers",
    )

    def __new__(cls, capacity: int | None = None) -> PyChannel[T]:
        if cls is PyChannel:
            if capacity is None:
                cls = _Unbounded
            elif not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 0:
                raise ValueError(f"capacity must be None or an int >= 0, not {capacity!r}")
            elif capacity == 0:
                cls = _Rendezvous
            else:
                cls = _Bounded
        return object.__new__(cls)

    def __init__(self, capacity: int | None = None) -> None:
        self._capacity = capacity
        # A port's inbox: what must live as long as it does, so the port's messages
        # reach whoever holds the inbox (drivers/base.py, "Lifetime"): the Port
        # whose own inbox it is, or the set of ports sharing it; None otherwise.
        self._anchor: Any = None
        # Buffered messages; fast paths append/popleft without the lock ([1]).
        self._buf: deque[Any] = deque()
        # Guards the waiter queues, the close state and every slow-path move.
        self._lock = Lock()
        # Parked receivers and senders, in arrival order; entries whose handle
        # was claimed elsewhere (a finished select) are skipped when met.
        # (NO_ONE until the first party parks: see _park_receiver.)
        self._receivers: deque[_Receiver] = NO_ONE
        self._senders: deque[_Sender] = NO_ONE
        # True while receivers are parked or the channel is closed: a
        # fast-path sender that sees it goes through the lock. Written under
        # the lock, read without it ([2]).
        self._rwake = False
        # The same for receivers of a bounded channel: senders parked, or closed.
        self._swake = False
        self._closed = False
        # Set when the channel becomes a port's inbox (the I/O thread feeds it).
        self._fed_by_loop = False
        # Set (under the lock) by the first receiver that finds the channel
        # closed and empty; from then on _buf discards appends.
        self._drained = False
        # Messages of sends that lost the race with the drain, kept until
        # their senders look for them (see _resolve_late_send).
        self._dead: list[Any] | None = None
        # Bounded only: one token per free slot; a sender pops one before it
        # appends and a receiver returns one after it takes a message. A list:
        # pop()/append() are as atomic as a deque's, in a third of the memory.
        self._room: list[None] = []
        # Bounded only: callbacks of drivers waiting for room (see
        # _notify_when_room); None until the first one.
        self._watchers: list[Callable[[], object]] | None = None

    # -- the public surface shared by all flavours ---------------------------------

    @property
    def capacity(self) -> int | None:
        """``None`` for unbounded, else the capacity (0 for rendezvous)."""
        return self._capacity

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (not reliable for deciding to send: it
        may change right after you look)."""
        return self._closed

    def __len__(self) -> int:
        """Messages buffered now (not reliable under concurrency, as ``Queue.qsize``)."""
        return len(self._buf)

    def __repr__(self) -> str:
        """``<Channel unbounded buffered=0>``, ``<Channel capacity=8 buffered=3>``,
        ``<Channel rendezvous>``, then `` closed`` once closed: the public name
        whatever the flavour (as the native core's); a subclass shows its own."""
        name = "Channel" if type(self) in _FLAVOURS else type(self).__qualname__
        state = " closed" if self._closed else ""
        capacity = self._capacity
        if capacity is None:
            return f"<{name} unbounded buffered={len(self)}{state}>"
        if capacity == 0:
            return f"<{name} rendezvous{state}>"
        return f"<{name} capacity={capacity} buffered={len(self)}{state}>"

    def statistics(self) -> ChannelStatistics:
        """A frozen snapshot: buffered, capacity, waiting senders/receivers, closed."""
        with self._lock:
            return ChannelStatistics(
                buffered=len(self._buf),
                capacity=self._capacity,
                waiting_senders=sum(1 for e in self._senders if not e[0].claimed),
                waiting_receivers=sum(1 for e in self._receivers if not e[0].claimed),
                closed=self._closed,
            )

    def close(self) -> None:
        """Close the channel. Idempotent; never blocks.

        Every parked sender wakes with ChannelClosed; every parked receiver
        wakes, takes what is still buffered, then gets ChannelClosed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._rwake = self._swake = True
            receivers, self._receivers = self._receivers, NO_ONE
            senders, self._senders = self._senders, NO_ONE
            watchers, self._watchers = self._watchers, None
        for handle, index in receivers:
            _wake(handle, index, _RETRY)
        for handle, index, _ in senders:
            _wake(handle, index, _CLOSED)
        for callback in watchers or ():
            callback()  # the driver finds the channel closed and stops

    def __iter__(self) -> Iterator[T]:
        """Receive until the channel is closed and drained."""
        return _iterate(self)

    def __aiter__(self) -> AsyncIterator[T]:
        """Receive (async) until the channel is closed and drained."""
        return _aiterate(self)

    # -- operations each flavour defines --------------------------------------------

    def send(self, value: T, timeout: float | None = None) -> None:
        """Send ``value``, blocking while the channel is full.

        Raises ChannelClosed (with ``.value``) if the channel is closed, and
        TimeoutError if no room came in time. A send that returns was
        delivered (or is buffered for delivery); one that raises was not.
        """
        raise NotImplementedError

    def try_send(self, value: T) -> None:
        """Send without blocking; raises Full (with ``.value``) or ChannelClosed."""
        raise NotImplementedError

    def recv(self, timeout: float | None = None) -> T:
        """Receive the next message, blocking while there is none.

        Raises ChannelClosed once the channel is closed and drained, and
        TimeoutError if nothing came in time.
        """
        raise NotImplementedError

    def try_recv(self) -> T:
        """Receive without blocking; raises Empty or ChannelClosed."""
        raise NotImplementedError

    async def asend(self, value: T, timeout: float | None = None) -> None:
        """``send`` for coroutines. Cancelled, it did not happen."""
        raise NotImplementedError

    async def arecv(self, timeout: float | None = None) -> T:
        """``recv`` for coroutines. Cancelled, it took no message."""
        raise NotImplementedError

    # -- the select protocol (see select.py) ----------------------------------------

    def _sel_try_recv(self) -> Any:
        """A message, or ``_NOTHING``; raises ChannelClosed when closed and drained.

        The "nothing" answer takes no lock and raises nothing: it is only a
        hint, because select re-checks under the lock when it registers.
        """
        if self._buf or self._closed or self._senders:
            try:
                return self.try_recv()
            except Empty:
                pass
        return _NOTHING

    def _sel_try_send(self, value: Any) -> bool:
        """Send if possible now; raises ChannelClosed."""
        try:
            self.try_send(value)
        except Full:
            return False
        return True

    def _sel_register_recv(self, handle: WakeupHandle, index: int) -> bool:
        """Park ``handle`` as a receiver unless the channel is ready; False if ready."""
        with self._lock:
            if self._recv_ready(handle):
                return False
            self._park_receiver((handle, index))
            self._on_receiver_parked()
            return True

    def _sel_register_send(self, handle: WakeupHandle, index: int, value: Any) -> bool:
        """Park ``handle`` as a sender of ``value`` unless the channel is ready."""
        with self._lock:
            if self._send_ready(handle):
                return False
            self._park_sender((handle, index, value))
            self._on_sender_parked()
            return True

    def _sel_unregister(self, handle: WakeupHandle) -> None:
        """Drop every entry of ``handle`` (a select that ended, or timed out)."""
        with self._lock:
            self._drop(handle)

    def _sel_unrecv(self, value: Any) -> None:
        """Put back a message a cancelled coroutine receiver was handed."""
        with self._lock:
            if self._drained:
                # Closed and drained while the message was with the receiver:
                # make it receivable again rather than lose it.
                self._buf = deque()
                self._drained = False
            self._buf.appendleft(value)
            self._feed()

    def _sel_release_slot(self) -> None:
        """A receiver that was handed a buffered message frees its slot (bounded)."""

    def _sel_claimed_send(self, value: Any, mark: Any) -> bool:
        """Finish a send for which a waker left ``mark`` (_SLOT or _WANT); False to retry."""
        raise NotImplementedError

    def _sel_abandon(self, mark: Any) -> None:
        """A coroutine woken with ``mark`` was cancelled: give the wakeup back."""

    # -- the I/O thread's side of a port's inbox (drivers/base.py) -------------------

    def _notify_when_room(self, callback: Callable[[], object]) -> bool:
        """Call ``callback()`` once receivers have drained the channel to its low-water
        mark (half the capacity). Returns False, registering nothing, if there is
        room already. The callback runs in a receiving thread, under the lock: it
        must only hand off (e.g. submit to the loop). Never blocks."""
        return False

    def _put_overflow(self, value: Any) -> None:
        """Append ``value`` even past the capacity (a port's final ``Closed`` at
        shutdown must not be lost to a full inbox). Raises ChannelClosed."""
        with self._lock:
            if self._closed:
                raise ChannelClosed(self, value)
            room = self._room
            if room:
                room.pop()  # keep the slot count exact when there is a free slot
            self._buf.append(value)
            self._feed()

    def _after_fork(self) -> None:
        """In a forked child (drivers/base.py): a lock that a thread of the parent
        held at the fork would never be released."""
        if self._lock.locked():
            self._lock = Lock()

    def _take_matching(self, predicate: Callable[[Any], bool]) -> list[Any]:
        """Remove and return the buffered messages for which ``predicate`` is true,
        in order, keeping the others in order (``Port.transfer``).

        Exception-safe: if ``predicate`` raises, nothing is taken; every message
        stays where it was, in order, and the exception propagates.
        """
        with self._lock:
            buf = self._buf
            # Decide on a snapshot first (predicate may raise; the buffer is
            # untouched until every answer is in). Fast-path receivers may
            # take messages from the head meanwhile, never from the middle.
            items = list(buf)
            chosen = {id(item) for item in items if predicate(item)}
            if not chosen:
                return []
            taken: list[Any] = []
            kept: list[Any] = []
            while True:
                try:
                    item = buf.popleft()
                except IndexError:
                    break
                (taken if id(item) in chosen else kept).append(item)
            buf.extendleft(reversed(kept))
            if isinstance(self, _Bounded) and taken:
                self._room.extend([None] * len(taken))
                self._admit_locked()
            return taken

    # -- lock-held helpers ------------------------------------------------------------

    # ``own``: the handle of the select registering now; its other entries on
    # this channel are no partner for it (a rendezvous select can't meet itself).

    def _recv_ready(self, own: WakeupHandle | None = None) -> bool:
        return bool(self._buf) or self._closed

    def _send_ready(self, own: WakeupHandle | None = None) -> bool:
        raise NotImplementedError

    def _on_sender_parked(self) -> None:
        """Called under the lock after a sender parked."""

    def _on_receiver_parked(self) -> None:
        """Lock held, a receiver just parked (``_rwake`` is set): re-check the buffer.

        Premise [2]: the receiver looked at ``_buf`` before it registered, and a
        fast-path sender that appended in between saw ``_rwake`` still false and
        left. Now that the flag is set, any message in the buffer is one such
        send: hand it over (to the first parked receiver, FIFO).
        """
        if self._buf:
            self._feed()

    def _park_receiver(self, entry: _Receiver) -> None:
        """Lock held: queue a parked receiver (and make senders look for it)."""
        receivers = self._receivers
        if receivers is NO_ONE:
            receivers = self._receivers = deque()
        receivers.append(entry)
        self._rwake = True

    def _park_sender(self, entry: _Sender) -> None:
        """Lock held: queue a parked sender (and make receivers look for it)."""
        senders = self._senders
        if senders is NO_ONE:
            senders = self._senders = deque()
        senders.append(entry)
        self._swake = True

    def _drop(self, handle: WakeupHandle) -> None:
        for entry in self._receivers:
            if entry[0] is handle:
                kept = deque(e for e in self._receivers if e[0] is not handle)
                self._receivers = kept or NO_ONE
                break
        for sender in self._senders:
            if sender[0] is handle:
                kept_s = deque(e for e in self._senders if e[0] is not handle)
                self._senders = kept_s or NO_ONE
                break
        self._rwake = self._closed or bool(self._receivers)
        self._swake = self._closed or bool(self._senders) or bool(self._watchers)

    def _feed(self) -> None:
        """Hand buffered messages to parked receivers (lock held)."""
        receivers = self._receivers
        buf = self._buf
        while receivers and buf:
            handle, index = receivers.popleft()
            if handle.claim():
                try:
                    message = buf.popleft()
                except IndexError:  # a fast-path receiver took it meanwhile
                    message = _RETRY
                handle.payload = (index, message)
                if handle.unpark() is False and message is not _RETRY:
                    buf.appendleft(message)  # its scheduler is gone: keep it for the next
        self._rwake = self._closed or bool(receivers)

    def _take_closed(self) -> Any:
        """Lock held, buffer empty: a receiver found the channel closed; raise."""
        if not self._drained:
            self._drained = True
            self._buf = deque(maxlen=0)
        raise ChannelClosed(self)

    def _resolve_late_send(self, buf: deque[Any], value: Any) -> None:
        """A fast-path append overlapped close(); decide whether it was delivered.

        Called with ``buf``, the deque the sender appended to, after it saw
        ``_rwake``. Returns if the message is (or was) delivered; raises
        ChannelClosed if it never will be.
        """
        with self._lock:
            if buf is self._buf and not self._drained:
                self._feed()  # live buffer: delivered (maybe to a parked receiver)
                return
            if buf.maxlen == 0:
                raise ChannelClosed(self, value)  # the discarding deque kept nothing
            # The old buffer, after the drain: no receiver reads it any more
            # except one that loaded it just before the swap. Move what is
            # there into _dead one item at a time; each item ends up either
            # with that receiver or in _dead, never both ([1]).
            dead = self._dead
            if dead is None:
                dead = self._dead = []
            while True:
                try:
                    dead.append(buf.popleft())
                except IndexError:
                    break
            for i, item in enumerate(dead):
                if item is value:
                    del dead[i]
                    raise ChannelClosed(self, value)
            # Not found: a receiver took it, so it was delivered.


def _wake(handle: WakeupHandle, index: int, payload: Any) -> None:
    if handle.claim():
        handle.payload = (index, payload)
        handle.unpark()


# ---------------------------------------------------------------------------------
# Unbounded


class _Unbounded(PyChannel[T]):
    """Never full: sends never block."""

    __slots__ = ()

    def send(self, value: T, timeout: float | None = None) -> None:
        if self._rwake:
            return self._send_locked(value)
        buf = self._buf
        buf.append(value)
        # A receiver may have parked (or close() run) while we appended ([2]).
        if self._rwake:
            self._resolve_late_send(buf, value)
        return None

    try_send = send

    async def asend(self, value: T, timeout: float | None = None) -> None:
        if _sched_state._overrides or "trio" in _modules:  # asyncio pays two loads
            task = foreign_async_task()
            if task is not None:  # a trio task: a checkpoint (or a using_task scheduler)
                return await _asend_in(self, task, value, timeout)
        self.send(value)

    def _send_locked(self, value: Any) -> None:
        with self._lock:
            if self._closed:
                raise ChannelClosed(self, value)
            self._buf.append(value)
            self._feed()

    def _send_ready(self, own: WakeupHandle | None = None) -> bool:
        return True

    def recv(self, timeout: float | None = None) -> T:
        try:
            return self._buf.popleft()  # type: ignore[no-any-return]
        except IndexError:
            return _recv_slow(self, timeout)  # type: ignore[no-any-return]

    def try_recv(self) -> T:
        try:
            return self._buf.popleft()  # type: ignore[no-any-return]
        except IndexError:
            return _recv_slow(self, 0, True)  # type: ignore[no-any-return]

    async def arecv(self, timeout: float | None = None) -> T:
        if _sched_state._overrides or "trio" in _modules:  # asyncio pays two loads
            task = foreign_async_task()
            if task is not None:  # a trio task: a checkpoint (or a using_task scheduler)
                return await _arecv_in(self, task, timeout)  # type: ignore[no-any-return]
        try:
            return self._buf.popleft()  # type: ignore[no-any-return]
        except IndexError:
            return await _arecv_sel(self, timeout)  # type: ignore[no-any-return]

    def _sel_claimed_send(self, value: Any, mark: Any) -> bool:
        return False  # never parks a sender


# ---------------------------------------------------------------------------------
# Bounded


class _Bounded(PyChannel[T]):
    """At most ``capacity`` messages; ``_room`` holds one token per free slot."""

    __slots__ = ()

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__(capacity)
        self._room.extend([None] * (capacity or 0))

    def send(self, value: T, timeout: float | None = None) -> None:
        if not self._rwake:
            try:
                self._room.pop()  # reserve a slot ([1]); IndexError when full
            except IndexError:
                pass
            else:
                buf = self._buf
                buf.append(value)
                if self._rwake:
                    self._resolve_late_send(buf, value)
                return
        _send_slow(self, value, timeout)

    def try_send(self, value: T) -> None:
        if not self._rwake:
            try:
                self._room.pop()
            except IndexError:
                pass
            else:
                buf = self._buf
                buf.append(value)
                if self._rwake:
                    self._resolve_late_send(buf, value)
                return
        _send_slow(self, value, 0, True)

    async def asend(self, value: T, timeout: float | None = None) -> None:
        if _sched_state._overrides or "trio" in _modules:  # asyncio pays two loads
            task = foreign_async_task()
            if task is not None:  # a trio task: a checkpoint (or a using_task scheduler)
                return await _asend_in(self, task, value, timeout)
        if not self._rwake:
            try:
                self._room.pop()
            except IndexError:
                pass
            else:
                buf = self._buf
                buf.append(value)
                if self._rwake:
                    self._resolve_late_send(buf, value)
                return
        await _asend_sel(self, value, timeout)

    def recv(self, timeout: float | None = None) -> T:
        try:
            value = self._buf.popleft()
        except IndexError:
            return _recv_slow(self, timeout)  # type: ignore[no-any-return]
        self._room.append(None)  # free the slot, then look for parked senders ([2])
        if self._swake:
            self._admit()
        return value  # type: ignore[no-any-return]

    def try_recv(self) -> T:
        try:
            value = self._buf.popleft()
        except IndexError:
            return _recv_slow(self, 0, True)  # type: ignore[no-any-return]
        self._room.append(None)
        if self._swake:
            self._admit()
        return value  # type: ignore[no-any-return]

    async def arecv(self, timeout: float | None = None) -> T:
        if _sched_state._overrides or "trio" in _modules:  # asyncio pays two loads
            task = foreign_async_task()
            if task is not None:  # a trio task: a checkpoint (or a using_task scheduler)
                return await _arecv_in(self, task, timeout)  # type: ignore[no-any-return]
        try:
            value = self._buf.popleft()
        except IndexError:
            return await _arecv_sel(self, timeout)  # type: ignore[no-any-return]
        self._room.append(None)
        if self._swake:
            self._admit()
        return value  # type: ignore[no-any-return]

    def _admit(self) -> None:
        with self._lock:
            self._admit_locked()

    def _admit_locked(self) -> None:
        """Give free slots to parked senders, in arrival order (lock held)."""
        senders = self._senders
        room = self._room
        stored = False
        while senders:
            try:
                room.pop()  # reserve the slot first; IndexError when none is free
            except IndexError:
                break
            while senders:
                handle, index, value = senders.popleft()
                if handle.claim():
                    if type(handle) is ThreadWakeup:
                        # A thread other than the main one cannot be
                        # interrupted: store its message now, so parked
                        # senders' messages keep their arrival order. (A
                        # coroutine or the main thread gets a slot and stores
                        # its message itself: cancelled or interrupted, it
                        # has stored nothing.)
                        self._buf.append(value)
                        handle.payload = (index, _SENT)
                        stored = True
                    else:
                        handle.payload = (index, _SLOT)
                    if handle.unpark() is not False:
                        break
                    # Its scheduler is gone (never a thread's): the slot goes on.
            else:
                room.append(None)  # every parked entry was stale
        if stored:
            self._feed()
        watchers = self._watchers
        if watchers and len(self._buf) <= (self._capacity or 0) // 2:
            self._watchers = None
            for callback in watchers:
                callback()
        self._swake = self._closed or bool(senders) or bool(self._watchers)

    def _on_sender_parked(self) -> None:
        # A slot may have been freed between the caller's check and parking.
        self._admit_locked()

    def _notify_when_room(self, callback: Callable[[], object]) -> bool:
        with self._lock:
            if self._closed or len(self._buf) <= (self._capacity or 0) // 2:
                return False
            if self._watchers is None:
                self._watchers = []
            self._watchers.append(callback)
            self._swake = True  # receivers now look at _admit after each take
            return True

    def _send_ready(self, own: WakeupHandle | None = None) -> bool:
        return bool(self._room) or self._closed

    def _sel_release_slot(self) -> None:
        self._room.append(None)
        if self._swake:
            self._admit()

    def _sel_claimed_send(self, value: Any, mark: Any) -> bool:
        # _SLOT: a slot was reserved for us; store the message in it.
        with self._lock:
            if self._closed:
                self._room.append(None)
                raise ChannelClosed(self, value)
            self._buf.append(value)
            self._feed()
        return True

    def _sel_abandon(self, mark: Any) -> None:
        if mark is _SLOT:
            self._sel_release_slot()  # give the reserved slot back (and to the next sender)


# ---------------------------------------------------------------------------------
# Rendezvous


class _Rendezvous(PyChannel[T]):
    """No buffer: a send completes when a receiver takes the message.

    ``_buf`` only ever holds messages put back by cancelled coroutine receivers.
    """

    __slots__ = ()

    def send(self, value: T, timeout: float | None = None) -> None:
        _send_slow(self, value, timeout)

    def try_send(self, value: T) -> None:
        _send_slow(self, value, 0, True)

    async def asend(self, value: T, timeout: float | None = None) -> None:
        await _asend_sel(self, value, timeout)

    def recv(self, timeout: float | None = None) -> T:
        return _recv_slow(self, timeout)  # type: ignore[no-any-return]

    def try_recv(self) -> T:
        return _recv_slow(self, 0, True)  # type: ignore[no-any-return]

    async def arecv(self, timeout: float | None = None) -> T:
        return await _arecv_sel(self, timeout)  # type: ignore[no-any-return]

    def _recv_ready(self, own: WakeupHandle | None = None) -> bool:
        # Ready only with a message in hand: a parked coroutine sender must be
        # asked to come (_on_receiver_parked), which needs the receiver parked.
        return bool(self._buf) or self._closed or _head_sender(self, own) == "thread"

    def _on_receiver_parked(self) -> None:
        if self._buf:  # put-backs of cancelled receivers (see the base)
            self._feed()
            if not self._receivers:
                return
        own = self._receivers[-1][0]
        head = _head_sender(self, own)
        if head == "coroutine":
            _ask_a_sender(self, own)
        elif head == "thread":
            # A coroutine sender ahead of a thread sender ended (in another
            # thread) after the caller's check: the receiver that just parked
            # goes round again and takes the thread sender's message.
            handle, index = self._receivers[-1]
            _wake(handle, index, _RETRY)

    def _send_ready(self, own: WakeupHandle | None = None) -> bool:
        return self._closed or any(not e[0].claimed and e[0] is not own for e in self._receivers)

    def _sel_claimed_send(self, value: Any, mark: Any) -> bool:
        # _WANT: a receiver asked for our message; hand it over if one still waits.
        with self._lock:
            if self._closed:
                raise ChannelClosed(self, value)
            return _hand_to_receiver(self, value)

    def _sel_abandon(self, mark: Any) -> None:
        if mark is _WANT:
            with self._lock:
                _ask_a_sender(self)  # pass the request on to the next parked sender


def _hand_to_receiver(ch: PyChannel[Any], value: Any) -> bool:
    """Rendezvous, lock held: give ``value`` to the first parked receiver still waiting."""
    receivers = ch._receivers
    while receivers:
        handle, index = receivers.popleft()
        if handle.claim():
            handle.payload = (index, value)
            if handle.unpark() is False:
                continue  # its scheduler is gone: the next receiver gets the message
            ch._rwake = ch._closed or bool(receivers)
            return True
    ch._rwake = ch._closed
    return False


def _head_sender(ch: PyChannel[Any], own: WakeupHandle | None = None) -> str | None:
    """Rendezvous, lock held: "thread" or "coroutine" for the first live parked
    sender other than ``own`` (dropping stale entries), None if there is none.

    "coroutine" means "must hand its message over itself": a coroutine, or
    the main thread (a MainThreadWakeup), which a signal may interrupt."""
    senders = ch._senders
    while senders:
        handle = senders[0][0]
        if not handle.claimed:
            if handle is not own:
                return "thread" if type(handle) is ThreadWakeup else "coroutine"
            for entry in senders:  # rare: a select sending and receiving here
                if entry[0] is not own and not entry[0].claimed:
                    return "thread" if type(entry[0]) is ThreadWakeup else "coroutine"
            return None
        senders.popleft()
    ch._swake = ch._closed
    return None


def _take_from_sender(ch: PyChannel[Any]) -> Any:
    """Rendezvous, lock held: take the message of the first parked sender if it
    is a thread other than the main one; ``_NOTHING`` otherwise (a coroutine or
    the main thread must hand it over itself, so that a cancelled or
    interrupted one has delivered nothing)."""
    senders = ch._senders
    while senders:
        handle, index, value = senders[0]
        if type(handle) is not ThreadWakeup:
            if not handle.claimed:
                return _NOTHING
            senders.popleft()  # stale: its asend/aselect ended (timeout, another op)
            continue
        senders.popleft()
        if handle.claim():
            handle.payload = (index, _SENT)
            handle.unpark()
            ch._swake = ch._closed or bool(senders)
            return value
    ch._swake = ch._closed
    return _NOTHING


def _ask_a_sender(ch: PyChannel[Any], own: WakeupHandle | None = None) -> None:
    """Rendezvous, lock held: wake the first parked sender (other than ``own``)
    with ``_WANT``."""
    senders = ch._senders
    mine = []
    while senders:
        entry = senders.popleft()
        handle, index, _ = entry
        if handle is own:
            mine.append(entry)  # keep our own send entry, in its place
            continue
        if handle.claim():
            handle.payload = (index, _WANT)
            if handle.unpark() is not False:
                break  # (else its scheduler is gone: ask the next sender)
    senders.extendleft(reversed(mine))
    ch._swake = ch._closed or bool(senders)


#: The classes ``PyChannel(capacity)`` instantiates. They are one public class to
#: the user: named PyChannel (``type(ch).__name__``), shown as Channel by repr.
_FLAVOURS = (_Unbounded, _Bounded, _Rendezvous)
for _flavour in _FLAVOURS:
    _flavour.__name__ = _flavour.__qualname__ = "PyChannel"


# ---------------------------------------------------------------------------------
# Slow paths, shared by the flavours: one attempt under the lock, then park.


def _try_recv_locked(ch: PyChannel[Any]) -> Any:
    """Lock held: a message, or ``_NOTHING``; raises ChannelClosed if drained."""
    buf = ch._buf
    if buf:
        value = buf.popleft()
        if isinstance(ch, _Bounded):
            ch._room.append(None)
            ch._admit_locked()
        return value
    if isinstance(ch, _Rendezvous):
        value = _take_from_sender(ch)
        if value is not _NOTHING:
            return value
    if ch._closed:
        ch._take_closed()
    return _NOTHING


def _try_send_locked(ch: PyChannel[Any], value: Any) -> bool:
    """Lock held: send now if possible; raises ChannelClosed."""
    if ch._closed:
        raise ChannelClosed(ch, value)
    if isinstance(ch, _Rendezvous):
        return _hand_to_receiver(ch, value)
    if isinstance(ch, _Bounded):
        try:
            ch._room.pop()
        except IndexError:
            return False
    ch._buf.append(value)
    ch._feed()
    return True


def _yield() -> None:
    _sleep(0)


def _recv_slow(ch: PyChannel[Any], timeout: float | None, nowait: bool = False) -> Any:
    if not nowait and (timeout is None or timeout > 0):
        task = green_task()
        if task is not None:  # a greenlet (or a using_task scheduler) parks alone
            return _recv_in(task, ch, timeout)
    deadline = None if timeout is None else _now() + timeout
    if ch._fed_by_loop and not nowait and (timeout is None or timeout > 0) and not ch._closed:
        # A port's inbox: yield the GIL once before paying for a park. The I/O
        # thread works in batches and is often waiting for the GIL with the
        # next message in hand; it runs now and we take that message without a
        # park/unpark round (TCP echo, 100 ports, one thread: 0.68x -> 0.79x a
        # selectors client). Not for thread-to-thread channels: there both
        # sides would trade the GIL through sleep(0), 5x slower than parking.
        _yield()
        buf = ch._buf
        if buf and not isinstance(ch, _Rendezvous):
            try:
                value = buf.popleft()
            except IndexError:
                pass
            else:
                if isinstance(ch, _Bounded):
                    ch._room.append(None)
                    if ch._swake:
                        ch._admit()
                return value
    bounded = isinstance(ch, _Bounded)
    while True:
        with ch._lock:
            value = _try_recv_locked(ch)
            if value is not _NOTHING:
                return value
            if nowait:
                raise Empty
            if timeout is not None and timeout <= 0:
                raise TimeoutError("recv timed out")
            handle = ThreadWakeup()
            ch._park_receiver((handle, 0))
            ch._on_receiver_parked()
        try:
            woken = handle.park(None if deadline is None else max(0.0, deadline - _now()))
        except BaseException:  # interrupted (KeyboardInterrupt, a signal handler)
            shielded(_undo_recv, ch, handle)
            raise
        # No call into C between the park and the return below (unbounded,
        # rendezvous), so no signal handler runs there: the first place one
        # can run is the park's own, covered above.
        if not woken:
            ch._sel_unregister(handle)
            raise TimeoutError("recv timed out")
        value = handle.payload[1]
        if value is not _RETRY:
            if bounded:
                ch._sel_release_slot()
            return value


def _undo_recv(ch: PyChannel[Any], handle: ThreadWakeup) -> None:
    """A parked ``recv`` was interrupted: withdraw it, or put back at the head
    the message a waker handed it (into the slot it still holds, if bounded)."""
    if handle.abort():
        ch._sel_unregister(handle)
    elif handle.payload[1] is not _RETRY:
        ch._sel_unrecv(handle.payload[1])


def _send_slow(ch: PyChannel[Any], value: Any, timeout: float | None, nowait: bool = False) -> None:
    if not nowait and (timeout is None or timeout > 0):
        task = green_task()
        if task is not None:
            _send_in(task, ch, value, timeout)
            return
    deadline = None if timeout is None else _now() + timeout
    while True:
        with ch._lock:
            if _try_send_locked(ch, value):
                return
            if nowait:
                raise Full(value)
            if timeout is not None and timeout <= 0:
                raise TimeoutError("send timed out")
            handle = thread_wakeup()
            ch._park_sender((handle, 0, value))
            ch._on_sender_parked()
        try:
            woken = handle.park(None if deadline is None else max(0.0, deadline - _now()))
        except BaseException:  # interrupted: withdraw, or give back what we were woken with
            if shielded(_undo_send, ch, handle):
                return  # another thread's message was taken (see _undo_send)
            raise
        if not woken:
            ch._sel_unregister(handle)
            raise TimeoutError("send timed out")
        if _parked_send_done(ch, value, handle.payload[1]):
            return


def _parked_send_done(ch: Any, value: Any, mark: Any) -> bool:
    """What a waker left a parked sender: True if the message is sent (a
    receiver took it, or the slot or "come and hand it over" was used now),
    False to try again; raises ChannelClosed if the channel closed."""
    if mark is _SENT:
        return True
    if mark is _CLOSED:
        raise ChannelClosed(ch, value)
    return mark is not _RETRY and bool(ch._sel_claimed_send(value, mark))


def _undo_send(ch: PyChannel[Any], handle: ThreadWakeup) -> bool:
    """A parked ``send`` was interrupted: withdraw it, or give back the slot or
    the "come and hand it over" it was woken with. Returns True if the send
    happened after all (``_SENT``: only a thread other than the main one, which
    no signal reaches, has its message moved by a waker)."""
    if handle.abort():
        ch._sel_unregister(handle)
        return False
    mark = handle.payload[1]
    if mark is _SENT:
        return True
    ch._sel_abandon(mark)
    return False


# ---------------------------------------------------------------------------------
# The native core: ioserver._native.Channel, with what stays in Python here.


# The park of a task that is not a native thread or an asyncio task (a greenlet,
# a trio task, a using_task scheduler) is written once, over the select
# protocol, in select.py; select.py stands below this module, so it installs
# its functions here when it is imported (ioserver/__init__.py imports it).
_select_in: Callable[..., tuple[Any, Any]]
_aselect_in: Callable[..., Coroutine[Any, Any, tuple[Any, Any]]]


def _install_select(select_in: Any, aselect_in: Any) -> None:
    """Called by select.py: the select of any task kind, over ``block_after``."""
    global _select_in, _aselect_in
    _select_in, _aselect_in = select_in, aselect_in


def _recv_in(task: Any, ch: Any, timeout: float | None) -> Any:
    """``recv`` for a task that is not a native thread: a select over one channel."""
    return _select_in(task, [(False, ch, None)], timeout, "recv")[1]


def _send_in(task: Any, ch: Any, value: Any, timeout: float | None) -> None:
    """``send`` for a task that is not a native thread: a select over one send."""
    _select_in(task, [(True, ch, value)], timeout, "send")


def _green_recv(ch: Any, timeout: float | None) -> Any:
    """The native ``recv`` about to park: a greenlet's (or a using_task
    scheduler's) goes here; a native thread's gets ``_NOTHING`` (park in C)."""
    task = green_task()
    return _NOTHING if task is None else _recv_in(task, ch, timeout)


def _green_send(ch: Any, value: Any, timeout: float | None) -> Any:
    """The native ``send`` about to park (see :func:`_green_recv`)."""
    task = green_task()
    if task is None:
        return _NOTHING
    _send_in(task, ch, value, timeout)
    return None


def _arecv_in(ch: Any, task: Any, timeout: float | None) -> Coroutine[Any, Any, Any]:
    """``arecv`` of a task that is neither a thread nor an asyncio task: a trio
    task (:func:`_arecv_trio`), or a using_task scheduler (a select over one
    channel). Returns the coroutine (one frame fewer per call)."""
    if getattr(task, "checkpoints", False):
        return _arecv_trio(ch, task, timeout)
    return _arecv_select(ch, task, timeout)


def _asend_in(ch: Any, task: Any, value: Any, timeout: float | None) -> Coroutine[Any, Any, None]:
    """``asend`` of a trio task (:func:`_asend_trio`) or a using_task scheduler."""
    if getattr(task, "checkpoints", False):
        return _asend_trio(ch, task, value, timeout)
    return _asend_select(ch, task, value, timeout)


async def _arecv_select(ch: Any, task: Any, timeout: float | None) -> Any:
    """``arecv`` of a using_task scheduler: a select over one channel."""
    return (await _aselect_in(task, [(False, ch, None)], timeout, "arecv"))[1]


async def _asend_select(ch: Any, task: Any, value: Any, timeout: float | None) -> None:
    """``asend`` of a using_task scheduler: a select over one send."""
    await _aselect_in(task, [(True, ch, value)], timeout, "asend")


# A trio task's arecv/asend: a checkpoint even when the operation is ready
# (sched/trio.py): a pending cancel raises before anything happens (a message
# stays in the channel, nothing is sent); an operation done at once is followed
# by a yield with the cancel shielded, so a cancel landing there is left for the
# next checkpoint and the result is returned. A park is itself a checkpoint. The
# park is written for one channel (as _arecv_sel is for asyncio): trio parks on
# every receive of a producer/consumer pair, so its cost is the row's cost. A
# cancel ends a park only by winning the claim (nothing was handed over); one
# that loses lets the wakeup stand (trio's Abort.FAILED).


async def _arecv_trio(ch: Any, task: Any, timeout: float | None) -> Any:
    """``arecv`` of a trio task (see above)."""
    await task.checkpoint_if_cancelled()
    value = ch._sel_try_recv()
    if value is not _NOTHING:
        await task.cancel_shielded_checkpoint()
        return value
    return await _arecv_trio_park(ch, task, timeout)


async def _arecv_trio_park(ch: Any, task: Any, timeout: float | None) -> Any:
    """:func:`_arecv_trio` after its cancel check found none and its try found no
    message (the native core's Op starts here after doing both in C)."""
    deadline = None if timeout is None else _now() + timeout
    while True:
        if deadline is not None and deadline <= _now():
            raise TimeoutError("arecv timed out")
        handle = task.wakeup()
        if ch._sel_register_recv(handle, 0):
            try:
                woken = await handle.park(None if deadline is None else deadline - _now())
            except BaseException:  # the cancel won the claim: nothing was handed over
                ch._sel_unregister(handle)
                raise
            if not woken:
                ch._sel_unregister(handle)
                raise TimeoutError("arecv timed out")
            value = handle.payload[1]
            if value is not _RETRY:
                ch._sel_release_slot()
                return value
        value = ch._sel_try_recv()  # ready after all (or retry): try again
        if value is not _NOTHING:
            await task.cancel_shielded_checkpoint()
            return value


async def _asend_trio(ch: Any, task: Any, value: Any, timeout: float | None) -> None:
    """``asend`` of a trio task (see above)."""
    await task.checkpoint_if_cancelled()
    if ch._sel_try_send(value):
        await task.cancel_shielded_checkpoint()
        return
    await _asend_trio_park(ch, task, value, timeout)


async def _asend_trio_park(ch: Any, task: Any, value: Any, timeout: float | None) -> None:
    """:func:`_asend_trio` after its cancel check and a try that found no room."""
    deadline = None if timeout is None else _now() + timeout
    while True:
        if deadline is not None and deadline <= _now():
            raise TimeoutError("asend timed out")
        handle = task.wakeup()
        if ch._sel_register_send(handle, 0, value):
            try:
                woken = await handle.park(None if deadline is None else deadline - _now())
            except BaseException:
                ch._sel_unregister(handle)
                raise
            if not woken:
                ch._sel_unregister(handle)
                raise TimeoutError("asend timed out")
            if _parked_send_done(ch, value, handle.payload[1]):
                return
        if ch._sel_try_send(value):
            await task.cancel_shielded_checkpoint()
            return


async def _arecv_foreign(ch: Any, timeout: float | None) -> Any:
    """The native ``arecv`` of a trio task (or with a using_task scheduler live):
    the native core asks for this before it tries the operation in C."""
    task = foreign_async_task()
    if task is not None:
        return await _arecv_in(ch, task, timeout)
    return await _arecv_sel(ch, timeout)  # the override was a sync one: asyncio's path


async def _asend_foreign(ch: Any, value: Any, timeout: float | None) -> None:
    """The native ``asend`` of a trio task (see :func:`_arecv_foreign`)."""
    task = foreign_async_task()
    if task is not None:
        return await _asend_in(ch, task, value, timeout)
    if not ch._sel_try_send(value):
        await _asend_sel(ch, value, timeout)


async def _arecv_sel(ch: Any, timeout: float | None) -> Any:
    """``arecv`` written over the select protocol (any channel that speaks it):
    try, register, park, and handle what the waker left, until one succeeds."""
    task = foreign_async_task()
    if task is not None:  # a trio task (or a using_task scheduler)
        return await _arecv_in(ch, task, timeout)
    deadline = None if timeout is None else _now() + timeout
    while True:
        value = ch._sel_try_recv()
        if value is not _NOTHING:
            return value
        if timeout is not None and timeout <= 0:
            raise TimeoutError("arecv timed out")
        handle = AsyncWakeup()
        if not ch._sel_register_recv(handle, 0):
            continue  # ready after all: the registration re-checked
        try:
            woken = await handle.park(None if deadline is None else max(0.0, deadline - _now()))
        except WokenThenCancelled:
            value = handle.payload[1]
            if value is not _RETRY:
                ch._sel_unrecv(value)  # the cancelled receive takes nothing
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            ch._sel_unregister(handle)
            raise
        if not woken:
            ch._sel_unregister(handle)
            raise TimeoutError("arecv timed out")
        value = handle.payload[1]
        if value is not _RETRY:
            ch._sel_release_slot()
            return value


async def _asend_sel(ch: Any, value: Any, timeout: float | None) -> None:
    """``asend`` written over the select protocol (see :func:`_arecv_sel`)."""
    task = foreign_async_task()
    if task is not None:
        await _asend_in(ch, task, value, timeout)
        return
    deadline = None if timeout is None else _now() + timeout
    while True:
        if ch._sel_try_send(value):
            return
        if timeout is not None and timeout <= 0:
            raise TimeoutError("asend timed out")
        handle = AsyncWakeup()
        if not ch._sel_register_send(handle, 0, value):
            continue
        try:
            woken = await handle.park(None if deadline is None else max(0.0, deadline - _now()))
        except WokenThenCancelled:
            ch._sel_abandon(handle.payload[1])  # nothing was sent; pass the wakeup on
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            ch._sel_unregister(handle)
            raise
        if not woken:
            ch._sel_unregister(handle)
            raise TimeoutError("asend timed out")
        if _parked_send_done(ch, value, handle.payload[1]):
            return


if native is not None:
    from . import _native

    class NativeChannel(_native.Channel, Closing, Generic[T]):
        """The native channel (ioserver._native): the same contract as
        :class:`PyChannel`, every synchronous operation in C under the GIL.

        ``NativeChannel(capacity)`` is one class for the three flavours; the
        async operations are written here, over the select protocol."""

        __slots__ = ()

        def _after_fork(self) -> None:
            """Nothing to replace: no lock (the GIL is its mutex), and the parked
            entries of the parent's threads are dropped by the core (sched.py)."""

        def __iter__(self) -> Iterator[T]:
            """Receive until the channel is closed and drained."""
            return _iterate(self)

        def __aiter__(self) -> AsyncIterator[T]:
            """Receive (async) until the channel is closed and drained."""
            return _aiterate(self)

        # arecv/asend are the base's: awaitables that act when first awaited, in
        # C when the operation completes at once, else through _arecv_sel/_asend_sel.
        if TYPE_CHECKING:

            async def arecv(self, timeout: float | None = None) -> T: ...
            async def asend(self, value: T, timeout: float | None = None) -> None: ...

    _native._setup(
        ChannelClosed,
        Empty,
        Full,
        ChannelStatistics,
        NativeChannel,
        _RETRY,
        _SLOT,
        _WANT,
        _SENT,
        _CLOSED,
        _NOTHING,
        _arecv_sel,
        _asend_sel,
    )
    _native._setup_green(
        _green_recv,
        _green_send,
        _arecv_foreign,
        _asend_foreign,
        _arecv_trio_park,
        _asend_trio_park,
    )
    # asyncio.create_task() takes coroutines only: the native arecv/asend act as one.
    Coroutine.register(_native._Op)

# The channel in use. ``isinstance(x, Channel)`` holds for every channel the
# house makes (they are all made through this name).
if TYPE_CHECKING:
    Channel = PyChannel
elif native is not None:
    Channel = NativeChannel
else:
    Channel = PyChannel
