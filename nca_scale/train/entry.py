"""The `nca-scale train` command as a library call: `train(cfg, args)`, used by the CLI, sweeps and Slurm tasks.

Every config, layout and run-folder error is raised before any process starts. Under torchrun/srun (RANK set)
this process is one rank of the job; otherwise it trains here (nproc=1) or starts nproc local ranks under
torchrun and waits for them. The result is an `Outcome`: what a launcher needs to decide what happens next
(exit status, and for a preemption stop the signal that caused it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from nca_scale import procs
from nca_scale.train import run_folder, transfer
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.config import TrainConfig

# The pid of the `nca-scale train` that started torchrun, in the ranks' environment: a rank whose parent is no
# longer that command's child dies (worker.py, procs.die_with_parent).
LAUNCHER_ENV = "NCA_SCALE_LAUNCHER_PID"


@dataclass(frozen=True)
class Outcome:
    exit_code: int  # 0 done, preemption.EXIT_PREEMPTED stopped for a signal after saving, else failed
    signal: int | None = None  # the signal that stopped the run (SIGUSR2, SIGTERM), when this process saw it


def train(cfg: TrainConfig, args: list[str]) -> Outcome:
    """Train `cfg`; `args` are the command-line words it came from (`CONFIG key=value ...`), handed to the ranks
    when nproc > 1 starts them under torchrun."""
    run_folder.check(cfg)  # every run-folder error (a run already there, not writable), before any process
    from nca_scale.train.trainer import run

    if "RANK" in os.environ:  # one rank of a job torchrun/srun started: the ranks agree on the checkpoint in `run`
        # before the rendezvous, so every rank has checked; rank 0 holds the lease for the job
        with run_folder.start(cfg, writer=os.environ["RANK"] == "0"):
            return _in_process(run, cfg, None)
    resume = checkpoint_select.resolve(cfg, cfg.resume)  # verified here, once; the ranks take it as is
    if resume:
        checkpoint_select.check_resumable(cfg, resume)
    if cfg.init_from:
        # an absolute path: a folder named `never` or `auto` is a checkpoint here, not resume's keyword (fuzz)
        transfer.check(cfg, checkpoint_select.resolve(cfg, os.path.abspath(cfg.init_from)))
    # this command holds the run folder's lease while it trains; with nproc > 1 rank 0 writes config.yaml (worker.py)
    with run_folder.start(cfg, write=cfg.parallel.nproc == 1):
        if cfg.parallel.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={cfg.parallel.nproc}", "-m", "nca_scale.train.worker", *args]
            env = {**os.environ, checkpoint_select.RESUME_ENV: str(resume or ""), LAUNCHER_ENV: str(os.getpid())}
            # torchrun never outlives this command
            return Outcome(subprocess.call(cmd, env=env, preexec_fn=procs.die_with_parent))
        return _in_process(run, cfg, (resume,))


def _in_process(run, cfg: TrainConfig, chosen) -> Outcome:
    fitted = run(cfg, chosen=chosen)  # a FitOutcome: a stop for a signal is exit status EXIT_PREEMPTED
    return Outcome(fitted.exit_code, fitted.stop_signal)
