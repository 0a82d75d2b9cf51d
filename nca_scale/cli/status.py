"""nca-scale status [RUN|SWEEP ...] [format=table|json]

Jobs submitted with `nca-scale submit`: Slurm (or local) state, step, last loss, restarts (with the steps of
work they lost) and where their logs are. Without a directory: every job in the index ($NCA_SCALE_HOME,
default ~/.nca_scale/jobs.jsonl).
"""

from __future__ import annotations

import json

from nca_scale.config import split_overrides
from nca_scale.errors import UserError


def main(args: list[str]) -> int:
    from nca_scale.launch.status import status, table

    targets, overrides = split_overrides(args)
    fmt = dict(overrides).get("format", "table")
    if fmt not in ("table", "json") or any(k != "format" for k, _ in overrides):
        raise UserError("usage: nca-scale status [RUN|SWEEP ...] [format=table|json]")
    rows = status(targets)
    print(json.dumps(rows, indent=1) if fmt == "json" else table(rows))
    return 0
