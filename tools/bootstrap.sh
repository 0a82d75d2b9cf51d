#!/usr/bin/env bash
# Create (or refresh) .venv idempotently. On a machine without CUDA torch==2.13.0 (a local CPU wheel)
# is installed first, in its own pip call, so that no dependency can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.bootstrap-stamp"
want="$(cat pyproject.toml requirements/cpu.txt tools/bootstrap.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${PIP[@]}" torch
else
  "${PIP[@]}" torch==2.13.0
fi
"${PIP[@]}" --no-build-isolation -r requirements/cpu.txt
"${PIP[@]}" --no-build-isolation --no-deps -e .
echo "$want" > "$STAMP"
echo "bootstrap: $VENV ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
