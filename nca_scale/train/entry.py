"""The `nca-scale train` command as a library call: `train(cfg, args)`, used by the CLI, sweeps and Slurm tasks.

Every config, layout and run-folder error is raised before any process starts. Under torchrun/srun (RANK set)
this process is one rank of the job; otherwise it chooses and verifies the checkpoint, takes the run folder,
and trains here (nproc=1) or starts nproc local ranks under torchrun and waits for them. Either way it writes
how the ranks start in one launch record (launch_record.Launch) and every rank runs `rank(cfg, launch)`, the one
rank entry point. The result is an `Outcome`: what a launcher needs to decide what happens next (exit status,
and for a preemption stop the signal that caused it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nca_scale import logs, procs
from nca_scale.train import data_check, preemption, run_files, run_folder, transfer
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.config import TrainConfig
from nca_scale.train.launch_record import BY_HAND, IN_PROCESS, LAUNCHER, RANK0, TORCHRUN, Launch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    exit_code: int  # 0 done, preemption.exit_status(...): stopped for a signal after saving, or diverged; else failed
    signal: int | None = None  # the signal that stopped the run (SIGUSR2, SIGTERM), when this process saw it


def train(cfg: TrainConfig, args: list[str], launch: Launch | None = None) -> Outcome:
    """Train `cfg`; `args` are the command-line words it came from (`CONFIG key=value ...`), handed to the ranks
    when nproc > 1 starts them under torchrun. `launch`: how this process was started, from the launcher that
    decided it (a Slurm job's task); None: decided here."""
    run_folder.check(cfg)  # every run-folder error (a run already there, not writable), before any process
    data_check.check(cfg)  # shards too short for the run's steps or evaluations
    if launch is None and "RANK" in os.environ:
        launch = Launch.by_ranks(BY_HAND)  # one rank of a job torchrun/srun started
    if launch is not None:  # every rank has checked; rank 0 chooses the checkpoint and holds the lease for all
        return rank(cfg, launch)
    _warn_oversubscribed(cfg.parallel.nproc)
    resume = checkpoint_select.resolve(cfg, cfg.resume)  # verified here, once; the ranks take it as is
    if resume and checkpoint_select.finished(cfg, resume, checkpoint_select.check_resumable(cfg, resume)):
        return Outcome(0)  # said so; nothing started, nothing written
    if cfg.init_from:
        # a run folder or RUN/checkpoints/latest names its latest checkpoint (transfer.source); an absolute path: a
        # folder named `never` or `auto` is a checkpoint here, not resume's keyword (fuzz)
        named = transfer.source(cfg)
        if named != Path(cfg.init_from):
            log.info(f"init_from={cfg.init_from}: the run's latest checkpoint, {named}")
        transfer.check(cfg, checkpoint_select.resolve(cfg, os.path.abspath(named)))
    launch = Launch(IN_PROCESS if cfg.parallel.nproc == 1 else TORCHRUN, verifies=LAUNCHER, folder=LAUNCHER,
                    checkpoint=str(resume or ""), launcher_pid=os.getpid() if cfg.parallel.nproc > 1 else None)
    with run_folder.take(cfg):  # this command holds the run folder's lease while its ranks train
        if launch.launcher == TORCHRUN:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={cfg.parallel.nproc}", "-m", "nca_scale.train.worker", *args]
            started = time.time()
            return _diverged_ranks(_launch(cmd, {**os.environ, **launch.env()}), cfg, started)
        return rank(cfg, launch)


def rank(cfg: TrainConfig, launch: Launch) -> Outcome:
    """One rank of the training `launch` describes, on every path: the one process of `nca-scale train`
    parallel.nproc=1, each rank it starts under torchrun (worker.py), each rank of a job torchrun or srun started
    by hand (worker.py, or this command with RANK set) and each task of a Slurm job (launch/task.py). With
    folder=RANK0 rank 0 holds the run folder's lease for the job; the checkpoint is the launcher's or rank 0's
    choice (trainer.run)."""
    from nca_scale.train.trainer import run

    holds = launch.folder == RANK0 and logs.rank() == 0
    with run_folder.take(cfg) if holds else contextlib.nullcontext():
        return _outcome(run(cfg, launch))


def _warn_oversubscribed(nproc: int) -> None:
    """parallel.nproc CPU ranks on fewer cores than ranks share them: each step is slower than with fewer ranks."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > cores and not torch.cuda.is_available():
        log.warning(f"parallel.nproc={nproc} CPU ranks on {cores} CPU cores: the ranks share the cores "
                    f"(oversubscribed), so each step is slower than with parallel.nproc={cores}")


def _launch(cmd: list[str], env: dict) -> Outcome:
    """Run torchrun and its ranks until they end. They run in a session of their own, so a Ctrl-C reaches this
    command only, which passes it on once to each rank (torchrun would pass on a second one, the ranks' "abort
    now"): the ranks save, stop at one step and exit 0 (worker.py), and this command exits with 130. A second
    Ctrl-C kills them at once. torchrun never outlives this command (procs.die_with_parent)."""
    proc = subprocess.Popen(cmd, env=env, preexec_fn=procs.die_with_parent, start_new_session=True)
    interrupted = []

    def on_sigint(signum, frame) -> None:
        if interrupted:
            os.killpg(proc.pid, signal.SIGKILL)
            raise KeyboardInterrupt
        interrupted.append(signum)
        for rank in procs.children_of(proc.pid):
            os.kill(rank, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        rc = proc.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted and rc == 0:
        return Outcome(preemption.EXIT_INTERRUPTED, signal.SIGINT)
    return Outcome(rc)


def _diverged_ranks(outcome: Outcome, cfg: TrainConfig, started: float) -> Outcome:
    """torchrun exits 1 whenever a rank exits non-zero; ranks that diverged (preemption.EXIT_DIVERGED) recorded it
    in progress.json (callbacks.RunProgress, rank 0) since `started`: the command exits EXIT_DIVERGED too."""
    if outcome.exit_code in (0, preemption.EXIT_DIVERGED, preemption.EXIT_INTERRUPTED):
        return outcome
    progress = run_files.Progress.read(cfg.out)
    if progress is not None and progress.stopped == "diverged" and progress.time >= started:
        return Outcome(preemption.EXIT_DIVERGED)
    return outcome


def _outcome(fitted) -> Outcome:
    """A rank's FitOutcome as the command's Outcome: a stop for a signal is exit status 75 or 130 (Ctrl-C)."""
    return Outcome(fitted.exit_code, fitted.stop_signal)
