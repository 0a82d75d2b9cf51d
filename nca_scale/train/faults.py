"""Fault injection for the tests, in one place: the checkpoint code calls `hit(point, name)` and `pause_for_tests`
at the moments a test needs to break or widen; both do nothing unless the test's environment variable is set.

NCA_SCALE_TEST_FAULT="POINT[@NAME]:RANK:ACTION[:TIMES],...": at POINT (writer, verify, commit, mirror) of the
checkpoint NAME (step_00000004; any without @NAME) on global rank RANK, ACTION happens: `raise` (an OSError),
`kill` (SIGKILL to this process: a background writer process that dies mid-write), `stall=S` (sleep S seconds:
a writer stuck on a filesystem); at most TIMES times per process (unlimited without). tests/train/test_saver*.py
and test_chaos.py use them. NCA_SCALE_TEST_SAVE_PAUSE widens the windows between a commit's steps.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter

log = logging.getLogger(__name__)

ENV = "NCA_SCALE_TEST_FAULT"
_fired: Counter = Counter()


def hit(point: str, name: str = "") -> None:
    """Do what NCA_SCALE_TEST_FAULT asks at `point` of checkpoint `name` on this rank (nothing if unset)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    rank = os.environ.get("RANK", "0")
    for item in spec.split(","):
        where, on_rank, action, *times = item.split(":")
        at, _, only = where.partition("@")
        if at != point or on_rank != rank or (only and only != name):
            continue
        if times and _fired[item] >= int(times[0]):
            continue
        _fired[item] += 1
        log.warning("test fault: %s %s on rank %s: %s", point, name, rank, action)
        if action == "raise":
            raise OSError(f"test fault at {point} {name}".strip())
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action.startswith("stall="):
            time.sleep(float(action.removeprefix("stall=")))


def pause_for_tests(name: str, where: str) -> None:
    """The chaos test (tests/train/test_chaos.py) widens the windows between commit steps so its kills land
    inside them, and reads this line to know which window of which checkpoint's commit it is in;
    NCA_SCALE_TEST_SAVE_PAUSE is seconds per window, unset in real runs. A warning, so that every rank's
    background writer shows it, as the test expects."""
    seconds = float(os.environ.get("NCA_SCALE_TEST_SAVE_PAUSE", 0) or 0)
    if seconds:
        log.warning("test pause: %s: %s", name, where)
        time.sleep(seconds)
