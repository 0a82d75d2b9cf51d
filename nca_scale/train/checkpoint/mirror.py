"""Checkpoints on an fsspec URL (`checkpoint.url=`: file://, s3://, memory://): published after each local
commit, fetched back when a run resumes somewhere its local checkpoints are missing or older.

Object stores cannot rename a directory, so the order of writes is the commit: every file of
URL/step_N/ first (each through Location.put_atomic: one object, published whole, retried with backoff),
then URL/step_N/meta.json (the manifest: a directory without it is incomplete), then URL/latest. Objects
of an interrupted upload are never read (no manifest) and are removed by the next publish. A fetch
downloads into a local staging directory, verifies it against the manifest and only then renames it into
OUT/checkpoints/.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from nca_scale.data.urls import Location, parse_location
from nca_scale.files import write_atomic
from nca_scale.train.checkpoint import LATEST, META, STAGING, STEP_NAME, complete_checkpoints, read_meta, root
from nca_scale.train.checkpoint.verify import verify

log = logging.getLogger(__name__)


def _location(url: str) -> Location:
    return parse_location(url, what="checkpoint.url")


def _remote_steps(loc: Location) -> tuple[list[str], list[str]]:
    """(committed, incomplete) step directory names under `loc`, oldest first."""
    names = sorted(n for n in loc.names() if STEP_NAME.fullmatch(n))
    committed = [n for n in names if loc.sub(n).size(META) is not None]
    return committed, [n for n in names if n not in committed]


def publish(path: Path, url: str, keep: int) -> None:
    """Upload the committed local checkpoint `path`; move URL/latest to it; keep the newest `keep` there."""
    loc = _location(url)
    _, incomplete = _remote_steps(loc)
    for name in incomplete:  # leftovers of an interrupted upload (one writer per URL)
        loc.fs.rm(loc.path(name), recursive=True)
    target = loc.sub(path.name)
    for name in read_meta(path)["files"]:
        target.put_atomic(name, (path / name).read_bytes())
    target.put_atomic(META, (path / META).read_bytes())
    loc.put_atomic(LATEST, (path.name + "\n").encode())
    committed, _ = _remote_steps(loc)
    for name in committed:  # later steps there are of a trajectory this run rewound past (select.rewind)
        if name > path.name:
            loc.fs.rm(loc.path(name), recursive=True)
    for name in [n for n in committed if n <= path.name][:-keep]:
        if name != path.name:
            loc.fs.rm(loc.path(name), recursive=True)


STATE = "mirror.json"  # OUT/checkpoints/mirror.json: what the mirror holds (saver's mirror thread; `status` reads it)


def record(out: str | Path, url: str, published: str | None, failed: str | None = None, error: str | None = None) -> None:
    """Note what URL holds after an upload (rank 0's mirror thread): the newest published checkpoint, and the one
    that could not be published with its error (None once the mirror caught up)."""
    write_atomic(root(out) / STATE, json.dumps({"url": url, "published": published, "failed": failed, "error": error}))


def lag(out: str | Path) -> str | None:
    """One line when the mirror lags this run's local checkpoints (None when it does not, or there is none)."""
    try:
        state = json.loads((root(out) / STATE).read_text())
    except (OSError, ValueError):
        return None
    if not state.get("failed"):
        return None
    return (f"mirror {state['url']} lags: it holds {state['published'] or 'nothing of this run'}, "
            f"{state['failed']} not published ({state['error']})")


def fetch_latest(url: str, out: str | Path, report: Callable[[str], None] = log.info) -> Path | None:
    """Download the checkpoint URL/latest names into OUT/checkpoints/ unless a local one is as new; returns
    the local path of a fetched checkpoint (None when nothing was fetched)."""
    loc = _location(url)
    if loc.size(LATEST) is None:
        return None
    name = loc.read(LATEST).decode().strip()
    local = complete_checkpoints(out)
    if local and local[-1].name >= name:
        return None
    remote = loc.sub(name)
    meta = json.loads(remote.read(META))
    final = root(out) / name
    staging = root(out) / f"{name}.fetch-{os.getpid()}{STAGING}"
    staging.mkdir(parents=True)
    try:
        for rel in meta["files"]:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(remote.read(rel))
        (staging / META).write_text(json.dumps(meta, indent=1))
        problem = verify(staging)
        if problem:
            report(f"{remote.url} is unusable ({problem}); not fetched")
            return None
        try:
            os.rename(staging, final)
        except OSError:  # another rank of this job fetched it first
            return final
        report(f"fetched {remote.url} -> {final}")
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
