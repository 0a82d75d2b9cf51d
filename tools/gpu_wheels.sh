#!/usr/bin/env bash
# Fill .whl/ with the wheels tools/gpu_check.sh installs on a GPU machine that has no internet: CPython 3.12,
# manylinux x86-64, everything the project imports that a PyTorch GPU image lacks (it has CUDA torch, numpy,
# PyYAML, nvcc). Run it on any machine with internet access, from anywhere; prints the files and the total MiB.
#
#   tools/gpu_wheels.sh [DIR]        (default: .whl/ in the repository, git-ignored)
#
# PYTHON picks the interpreter that runs pip (any version: the downloads target 3.12 whatever it is); it needs
# torch and setuptools to build DeepSpeed's wheel (the repository's .venv has both). The list of distributions
# is WHEELS in benchmarks/gpu_check.py, which --dry-run checks .whl/ against.
set -euo pipefail
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)  # a pip configured with absent local indexes
cd "$(dirname "$0")/.."
root=$PWD
python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
dir=${1:-.whl}
mkdir -p "$dir"
rm -f "$dir"/*.whl

# binary wheels (manylinux, or pure Python) for the target, no dependency resolution: the list is complete
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$dir" \
    $("$python" "$root/benchmarks/gpu_check.py" --print-wheels binary)
# DeepSpeed is a source release: a pure-Python wheel whose CUDA ops are JIT-built where they are used (none are
# on the check's path). Built without isolation against this interpreter's torch (DeepSpeed's setup.py imports
# it), with no op prebuilt, for the CUDA accelerator (on a machine without a GPU it would record the CPU's ops);
# never from pip's cache, which may hold a wheel built for another accelerator.
DS_ACCELERATOR=cuda DS_BUILD_OPS=0 "$python" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation -w "$dir" \
    $("$python" "$root/benchmarks/gpu_check.py" --print-wheels source) >&2

ls -l "$dir"/*.whl | awk '{printf "%10d  %s\n", $5, $NF}'
"$python" - "$dir" <<'EOF'
import sys
from pathlib import Path

files = sorted(Path(sys.argv[1]).glob("*.whl"))
total = sum(f.stat().st_size for f in files) / 2**20
print(f"{len(files)} wheels, {total:.1f} MiB in {sys.argv[1]}")
if total > 64:
    sys.exit(f"over the 64 MiB the check may carry ({total:.1f} MiB)")
EOF
