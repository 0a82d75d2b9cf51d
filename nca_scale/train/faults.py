"""Fault injection and pacing for the tests, in one place; nothing here acts unless a test's environment
variable is set, and nothing else in the package reads these variables.

- The checkpoint code calls `hit(point, name)` and `pause_for_tests` at the moments a test needs to break or
  widen. NCA_SCALE_TEST_FAULT="POINT[@NAME]:RANK:ACTION[:TIMES],...": at POINT (writer, verify, commit, mirror)
  of the checkpoint NAME (step_00000004; any without @NAME) on global rank RANK, ACTION happens: `raise` (an
  OSError), `kill` (SIGKILL to this process: a background writer process that dies mid-write), `stall=S` (sleep
  S seconds: a writer stuck on a filesystem); at most TIMES times per process (unlimited without).
  tests/train/test_saver*.py and test_chaos.py use them. NCA_SCALE_TEST_SAVE_PAUSE widens the windows between
  a commit's steps.
- The loop's one hook: `test_callbacks()`, which trainer.default_callbacks appends, returns the callbacks the
  environment asks for. NCA_SCALE_TEST_STEP_TIME=S pads every step to at least S seconds (its step_time
  included), so that a signal or a time limit lands mid-run however fast the machine is (test_preemption.py,
  test_run_folder.py, tests/launch/test_slurm.py).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter

from nca_scale.train.callbacks import TESTS, Callback

log = logging.getLogger(__name__)

ENV = "NCA_SCALE_TEST_FAULT"
STEP_TIME_ENV = "NCA_SCALE_TEST_STEP_TIME"
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


class Pace(Callback):
    """Every step lasts at least `seconds`: it sleeps after the step, before any other callback sees it, and
    reports the padded time as the step's step_time (so the preemption checks' interval follows the pace)."""

    priority = TESTS

    def __init__(self, seconds: float):
        self.seconds = seconds

    def post_step(self, trainer, metrics: dict) -> None:
        if (wait := self.seconds - metrics["step_time"]) > 0:
            time.sleep(wait)
            metrics["step_time"] = self.seconds


def test_callbacks() -> list[Callback]:
    """The callbacks a test asks for through the environment (none in a real run)."""
    seconds = float(os.environ.get(STEP_TIME_ENV, 0) or 0)
    return [Pace(seconds)] if seconds > 0 else []
