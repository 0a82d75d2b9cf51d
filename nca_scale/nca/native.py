"""Compiled C code of the generator (csrc/): the fused automaton step, built on first use, loaded by ctypes.

Why C: the torch step is ~15 whole-tensor passes per step (~160 cycles per cell update); the fused loop keeps
a cell's whole update in registers (~40). Why not a torch extension: compiling against torch's headers takes
a minute, a plain C file a fraction of a second, and the step needs nothing from torch but pointers.

The fused step gives the torch step's results bit for bit (tests/nca/test_nca_native.py), so sequences and
banks do not depend on whether it could be built: without a C compiler (or with `NCA_SCALE_NATIVE=0`)
the torch step runs instead.
Libraries are built on first use and cached under $NCA_SCALE_CACHE (default ~/.cache/nca_scale)/native,
keyed by source, flags, compiler and CPU features: -march=native code must not run on another CPU model
sharing a home directory.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from nca_scale.files import replacing

CSRC = Path(__file__).with_name("csrc")
# -ffp-contract=off: no fused multiply-adds, every product rounded as in torch; no -ffast-math (no reordering)
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=gnu11"]
VECTOR = 16  # the step's hidden and logit rows are padded to a multiple of this many floats (one AVX-512 register)


class Unavailable(RuntimeError):
    """Compiled code cannot be used here (no compiler, a failed build, or turned off)."""


def padded(width: int) -> int:
    return -(-width // VECTOR) * VECTOR


def ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("NCA_SCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nca_scale")
    return Path(root) / "native"


@functools.cache
def _compiler() -> tuple[str, str]:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise Unavailable("no C compiler (cc/gcc) on PATH")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"C compiler {cc} does not run: {e}") from e
    return cc, version


def turned_off() -> bool:
    return os.environ.get("NCA_SCALE_NATIVE", "1") == "0"


def _build(source: str, defines: list[str]) -> ctypes.CDLL:
    if turned_off():
        raise Unavailable("turned off by NCA_SCALE_NATIVE=0")
    cc, version = _compiler()
    src = CSRC / source
    key = hashlib.sha256("\0".join([src.read_text(), *FLAGS, *defines, version, _cpu_features()]).encode())
    target = _cache_dir() / f"{src.stem}_{key.hexdigest()[:24]}.so"
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # built under a temporary name and renamed: concurrent builders (ranks, workers) never load a torn file
            with replacing(target) as tmp:
                done = subprocess.run([cc, *FLAGS, *defines, str(src), "-o", str(tmp)], capture_output=True,
                                      text=True, timeout=300)
                if done.returncode:
                    raise Unavailable(f"building {source} failed: {done.stderr.strip()[-500:]}")
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:  # e.g. an unwritable cache directory
        raise Unavailable(f"building or loading {source} failed: {e}") from e


@functools.cache
def step_kernel(grid: int, states: int, hidden: int, state_dtype: torch.dtype, portable: bool = False) -> ctypes.CDLL:
    """csrc/step.c for one automaton shape (states stored as `state_dtype`, torch.uint8 or torch.int32); raises
    Unavailable. `portable`: the loop for CPUs without AVX-512 even where it is present (tests compare the two)."""
    state_type = {torch.uint8: "uint8_t", torch.int32: "int32_t"}[state_dtype]
    defines = [f"-DG={grid}", f"-DS={states}", f"-DSP={padded(states)}", f"-DHD={hidden}", f"-DHDP={padded(hidden)}",
               f"-DVW={VECTOR}", f"-DSTATE_T={state_type}"]
    lib = _build("step.c", defines + (["-DNCA_PORTABLE"] if portable else []))
    p = ctypes.c_void_p
    lib.nca_step.restype = ctypes.c_int64
    lib.nca_step.argtypes = [p, ctypes.c_int64, p, p, p, ctypes.c_float, ctypes.c_float, ctypes.c_int, p,
                             ctypes.c_int64, p, p, p, p]
    lib.nca_resolve.restype = None
    lib.nca_resolve.argtypes = [ctypes.c_int64, p, p, p, ctypes.c_float, p]
    return lib
