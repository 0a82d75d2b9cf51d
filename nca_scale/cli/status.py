"""nca-scale status [RUN|SWEEP ...] [format=table|json]

Any run folder (`nca-scale train`, `submit` or a sweep's): running / stale lease / finished / stopped / not
running, step of total, last loss and evaluation, tokens/s, ETA and the latest checkpoint. Jobs submitted with
`nca-scale submit`: Slurm (or local) state, step, last loss, restarts (with the steps of work they lost) and
where their logs are. Without a directory: every job in the index ($NCA_SCALE_HOME, default
~/.nca_scale/jobs.jsonl).
"""

from __future__ import annotations

import dataclasses
import json

from nca_scale.config import split_overrides
from nca_scale.errors import UserError


def main(args: list[str]) -> int:
    from nca_scale.launch.status import runs, status, table

    targets, overrides = split_overrides(args)
    fmt = dict(overrides).get("format", "table")
    if fmt not in ("table", "json") or any(k != "format" for k, _ in overrides):
        raise UserError("usage: nca-scale status [RUN|SWEEP ...] [format=table|json]")
    folders = runs(targets)
    rows = status(targets)
    if fmt == "json":  # a job's row carries its run folder's state; a run folder without jobs is a row of its own
        state = {r.out: dataclasses.asdict(r) for r in folders}
        rows = [{**row, "run": state.pop(row["out"], None)} for row in rows]
        print(json.dumps(rows + [{"out": out, "run": run} for out, run in state.items()], indent=1))
        return 0
    lines = [r.line() for r in folders] + ([table(rows)] if rows or not folders else [])
    print("\n".join(lines))
    return 0
