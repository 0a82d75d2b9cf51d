"""Writing a checkpoint: a staging directory, then an atomic commit, then keep-last-k.

A save (saver.Saver) has every rank write its backend files into `step_N.tmp/` (`begin` makes it);
after a barrier (or, for a save written in the background, in a thread once every rank's writer is done), rank
0 `commit`s: fsyncs the files, writes meta.json (step, tokens, data position, layout, config, version, and every
file's size and sha256) and fsyncs it, renames `step_N.tmp` to `step_N` (atomic on one filesystem), then
replaces `latest` (the pointer moves last), then prunes. A kill at any moment leaves the previous checkpoints
untouched plus either nothing new or a complete new one. Optimizer, scheduler and RNG need no more: the
schedule and the dropout RNG are functions of the step (schedule.py, dist.step_seed). keep-last-k never
removes the checkpoint `latest` names; the later steps a rewind set aside (`abandoned-<time>/`) are never seen.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import nca_scale
from nca_scale.config import to_dict
from nca_scale.files import fsync, write_atomic
from nca_scale.train import backends, checkpoint, faults
from nca_scale.train.checkpoint.verify import file_table
from nca_scale.train.config import TrainConfig

log = logging.getLogger(__name__)


def write_meta(path: Path, cfg: TrainConfig, step: int, tokens: int, files: dict[str, dict] | None = None,
               **extra) -> dict:
    """The manifest of the checkpoint directory `path`: run state plus every file's size and sha256 (`files`:
    the file_table already made, e.g. by file_table_in_parallel)."""
    meta = {
        "step": step,
        "tokens": tokens,
        "sequences_consumed": step * cfg.batch_size,  # the data position: global batch s = [s*B, (s+1)*B)
        "backend": cfg.backend,
        "layout": backends.format_of(cfg.backend).layout(cfg),
        "version": nca_scale.__version__,
        "config": to_dict(cfg),
        **extra,
        "files": file_table(path) if files is None else files,
    }
    write_atomic(path / checkpoint.META, json.dumps(meta, indent=1))
    return meta


def begin(out: str | Path, step: int) -> Path:
    """A fresh, empty staging directory for `step` (rank 0; one writer per OUT), stale ones removed."""
    base = checkpoint.root(out)
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.iterdir():
        if stale.name.endswith(checkpoint.STAGING) and stale.is_dir():
            shutil.rmtree(stale)
    staging = checkpoint.staging_dir(out, step)
    staging.mkdir()
    return staging


def commit(cfg: TrainConfig, step: int, tokens: int, files: dict[str, dict] | None = None, **extra) -> Path:
    """Publish the staging directory of `step` whose backend files every rank has finished (rank 0); `files`:
    their manifest entries if the ranks made them already (file_table_in_parallel), else they are made here."""
    staging, final = checkpoint.staging_dir(cfg.out, step), checkpoint.step_dir(cfg.out, step)
    faults.hit("commit", final.name)
    files = file_table(staging) if files is None else files  # fsynced and checksummed
    faults.pause_for_tests(final.name, "files written")
    write_meta(staging, cfg, step, tokens, files, **extra)
    faults.pause_for_tests(final.name, "manifest written")
    if final.exists():  # the same step saved again (after a rollback): the older copy goes first
        shutil.rmtree(final)
    os.rename(staging, final)
    fsync(final.parent)
    faults.pause_for_tests(final.name, "renamed")
    write_atomic(checkpoint.root(cfg.out) / checkpoint.LATEST, final.name + "\n")
    prune(cfg.out, cfg.checkpoint.keep_last)
    return final


def prune(out: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` committed checkpoints; the one `latest` names is always kept."""
    protected = checkpoint.latest_name(out)
    for old in checkpoint.complete_checkpoints(out)[:-keep]:
        if old.name != protected:
            shutil.rmtree(old, ignore_errors=True)
