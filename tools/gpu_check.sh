#!/usr/bin/env bash
# The prepared GPU check: one command, at most 8 minutes on one H100/H200, one JSON on stdout
# (benchmarks/gpu_check.py says what it measures; docs/gpu.md how to bring the wheels; docs/performance.md
# "GPU check").
#
#   tools/gpu_check.sh [--dry-run] [--wheels DIR] [--out DIR] [--budget SECONDS] [--json FILE]
#
# Needs only Python 3.12 with a CUDA build of PyTorch. The project's other dependencies come as wheels in DIR
# (default .whl/ in the repository, filled by tools/gpu_wheels.sh); first, in well under a second, every module
# the check imports is looked for in the interpreter or the wheels, and a missing one stops it with their names.
# The wheels are installed into a private target directory, deleted at exit with everything the runs wrote but
# the logs; nothing else is touched, and the project itself runs from this checkout. --dry-run checks the plan
# on any machine, GPU or not. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
wheels=.whl
out=/tmp/nca_scale_gpu_check
dry=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --dry-run) dry=1 ;;
        --wheels) wheels=${args[i + 1]:?--wheels needs a directory} ;;
        --out) out=${args[i + 1]:?--out needs a directory} ;;
    esac
done

site=
cleanup() {
    # the runs' directories (checkpoints: up to 18 GB per backend) if the check did not get to delete them
    for d in torch megatron deepspeed nca-cuda nca-cpu; do rm -rf "${out:?}/$d"; done
    [[ -n $site ]] && rm -rf "$site"
    return 0
}
if [[ $dry == 0 ]]; then
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    "$python" benchmarks/gpu_check.py --preflight --wheels "$wheels"  # names every missing module, exit 1
    if compgen -G "$wheels/*.whl" >/dev/null; then
        site=$(mktemp -d /tmp/nca_scale_site.XXXXXX)
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
            "$wheels"/*.whl >&2
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        echo "gpu_check: the wheels of $wheels installed into $site (removed at exit)" >&2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" benchmarks/gpu_check.py "$@"
