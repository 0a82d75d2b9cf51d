"""Stops and timed saves agreed by every rank at the same step: preemption, time limits, Ctrl-C, and the
wall-clock checkpoint cadence.

A handler for SIGUSR2 (submitit's preemption / time-limit warning, `--signal=USR2@lead`), SIGTERM (what Slurm
sends on `scontrol requeue`, on preemption with PreemptMode=REQUEUE and at the time limit) and SIGINT (Ctrl-C)
only records the signal; a second Ctrl-C aborts at once (KeyboardInterrupt, nothing more saved). At a check the
ranks all-reduce (MAX) the flag, so a signal that reached a single rank stops them all, at the same step: each
asks its trainer to stop (Trainer.request_stop). The trainer then saves the step (unless its checkpoint is already
complete) and fit() returns a FitOutcome with the signal; the worker and train/entry.py turn that into exit status
`exit_status(signal)`: EXIT_PREEMPTED (75) after SIGUSR2/SIGTERM, 130 after Ctrl-C. Whether the job is then
requeued is the launcher's decision (nca_scale.launch.task), made from the signal in entry.Outcome.

The same all-reduce carries whether any rank's clock says a save is due (checkpoint.every_minutes since the last
save, Trainer.saved_at, so no run loses more than that much work) and the interval to the next check. A check reads the result
on the host, a device sync on a GPU, so it is made about once per CHECK_S seconds of training, not every step:
each rank proposes the steps that take, the MAX is agreed, and every rank checks again at the same step.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

import torch
import torch.distributed as dist

from nca_scale.train import dist as tdist
from nca_scale.train.callbacks import STOPS, Callback

log = logging.getLogger(__name__)

# The exit statuses of a run (the table in docs/training.md, "The loop and its callbacks"): 0 finished; 1 failed;
# 2 a bad config or input, before anything trained; and these three, after which the run folder is consistent:
EXIT_DIVERGED = 3  # stopped on a non-finite loss without saving it (Trainer.non_finite): never requeued
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; a launcher that sees it may requeue the job
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
CHECK_S = 1.0  # seconds of training between two checks of the flags (one host-device sync each)
MAX_INTERVAL = 1000  # steps


def exit_status(signum: int | None, diverged: bool = False) -> int:
    """The exit status of a run that ended (None), stopped after saving for `signum`, or diverged."""
    if diverged:
        return EXIT_DIVERGED
    if not signum:
        return 0
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


class Preemption(Callback):
    """Catches SIGNALS and, once the ranks agree at a check, asks the trainer to stop; saves when the wall-clock
    cadence is due. Lowest priority: the step is logged and any periodic save of it made before."""

    priority = STOPS

    def __init__(self) -> None:
        self.flag = 0
        self.previous: dict[int, object] = {}
        self.next_check = 1

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.flag == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        self.flag = signum
        again = "; press Ctrl-C again to abort without saving" if signum == signal.SIGINT else ""
        # every rank (a warning): which ranks were signalled is worth seeing in each rank's log
        log.warning("caught %s on rank %d: saving at the end of this step%s", signal.Signals(signum).name,
                    dist.get_rank(), again)

    def pre_train(self, trainer) -> None:
        self.next_check = trainer.step + 1
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handler)

    def rewound(self, trainer) -> None:
        self.next_check = trainer.step + 1  # every rank rolls back at the same step

    def post_step(self, trainer, metrics: dict) -> None:
        if trainer.step < self.next_check and trainer.step < trainer.cfg.total_steps:
            return
        minutes = trainer.cfg.checkpoint.every_minutes
        due = int(bool(minutes) and time.monotonic() - trainer.saved_at >= minutes * 60)
        interval = min(MAX_INTERVAL, max(1, math.floor(CHECK_S / max(metrics["step_time"], 1e-6))))
        flags = torch.tensor([self.flag, due, interval], dtype=torch.int64, device=tdist.device())
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, due, interval = flags.tolist()  # the one host read (device sync) of this check
        self.next_check = trainer.step + interval
        if signum:
            trainer.request_stop(signum)
        elif due and trainer.step < trainer.cfg.total_steps:  # the last step is saved by the trainer anyway
            log.info(f"step {trainer.step}: {minutes:g} min since the last save (checkpoint.every_minutes)")
            trainer.save_checkpoint()

    def post_train(self, trainer) -> None:
        if signum := trainer.stop_signal:
            if signum == signal.SIGINT:
                log.info(f"interrupted: saved step {trainer.step}; `resume=auto` continues "
                         f"(exit status {EXIT_INTERRUPTED})")
            else:
                log.info(f"stopping at step {trainer.step} after {signal.Signals(signum).name}; "
                         f"exit status {EXIT_PREEMPTED}")
        self._restore()

    def on_error(self, trainer) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}
