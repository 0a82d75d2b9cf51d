"""Entry point of one rank: `python -m nca_scale.train.worker CONFIG key=value ...` (what the CLI starts under
torchrun for nproc=N, and what cluster launchers run per rank). It reads the launch record the CLI handed it
(launch_record.LAUNCH_ENV); without one, torchrun or srun started it by hand and rank 0 decides for the job.

The `__main__` guard matters: megatron's dist_checkpointing.save spawns a process that re-imports this module
as `__mp_main__`; that process only asks to die with its rank.
"""

from __future__ import annotations

import signal
import sys

from nca_scale import logs, procs
from nca_scale.errors import UserError, print_error
from nca_scale.train import dist, run_folder
from nca_scale.train.config import from_args
from nca_scale.train.launch_record import BY_HAND, RANK0, TORCHRUN, Launch


def main(args: list[str]) -> int:
    launch = Launch.from_env() or Launch.by_ranks(BY_HAND)  # `nca-scale train` started torchrun, or no launcher
    procs.die_with_parent(launch.launcher_pid)  # a rank never outlives its launcher
    logs.setup()  # `[nca-scale] ...` lines from the start (run_folder's), not only after dist.init
    from nca_scale.train import entry

    try:
        cfg = from_args(args, world=dist.launched_world())  # torchrun/srun: WORLD_SIZE, whatever nproc says
        if launch.folder == RANK0:  # no launcher checked it
            run_folder.check(cfg)
        outcome = entry.rank(cfg, launch)
        if launch.launcher == TORCHRUN and outcome.signal == signal.SIGINT:
            return 0  # the Ctrl-C `nca-scale train` passed on: it exits 130 (a rank's 130 would be a torchrun failure)
        return outcome.exit_code  # preemption.exit_status: 75 after a stop for SIGUSR2/SIGTERM, 3 diverged
    except UserError as e:  # a bad config
        print_error(e)
        return 2
    except Exception as e:  # S3 without credentials or endpoint: one line per rank, not a traceback
        from nca_scale.data.urls import access_problem

        problem = access_problem(e)
        if problem is None:
            raise
        print_error(UserError(problem))
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
elif __name__ == "__mp_main__":
    # a process megatron's checkpoint writer spawned from a rank (it re-imports this module): the death
    # signal is not inherited, so without this it outlives a rank killed with kill -9 (make chaos found it)
    procs.die_with_parent()
