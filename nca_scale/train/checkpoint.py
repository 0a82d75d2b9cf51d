"""Checkpoint directories, committed atomically and verified on load.

    OUT/checkpoints/step_00000010/      a committed checkpoint: the backend's files + meta.json (the manifest)
    OUT/checkpoints/step_00000012.tmp/  a save in progress, or one a kill interrupted: never read
    OUT/checkpoints/latest              "step_00000010": the newest committed checkpoint

A save (callbacks.Checkpointer) has every rank write its backend files into `step_N.tmp/`; after a barrier
(or, for a save written in the background, in a thread once every rank's writer is done), rank 0 `commit`s:
fsyncs the files, writes meta.json (step, tokens, data position, layout, config, version, and every file's
size and sha256) and fsyncs it, renames `step_N.tmp` to `step_N` (atomic on one filesystem),
then replaces `latest` (the pointer moves last), then prunes. A kill at any moment leaves the previous
checkpoints untouched plus either nothing new or a complete new one. Optimizer, scheduler and RNG need no
more: the schedule and the dropout RNG are functions of the step (schedule.py, dist.step_seed).

Loading verifies the manifest (sizes, then checksums). `resume=auto` follows `latest`: it takes the newest
committed checkpoint up to the one `latest` names (or committed after the pointer last moved: a kill between
rename and pointer) that verifies, reporting (one line each) the newer ones that do not; keep-last-k never
removes the checkpoint `latest` names nor the newest one that is complete. meta.json files written before manifests existed (no
"files") are accepted unverified. With `checkpoint_url=` each committed checkpoint is also published to an
fsspec URL (mirror.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nca_scale
from nca_scale.config import to_dict
from nca_scale.errors import UserError
from nca_scale.files import fsync, write_atomic
from nca_scale.train.config import TrainConfig

META = "meta.json"
LATEST = "latest"
STAGING = ".tmp"
_NAME = re.compile(r"step_(\d{8})")


def root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_dir(out: str | Path, step: int) -> Path:
    return root(out) / f"step_{step:08d}"


def staging_dir(out: str | Path, step: int) -> Path:
    return root(out) / f"step_{step:08d}{STAGING}"


def is_complete(path: Path) -> bool:
    """Committed (has its manifest); `verify` also checks the files against it."""
    return (path / META).is_file()


def complete_checkpoints(out: str | Path) -> list[Path]:
    """Committed checkpoints, oldest first (staging directories are never listed)."""
    base = root(out)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if _NAME.fullmatch(p.name) and is_complete(p))


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


def latest_name(out: str | Path) -> str | None:
    pointer = root(out) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


# ---- integrity -------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).as_posix() != META)


def _entry(path: Path) -> dict:
    """The manifest entry of the file at `path` (size and sha256), after an fsync: it is final."""
    fsync(path)
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def file_table(path: Path) -> dict[str, dict]:
    return {p.relative_to(path).as_posix(): _entry(p) for p in _files(path)}


def file_table_in_parallel(path: Path) -> dict[str, dict] | None:
    """file_table(path), with every rank fsyncing and checksumming a share of the files (the largest first, each
    to the rank with the fewest bytes so far) at the same time: a save's checksums take 1/world of the time they
    take on rank 0 alone. The whole table on global rank 0, None elsewhere; a collective on the side group, so
    the ranks wait for the slowest share under rank0_timeout_s."""
    from nca_scale.train import dist

    listing = dist.decided_by_rank0(lambda: sorted(((p.stat().st_size, p.relative_to(path).as_posix())
                                                     for p in _files(path)), reverse=True))
    rank, world = dist.rank_and_world()
    load, mine = [0] * world, {}
    for size, name in listing:
        owner = load.index(min(load))
        load[owner] += size
        if owner == rank:
            mine[name] = _entry(path / name)
    return dist.merged_on_rank0(mine)


def verify(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path` (None if nothing): its manifest against its files."""
    try:
        meta = read_meta(path)
    except FileNotFoundError:
        return f"no {META}: it was interrupted while saving"
    except (OSError, ValueError) as e:
        return f"unreadable {META} ({type(e).__name__})"
    files = meta.get("files")
    if files is None:
        return None  # written before manifests carried checksums
    for name, want in files.items():
        p = path / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["size"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want['size']}"
    for name, want in files.items():
        if _sha256(path / name) != want["sha256"]:
            return f"{name} does not match its sha256 in {META}"
    return None


