"""Workloads of the ``channels`` suite for trio tasks and gevent greenlets (issue 9):
thread -> trio task and thread -> greenlet (Channel vs aiologic.SimpleQueue), trio task
-> trio task (Channel vs trio.open_memory_channel), greenlet -> greenlet on one hub
(Channel vs gevent.queue.Queue). Each returns the seconds from the first send to the
last receive."""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .harness import RunTimeout

BUFFER = 1024  # the bounded contenders' capacity


class _TrioThread:
    """``trio.run(main)`` in a daemon thread; ``main`` gets a ready callback."""

    def __init__(self, main: Callable[[Callable[[], None]], Any]) -> None:
        import trio

        self.ready = threading.Event()
        self.error: list[BaseException] = []

        def run() -> None:
            try:
                trio.run(main, self.ready.set)
            except BaseException as exc:  # reported to the caller
                self.error.append(exc)
                self.ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RunTimeout
        if self.error:
            raise self.error[0]


def thread_to_trio(kind: str) -> Callable[[int, float], float]:
    """A plain thread sends n messages; a trio task (in its own thread) receives them."""

    def run(n: int, timeout: float) -> float:
        if kind == "Channel()":
            from ioserver import Channel

            ch: Any = Channel()
            send, arecv = ch.send, ch.arecv
        else:
            import aiologic

            q: Any = aiologic.SimpleQueue()
            send, arecv = q.green_put, q.async_get
        ends: list[float] = []

        async def main(ready: Callable[[], None]) -> None:
            ready()
            for _ in range(n):
                await arecv()
            ends.append(perf_counter())

        t = _TrioThread(main)
        if not t.ready.wait(timeout):
            raise RunTimeout
        start = perf_counter()
        for i in range(n):
            send(i)
        t.join(timeout)
        return ends[0] - start

    return run


def thread_to_greenlet(kind: str) -> Callable[[int, float], float]:
    """A plain thread sends n messages; a greenlet on another thread's hub receives them."""

    def run(n: int, timeout: float) -> float:
        import gevent

        if kind == "Channel()":
            from ioserver import Channel

            ch: Any = Channel()
            send, recv = ch.send, ch.recv
        else:
            import aiologic

            q: Any = aiologic.SimpleQueue()
            send, recv = q.green_put, q.green_get
        ready = threading.Event()
        ends: list[float] = []

        def consumer() -> None:
            ready.set()
            for _ in range(n):
                recv()
            ends.append(perf_counter())

        def hub_thread() -> None:
            gevent.spawn(consumer).join()
            gevent.get_hub().destroy(destroy_loop=True)

        t = threading.Thread(target=hub_thread, daemon=True)
        t.start()
        if not ready.wait(timeout):
            raise RunTimeout
        start = perf_counter()
        for i in range(n):
            send(i)
        t.join(timeout)
        if t.is_alive() or not ends:
            raise RunTimeout
        return ends[0] - start

    return run


def trio_to_trio(kind: str) -> Callable[[int, float], float]:
    """Two trio tasks of one run: a producer sends n messages through a buffer of
    BUFFER to a consumer."""

    def run(n: int, timeout: float) -> float:
        import trio

        times: list[float] = []

        async def main(ready: Callable[[], None]) -> None:
            ready()
            if kind == "Channel(1024)":
                from ioserver import Channel

                ch: Any = Channel(BUFFER)
                asend, arecv = ch.asend, ch.arecv
            else:
                s, r = trio.open_memory_channel[Any](BUFFER)
                asend, arecv = s.send, r.receive

            async def producer() -> None:
                for i in range(n):
                    await asend(i)

            async def consumer() -> None:
                for _ in range(n):
                    await arecv()

            t0 = perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer)
                nursery.start_soon(producer)
            times.append(perf_counter() - t0)

        t = _TrioThread(main)
        t.join(timeout)
        return times[0]

    return run


def greenlet_to_greenlet(kind: str) -> Callable[[int, float], float]:
    """Two greenlets of one hub (in a thread of their own): a producer puts n messages
    through a buffer of BUFFER to a consumer."""

    def run(n: int, timeout: float) -> float:
        times: list[float] = []
        errors: list[BaseException] = []

        def hub_thread() -> None:
            import gevent

            try:
                if kind == "Channel(1024)":
                    from ioserver import Channel

                    ch: Any = Channel(BUFFER)
                    put, get = ch.send, ch.recv
                else:
                    import gevent.queue

                    q: Any = gevent.queue.Queue(BUFFER)
                    put, get = q.put, q.get

                def producer() -> None:
                    for i in range(n):
                        put(i)

                def consumer() -> None:
                    for _ in range(n):
                        get()

                t0 = perf_counter()
                gevent.joinall([gevent.spawn(consumer), gevent.spawn(producer)], raise_error=True)
                times.append(perf_counter() - t0)
            except BaseException as exc:  # reported to the caller
                errors.append(exc)
            finally:
                gevent.get_hub().destroy(destroy_loop=True)

        t = threading.Thread(target=hub_thread, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise RunTimeout
        if errors:
            raise errors[0]
        return times[0]

    return run
