"""docs/protocol.md is true: its client example runs as written against a real daemon,
and its tables (methods, options, events, error codes, file modes) name exactly what
the daemon accepts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ioserver import protocol

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MD = (ROOT / "docs" / "protocol.md").read_text()


def section(number: int) -> str:
    """The text of section ``number`` ("## N. ...") of docs/protocol.md."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", PROTOCOL_MD, re.M | re.S)
    assert match, f"docs/protocol.md has no section {number}"
    return match[0]


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``| header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def names(cells: list[list[str]], column: int = 0) -> list[str]:
    """The `code` names of one column."""
    return [re.fullmatch(r"`([^`]+)`", row[column])[1] for row in cells]  # type: ignore[index]


# -- section 13 runs ----------------------------------------------------------------------


@contextlib.contextmanager
def daemon(env: dict[str, str], socket_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``ioserver serve`` with the shipped config (its default socket), as a user runs it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ioserver", "serve", "--config", str(ROOT / "config/ioserver.toml")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.02)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["XDG_RUNTIME_DIR", "tempdir"])
def test_the_client_in_a_page_of_python_runs_as_written(where: str) -> None:
    """Section 13, verbatim, in a fresh process: with $XDG_RUNTIME_DIR set, and without
    it (the daemon's fallback, <tempdir>/ioserver-<uid>/, with TMPDIR pointing here)."""
    blocks = re.findall(r"```python\n(.*?)```", section(13), re.S)
    assert len(blocks) == 1
    directory = tempfile.mkdtemp(prefix="iosdoc-", dir="/tmp")  # socket paths < 108 bytes
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "TMPDIR")}
        if where == "XDG_RUNTIME_DIR":
            env["XDG_RUNTIME_DIR"] = directory
            socket_path = Path(directory, "ioserver.sock")
        else:
            env["TMPDIR"] = directory
            socket_path = Path(directory, f"ioserver-{os.getuid()}", "ioserver.sock")
        with daemon(env, socket_path):
            done = subprocess.run(
                [sys.executable, "-c", blocks[0]],
                capture_output=True,
                text=True,
                timeout=40,
                env=env,
                cwd=directory,
            )
        assert done.returncode == 0, f"section 13 failed:\n{done.stderr}"
        out = done.stdout.splitlines()
        assert out[0].startswith("{'version': 1, 'server': 'ioserver "), out
        assert out[1] == "pong", out
        events = [line.split(" ", 1)[0] for line in out[2:]]
        assert events[0] == "accepted", out
        assert events.count("data") == 2 and events.count("closed") == 2, out
        lines = [line for line in out if re.fullmatch(r"data \[\d+, b'hello\\n'\]", line)]
        assert len(set(lines)) == 2, out  # the line at the server side, then back at conn
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- the tables name what the code accepts ------------------------------------------------


def test_the_method_table_is_the_method_table() -> None:
    rows = table(section(5), "method")
    assert sorted(names(rows)) == sorted(protocol.METHODS)
    for row in rows:
        method = protocol.METHODS[names([row])[0]]
        documented = re.findall(r"`(\w+)\??:", row[1])
        assert documented == [p.name for p in method.params], (row, method.params)


def test_the_notifications_and_events_are_the_codes() -> None:
    assert sorted(names(table(section(6), "notification"))) == sorted(protocol.NOTIFICATIONS)
    assert sorted(names(table(section(7), "event"))) == sorted(protocol.EVENTS)
    codes = {row[1].strip("`"): int(row[0]) for row in table(section(4), "code")}
    assert codes == dict(protocol.ERROR_CODES)


def test_the_options_are_the_ones_each_method_takes() -> None:
    text = section(5)
    common = set(names(table(text, "key")))
    specific: dict[str, set[str]] = {}
    for row in table(text, "method | key"):  # the kind-specific keys
        for method in re.findall(r"`(\w+)`", row[0]):
            specific.setdefault(method, set()).add(row[1].strip("`"))
    info: dict[str, Any] = protocol.api_info()["methods"]
    for method, spec in info.items():
        options = (spec.get("options") or {}).get("opts")
        if options is None or method == "setopts":
            continue
        assert set(options) == common | specific.get(method, set()), method
    assert set(info["setopts"]["options"]["opts"]) == {"active"}  # "setopts takes only active"


