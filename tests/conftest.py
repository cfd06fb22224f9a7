"""pytest hooks and fixtures shared by every test: the ``--run-slow`` switch and loops in
threads. The helpers themselves live in tests/helpers.py (``from helpers import ...``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import LoopThread, loop_thread


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def loop_in_thread() -> Iterator[LoopThread]:
    """A plain asyncio loop running in its own daemon thread."""
    with loop_thread() as lt:
        yield lt


@pytest.fixture
def uvloop_in_thread() -> Iterator[LoopThread]:
    """A uvloop loop running in its own daemon thread."""
    with loop_thread(use_uvloop=True) as lt:
        yield lt
