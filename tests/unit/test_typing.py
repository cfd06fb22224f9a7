"""A user's type checker sees ioserver: mypy run on a program in this venv.

The dev venv installs the project in a mode type checkers follow (scripts/_venv.sh:
``editable_mode=strict``, a tree of links; the default editable mode is an import
hook mypy cannot see), and the openers take typed keyword options
(``ioserver.drivers.options``), so a misspelt option is a type error in the
user's program, not a TypeError at run time (issue 10).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed"),
    # mypy reads the source, whichever core runs: one run (the default core's) is enough.
    pytest.mark.skipif(
        os.environ.get("IOSERVER_PURE", "") not in ("", "0"), reason="core-independent"
    ),
]

GOOD = """
    from ioserver import Channel, Closed, Data, IOServer, Port
    import ioserver_client

    def run() -> None:
        inbox: Channel[object] = Channel(16)
        with IOServer() as io:
            listener: Port = io.listen_tcp("127.0.0.1", 0, backlog=16, conn_inbox=inbox)
            conn = io.connect_tcp("127.0.0.1", 5000, packet="line", high_water=1 << 16)
            proc = io.spawn(["cat"], stderr="merge", env={"LANG": "C"}, kill_timeout=1.0)
            udp = io.open_udp(("127.0.0.1", 0), remote_addr=("127.0.0.1", 9))
            timer = io.send_after(0.5, conn, "late")
            cancelled: bool = timer.cancel()
            msg = conn.recv(timeout=1)
            if isinstance(msg, Data):
                print(msg.data, cancelled, listener, proc, udp)
            elif isinstance(msg, Closed):
                print(msg.reason)
        remote = ioserver_client.connect()
        remote.connect_tcp("127.0.0.1", 5000, packet=4).close()
"""

BAD = """
    from ioserver import IOServer

    with IOServer() as io:
        io.connect_tcp("127.0.0.1", 5000, pakcet="line")
        io.listen_tcp("127.0.0.1", 0, backlog="16")
        io.spawn(["cat"], stderr="mix")
        io.send_after(1.0, "not a channel", "message")
"""


def test_mypy_sees_ioserver_and_its_typed_options(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            "good.py",
            "bad.py",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: ioserver must be found as installed
        env=env,
        timeout=170,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if e.startswith("good.py")], done.stdout
    assert "import-not-found" not in done.stdout and "import-untyped" not in done.stdout
    bad = {int(line.split(":")[1]) for line in errors if line.startswith("bad.py")}
    assert bad == {5, 6, 7, 8}, done.stdout
    assert 'Unexpected keyword argument "pakcet"' in done.stdout, done.stdout
