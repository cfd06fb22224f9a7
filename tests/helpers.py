"""Shared test helpers: thread runners, state polling, a loop in a thread, background calls.

Test files import them with ``from helpers import run_threads, wait_until``
(``pythonpath = ["tests"]`` in pyproject.toml puts this directory on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: Running under AddressSanitizer (scripts/sanitize preloads its runtime): freed
#: memory sits in its quarantine, so RSS bounds mean nothing there.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def run_threads(fns: list[Callable[[], object]], timeout: float = 10.0) -> list[object]:
    """Run each callable in a daemon thread; return their results in order.

    Re-raises the first exception a callable raised (in list order) and fails
    the test if any thread is still running ``timeout`` seconds after the start.
    """
    results: list[object] = [None] * len(fns)
    errors: list[BaseException | None] = [None] * len(fns)

    def runner(i: int, fn: Callable[[], object]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:
            errors[i] = exc

    threads = [
        threading.Thread(target=runner, args=(i, fn), daemon=True, name=f"run_threads-{i}")
        for i, fn in enumerate(fns)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    for exc in errors:
        if exc is not None:
            raise exc
    if alive:
        pytest.fail(f"threads still running after {timeout} s: {alive}")
    return results


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``fn`` in a daemon thread; ``(thread, out)``, where ``out`` gets its result
    or the exception it raised once it ends (join the thread with a timeout first)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        time.sleep(0.0005)


async def await_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    """``wait_until`` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate!r}")
        await asyncio.sleep(0.0005)


class LoopThread:
    """An event loop running forever in a daemon thread (uvloop when asked)."""

    def __init__(self, use_uvloop: bool = False) -> None:
        if use_uvloop:
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="loop")
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Schedule ``coro`` on the loop; returns a concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return self.submit(coro).result(timeout)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


@contextlib.contextmanager
def loop_thread(use_uvloop: bool = False) -> Iterator[LoopThread]:
    """A :class:`LoopThread` for the duration of a ``with`` block."""
    lt = LoopThread(use_uvloop)
    try:
        yield lt
    finally:
        lt.stop()


class Background:
    """Run ``fn`` in a daemon thread; ``result()`` returns its value or re-raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 10.0) -> Any:
        assert self.done.wait(timeout), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.value

    def outcome(self, timeout: float = 10.0) -> Any:
        """The value, or the exception instance raised."""
        assert self.done.wait(timeout), "background call did not finish"
        return self.error if self.error is not None else self.value
