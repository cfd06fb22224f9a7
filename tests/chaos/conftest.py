"""Fixtures for the chaos suite: the real daemon, the bounded/long switch, the figures.

Every scenario takes the ``form`` fixture, parametrized ``bounded`` (the default run:
a few seconds per scenario, what ``scripts/test`` runs) and ``long`` (marked
``slow``: only with ``--run-slow``). The figures each scenario measures (RSS, fds,
threads, ping latency, bytes counted) go through the ``record`` fixture: printed at
the end of the run and written as JSON to ``$CHAOS_FIGURES`` (or
``<pytest basetemp>/chaos-figures.json``), which is where docs/reliability.md's
numbers come from.

The helpers are in ``chaos_support.py`` beside this file; the daemon ones
(``DaemonProcess``, ``RawClient`` ...) come from ``tests/daemon/daemon_support.py``,
put on ``sys.path`` here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "daemon"))  # daemon_support

_FIGURES: dict[str, dict[str, Any]] = {}


BOUNDED_TIMEOUT = 90
"""Seconds a bounded scenario may take before pytest-timeout fails it (they take a few)."""
LONG_TIMEOUT = 900
"""Seconds a long scenario may take."""


@pytest.fixture(
    params=[
        pytest.param("bounded", marks=pytest.mark.timeout(BOUNDED_TIMEOUT)),
        pytest.param("long", marks=[pytest.mark.slow, pytest.mark.timeout(LONG_TIMEOUT)]),
    ],
)
def form(request: pytest.FixtureRequest) -> str:
    """``"bounded"`` (always run, seconds) or ``"long"`` (``--run-slow`` only); each
    with its timeout (pytest-timeout)."""
    return str(request.param)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``record(**figures)``: keep this test's figures for the report (JSON-able values).

    Several calls merge; the figures are printed at once too (visible with ``-s``)."""
    name = request.node.nodeid.split("::", 1)[-1]

    def keep(**figures: Any) -> None:
        _FIGURES.setdefault(name, {}).update(figures)
        print(f"\n[chaos] {name}: {json.dumps(figures, sort_keys=True)}", flush=True)

    return keep


def _figures_path(config: pytest.Config) -> Path:
    env = os.environ.get("CHAOS_FIGURES")
    if env:
        return Path(env)
    factory = getattr(config, "_tmp_path_factory", None)
    base = factory.getbasetemp() if factory is not None else Path("/tmp")
    return Path(base) / "chaos-figures.json"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the figures of the chaos scenarios that ran, and write them as JSON."""
    if not _FIGURES:
        return
    path = _figures_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "nproc": os.cpu_count(),
        "uname_r": os.uname().release,
        "python": sys.version.split()[0],
    }
    path.write_text(json.dumps({"machine": meta, "scenarios": _FIGURES}, indent=2) + "\n")
    terminalreporter.section("chaos figures")
    for name, figures in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(figures, sort_keys=True)}")
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """A list of callables run at teardown, last first, each even if another failed."""
    actions: list[Callable[[], object]] = []
    yield actions
    errors: list[BaseException] = []
    for action in reversed(actions):
        try:
            action()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
