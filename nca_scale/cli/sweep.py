"""nca-scale sweep plan|launch|status SPEC.yaml [key=value ...]

  plan SPEC [format=table|json]      the runs (stage-1 runs shared by the cells that need them, stage-2 runs),
                                     parameters, tokens, FLOPs (6ND and exact), recipe values, GPU-hours at the
                                     spec's estimate.mfu; writes SWEEP_DIR/plan.json
  launch SPEC [wait=true] [dry_run=true]
                                     prepare the text data, then submit every run that has no record in
                                     SWEEP_DIR/results.jsonl and is not queued or running (locally it waits;
                                     on Slurm stage-2 arrays depend on their stage-1 job)
  status SPEC [format=table|json]    each run's state, step, last loss and eval loss
  run SWEEP_DIR run=NAME             what a launched job runs: train one run, append its record

Other key=value pairs override spec keys (e.g. seeds=[0] out=runs/sweeps/try). See docs/sweeps.md.
"""

from __future__ import annotations


def plan(args: list[str]) -> int:
    from nca_scale.launch.sweep import plan_command

    return plan_command(args)


def launch(args: list[str]) -> int:
    from nca_scale.launch.sweep import launch as launch_sweep

    return launch_sweep(args)


def status(args: list[str]) -> int:
    from nca_scale.launch.sweep import status_command

    return status_command(args)


def run(args: list[str]) -> int:
    from nca_scale.launch.sweep import run_command

    return run_command(args)


plan.__doc__ = launch.__doc__ = status.__doc__ = run.__doc__ = __doc__