def test_the_file_modes_are_the_ones_the_daemon_opens() -> None:
    """The modes section 5 names for open_file: each opens; "r+b" and the like are refused."""
    from ioserver import IOServer

    row = next(r for r in table(section(5), "method") if r[0] == "`open_file`")
    modes = re.findall(r'`"([a-z+]+)"`', row[1])
    assert modes == ["rb", "wb", "ab"], row
    assert '"r+b"' not in section(5).replace('(`"r+b"`, `"w+b"`', "")  # only as refused
    directory = tempfile.mkdtemp(prefix="iosdoc-")
    try:
        path = os.path.join(directory, "f")
        Path(path).write_bytes(b"x")
        with IOServer() as io:
            for mode in modes:
                io.open_file(path, mode).close()
            for mode in ("r+b", "w+b", "a+b", "r"):
                with pytest.raises(ValueError, match="mode must be"):
                    io.open_file(path, mode)
    finally:
        shutil.rmtree(directory)


# -- the README's install section, the one version, the changelog --------------------------


def test_the_readme_says_how_to_install_before_the_examples() -> None:
    readme = (ROOT / "README.md").read_text()
    install = readme.index("## Install into your own project")
    assert install < readme.index("```python"), "the install section comes before the examples"
    text = readme[install : readme.index("\n## ", install + 1)]
    for words in (
        "pip install /path/to/ioserver",
        "python -m build",
        "pip wheel",
        "C compiler",
        "ioserver.NATIVE",
        "IOSERVER_PURE=1",
    ):
        assert words in text, words


@pytest.mark.timeout(300)
def test_a_wheel_carries_the_one_version_and_the_command(tmp_path: Path) -> None:
    """``pip wheel`` as the README says (from a clean copy of the sources, without a
    compiler to keep it quick): the wheel's version is ``ioserver.__version__``, and it
    holds both packages and the ``ioserver`` command."""
    import tomllib
    import zipfile

    import ioserver

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ioserver.__version__"}

    src = tmp_path / "src"
    for name in ("ioserver", "client"):
        shutil.copytree(
            ROOT / name, src / name, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "IOSERVER_STRICT_BUILD"}
    env["CC"] = "/bin/false"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("ioserver-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
        info = next(n for n in files if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert f"\nVersion: {ioserver.__version__}\n" in metadata
    assert wheel.name.startswith(f"ioserver-{ioserver.__version__}-")
    assert "ioserver = ioserver.cli:main" in entry_points
    for module in ("ioserver/cli.py", "ioserver/protocol/__init__.py", "ioserver_client/remote.py"):
        assert module in files, module
    # client/ installs namespaced: no top-level "client" package in the wheel.
    assert not [name for name in files if name.startswith("client/")]


def test_the_changelog_has_the_released_version_and_wire_protocol_sections() -> None:
    import ioserver

    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert releases[0] == "Unreleased"
    assert releases[1] == ioserver.__version__  # the latest release is the version we are
    for name in releases:
        start = changelog.index(f"## [{name}]")
        end = changelog.find("\n## [", start + 1)
        assert "### Wire protocol" in changelog[start : end if end > 0 else None], name


def test_the_limits_table_is_the_limits_section_of_the_config() -> None:
    """Section 9 names every ``[limits]`` key with its default, and nothing else."""
    from dataclasses import fields

    from ioserver.config import LimitsConfig

    rows = table(section(9), "limit")
    documented = dict(zip(names(rows), (row[1] for row in rows), strict=True))
    defaults = {f.name: getattr(LimitsConfig(), f.name) for f in fields(LimitsConfig)}
    assert set(documented) == set(defaults)
    units = {"MiB": 1024 * 1024, "s": 1}
    for key, text in documented.items():
        number, _, unit = text.partition(" ")
        assert float(number) * units.get(unit, 1) == defaults[key], (key, text)
