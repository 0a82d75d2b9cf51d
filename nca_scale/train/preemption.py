"""Preemption and time limits: stop every rank at the same step boundary, after a save, with EXIT_PREEMPTED.

A handler for SIGUSR2 (submitit's preemption / time-limit warning, `--signal=USR2@lead`) and SIGTERM (what
Slurm sends on `scontrol requeue`, on preemption with PreemptMode=REQUEUE and at the time limit) only records
the signal. After every step the ranks all-reduce (MAX) that flag, so a signal that reached a single rank
stops them all, at the same step: each asks its trainer to stop (Trainer.request_stop). The trainer then saves
the step (unless its checkpoint is already complete) and fit() returns a FitOutcome with the signal; the
worker and train/entry.py turn that into exit status EXIT_PREEMPTED. Whether the job is then requeued is the
launcher's decision (nca_scale.launch.task), made from the signal in entry.Outcome.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch
import torch.distributed as dist

from nca_scale.train import dist as tdist
from nca_scale.train.callbacks import STOPS, Callback

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; a launcher that sees it may requeue the job
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preemption(Callback):
    """Catches SIGNALS and, once the ranks agree after a step, asks the trainer to stop. Lowest priority: the
    step is logged and any periodic save of it made before the trainer stops on it."""

    priority = STOPS

    def __init__(self) -> None:
        self.flag = 0
        self.previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.flag = signum
        # every rank (a warning): which ranks were signalled is worth seeing in each rank's log
        log.warning("caught %s on rank %d: saving at the end of this step", signal.Signals(signum).name,
                    dist.get_rank())

    def pre_train(self, trainer) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handler)

    def post_step(self, trainer, metrics: dict) -> None:
        flag = torch.tensor([self.flag], dtype=torch.int64, device=tdist.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if signum := int(flag.item()):  # one .item(): on a GPU each is a device sync on the step loop
            trainer.request_stop(signum)

    def post_train(self, trainer) -> None:
        if trainer.stop_signal:
            log.info(f"stopping at step {trainer.step} after {signal.Signals(trainer.stop_signal).name}; "
                     f"exit status {EXIT_PREEMPTED}")
        self._restore()

    def on_error(self, trainer) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}
