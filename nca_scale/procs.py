"""Process plumbing shared by the layers: pool workers that exit with their parent, malloc and thread tuning."""

from __future__ import annotations

import os
import threading
import time


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
