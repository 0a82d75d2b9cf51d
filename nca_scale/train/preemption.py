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

import ctypes
import json
import logging
import os
import signal
import sys
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


# The pid of the `nca-scale train` that started torchrun, in the ranks' environment (train/entry.py).
LAUNCHER_ENV = "NCA_SCALE_LAUNCHER_PID"


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def die_with_parent(check_launcher: bool = True) -> None:
    """SIGKILL this process when its parent dies (Linux). torchrun starts each rank in a session of its own,
    so a `kill -9` of the launcher (or of the `nca-scale train` above it) would otherwise leave orphan ranks
    that go on training and writing checkpoints next to the restarted run.

    The request only covers deaths after it is made, and a rank makes it after its imports (seconds): a rank
    whose launcher was killed before that is an orphan already. So a rank of torchrun started by
    `nca-scale train` (LAUNCHER_ENV) also checks that its parent is still that command's child; a process a
    rank starts (check_launcher=False) only asks to die with that rank. The request is not inherited over
    fork, so every process this one forks from now on (megatron's checkpoint writers) makes it too."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    _ask_for_death_signal()
    if not _forking:
        os.register_at_fork(before=lambda: _forking.__setitem__(0, os.getpid()), after_in_child=_forked)
        _forking.append(os.getpid())
    launcher = os.environ.get(LAUNCHER_ENV)
    orphaned = os.getppid() != parent  # the parent died before the request took effect
    if check_launcher and launcher and _parent_of(os.getppid()) != int(launcher):  # torchrun is gone, or lost its launcher
        orphaned = True
    if orphaned:
        os.kill(os.getpid(), signal.SIGKILL)


_forking: list[int] = []  # [pid of the process about to fork], once die_with_parent registered _forked


def _ask_for_death_signal() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _forked() -> None:
    """In a child just forked: die with the parent (the signal comes when the parent's forking thread ends, and
    the forks of ours happen on main threads), or now if it is gone already."""
    _ask_for_death_signal()
    if os.getppid() != _forking[0]:
        os.kill(os.getpid(), signal.SIGKILL)


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
