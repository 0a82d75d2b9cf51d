"""Checkpoint directories: OUT/checkpoints/step_00000010/{<backend files>, meta.json}.

meta.json is written last, by rank 0, after every rank has finished writing: a directory without it is
incomplete and never resumed from. It records step, tokens, the data position, the layout, the full config
and the package version. Optimizer, scheduler and RNG need no more: the schedule and the dropout RNG are
functions of the step (nca_scale.train.schedule, nca_scale.train.dist.step_seed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nca_scale
from nca_scale.config import to_dict
from nca_scale.errors import UserError
from nca_scale.train.config import TrainConfig

META = "meta.json"


def root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_dir(out: str | Path, step: int) -> Path:
    return root(out) / f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / META).is_file()


def complete_checkpoints(out: str | Path) -> list[Path]:
    base = root(out)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.name.startswith("step_") and is_complete(p))


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


def resolve(cfg: TrainConfig, which: str | None) -> Path | None:
    """The checkpoint named by a resume=/init_from= value, checked before any process starts."""
    if which in (None, "never"):
        return None
    if which == "auto":
        found = complete_checkpoints(cfg.out)
        return found[-1] if found else None
    path = Path(which)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not is_complete(path):
        raise UserError(f"checkpoint {path} is incomplete (no {META}); it was interrupted while saving")
    return path


def check_resumable(cfg: TrainConfig, path: Path) -> dict:
    """Refuse a resume that could not continue the same run exactly."""
    meta = read_meta(path)
    saved, current = meta["config"], to_dict(cfg.resolved())
    if meta["backend"] != cfg.backend:
        raise UserError(f"{path} was written by backend={meta['backend']}; resume it with that backend, or use init_from=")
    for key in ("model", "data", "batch_size", "seed"):
        if saved[key] != current[key]:
            raise UserError(f"{path}: '{key}' differs from the checkpoint's; resuming would not continue the same run")
    layout = meta["layout"]
    moved = [k for k in ("tp", "pp", "vpp") if layout[k] != getattr(cfg, k)]
    if cfg.backend == "megatron" and moved and saved["distributed_optimizer"]:
        raise UserError(
            f"{path} holds distributed-optimizer state, which reshards over DP only, but {', '.join(moved)} changed; "
            "resume under its tp/pp/vpp (or train with distributed_optimizer=false to reshard freely)"
        )
    return meta


def write_meta(path: Path, cfg: TrainConfig, step: int, tokens: int) -> None:
    meta = {
        "step": step,
        "tokens": tokens,
        "sequences_consumed": step * cfg.batch_size,  # the data position: global batch s = [s*B, (s+1)*B)
        "backend": cfg.backend,
        "layout": {"world": cfg.world, "tp": cfg.tp, "pp": cfg.pp, "vpp": cfg.vpp, "dp": cfg.data_parallel, "zero": cfg.zero},
        "version": nca_scale.__version__,
        "config": to_dict(cfg),
    }
    tmp = path / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / META)


def prune(out: str | Path, keep: int) -> None:
    for old in complete_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
