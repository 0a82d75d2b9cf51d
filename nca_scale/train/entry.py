"""The `nca-scale train` command as a library call: `train(cfg, args)`, used by the CLI, sweeps and Slurm tasks.

Every config, layout and run-folder error is raised before any process starts. Under torchrun/srun (RANK set)
this process is one rank of the job; otherwise it trains here (nproc=1) or starts nproc local ranks under
torchrun and waits for them. The result is an `Outcome`: what a launcher needs to decide what happens next
(exit status, and for a preemption stop the signal that caused it).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nca_scale import procs
from nca_scale.train import data_check, preemption, run_files, run_folder, transfer
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.config import TrainConfig

# The pid of the `nca-scale train` that started torchrun, in the ranks' environment: a rank whose parent is no
# longer that command's child dies (worker.py, procs.die_with_parent).
LAUNCHER_ENV = "NCA_SCALE_LAUNCHER_PID"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    exit_code: int  # 0 done, preemption.exit_status(...): stopped for a signal after saving, or diverged; else failed
    signal: int | None = None  # the signal that stopped the run (SIGUSR2, SIGTERM), when this process saw it


def train(cfg: TrainConfig, args: list[str]) -> Outcome:
    """Train `cfg`; `args` are the command-line words it came from (`CONFIG key=value ...`), handed to the ranks
    when nproc > 1 starts them under torchrun."""
    run_folder.check(cfg)  # every run-folder error (a run already there, not writable), before any process
    data_check.check(cfg)  # shards too short for the run's steps or evaluations
    if "RANK" not in os.environ:
        _warn_oversubscribed(cfg.parallel.nproc)
    from nca_scale.train.trainer import run

    if "RANK" in os.environ:  # one rank of a job torchrun/srun started: the ranks agree on the checkpoint in `run`
        # before the rendezvous, so every rank has checked; rank 0 holds the lease for the job
        with run_folder.start(cfg, writer=os.environ["RANK"] == "0"):
            return _in_process(run, cfg, None)
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
    # this command holds the run folder's lease while it trains; with nproc > 1 rank 0 writes config.yaml (worker.py)
    with run_folder.start(cfg, write=cfg.parallel.nproc == 1):
        if cfg.parallel.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={cfg.parallel.nproc}", "-m", "nca_scale.train.worker", *args]
            env = {**os.environ, checkpoint_select.RESUME_ENV: str(resume or ""), LAUNCHER_ENV: str(os.getpid())}
            started = time.time()
            return _diverged_ranks(_launch(cmd, env), cfg, started)
        return _in_process(run, cfg, (resume,))


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


def _in_process(run, cfg: TrainConfig, chosen) -> Outcome:
    fitted = run(cfg, chosen=chosen)  # a FitOutcome: a stop for a signal is exit status 75 or 130 (Ctrl-C)
    return Outcome(fitted.exit_code, fitted.stop_signal)
