"""The ``io`` fixture most I/O test modules share (a module that needs another
server defines its own ``io``, which takes precedence)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ioserver import IOServer


@pytest.fixture(params=["auto", "asyncio"], ids=["uvloop", "asyncio"])
def io(request: pytest.FixtureRequest) -> Iterator[IOServer]:
    """A started IOServer on uvloop, then on asyncio's own loop (every test runs
    on both), its thread named after the test module; stopped after the test."""
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    with IOServer(loop=request.param, name=f"{name}-{request.param}") as server:
        yield server
