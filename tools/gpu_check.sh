#!/usr/bin/env bash
# The prepared GPU check: one command, about 8 minutes on one H200, one JSON on stdout (benchmarks/gpu_check.py
# says what it measures; docs/gpu.md how to bring the wheels; docs/performance.md "GPU check").
#
#   tools/gpu_check.sh [--dry-run] [--wheels DIR] [--out DIR] [--budget SECONDS] [--json FILE]
#
# Needs only Python with a CUDA build of PyTorch. The project's other dependencies come as wheels in DIR
# (default .whl/ in the repository); they are installed into a private target directory, nothing else is
# touched, and the project itself runs from this checkout. --dry-run checks the plan on any machine, GPU or not.
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
wheels=.whl
dry=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --dry-run) dry=1 ;;
        --wheels) wheels=${args[i + 1]:?--wheels needs a directory} ;;
    esac
done

if [[ $dry == 0 ]] && compgen -G "$wheels/*.whl" >/dev/null; then
    site=${NCA_SCALE_SITE:-/tmp/nca_scale_site}
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl >&2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu_check.py "$@"
