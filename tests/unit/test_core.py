"""Which core runs: ``ioserver.NATIVE``, ``IOSERVER_PURE=1``, and where it is shown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ioserver
from ioserver import IOServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def core_of(env_pure: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "IOSERVER_PURE"}
    if env_pure is not None:
        env["IOSERVER_PURE"] = env_pure
    done = subprocess.run(
        [sys.executable, "-c", "import ioserver; print(ioserver.NATIVE)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def native_built() -> bool:
    try:
        import ioserver._native  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(120)
def test_ioserver_pure_forces_the_python_core() -> None:
    assert core_of("1") == "False"
    assert core_of("0") == str(native_built())
    assert core_of(None) == str(native_built())


def test_native_says_which_core_this_process_runs() -> None:
    assert isinstance(ioserver.NATIVE, bool)
    pure = os.environ.get("IOSERVER_PURE", "") not in ("", "0")
    assert ioserver.NATIVE is (native_built() and not pure)


@pytest.mark.timeout(30)
def test_stats_names_the_core() -> None:
    with IOServer() as io:
        assert io.stats()["core"] == ("native" if ioserver.NATIVE else "python")
