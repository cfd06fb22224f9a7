"""The repository explains itself: no file points at documents outside it, and
every numbered lesson the code cites is written down in docs/architecture.md.

Design notes that lived beside the repository (a ``shared/`` tree of seeds and
research, DESIGN.md, STYLE.md) are not part of it; a reader of a checkout must
find everything a comment or doc refers to inside the checkout.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What the check covers: the code, the tests, the scripts, the docs and config.
SCANNED = ("ioserver", "client", "tests", "scripts", "docs", "config", "README.md")

# References to documents outside the repository. Spelled in pieces so that this
# file does not match itself.
OUTSIDE = [
    "../" + "shared",
    "shared/" + "seeds",
    "shared/" + "research",
    "DESIGN" + ".md",
    "STYLE" + ".md",
]

LESSON = re.compile(r"\blesson (\d+)\b", re.IGNORECASE)


def text_files() -> list[Path]:
    """Every file under SCANNED that git tracks or would track (not ignored), as text;
    a directory walk when this is not a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "--", *SCANNED],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.splitlines()
        paths = [ROOT / name for name in listed]
    except (OSError, subprocess.SubprocessError):
        paths = [
            path
            for top in SCANNED
            for path in ([ROOT / top] if (ROOT / top).is_file() else (ROOT / top).rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts
        ]
    out = []
    for path in paths:
        if not path.is_file():
            continue  # deleted in the work tree, not yet in the index
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (a built extension)
        out.append(path)
    return out


def test_no_file_refers_to_documents_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    found = []
    for path in text_files():
        if path.resolve() == me:
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for ref in OUTSIDE:
                if ref in line:
                    found.append(f"{path.relative_to(ROOT)}:{n}: {ref}")
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


def lessons_written() -> set[int]:
    """The numbers of the lessons docs/architecture.md states ("**N. ...**")."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("\n## Lessons\n", 1)[1].split("\n## ", 1)[0]
    return {int(n) for n in re.findall(r"^\*\*(\d+)\. ", section, re.MULTILINE)}


def test_every_cited_lesson_is_written_down() -> None:
    written = lessons_written()
    assert written == set(range(1, 13)), sorted(written)
    missing = []
    for path in text_files():
        if path.suffix not in (".py", ".md", ".c", ".h", ".pyi", ".toml", ""):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in LESSON.finditer(line):
                if int(match.group(1)) not in written:
                    missing.append(f"{path.relative_to(ROOT)}:{n}: {match.group(0)}")
    assert not missing, "lessons cited but not in docs/architecture.md:\n" + "\n".join(missing)
