#!/usr/bin/env bash
# Create .venv and install vlkit, its development extras and every plugin under plugins/ (editable).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLKIT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U "pip>=23" setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
# The CPU wheel of torch; an unpinned torch would pull a multi-GB CUDA build.
"${PIP[@]}" install "torch==2.13.0" 2>&1 | grep -v '^WARNING: Location' || true
plugins=()
for p in plugins/*/pyproject.toml; do
  # each plugin's [dev] extra holds what its tests need (pip ignores a plugin without one)
  [ -f "$p" ] && plugins+=(-e "$(dirname "$p")[dev]")
done
"${PIP[@]}" install -e ".[dev,serve,bench]" "${plugins[@]}" 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import vlkit, torch; print('vlkit', vlkit.__version__, 'torch', torch.__version__)"
