"""Atomic local writes: the one "temp file beside it, fsync, rename, fsync the directory" helper.

A reader (another rank, a resumed run, a concurrent builder) sees either the old file (or directory) or the
whole new one, never a torn one, and a kill leaves at most a hidden temp file `.<name>.tmp-<pid>-<random>` beside it.
This module sits at the bottom of the import order (nca/native.py uses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from nca_scale.errors import UserError

TEMP_MARK = ".tmp-"  # temp names are .<final name>.tmp-<pid>-<random>


def fsync(path: str | Path) -> None:
    """Make a file's data, or a rename inside directory `path`, durable. Some filesystems (and sandboxes) cannot
    fsync a directory: that is ignored; a file that cannot be synced is an error."""
    path = Path(path)
    directory = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if not directory:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def temp_name(path: str | Path) -> Path:
    """A fresh hidden name beside `path` (same directory, so the rename stays on one filesystem)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller (or a program it runs) to write a file or build a
    directory at; on success it is fsynced and renamed onto `path` (an existing directory there is replaced
    as a whole); on any error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync(tmp)
        if tmp.is_dir() and path.is_dir():  # os.replace cannot overwrite a non-empty directory
            old = temp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def job_key() -> str:
    """A name the ranks of one job share and other jobs do not: the Slurm job and step, torchrun's run id, or the
    rendezvous address."""
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', '0')}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return f"job-{env.get('MASTER_ADDR', 'local')}-{env.get('MASTER_PORT', '0')}"


def node_share(kind: str, per_job: bool = False) -> tuple[Path, bool] | None:
    """For a rank that shares its node with others (torchrun and srun set LOCAL_WORLD_SIZE): a node-local
    directory for files of `kind` that the node's ranks make once between them, and whether this rank makes
    them (the node's first, LOCAL_RANK 0; the others `wait_for` them). With `per_job` the directory is this job's
    alone (job_key), for copies its first rank removes at the end (NodeCache). None for a rank alone on its node."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) < 2:
        return None
    directory = Path(tempfile.gettempdir()) / f"nca_scale_{kind}_{os.getuid()}"  # per user: /tmp is shared
    if per_job:
        directory /= job_key()
    directory.mkdir(parents=True, exist_ok=True)
    # NCA_SCALE_LOCAL_RANK: the launcher's LOCAL_RANK where the DeepSpeed backend made LOCAL_RANK its device index
    return directory, os.environ.get("NCA_SCALE_LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


# NCA_SCALE_NODE_CACHE_GB: the size cap of a job's node-local copies (NodeCache); default half the free space of
# the temporary directory's filesystem at start, at most 50 GB
CACHE_ENV, CACHE_MAX_BYTES = "NCA_SCALE_NODE_CACHE_GB", 50e9


class NodeCache:
    """A job's node-local copies of `kind` (node_share per_job): the node's first rank makes them, keeps their total
    under a cap by removing the oldest first (never those of the two latest `keep` sets: what the ranks may
    still be waiting for), and removes the whole directory at the end (close). After a kill -9 the directory is
    left; `rm -r $TMPDIR/nca_scale_<kind>_<uid>/` frees it."""

    def __init__(self, kind: str):
        share = node_share(kind, per_job=True)
        self.directory, self.leader = share if share else (None, False)
        self.recent: list[set[Path]] = [set(), set()]
        if self.directory is not None:
            cap = os.environ.get(CACHE_ENV)
            self.cap = float(cap) * 1e9 if cap else min(CACHE_MAX_BYTES, shutil.disk_usage(self.directory).free / 2)

    def keep(self, paths: set[Path]) -> list[Path]:
        """The leader: `paths` are in use now; removes the oldest others while the total is over the cap and
        returns what it removed."""
        self.recent = [self.recent[1], set(paths)]
        held = sorted(self.directory.glob("*.npy"), key=lambda p: p.stat().st_mtime)
        total, removed = sum(p.stat().st_size for p in held), []
        for old in held:
            if total <= self.cap:
                break
            if old not in self.recent[0] | self.recent[1]:
                total -= old.stat().st_size
                old.unlink(missing_ok=True)
                removed.append(old)
        return removed

    def close(self) -> None:
        """The leader removes the job's copies (the others may still map theirs: unlinked files stay readable)."""
        if self.leader and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def wait_for(ready: Callable[[], bool], what: str, wait_s: float = 3600.0, poll_s: float = 0.02) -> None:
    """Poll ready() until it holds: a rank waiting for a file its node's first rank makes (node_share). No
    collective is involved, so the wait is bounded by `wait_s` only; then a UserError naming `what`."""
    deadline = time.monotonic() + wait_s
    while not ready():
        if time.monotonic() > deadline:
            raise UserError(f"waited {wait_s:.0f}s for {what} from this node's first rank (LOCAL_RANK 0), which "
                            "makes it; check that rank's output")
        time.sleep(poll_s)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace the file `path` with `data` (str is written as UTF-8) all at once."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def check_creatable(path: str | Path, key: str = "out") -> None:
    """UserError unless directory `path` exists or can be created here: no file in the way, and the nearest
    existing ancestor writable. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file, not a directory; choose another {key}=")
    parent = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not parent.is_dir():
        raise UserError(f"{key}={path} cannot be created: {parent} is a file, not a directory; choose another {key}=")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{key}={path} is not writable ({parent} does not allow this user to write); "
                        f"choose another {key}=")


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()
