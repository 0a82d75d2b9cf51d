"""The run folder OUT of `nca-scale train`: one run per folder, checked before any process starts.

A folder that already holds a run (OUT/metrics.jsonl or anything under OUT/checkpoints) is refused with
resume=never: training into it would cut the old metrics, leave its newer checkpoints beside the new ones and
make a later resume=auto mix the two runs. resume=auto (or resume=CKPT) continues it; overwrite=true moves the
old run aside to OUT.old-<time> first. Every start writes the fully resolved config to OUT/config.yaml.

A folder whose run is still training (its lease, train/lease.py) is refused whatever the keys say, resume=auto and
overwrite=true included, naming the holder; the run holds the lease from `take` until it ends. Which process
checks, takes and writes is the launch record's to say (launch_record.py: `folder`; rank 0 writes config.yaml).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import yaml

from nca_scale.config import NESTED_FILES, to_dict
from nca_scale.errors import UserError
from nca_scale.files import check_creatable, write_atomic
from nca_scale.train import checkpoint, lease
from nca_scale.train.config import TrainConfig

log = logging.getLogger(__name__)

CONFIG = "config.yaml"


def holds_run(out: str | Path) -> bool:
    out = Path(out)
    base = checkpoint.root(out)
    return (out / "metrics.jsonl").is_file() or (base.is_dir() and any(base.iterdir()))


def check(cfg: TrainConfig) -> None:
    """Refuse an OUT (or checkpoint.url) that cannot take this run; creates nothing under OUT."""
    if not cfg.out.strip():
        raise UserError("out= is empty; give the run folder, e.g. out=runs/r1")
    check_creatable(cfg.out)
    lease.check(cfg.out)  # a live run there: refused before any message that would suggest resume=auto
    if cfg.resume == "never" and not cfg.overwrite and holds_run(cfg.out):
        raise UserError(f"out={cfg.out} already holds a run; continue it with resume=auto, start afresh with "
                        "overwrite=true (moves it aside), or choose another out=")
    if cfg.checkpoint.url and cfg.checkpoint.url.startswith("s3://"):
        from nca_scale.data.urls import parse_location

        # a probe write: missing S3 credentials or a wrong endpoint show here, not at the first save
        parse_location(cfg.checkpoint.url, what="checkpoint.url").check_writable("checkpoint.url")


def take(cfg: TrainConfig) -> lease.Lease:
    """After every check passed, in the one process that holds OUT for the training (the launching command, or
    rank 0 of a job started by hand or by Slurm): take OUT's lease and, with overwrite=true, move an old run aside.
    Returns the lease, released when the `with` around the run ends."""
    out = Path(cfg.out)
    try:
        held = lease.Lease(out).acquire()
    except OSError as e:
        raise UserError(f"out={cfg.out} is not writable ({e.strerror or e}); choose another out=") from None
    try:
        if cfg.overwrite and holds_run(out):
            _move_aside(out)
    except BaseException:
        held.release()
        raise
    return held


def _move_aside(out: Path) -> None:
    """OUT -> OUT.old-<time>, all but this run's lease, which stays in OUT."""
    aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():  # two overwrites within one second
        aside, n = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    out.rename(aside)
    out.mkdir()
    os.rename(aside / lease.NAME, out / lease.NAME)
    log.info("overwrite=true: moved the old run in %s to %s", out, aside)


def write_config(cfg: TrainConfig) -> None:
    """OUT/config.yaml, the resolved config of this start: by rank 0, in a process that trains (resolving
    precision=auto touches the GPU), once the checkpoint is chosen (trainer._run)."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(to_dict(cfg.resolved()), sort_keys=False)
        files = "".join(f"#   {where}: {path}\n" for where, path in NESTED_FILES.items())
        files = f"# nested config files read:\n{files}" if files else ""
        write_atomic(out / CONFIG, f"# nca-scale train: the resolved config of the latest start\n{files}{text}")
    except OSError as e:
        raise UserError(f"out={cfg.out} is not writable ({e.strerror or e}); choose another out=") from None
