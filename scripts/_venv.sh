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
# The stamp covers what the install builds from: the project metadata and the native core.
want="$(cat "$root/pyproject.toml" "$root/setup.py" "$root"/ioserver/csrc/* | sha256sum | cut -d' ' -f1)"
# The test extra builds the native core strictly (-Wall -Werror; a failed build fails).
if [ "$extras" = "test" ]; then export IOSERVER_STRICT_BUILD=1; fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo ">> installing ioserver${extras:+[$extras]} into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${extras:+[$extras]}" 2>&1 \
        | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -c 'import ioserver' || { echo "install failed" >&2; exit 2; }
    echo "$want" > "$stamp"
fi
