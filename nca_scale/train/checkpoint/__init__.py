"""Checkpoint directories: where a run's checkpoints live, when one counts as committed, and how it is read
(its meta.json; its tensors weights-only).

    OUT/checkpoints/step_00000010/      a committed checkpoint: the backend's files + meta.json (the manifest)
    OUT/checkpoints/step_00000012.tmp/  a save in progress, or one a kill interrupted: never read
    OUT/checkpoints/latest              "step_00000010": the newest committed checkpoint
    OUT/checkpoints/abandoned-<time>/   step folders of a trajectory a resume rewound past: never read again

A directory is committed once it has its meta.json (step, tokens, data position, layout, config, version, and
every file's size and sha256). This package holds everything about checkpoints, one job per module:
commit.py writes one (stage, manifest, rename, `latest`, prune), verify.py checks files against a manifest,
select.py chooses the checkpoint a run resumes from (and whether it may), mirror.py publishes committed
checkpoints to a URL and fetches them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from nca_scale.errors import UserError

META = "meta.json"
LATEST = "latest"
STAGING = ".tmp"
STEP_NAME = re.compile(r"step_(\d{8})")  # a committed or published step directory (a staging one never matches)
ABANDONED = "abandoned-"  # abandoned-<time>/: the later steps of a trajectory a resume rewound past (select.rewind)


def root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def step_dir(out: str | Path, step: int) -> Path:
    return root(out) / f"step_{step:08d}"


def staging_dir(out: str | Path, step: int) -> Path:
    return root(out) / f"step_{step:08d}{STAGING}"


def is_complete(path: Path) -> bool:
    """Committed (has its manifest); checkpoint_verify.verify also checks the files against it."""
    return (path / META).is_file()


def complete_checkpoints(out: str | Path) -> list[Path]:
    """Committed checkpoints, oldest first (staging directories are never listed)."""
    base = root(out)
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if STEP_NAME.fullmatch(p.name) and is_complete(p))


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


def latest_name(out: str | Path) -> str | None:
    pointer = root(out) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


@contextlib.contextmanager
def weights_only_loads(backend: str) -> Iterator[None]:
    """Inside this block every torch.load of this process is weights-only, including those inside the backends'
    libraries (some pass weights_only=False, others register their own safe classes): unpickling a checkpoint
    then cannot run code. The plain-data classes the format of `backend` pickles (Format.safe_classes) are
    allowed by name."""
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise UserError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set; nca-scale loads checkpoints weights-only: unset it")
    from nca_scale.train import backends

    if safe := backends.format_of(backend).safe_classes():
        import torch

        torch.serialization.add_safe_globals(safe)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before
