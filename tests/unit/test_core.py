"""Which core runs: ``ioserver.NATIVE``, ``IOSERVER_PURE=1``, and where it is shown."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

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


@pytest.mark.timeout(300)
def test_the_project_installs_and_runs_without_a_compiler(tmp_path: Path) -> None:
    """With no working C compiler the install goes on (the extension is optional)
    and the pure-Python core runs: ``NATIVE`` is False and channels and an
    IOServer work."""
    src = tmp_path / "src"
    for name in ("ioserver", "client"):
        shutil.copytree(
            os.path.join(ROOT, name),
            src / name,
            ignore=shutil.ignore_patterns("*.so", "__pycache__"),
        )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    site = tmp_path / "site"
    env = {
        k: v for k, v in os.environ.items() if k not in ("IOSERVER_PURE", "IOSERVER_STRICT_BUILD")
    }
    env["CC"] = "/bin/false"  # every compile fails, as on a machine without gcc
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert not list(site.glob("ioserver/_native*.so"))
    # The daemon's client installs namespaced: no top-level "client" to clash with
    # a program's own client.py.
    assert (site / "ioserver_client" / "remote.py").is_file()
    assert (site / "ioserver_client" / "py.typed").is_file()
    assert not (site / "client").exists()
    check = (
        "import ioserver\n"
        "from ioserver import Channel, IOServer\n"
        "ch = Channel(1); ch.send(42); assert ch.recv() == 42\n"
        "with IOServer() as io: assert io.call(lambda: 7) == 7\n"
        "import ioserver_client; assert ioserver_client.connect\n"
        "print(ioserver.NATIVE, ioserver.__file__)\n"
    )
    # -S: no site module, so no .pth (the dev venv's editable install would map
    # ioserver._native to the checkout's build); the dependencies come after `site`.
    env["PYTHONPATH"] = os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])
    ran = subprocess.run(
        [sys.executable, "-S", "-c", check],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    native, where = ran.stdout.split()
    assert native == "False"
    assert where.startswith(str(site))
