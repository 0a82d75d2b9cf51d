"""Sweeps: a study's spec (configs/sweeps/) planned into runs, launched through submitit, recorded (docs/sweeps.md).

    spec.py     the sweep spec: load() -> a validated SweepSpec
    plan.py     spec -> runs (each `Run` holds its resolved TrainConfig); SWEEP_DIR/plan.json, the table
    data.py     the text data the runs train on (corpus, tokenizer, shards), through nca_scale.data.text
    status.py   finished / in flight / to submit, the status rows
    launch.py   `nca-scale sweep launch`: plan, data, submit
    results.py  SWEEP_DIR/results.jsonl: one record per finished run (the analysis side reads it,
                nca_scale/analysis/sweep/runs.py)

and here the job every launch submits, `SweepRunWork`: submitit pickles it by this module's path
(nca_scale.launch.sweep.SweepRunWork, the path it had as launch/sweep.py), so a job queued or requeued across an
update of this package still unpickles.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nca_scale.errors import UserError

if TYPE_CHECKING:
    from nca_scale.train.entry import Outcome

log = logging.getLogger(__name__)

RUN_FILE = "sweep_run.json"  # in each run's directory: the plan entry its job runs


@dataclass(frozen=True)
class SweepRunWork:
    """A launched sweep's job (nca_scale.launch.task): one run, `nca-scale sweep run SWEEP_DIR run=NAME`."""

    sweep_dir: str
    run: str

    @property
    def argv(self) -> list[str]:
        return ["sweep", "run", self.sweep_dir, f"run={self.run}"]

    def __call__(self) -> Outcome:
        return run_one(Path(self.sweep_dir), self.run)


def run_one(sweep_dir: Path, name: str) -> Outcome:
    """One run of a launched sweep: train (resuming from its latest checkpoint), then append its record."""
    from nca_scale.launch.sweep import results
    from nca_scale.train.config import from_args
    from nca_scale.train.entry import train

    f = sweep_dir / "runs" / name / RUN_FILE
    if not f.is_file():
        raise UserError(f"{f} does not exist: {name!r} was not launched from {sweep_dir} (nca-scale sweep launch)")
    run = json.loads(f.read_text())
    t0 = time.perf_counter()
    outcome = train(from_args(run["train_args"]), run["train_args"])
    if outcome.exit_code or int(os.environ.get("RANK", 0)) != 0:
        return outcome
    parent = results.read(sweep_dir).get(run["parent"]) if run["parent"] else None
    if parent is not None:  # what the stage-1 run really cost, rather than its plan
        run = {**run, "stage1_flops": parent["flops"]}
    results.append(sweep_dir, results.record(run["sweep"], run, time.perf_counter() - t0))
    log.info("%s: record appended to %s", name, sweep_dir / results.RESULTS)
    return outcome
