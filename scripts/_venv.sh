# Sourced by scripts/test and scripts/serve: create or refresh .venv and install the project.
# Re-installs only when pyproject.toml changed since the last install (a stamp file records it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
extras="${1:-}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "ioserver needs Python >= 3.11; set PYTHON=/path/to/python3.11+" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    echo ">> creating $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.ioserver-installed${extras:+-$extras}"
# The stamp covers what the install builds from: the project metadata, the native core,
# and the names of the package files (a strict editable install links each one: a new
# module needs a new link).
want="$( (cat "$root/pyproject.toml" "$root/setup.py" "$root"/ioserver/csrc/*
    cd "$root" && find ioserver client -name '*.py' -o -name '*.pyi' -o -name py.typed | sort
    ) | sha256sum | cut -d' ' -f1)"
# The test extra builds the native core strictly (-Wall -Werror; a failed build fails).
if [ "$extras" = "test" ]; then export IOSERVER_STRICT_BUILD=1; fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo ">> installing ioserver${extras:+[$extras]} into $venv" >&2
    # editable_mode=strict: a tree of links to the checkout's files, which type checkers
    # (mypy, pyright) follow; the default mode is an import hook they cannot see, and a
    # user's mypy run in this venv would not find ioserver (tests/unit/test_typing.py).
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --config-settings editable_mode=strict -e "$root${extras:+[$extras]}" 2>&1 \
        | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -c 'import ioserver' || { echo "install failed" >&2; exit 2; }
    echo "$want" > "$stamp"
fi
