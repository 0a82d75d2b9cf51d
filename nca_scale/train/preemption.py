"""Preemption and time limits: stop every rank at the same step boundary, save, exit with EXIT_PREEMPTED.

A handler for SIGUSR2 (submitit's preemption / time-limit warning, `--signal=USR2@lead`) and SIGTERM (what
Slurm sends on `scontrol requeue`, on preemption with PreemptMode=REQUEUE and at the time limit) only records
the signal. After every step the ranks all-reduce (MAX) that flag, so a signal that reached a single rank
stops them all, at the same step: they save a checkpoint together (unless the step's checkpoint is already
complete) and raise SystemExit(EXIT_PREEMPTED). Whether the job is then requeued is the launcher's decision
(nca_scale.launch.task), made from `received`.

A resumed run records the restart in OUT/metrics.jsonl: one line {"step", "tokens", "restart", "lost_steps",
"lost_tokens", "lost_seconds"}, where lost work is what the previous attempt trained past its last complete
checkpoint (nothing after a preemption save; the steps since the last save after a hard kill).
OUT/progress.json (rank 0, after every step) is what that is measured against.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from nca_scale.files import write_atomic
from nca_scale.train import dist as tdist
from nca_scale.train.callbacks import Callback, Checkpointer

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again"; a launcher that sees it may requeue the job
SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

# the signal that stopped the last run in this process (None if none): read by the launcher after exit
received: int | None = None


class Preemption(Callback):
    """Must come after the Checkpointer and the loggers, so a step is logged before the run stops on it."""

    def __init__(self) -> None:
        self.flag = 0
        self.previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.flag = signum
        print(f"[nca-scale] caught {signal.Signals(signum).name} on rank {dist.get_rank()}: "
              "saving at the end of this step", flush=True)

    def pre_train(self, trainer) -> None:
        global received
        received = None
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handler)
        self.progress = Path(trainer.cfg.out) / "progress.json"
        if dist.get_rank() == 0:
            self._record_restart(trainer)
        self.step_time = 0.0

    def _record_restart(self, trainer) -> None:
        if trainer.cfg.resume == "never" or not self.progress.exists():
            return  # a fresh run
        before = json.loads(self.progress.read_text())
        if before.get("stopped") == "finished":
            return  # a finished run continued to more steps is not a restart
        restart = int(before.get("restart", 0)) + 1
        slurm = os.environ.get("SLURM_RESTART_COUNT")
        if slurm is not None and before.get("job_id") == os.environ.get("SLURM_JOB_ID"):
            restart = max(restart, int(slurm))
        lost = max(0, before["step"] - trainer.step)
        line = {"step": trainer.step, "tokens": trainer.tokens, "restart": restart, "lost_steps": lost,
                "lost_tokens": lost * trainer.cfg.tokens_per_step,
                "lost_seconds": round(lost * before.get("step_time", 0.0), 3), "reason": before.get("stopped", "killed")}
        with (Path(trainer.cfg.out) / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.restart = restart
        log.info(f"restart {restart}: resumed at step {trainer.step}, {lost} steps of work lost")

    def _write_progress(self, trainer, **extra) -> None:
        if dist.get_rank() != 0:
            return
        state = {"step": trainer.step, "tokens": trainer.tokens, "time": time.time(),
                 "step_time": self.step_time, "restart": getattr(self, "restart", 0),
                 "job_id": os.environ.get("SLURM_JOB_ID"), **extra}
        write_atomic(self.progress, json.dumps(state))

    def post_step(self, trainer, metrics: dict) -> None:
        global received
        self.step_time = metrics.get("step_time", 0.0)
        self._write_progress(trainer)
        flag = torch.tensor([self.flag], dtype=torch.int64, device=tdist.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
        if not signum:
            return
        name = signal.Signals(signum).name
        next(cb for cb in trainer.callbacks if isinstance(cb, Checkpointer)).save_now(trainer)
        self._write_progress(trainer, stopped=name)
        log.info(f"stopping at step {trainer.step} after {name}; exit status {EXIT_PREEMPTED}")
        received = signum
        self._restore()
        raise SystemExit(EXIT_PREEMPTED)

    def post_train(self, trainer) -> None:
        self._write_progress(trainer, stopped="finished")
        self._restore()

    def _restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous = {}
