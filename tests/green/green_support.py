"""Runners for the task-kind tests: one place where jobs of each kind run.

A runner runs jobs of one kind of task: a plain thread, an asyncio task (on a
loop in its own thread), a trio task (a ``trio.run`` in its own thread), a
greenlet on the main thread's hub, a greenlet on a worker thread's hub. A job
is a callable for the blocking kinds and a coroutine function for the await
kinds; ``submit`` returns a :class:`Job` whose ``future`` (a
``concurrent.futures.Future``) gets the outcome and whose ``cancel()`` cancels
it the way its kind does (asyncio ``Task.cancel``, a trio cancel scope,
``Greenlet.kill``). While greenlets on the main thread's hub take part, the
main thread must let its hub run: every wait here pumps it (``pump``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import trio
from gevent._hub_local import get_hub_if_exists

SYNC_KINDS = ("thread", "greenlet_main", "greenlet_worker")
ASYNC_KINDS = ("asyncio", "trio")
KINDS = ("thread", "asyncio", "trio", "greenlet_main", "greenlet_worker")


def pump(seconds: float = 0.001) -> None:
    """Let the main thread's hub run (if it has one), else just sleep."""
    if get_hub_if_exists() is not None:
        gevent.sleep(seconds)
    else:
        time.sleep(seconds)


def pump_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate!r}")
        pump()


def outcome(fut: concurrent.futures.Future[Any], timeout: float = 10.0) -> tuple[str, Any]:
    """("ok", value) or ("error", exception), pumping the main hub meanwhile."""
    pump_until(fut.done, timeout, "a job's outcome")
    exc = fut.exception()
    return ("ok", fut.result()) if exc is None else ("error", exc)


class JobCancelled(Exception):
    """A trio job's cancel scope caught its cancellation (the job was cancelled)."""


class Job:
    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.cancel: Callable[[], None] = lambda: None

    def settle(self, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the test
            self.future.set_exception(exc)
        else:
            self.future.set_result(value)


class ThreadRunner:
    kind = "thread"

    def submit(self, fn: Callable[[], Any]) -> Job:
        job = Job()
        threading.Thread(target=job.settle, args=(fn,), daemon=True).start()
        return job

    def close(self) -> None:
        pass


class AsyncioRunner:
    kind = "asyncio"

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, afn: Callable[[], Any]) -> Job:
        job = Job()

        async def run() -> Any:
            return await afn()

        def start() -> None:
            task = self.loop.create_task(run())

            def done(t: asyncio.Task[Any]) -> None:
                if t.cancelled():
                    job.future.set_exception(asyncio.CancelledError())
                elif t.exception() is not None:
                    job.future.set_exception(t.exception())  # type: ignore[arg-type]
                else:
                    job.future.set_result(t.result())

            task.add_done_callback(done)
            job.cancel = lambda: self.loop.call_soon_threadsafe(task.cancel)
            job.cancel_here = task.cancel  # type: ignore[attr-defined]

        self.loop.call_soon_threadsafe(start)
        return job

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class TrioRunner:
    kind = "trio"

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        send, self._jobs = trio.open_memory_channel[Any](1000)
        self._send = send
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.ready.set()
            async for start in self._jobs:
                start()
            nursery.cancel_scope.cancel()

    def submit(self, afn: Callable[[], Any]) -> Job:
        job = Job()
        scope = trio.CancelScope()

        async def run() -> None:
            try:
                with scope:
                    value = await afn()
                    job.future.set_result(value)
                    return
            except BaseException as exc:
                job.future.set_exception(exc)
                return
            job.future.set_exception(JobCancelled("the cancel scope caught the cancellation"))

        job.cancel = lambda: self.token.run_sync_soon(scope.cancel)
        job.cancel_here = scope.cancel  # type: ignore[attr-defined]
        self.token.run_sync_soon(self._send.send_nowait, lambda: self._nursery.start_soon(run))
        return job

    def close(self) -> None:
        self.token.run_sync_soon(self._send.close)
        self.thread.join(10)


def _greenlet_job(fn: Callable[[], Any], job: Job) -> gevent.Greenlet:
    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:  # GreenletExit, Timeout: handed to the test
            job.future.set_exception(exc)
            raise
        job.future.set_result(value)

    return gevent.spawn(run)


class MainHubRunner:
    """Greenlets on the main thread's hub (the test's thread: it pumps the hub)."""

    kind = "greenlet_main"

    def submit(self, fn: Callable[[], Any]) -> Job:
        job = Job()
        g = _greenlet_job(fn, job)
        job.cancel = lambda: g.kill(block=False)
        job.cancel_here = job.cancel  # type: ignore[attr-defined]
        return job

    def close(self) -> None:
        pass


class WorkerHubRunner:
    """Greenlets on the hub of a worker thread, fed through the hub's threadsafe callbacks."""

    kind = "greenlet_worker"

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _main(self) -> None:
        self.hub = gevent.get_hub()
        self.stop = gevent.event.Event()
        keep = self.hub.loop.async_()
        keep.start(lambda: None)  # the loop lives while this thread waits for jobs
        self.ready.set()
        self.stop.wait()
        keep.close()

    def submit(self, fn: Callable[[], Any]) -> Job:
        job = Job()

        def start() -> None:
            g = _greenlet_job(fn, job)
            job.cancel = lambda: self.hub.loop.run_callback_threadsafe(lambda: g.kill(block=False))
            job.cancel_here = lambda: g.kill(block=False)  # type: ignore[attr-defined]

        self.hub.loop.run_callback_threadsafe(start)
        return job

    def close(self) -> None:
        self.hub.loop.run_callback_threadsafe(self.stop.set)
        self.thread.join(10)


def make_runner(kind: str) -> Any:
    return {
        "thread": ThreadRunner,
        "asyncio": AsyncioRunner,
        "trio": TrioRunner,
        "greenlet_main": MainHubRunner,
        "greenlet_worker": WorkerHubRunner,
    }[kind]()
