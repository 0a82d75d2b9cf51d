"""Which checkpoint a run resumes from (resume=auto|DIR) or rolls back to, and whether it may.

`resume=auto` follows `latest`: it takes the newest committed checkpoint up to the one `latest` names (or
committed after the pointer last moved: a kill between rename and pointer) that verifies, reporting (one line
each) the newer ones that do not. With `checkpoint.url=` a newer checkpoint there is fetched first (mirror.py).
`resume=DIR` refuses a DIR that is incomplete or corrupt. `check_resumable` refuses a checkpoint that could not
continue the same run exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from nca_scale.config import to_dict
from nca_scale.errors import UserError
from nca_scale.train import checkpoint
from nca_scale.train.checkpoint import mirror
from nca_scale.train.checkpoint.verify import verify
from nca_scale.train.config import TrainConfig
from nca_scale.train.config_sections import sectioned

log = logging.getLogger(__name__)

# The checkpoint a launching `nca-scale train` chose and verified, handed to the ranks it starts ("" = none):
# they take it as is instead of checksumming every file again (trainer._resume_from).
RESUME_ENV = "NCA_SCALE_RESUME_FROM"


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
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not checkpoint.is_complete(path):
        raise UserError(f"checkpoint {path} is incomplete (no {checkpoint.META}); it was interrupted while saving")
    problem = verify(path)
    if problem:
        raise UserError(f"checkpoint {path} is corrupt: {problem}; resume from an older one (or resume=auto)")
    return path


def check_resumable(cfg: TrainConfig, path: Path) -> dict:
    """Refuse a resume that could not continue the same run exactly."""
    meta = checkpoint.read_meta(path)
    saved, current = sectioned(meta["config"]), to_dict(cfg.resolved())  # older checkpoints hold flat keys
    if meta["backend"] != cfg.backend:
        raise UserError(f"{path} was written by backend={meta['backend']}; resume it with that backend, or use init_from=")
    for key in ("model", "data", "batch_size", "seed"):
        if saved[key] != current[key]:
            raise UserError(f"{path}: '{key}' differs from the checkpoint's; resuming would not continue the same run")
    layout = meta["layout"]
    moved = [k for k in ("tp", "pp", "vpp") if layout[k] != getattr(cfg.parallel, k)]
    if cfg.backend == "megatron" and moved and saved["megatron"]["distributed_optimizer"]:
        raise UserError(
            f"{path} holds distributed-optimizer state, which reshards over DP only, but {', '.join(moved)} changed; "
            "resume under its parallel.tp/pp/vpp (or train with megatron.distributed_optimizer=false to reshard freely)"
        )
    if cfg.backend == "deepspeed" and layout.get("zero") and layout["dp"] != cfg.data_parallel:
        # DeepSpeed partitions ZeRO optimizer state per DP rank and cannot load it into another partitioning
        raise UserError(
            f"{path} holds DeepSpeed ZeRO-{layout['zero']} state partitioned over dp={layout['dp']}, but this run has "
            f"dp={cfg.data_parallel}; resume with parallel.nproc={layout['world']}, or start from its weights with init_from="
        )
    return meta
