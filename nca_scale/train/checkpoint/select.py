"""Which checkpoint a run resumes from (resume=auto|DIR) or rolls back to, and whether it may.

`resume=auto` follows `latest`: it takes the newest committed checkpoint up to the one `latest` names (or
committed after the pointer last moved: a kill between rename and pointer) that verifies, reporting (one line
each) the newer ones that do not. With `checkpoint.url=` a newer checkpoint there is fetched first (mirror.py).
`resume=DIR` refuses a DIR that is incomplete or corrupt. `check_resumable` refuses a checkpoint that could not
continue the same run exactly.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from nca_scale.config import to_dict
from nca_scale.errors import UserError
from nca_scale.files import fsync, write_atomic
from nca_scale.train import backends, checkpoint
from nca_scale.train.checkpoint import mirror
from nca_scale.train.checkpoint.verify import verify
from nca_scale.train.config import TrainConfig
from nca_scale.train.config_versions import read_saved

log = logging.getLogger(__name__)


def following_latest(out: str | Path) -> list[Path]:
    """The committed checkpoints of the run `latest` points into, oldest first: those up to the one it names,
    and a newer one only if committed after the pointer last moved (a kill between rename and pointer). A
    newer checkpoint committed before it (another run's, left behind) is never taken."""
    found, name = checkpoint.complete_checkpoints(out), checkpoint.latest_name(out)
    if name is None:
        return found
    moved = (checkpoint.root(out) / checkpoint.LATEST).stat().st_mtime_ns
    return [p for p in found if p.name <= name or (p / checkpoint.META).stat().st_mtime_ns > moved]


def latest_verified(out: str | Path, report: Callable[[str], None] = log.info) -> Path | None:
    """The newest checkpoint `latest` leads to that verifies; each newer unusable one is reported."""
    for path in reversed(following_latest(out)):
        problem = verify(path)
        if problem is None:
            return path
        report(f"checkpoint {path} is unusable ({problem}); falling back to the previous one")
    return None


def resolve(cfg: TrainConfig, which: str | None, report: Callable[[str], None] = log.info) -> Path | None:
    """The checkpoint named by a resume=/init_from= value, verified before any process starts."""
    if which in (None, "never"):
        return None
    if which == "auto":
        if cfg.checkpoint.url:
            try:
                mirror.fetch_latest(cfg.checkpoint.url, cfg.out, report)
            except OSError as e:
                raise UserError(f"checkpoint.url={cfg.checkpoint.url} cannot be read: {e}") from None
        found = latest_verified(cfg.out, report)
        if found is None:
            report(f"resume=auto: no checkpoint in {checkpoint.root(cfg.out)}; starting from step 0")
        return found
    path = Path(which)
    if m := re.fullmatch(r"step_(\d+)", which):  # this run's own, e.g. resume=step_10 to rewind to it
        path = checkpoint.step_dir(cfg.out, int(m[1]))
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not checkpoint.is_complete(path):
        raise UserError(f"checkpoint {path} is incomplete (no {checkpoint.META}); it was interrupted while saving")
    problem = verify(path)
    if problem:
        raise UserError(f"checkpoint {path} is corrupt: {problem}; resume from an older one (or resume=auto)")
    return path


def rewind(cfg: TrainConfig, path: Path) -> dict | None:
    """Resuming `path` (step S) while OUT/checkpoints holds later steps (`resume=DIR` to an older checkpoint, the
    usual answer to a loss spike) starts a new lineage: the later step folders (committed or staging) move to
    OUT/checkpoints/abandoned-<time>/, where nothing selects, prunes or overwrites them, and `latest` names `path`
    if it is one of OUT's. Returns the record each later manifest keeps (its "lineage"), None when nothing was
    later. Called once per job, by rank 0, before any save (trainer._run)."""
    step = checkpoint.read_meta(path)["step"]
    base = checkpoint.root(cfg.out)
    later = sorted(p for p in base.iterdir() if (m := checkpoint.STEP_NAME.fullmatch(
        p.name.removesuffix(checkpoint.STAGING))) and int(m[1]) > step) if base.is_dir() else []
    if not later:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = base / f"{checkpoint.ABANDONED}{stamp}"
    aside.mkdir()
    for p in later:
        os.rename(p, aside / p.name)
    if path.resolve().parent == base.resolve():
        write_atomic(base / checkpoint.LATEST, path.name + "\n")
    fsync(base)
    names = [p.name for p in later]
    log.info(f"resuming {path} (step {step}) starts a new lineage: {', '.join(names)} of the previous trajectory "
             f"moved to {aside}")
    return {"resumed_from": str(path), "step": step, "abandoned": aside.name, "steps": names}


# What a resume must keep to continue the same run: every setting that changes the numbers, and the backend's
# settings that shape the saved optimizer state (its Format.resume_keys: its loader cannot convert them).
SAME_NUMBERS = ("model", "data", "batch_size", "seed", "precision")
_ABSENT = object()


def _at(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part, _ABSENT) if isinstance(config, dict) else _ABSENT
    return config


def _differences(saved, current, key: str) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) of each field that differs; a field the checkpoint's older config does not
    hold is not compared."""
    if saved is _ABSENT:
        return []
    if isinstance(saved, dict) and isinstance(current, dict):
        return [d for k in saved for d in _differences(saved[k], current.get(k, _ABSENT), f"{key}.{k}")]
    return [] if saved == current else [(key, saved, current)]


def _value(v) -> str:
    """As it is written on the command line."""
    return "null" if v is None or v is _ABSENT else str(v).lower() if isinstance(v, bool) else str(v)


def finished(cfg: TrainConfig, path: Path, meta: dict) -> bool:
    """Whether `path` already holds this run's last step; if so, says so: resuming a finished run trains nothing
    and writes nothing (no second evaluation row, no new files in the run folder)."""
    if meta["step"] < cfg.total_steps:
        return False
    log.info(f"{path} is at step {meta['step']} and this run ends at step {cfg.total_steps}: nothing to train, "
             f"nothing written; to train further pass steps= above {meta['step']}")
    return True


def check_resumable(cfg: TrainConfig, path: Path) -> dict:
    """Refuse a resume that could not continue the same run exactly."""
    meta = checkpoint.read_meta(path)
    saved = read_saved(meta["config"], source=f"{path}/{checkpoint.META}")  # an older version: migrated
    current = to_dict(cfg.resolved())
    if meta["backend"] != cfg.backend:
        raise UserError(f"{path} was written by backend={meta['backend']}; resume it with that backend, or use init_from=")
    form = backends.format_of(cfg.backend)
    keys = [*SAME_NUMBERS, *form.resume_keys]
    found = [d for key in keys for d in _differences(_at(saved, key), _at(current, key), key)]
    if found:
        shown = "; ".join(f"{k} is {_value(was)} in the checkpoint but {_value(now)} here" for k, was, now in found)
        fix = " ".join(f"{k}={_value(was)}" for k, was, _ in found)
        raise UserError(f"{path} cannot continue this run exactly: {shown}; resume with {fix} (or start from its "
                        "weights with init_from=)")
    form.check_resumable(path, cfg, saved, meta["layout"])  # what its engine cannot load into this layout
    return meta
