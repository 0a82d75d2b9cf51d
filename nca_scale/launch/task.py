"""What runs in every task of a submitted job: environment, rendezvous, the job's work, requeue.

A Task is the callable submitit pickles. In each Slurm task (one per GPU, or per process on CPU) it exports
the profile's environment and the torch.distributed variables (nca_scale.launch.rendezvous), then runs its
work in-process, as one rank. The work is a picklable callable returning an `Outcome` (submitit's "submit a
callable"): `TrainWork` trains through nca_scale.train.entry; any other command comes from the caller as
`CommandWork(main, argv)` (the cli layer passes its own entry point down, so launch never imports cli); a
sweep's runs are launch.sweep's `SweepRunWork`. When training stops on a preemption signal after saving, the
Outcome has exit code EXIT_PREEMPTED and the signal (nca_scale.train.preemption); then:

* after SIGUSR2 (a preemption notice, or the warning `signal_lead_s` before the time limit, which rank 0
  also sends itself on every attempt, since Slurm sends its `--signal` once per job), global rank 0 runs
  `scontrol requeue` while SLURM_RESTART_COUNT < max_restarts; the requeued job resumes with resume=auto;
* after SIGTERM (`scontrol requeue`, preemption with PreemptMode=REQUEUE, scancel) Slurm decides: it has
  requeued the job already, or it is ending it.

Any other non-zero status fails the job, EXIT_DIVERGED (a non-finite loss) included: it is never requeued.
Exiting through SystemExit leaves no submitit result file, so the job's waiters keep waiting across the requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import submitit

from nca_scale import logs
from nca_scale.errors import UserError, print_error
from nca_scale.launch import rendezvous

if TYPE_CHECKING:
    from nca_scale.train.entry import Outcome

log = logging.getLogger(__name__)

def _time_limit_warning(limit_min: int, lead_s: int) -> threading.Timer | None:
    """USR2 to this process `lead_s` before this attempt's time limit, on every attempt: Slurm's own
    `--signal=USR2@lead` is sent once per job (a requeued job does not get it again, Slurm 22.05), and
    squeue's end time is stale right after a requeue, so the limit is counted from this task's start."""
    if not os.environ.get("SLURM_JOB_ID") or os.environ.get("RANK", "0") != "0":
        return None  # rank 0 is enough: the trainer all-reduces the flag
    timer = threading.Timer(max(0.0, limit_min * 60 - lead_s), os.kill, (os.getpid(), signal.SIGUSR2))
    timer.daemon = True
    timer.start()
    return timer


def restarted() -> bool:
    """Whether this is a requeued attempt of a Slurm job."""
    return int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0


@dataclass(frozen=True)
class TrainWork:
    """`nca-scale train ARGS` (CONFIG key=value ...) as a task's work."""

    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return ["train", *self.args]

    def __call__(self) -> Outcome:
        from nca_scale.train import dist
        from nca_scale.train.config import from_args
        from nca_scale.train.entry import train
        from nca_scale.train.launch_record import SLURM, Launch

        args = list(self.args)
        if restarted():
            args.append("resume=auto")  # a requeued run continues from its latest complete checkpoint
        # every task alike: rank 0 chooses and verifies the checkpoint and holds the run folder for the job
        return train(from_args(args, world=dist.launched_world()), args, Launch.by_ranks(SLURM))


@dataclass(frozen=True)
class CommandWork:
    """Any other command: `main(argv)` returning an exit status (the caller's entry point, e.g. nca_scale.cli.main)."""

    main: Callable[[list[str]], int]
    argv: list[str]

    def __call__(self) -> Outcome:
        from nca_scale.train.entry import Outcome

        return Outcome(self.main(list(self.argv)) or 0)


class Task(submitit.helpers.Checkpointable):
    def __init__(self, work: Callable[[], Outcome], env: dict, max_restarts: int, limit_min: int, lead_s: int):
        self.work, self.env, self.max_restarts = work, dict(env), max_restarts
        self.limit_min, self.lead_s = limit_min, lead_s

    def __call__(self) -> dict:
        os.environ.update({k: str(v) for k, v in self.env.items()})
        values = rendezvous.export()
        # every rank at INFO: under srun each task writes a log file of its own (RUN/launch/JOB/JOB_<rank>_log.out)
        logs.every_rank_at_info()
        if values:
            log.info(rendezvous.describe(values))
        timer = _time_limit_warning(self.limit_min, self.lead_s)
        from nca_scale.train.entry import Outcome  # torch: only in the job, not in `nca-scale submit`
        from nca_scale.train.preemption import EXIT_DIVERGED, EXIT_PREEMPTED

        try:
            outcome = self.work()
        except UserError as e:  # one line in the task's log and status 2, as the command line does
            print_error(e)
            outcome = Outcome(2)
        except SystemExit as e:
            outcome = Outcome(e.code if isinstance(e.code, int) else 1)
        rc = outcome.exit_code
        if timer is not None:
            timer.cancel()
        if rc == 0:  # done: a warning arriving while the process exits must not kill it (the job would FAIL)
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        if rc == EXIT_PREEMPTED:
            self._after_preemption(outcome.signal)
            sys.exit(rc)
        argv = self.work.argv
        if rc:  # EXIT_DIVERGED too: a non-finite loss would come back on a requeue, so the job fails
            why = " (diverged: a non-finite loss; not requeued)" if rc == EXIT_DIVERGED else ""
            raise RuntimeError(f"`nca-scale {' '.join(argv)}` exited with status {rc}{why}; see this task's log")
        return {"argv": argv, "rank": int(os.environ.get("RANK", 0)),
                "restarts": int(os.environ.get("SLURM_RESTART_COUNT", 0))}

    def _after_preemption(self, signum: int | None) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_TASK_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        rank = int(os.environ.get("RANK", 0))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", 0))
        if signum == signal.SIGUSR2 and rank == 0 and job:
            if restarts >= self.max_restarts:
                raise RuntimeError(f"preempted or out of time after {restarts} restarts (max_restarts="
                                   f"{self.max_restarts}); not requeued. Resume later with resume=auto")
            log.info("requeueing job %s (restart %d of at most %d)", job, restarts + 1, self.max_restarts)
            subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on USR2 before training has installed its own handler: just run again."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
