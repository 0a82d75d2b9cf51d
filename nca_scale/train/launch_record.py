"""How the ranks of one training start: the launch record, decided once by whoever starts the ranks and read by
every rank on every path (the one rank entry point, entry.rank).

| path | `launcher` | who made the record | `verifies`, `folder` |
|---|---|---|---|
| `nca-scale train`, parallel.nproc=1 | IN_PROCESS | entry.train (the command is the one rank) | LAUNCHER |
| `nca-scale train`, parallel.nproc=N | TORCHRUN | entry.train, handed to the N ranks in LAUNCH_ENV | LAUNCHER |
| torchrun/srun by hand (`nca_scale.train.worker`, or `nca-scale train` with RANK set) | BY_HAND | each rank alike (worker.py, entry.train) | RANK0 |
| a job `nca-scale submit` submitted | SLURM | each task alike (launch/task.py TrainWork) | RANK0 |

`verifies`: who chose the checkpoint to resume from and checksummed it, once per job. LAUNCHER: the launching
command did, before it started any rank (and checked it against the config and said so if the run is finished),
so the ranks take `checkpoint` as is. RANK0: global rank 0 chooses and verifies for all ranks and broadcasts its
choice (trainer._resume_from); every rank checks its meta.json against the config.

`folder`: who checked the run folder OUT and holds its lease (moving an old run aside with overwrite=true).
LAUNCHER: the launching command, for as long as its ranks run; RANK0: every rank checks OUT, rank 0 takes the
lease for the job. On every path rank 0 writes OUT/config.yaml once the checkpoint is chosen (trainer._run), and
nothing when the chosen checkpoint already holds the run's last step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

IN_PROCESS = "in-process"  # `nca-scale train` with parallel.nproc=1
TORCHRUN = "nca-scale torchrun"  # the torchrun `nca-scale train` starts for parallel.nproc=N
BY_HAND = "by hand"  # torchrun or srun started by a person or a script
SLURM = "slurm"  # the tasks of a submitted job
LAUNCHERS = (IN_PROCESS, TORCHRUN, BY_HAND, SLURM)
LAUNCHER, RANK0 = "launcher", "rank 0"  # who does a job-wide step once (`verifies`, `folder`)

# The record in the environment of the ranks `nca-scale train` starts under torchrun: one JSON value.
LAUNCH_ENV = "NCA_SCALE_LAUNCH"


@dataclass(frozen=True)
class Launch:
    launcher: str  # LAUNCHERS
    verifies: str  # LAUNCHER or RANK0 (module docstring)
    folder: str  # LAUNCHER or RANK0 (module docstring)
    checkpoint: str = ""  # the launcher's verified choice, "" to start afresh; only with verifies=LAUNCHER
    launcher_pid: int | None = None  # TORCHRUN: the `nca-scale train` its ranks never outlive (procs.die_with_parent)

    def __post_init__(self) -> None:
        if (self.launcher not in LAUNCHERS or {self.verifies, self.folder} - {LAUNCHER, RANK0}
                or (self.checkpoint and self.verifies != LAUNCHER)):
            raise ValueError(f"not a launch record: {self}")

    @classmethod
    def by_ranks(cls, launcher: str) -> Launch:
        """Ranks an outside launcher started (BY_HAND, SLURM): rank 0 chooses the checkpoint and holds the folder."""
        return cls(launcher, verifies=RANK0, folder=RANK0)

    @property
    def resume_from(self) -> Path | None:
        """The launcher's choice (verifies=LAUNCHER): the checkpoint to resume from, None to start afresh."""
        return Path(self.checkpoint) if self.checkpoint else None

    def env(self) -> dict[str, str]:
        """The environment entry that hands this record to ranks started in other processes."""
        return {LAUNCH_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> Launch | None:
        """The record this process's launcher handed it (LAUNCH_ENV), None if it handed none."""
        text = os.environ.get(LAUNCH_ENV)
        return cls(**json.loads(text)) if text else None