def say(text: str) -> None:
    """One line on stdout, from global rank 0 only (or a process outside any launcher)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"[nca-scale] {text}", flush=True)


def following_latest(out: str | Path) -> list[Path]:
    """The committed checkpoints of the run `latest` points into, oldest first: those up to the one it names,
    and a newer one only if committed after the pointer last moved (a kill between rename and pointer). A
    newer checkpoint committed before it (another run's, left behind) is never taken."""
    found, name = complete_checkpoints(out), latest_name(out)
    if name is None:
        return found
    moved = (root(out) / LATEST).stat().st_mtime_ns
    return [p for p in found if p.name <= name or (p / META).stat().st_mtime_ns > moved]


def latest_verified(out: str | Path, report: Callable[[str], None] = say) -> Path | None:
    """The newest checkpoint `latest` leads to that verifies; each newer unusable one is reported."""
    for path in reversed(following_latest(out)):
        problem = verify(path)
        if problem is None:
            return path
        report(f"checkpoint {path} is unusable ({problem}); falling back to the previous one")
    return None


def resolve(cfg: TrainConfig, which: str | None, report: Callable[[str], None] = say) -> Path | None:
    """The checkpoint named by a resume=/init_from= value, verified before any process starts."""
    if which in (None, "never"):
        return None
    if which == "auto":
        if cfg.checkpoint_url:
            from nca_scale.train import mirror

            try:
                mirror.fetch_latest(cfg.checkpoint_url, cfg.out, report)
            except OSError as e:
                raise UserError(f"checkpoint_url={cfg.checkpoint_url} cannot be read: {e}") from None
        found = latest_verified(cfg.out, report)
        if found is None:
            report(f"resume=auto: no checkpoint in {root(cfg.out)}; starting from step 0")
        return found
    path = Path(which)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    if not is_complete(path):
        raise UserError(f"checkpoint {path} is incomplete (no {META}); it was interrupted while saving")
    problem = verify(path)
    if problem:
        raise UserError(f"checkpoint {path} is corrupt: {problem}; resume from an older one (or resume=auto)")
    return path


# The checkpoint a launching `nca-scale train` chose and verified, handed to the ranks it starts ("" = none):
# they take it as is instead of checksumming every file again (trainer._resume_from).
RESUME_ENV = "NCA_SCALE_RESUME_FROM"


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
    if cfg.backend == "deepspeed" and layout.get("zero") and layout["dp"] != cfg.data_parallel:
        # DeepSpeed partitions ZeRO optimizer state per DP rank and cannot load it into another partitioning
        raise UserError(
            f"{path} holds DeepSpeed ZeRO-{layout['zero']} state partitioned over dp={layout['dp']}, but this run has "
            f"dp={cfg.data_parallel}; resume with nproc={layout['world']}, or start from its weights with init_from="
        )
    return meta


# ---- writing ---------------------------------------------------------------------------------------
def write_meta(path: Path, cfg: TrainConfig, step: int, tokens: int, files: dict[str, dict] | None = None,
               **extra) -> dict:
    """The manifest of the checkpoint directory `path`: run state plus every file's size and sha256 (`files`:
    the file_table already made, e.g. by file_table_in_parallel)."""
    meta = {
        "step": step,
        "tokens": tokens,
        "sequences_consumed": step * cfg.batch_size,  # the data position: global batch s = [s*B, (s+1)*B)
        "backend": cfg.backend,
        "layout": {"world": cfg.world, "tp": cfg.tp, "pp": cfg.pp, "vpp": cfg.vpp, "dp": cfg.data_parallel, "zero": cfg.zero},
        "version": nca_scale.__version__,
        "config": to_dict(cfg),
        **extra,
        "files": file_table(path) if files is None else files,
    }
    write_atomic(path / META, json.dumps(meta, indent=1))
    return meta


def _pause_for_tests(name: str, where: str) -> None:
    """The chaos test (tests/train/test_chaos.py) widens the windows between commit steps so its kills land
    inside them, and reads this line to know which window of which checkpoint's commit it is in;
    NCA_SCALE_TEST_SAVE_PAUSE is seconds per window, unset in real runs."""
    seconds = float(os.environ.get("NCA_SCALE_TEST_SAVE_PAUSE", 0) or 0)
    if seconds:
        print(f"[nca-scale] test pause: {name}: {where}", flush=True)
        time.sleep(seconds)


def begin(out: str | Path, step: int) -> Path:
    """A fresh, empty staging directory for `step` (rank 0; one writer per OUT), stale ones removed."""
    base = root(out)
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.iterdir():
        if stale.name.endswith(STAGING) and stale.is_dir():
            shutil.rmtree(stale)
    staging = staging_dir(out, step)
    staging.mkdir()
    return staging


def commit(cfg: TrainConfig, step: int, tokens: int, files: dict[str, dict] | None = None, **extra) -> Path:
    """Publish the staging directory of `step` whose backend files every rank has finished (rank 0); `files`:
    their manifest entries if the ranks made them already (file_table_in_parallel), else they are made here."""
    staging, final = staging_dir(cfg.out, step), step_dir(cfg.out, step)
    files = file_table(staging) if files is None else files  # fsynced and checksummed
    _pause_for_tests(final.name, "files written")
    write_meta(staging, cfg, step, tokens, files, **extra)
    _pause_for_tests(final.name, "manifest written")
    if final.exists():  # the same step saved again (after a rollback): the older copy goes first
        shutil.rmtree(final)
    os.rename(staging, final)
    fsync(final.parent)
    _pause_for_tests(final.name, "renamed")
    write_atomic(root(cfg.out) / LATEST, final.name + "\n")
    prune(cfg.out, cfg.keep_last)
    return final


def prune(out: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` committed checkpoints; the one `latest` names is always kept."""
    protected = latest_name(out)
    for old in complete_checkpoints(out)[:-keep]:
        if old.name != protected:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def weights_only_loads(backend: str) -> Iterator[None]:
    """Inside this block every torch.load of this process is weights-only, including those inside DeepSpeed
    (whose checkpoint engine and zero_to_fp32 pass weights_only=False) and megatron-core (which registers its
    own safe classes): unpickling a checkpoint then cannot run code. For DeepSpeed, the three plain-data
    classes its ZeRO optimizer files hold are allowed by name."""
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise UserError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set; nca-scale loads checkpoints weights-only: unset it")
    if backend == "deepspeed":
        import torch
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        torch.serialization.add_safe_globals([LossScaler, ZeroStageEnum, fragment_address])
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before
