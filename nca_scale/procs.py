"""Process plumbing shared by the layers: processes that end with their parent, malloc and thread tuning.

Two ways to end with the parent, for two kinds of child: `die_with_parent` asks the kernel (PR_SET_PDEATHSIG,
immediate, for a process whose parent's forking thread lives as long as the parent: training ranks and what
they fork); `exit_with_parent` polls (for pool workers, which a pool's helper thread may start and whose
kernel death signal would come when that thread ends).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def exit_with_parent(parent_pid: int) -> None:
    """Initializer of pool worker processes: exit once the parent is gone.

    A parent killed with SIGKILL (preemption, OOM killer) cannot shut its pool down, and a pool worker
    blocked on its task queue never sees end-of-file (it holds the queue's write end too), so it would
    linger forever. Polling the parent pid costs nothing measurable.
    """

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def die_with_parent(launcher: int | None = None) -> None:
    """SIGKILL this process when its parent dies (Linux; a no-op elsewhere). torchrun starts each rank in a
    session of its own, so a `kill -9` of the launcher (or of the `nca-scale train` above it) would otherwise
    leave orphan ranks that go on training and writing checkpoints next to the restarted run.

    The request only covers deaths after it is made, and a rank makes it after its imports (seconds): a process
    whose parent died before that is an orphan already and is killed now. With `launcher` (the pid of the
    command that started this process's parent) the process is also killed if its parent is no longer that
    command's child. The request is not inherited over fork, so every process this one forks from now on
    (megatron's checkpoint writers) makes it too."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _ask_for_death_signal()
    if not _forking:
        os.register_at_fork(before=lambda: _forking.__setitem__(0, os.getpid()), after_in_child=_forked)
        _forking.append(os.getpid())
    orphaned = os.getppid() != parent  # the parent died before the request took effect
    if launcher is not None and _parent_of(os.getppid()) != launcher:  # the parent is gone, or lost its launcher
        orphaned = True
    if orphaned:
        os.kill(os.getpid(), signal.SIGKILL)


def serve_with_parent() -> None:
    """Initializer of a rank's helper server process (megatron-core's results-queue Manager): die with the rank,
    and leave the job's signals to the rank. `scancel --signal=USR2`, `scontrol requeue` and Ctrl-C reach every
    process of the job or terminal; the rank answers them by saving, which needs this process alive."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()


_forking: list[int] = []  # [pid of the process about to fork], once die_with_parent registered _forked


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc; empty where there is none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found


def _ask_for_death_signal() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _forked() -> None:
    """In a child just forked: die with the parent (the signal comes when the parent's forking thread ends, and
    the forks of ours happen on main threads), or now if it is gone already."""
    _ask_for_death_signal()
    if os.getppid() != _forking[0]:
        os.kill(os.getpid(), signal.SIGKILL)


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory instead of handing it back to the kernel (Linux; no-op elsewhere).

    A generator step allocates ~12 MB of short-lived tensors. With glibc's defaults the heap top is trimmed
    and big blocks are mmap'ed afresh, so every step page-faults its buffers in again: up to 100k minor faults
    and +20-70% CPU time per 512 sequences in our measurements (docs/performance.md). The generating process
    then holds its peak heap (~100 MB) until it exits.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest; blocks above it are still mmap'ed
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)


def set_threads(threads: int) -> None:
    """Intra-op torch threads for this process (0: keep torch's default)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
