"""Entry point of one rank: `python -m nca_scale.train.worker CONFIG key=value ...` (what the CLI starts under
torchrun for nproc=N, and what cluster launchers run per rank).

The `__main__` guard matters: megatron's dist_checkpointing.save spawns a process that re-imports this module
as `__mp_main__`; that process only asks to die with its rank.
"""

from __future__ import annotations

import os
import signal
import sys

from nca_scale import logs, procs
from nca_scale.errors import UserError, print_error
from nca_scale.train import dist, run_folder
from nca_scale.train.checkpoint import select as checkpoint_select
from nca_scale.train.config import from_args


def main(args: list[str]) -> int:
    from nca_scale.train.entry import LAUNCHER_ENV
    from nca_scale.train.trainer import run

    launcher = os.environ.get(LAUNCHER_ENV)  # set when `nca-scale train` started torchrun
    procs.die_with_parent(int(launcher) if launcher else None)  # a rank never outlives its launcher
    logs.setup()  # `[nca-scale] ...` lines from the start (run_folder's), not only after dist.init

    try:
        cfg = from_args(args, world=dist.launched_world())  # torchrun/srun: WORLD_SIZE, whatever nproc says
        by_hand = checkpoint_select.RESUME_ENV not in os.environ  # torchrun/srun, not `nca-scale train` (which checked)
        if by_hand:
            run_folder.check(cfg)
        # the `nca-scale train` that started this rank holds the run folder's lease; by hand rank 0 takes it
        with run_folder.start(cfg, writer=os.environ.get("RANK", "0") == "0", move=by_hand, hold=by_hand):
            fitted = run(cfg)
        if launcher and fitted.stop_signal == signal.SIGINT:
            return 0  # the Ctrl-C `nca-scale train` passed on: it exits 130 (a rank's 130 would be a torchrun failure)
        return fitted.exit_code  # preemption.exit_status: 75 after a stop for SIGUSR2/SIGTERM
    except UserError as e:  # a bad config, or a run stopped on a non-finite loss
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
