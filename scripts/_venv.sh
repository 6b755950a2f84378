# Sourced by scripts/up, scripts/test and scripts/lint: make .venv and install the project into it (idempotent).
# $1 names the install (its stamp), $2 is the product's extras ("[test]" or ""), and $3, when it is
# "tools", installs the tools too (tools/: pystacker-tools, `pystacker bench` and `pystacker chaos`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PYSTACKER_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# Both editable, in one pip run: the tools' dependency on pystacker is this checkout, not an index's.
packages=(-e "$ROOT$2")
projects=("$ROOT/pyproject.toml")
if [ "${3:-}" = tools ]; then
  packages+=(-e "$ROOT/tools[plot]")  # plot: matplotlib, for the bench's PNGs (tests/test_bench.py draws one)
  projects+=("$ROOT/tools/pyproject.toml")
fi
# Reinstall only when a pyproject.toml it installs changed since the last install.
stamp="$VENV/.pystacker-installed-$1"
stale=no
for project in "${projects[@]}"; do
  if [ ! -f "$stamp" ] || [ "$project" -nt "$stamp" ]; then
    stale=yes
  fi
done
if [ "$stale" = yes ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
  touch "$stamp"
fi
