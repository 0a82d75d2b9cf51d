"""nca-scale submit [COMMAND] CONFIG.yaml [cluster=PROFILE] [cluster.KEY=V] [sweep.KEY=A,B] [after=ID|RUN]
[name=NAME] [wait=true|false] [dry_run=true] [key=value ...]

Run any nca-scale job through submitit: on Slurm with cluster=PROFILE (configs/cluster/, launchers/), on this
machine without. sweep.KEY=A,B,... submits a job array (one cell per combination, OUT/cell_<i>); after= makes
the job wait for others to succeed. Profiles are checked against the live cluster before anything is queued.
See docs/cluster.md.
"""

from __future__ import annotations


def main(args: list[str]) -> int:
    from nca_scale.launch.submit import submit

    return submit(args)
