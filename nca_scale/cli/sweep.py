"""nca-scale sweep plan|launch|status SPEC.yaml [key=value ...]

  plan SPEC [format=table|json]      the runs (stage-1 runs shared by the cells that need them, stage-2 runs),
                                     parameters, tokens, FLOPs (6ND and exact), recipe values, GPU-hours at the
                                     spec's estimate.mfu; writes SWEEP_DIR/plan.json
  launch SPEC [wait=true] [dry_run=true [check_cluster=true]]
                                     prepare the text data, then submit every run that has no record in
                                     SWEEP_DIR/results.jsonl and is not queued or running (locally it waits;
                                     on Slurm stage-2 arrays depend on their stage-1 job)
  status SPEC [format=table|json]    each run's state, step, last loss and eval loss
  run SWEEP_DIR run=NAME             what a launched job runs: train one run, append its record

Other key=value pairs override spec keys (e.g. seeds=[0] out=runs/sweeps/try). See docs/sweeps.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nca_scale import config
from nca_scale.errors import UserError


def _spec(args: list[str], own: set[str]):
    """(the sweep spec with its overrides applied, its path, the command's own keys)."""
    from nca_scale.launch.sweep import spec as sweep_spec

    positional, overrides = config.split_overrides(args)
    if len(positional) != 1:
        raise UserError("usage: nca-scale sweep plan|launch|status SPEC.yaml [key=value ...] (see configs/sweeps/)")
    opts = {k: v for k, v in overrides if k in own}
    spec = sweep_spec.load(positional[0], [(k, v) for k, v in overrides if k not in own])
    return spec, positional[0], opts


def _flag(opts: dict, key: str) -> bool:
    value = opts.get(key, "false").lower()
    if value not in ("true", "false"):
        raise UserError(f"{key}={opts[key]}: write {key}=true or {key}=false")
    return value == "true"


def plan(args: list[str]) -> int:
    from nca_scale.launch.sweep import plan as sweep_plan

    spec, path, opts = _spec(args, {"format"})
    runs = sweep_plan.plan(spec)
    where = sweep_plan.write(spec, path, runs)
    if opts.get("format", "table") == "json":
        print(where.read_text())
    else:
        print(sweep_plan.table(spec, runs))
        print(f"# written {where}")
    return 0


def launch(args: list[str]) -> int:
    from nca_scale.launch.sweep.launch import LaunchOptions
    from nca_scale.launch.sweep.launch import launch as launch_sweep

    spec, path, opts = _spec(args, {"wait", "dry_run", "check_cluster", "retry_diverged"})
    return launch_sweep(spec, path, LaunchOptions(wait=_flag(opts, "wait"), dry_run=_flag(opts, "dry_run"),
                                                  check_cluster=_flag(opts, "check_cluster"),
                                                  retry_diverged=_flag(opts, "retry_diverged")))


def status(args: list[str]) -> int:
    from nca_scale.launch.sweep.status import status_rows, status_table

    spec, _, opts = _spec(args, {"format"})
    rows, notes = status_rows(spec)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(rows, indent=1) if opts.get("format", "table") == "json" else status_table(rows))
    return 0


def run(args: list[str]) -> int:
    from nca_scale.launch.sweep import run_one

    positional, overrides = config.split_overrides(args)
    names = [v for k, v in overrides if k == "run"]
    if len(positional) != 1 or len(names) != 1 or len(overrides) != 1:
        raise UserError("usage: nca-scale sweep run SWEEP_DIR run=NAME (what a `sweep launch` job runs)")
    return run_one(Path(positional[0]), names[0]).exit_code


plan.__doc__ = launch.__doc__ = status.__doc__ = run.__doc__ = __doc__
