"""nca-scale submit [COMMAND] CONFIG.yaml [cluster=PROFILE] [cluster.KEY=V] [sweep.KEY=A,B] [after=ID|RUN]
[name=NAME] [wait=true|false] [dry_run=true [check_cluster=true]] [key=value ...]

Run any nca-scale job through submitit: on Slurm with cluster=PROFILE (configs/cluster/, launchers/), on this
machine without. COMMAND defaults to `train` for a training config and `generate` for an NCA config.
sweep.KEY=A,B,... submits a job array (one cell per combination, OUT/cell_<i>); after= makes the job wait for
others to succeed. Profiles are checked against the live cluster before anything is queued; dry_run=true checks
everything offline (no Slurm needed), check_cluster=true adds the live checks. See docs/cluster.md.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from nca_scale import config
from nca_scale.errors import UserError

OWN = {"cluster", "name", "after", "wait", "dry_run", "check_cluster"}  # submit's keys; cluster.KEY= go to the profile


def command_of(positional: list[str]) -> tuple[list[str], str]:
    """(command words, config path) from `[COMMAND] CONFIG`."""
    from nca_scale.cli import COMMANDS

    for n in (2, 1):
        words = tuple(positional[:n])
        if len(positional) > n - 1 and words in COMMANDS and words not in (("submit",), ("status",)):
            rest = positional[n:]
            if len(rest) != 1:
                raise UserError(f"usage: nca-scale submit [COMMAND] CONFIG [key=value ...]; got {positional}")
            return list(words), rest[0]
    if len(positional) != 1:
        raise UserError("usage: nca-scale submit [COMMAND] CONFIG.yaml [cluster=PROFILE] [key=value ...]")
    path = positional[0]
    keys = set(config.read_yaml(path))
    if keys & {"optim", "backend", "steps", "batch_size", "schedule"}:
        return ["train"], path
    if keys & {"grid", "states", "bank", "rollout", "seq_len"} or "configs/nca" in path:
        return ["generate"], path
    raise UserError(f"cannot tell which command runs {path}; name it: nca-scale submit train|generate|... {path}")


def main(args: list[str]) -> int:
    from nca_scale import cli
    from nca_scale.launch import jobs
    from nca_scale.launch.submit import Command, SubmitOptions, submit

    positional, overrides = config.split_overrides(args)
    after = [a for k, v in overrides if k == "after" for a in v.split(",") if a.strip()]
    opt = config.load(SubmitOptions, None, [(k, v) for k, v in overrides if k in OWN and k != "after"])
    opt = replace(opt, after=after,
                  cluster_keys=[(k[len("cluster."):], v) for k, v in overrides if k.startswith("cluster.")])
    rest = [(k, v) for k, v in overrides if k not in OWN and not k.startswith("cluster.")]
    words, path = command_of(positional)
    done = submit(Command(words, path, rest, main=cli.main), opt)
    if done.dry_run is not None:
        print(done.dry_run)
        return 0
    for rec in done.records:
        print(f"submitted {rec['job_id']} ({rec['cluster']}): {' '.join(rec['argv'])}\n  log {rec['logs']}")
    if not done.wait:
        return 0
    failed = 0
    for job, error in jobs.wait(done.jobs):
        if error is None:
            print(f"{job.job_id}: done")
        else:
            failed += 1
            print(f"{job.job_id}: failed: {error}", file=sys.stderr)
    return 1 if failed else 0
