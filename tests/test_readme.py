"""The README's examples run exactly as written (each ```python block, in a fresh process)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    with daemon_if_needed(code, env, tmp_path):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=40, env=env
        )
    assert done.returncode == 0, f"example {index} failed:\n{code}\n{done.stderr}"
    assert done.stdout.strip(), "every example prints something"


@contextlib.contextmanager
def daemon_if_needed(code: str, env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """Examples that use ``ioserver_client`` expect a daemon on the default socket: start one
    the way ``scripts/serve`` does (same config), with the default socket in tmp_path."""
    if "ioserver_client.connect" not in code:
        yield
        return
    config = README.parent / "config" / "ioserver.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioserver", "serve", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        socket_path = tmp_path / "ioserver.sock"
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
